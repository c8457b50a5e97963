package codec

import (
	"bytes"
	"fmt"
	"io"
	"math/bits"

	"github.com/klauspost/compress/zstd"
)

// Zstd encoders of DataSealer, the hot path of a backup: every byte of a bundle goes
// through one. Config.Encoder picks the implementation; both write standard zstd frames,
// which the one decoder (klauspost/compress) reads, so objects do not record which wrote them.
const (
	// EncoderAuto uses the C library when this binary has it (built with cgo), else Go.
	EncoderAuto = "auto"
	// EncoderGo is klauspost/compress: pure Go. It maps the zstd levels onto four speeds
	// (<3 fastest, 3..5 default, 6..9 better, >=10 best).
	EncoderGo = "go"
	// EncoderC is the reference C library, libzstd (through cgo), at the exact level asked
	// for. At the same level it compresses page data faster than the Go encoder and to the
	// same size or a little smaller; bench/backup/README.md has the measurements.
	EncoderC = "libzstd"
)

// dataEncoder compresses one whole payload into one zstd frame written to w, with a window
// of at most 1<<windowLog and no content checksum.
type dataEncoder interface {
	encode(w io.Writer, plain []byte) error
	close()
}

// useC says whether objects are compressed with the C encoder.
func (c *Codec) useC() bool { return c.encoder == EncoderC || c.encoder == EncoderAuto && haveCZstd }

// dataWindow is the zstd window of DataSealer objects compressed at level: smaller than
// the streaming writer's below level 6 (dataZstdWindow).
func dataWindow(level int) int {
	if level < 6 {
		return dataZstdWindow
	}
	return maxZstdWindow
}

// newDataEncoder returns an encoder of the codec's kind (Config.Encoder) at level.
func (c *Codec) newDataEncoder(level int) (dataEncoder, error) {
	if c.useC() {
		return newCDataEncoder(level, windowLog(dataWindow(level)))
	}
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		// No content checksum in objects sealed whole (bundles, summaries): the age AEAD
		// (or, unencrypted, the envelope's CRC-32C trailer) already covers every byte of
		// the frame, and each piece of a bundle carries its own CRC-32C and digest in the
		// manifest.
		zstd.WithEncoderCRC(false),
		zstd.WithEncoderConcurrency(1), // synchronous: the caller runs one sealer per core
		zstd.WithWindowSize(dataWindow(level)),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return goDataEncoder{enc}, nil
}

// EncoderName says which zstd encoder seals the bundles of backups with c's settings
// ("libzstd" or "go"), for logs and `pgharbor version`.
func (c *Codec) EncoderName() string {
	if c.useC() {
		return EncoderC
	}
	return EncoderGo
}

// compressWholeC appends plain, compressed by a C encoder from the codec's free list, to dst.
// The frame's window is the streaming writer's, and it has no content checksum: the
// envelope covers every byte of it, as for DataSealer objects.
func (c *Codec) compressWholeC(plain, dst []byte) ([]byte, error) {
	var enc dataEncoder
	select {
	case enc = <-c.wholeC:
	default:
		var err error
		if enc, err = newCDataEncoder(c.level, windowLog(c.wholeWindow)); err != nil {
			return dst, err
		}
	}
	buf := bytes.NewBuffer(dst)
	err := enc.encode(buf, plain)
	select {
	case c.wholeC <- enc:
	default:
		enc.close()
	}
	if err != nil {
		return dst, fmt.Errorf("zstd: %w", err)
	}
	return buf.Bytes(), nil
}

// AutoEncoder is the encoder EncoderAuto picks in this binary.
func AutoEncoder() string {
	if haveCZstd {
		return EncoderC
	}
	return EncoderGo
}

func windowLog(window int) int { return bits.Len(uint(window)) - 1 }

type goDataEncoder struct{ enc *zstd.Encoder }

func (g goDataEncoder) encode(w io.Writer, plain []byte) error {
	g.enc.ResetContentSize(w, int64(len(plain)))
	_, err := g.enc.Write(plain)
	if err == nil {
		err = g.enc.Close()
	}
	g.enc.Reset(io.Discard) // drop the reference to w
	return err
}

func (g goDataEncoder) close() { g.enc.Close() }
