package codec

import (
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// FrameEncoder compresses a payload that arrives in pieces, as it arrives, into a sequence
// of independent zstd frames held in memory: EndFrame closes the frame being written, so
// the bytes of every frame can be sealed on their own (SealCompressed) as soon as it ends,
// and the frames of the whole payload together are the inner of one object. Decoding the
// concatenated frames gives the payload back byte for byte, so an object sealed from them
// carries the same SHA-256 as one sealed from the plain payload in one piece.
//
// A FrameEncoder is not safe for concurrent use. It keeps its encoder (and its buffers)
// across frames and payloads: Reset starts a new payload.
type FrameEncoder struct {
	compress bool
	enc      *zstd.Encoder
	out      frameBuffer
	open     bool // a frame has been started and not ended
}

// frameBuffer is the zstd encoder's destination: the frames of the current payload.
type frameBuffer struct{ b []byte }

func (f *frameBuffer) Write(p []byte) (int, error) {
	f.b = append(f.b, p...)
	return len(p), nil
}

// NewFrameEncoder returns a FrameEncoder with the codec's compression level and checksum,
// one goroutine, and a window of window bytes rounded up to a power of two (at most the
// 8 MiB readers accept): a frame never spans more than the caller's largest piece, so a
// larger window only costs memory. Without compression it keeps the payload as it is.
func (c *Codec) NewFrameEncoder(window int) (*FrameEncoder, error) {
	fe := &FrameEncoder{compress: c.header.Compression == CompressionZstd}
	if !fe.compress {
		return fe, nil
	}
	w := zstd.MinWindowSize
	for w < window && w < maxZstdWindow {
		w <<= 1
	}
	// The later options override the codec's own concurrency and window.
	opts := append(append([]zstd.EOption(nil), c.encOpts...), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(w))
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	fe.enc = enc
	return fe, nil
}

// Write compresses p into the current frame, starting one if none is open.
func (fe *FrameEncoder) Write(p []byte) (int, error) {
	if !fe.compress {
		fe.out.b = append(fe.out.b, p...)
		return len(p), nil
	}
	if !fe.open {
		fe.enc.Reset(&fe.out)
		fe.open = true
	}
	return fe.enc.Write(p)
}

// EndFrame closes the open frame, if any: every byte written so far is then in Bytes.
func (fe *FrameEncoder) EndFrame() error {
	if !fe.open {
		return nil
	}
	fe.open = false
	if err := fe.enc.Close(); err != nil {
		return fmt.Errorf("finish zstd frame: %w", err)
	}
	return nil
}

// Bytes returns the frames ended since the last Reset (valid until the next Write or Reset).
func (fe *FrameEncoder) Bytes() []byte { return fe.out.b }

// Reset drops the frames (and any open frame) and starts a new payload, keeping the
// buffers.
func (fe *FrameEncoder) Reset() {
	if fe.open {
		fe.enc.Reset(io.Discard) // abandon the open frame
		fe.open = false
	}
	fe.out.b = fe.out.b[:0]
}

// SealCompressed returns the object around payload, bytes a FrameEncoder of this codec
// produced (one or more whole frames, or the plain payload when the codec does not
// compress), with digest, the SHA-256 of the plain payload, in its header. The object is
// built in dst's storage when it is large enough (pass the previous result to reuse it).
func (c *Codec) SealCompressed(dst, payload []byte, digest [DigestSize]byte) ([]byte, error) {
	h := c.header
	h.HasDigest, h.Digest = true, digest
	buf := bytes.NewBuffer(dst[:0])
	buf.Grow(sealedSize(len(payload)))
	if err := c.writePayload(buf, h, payload); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
