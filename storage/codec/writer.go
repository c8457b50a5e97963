package codec

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errWriterClosed is returned by Write after Close.
var errWriterClosed = errors.New("codec: write after close")

// NewWriter starts a new object on w and returns the writer for its payload. The header
// (and the age header) are written at once. Close finishes the object (zstd frame, final
// age chunk or checksum trailer) but does not close w. After any error the object is
// incomplete and must be discarded. Memory is bounded (one zstd window plus one age chunk)
// whatever the payload size.
func (c *Codec) NewWriter(w io.Writer) (io.WriteCloser, error) {
	return c.newWriter(w, c.header, true)
}

// Compresses reports whether objects from NewWriter are compressed.
func (c *Codec) Compresses() bool { return c.header.Compression != CompressionNone }

// NewWriterDigest is NewWriter for an object whose header carries digest, the SHA-256 of
// the payload the caller is about to write (readers check it at the end).
func (c *Codec) NewWriterDigest(w io.Writer, digest [DigestSize]byte) (io.WriteCloser, error) {
	h := c.header
	h.HasDigest, h.Digest = true, digest
	return c.newWriter(w, h, true)
}

// SealDigest seals plain with its SHA-256 in the header and returns both. The hash runs
// alongside the compression, and zstd compresses plain in one call, as in SealAll.
func (c *Codec) SealDigest(plain []byte) ([]byte, [DigestSize]byte, error) {
	var digest [DigestSize]byte
	hashed := make(chan struct{})
	go func() {
		digest = sha256.Sum256(plain)
		close(hashed)
	}()
	h := c.header
	payload, err := c.compressWhole(h, plain, make([]byte, 0, len(plain)/2+1024))
	<-hashed
	if err != nil {
		return nil, digest, err
	}
	h.HasDigest, h.Digest = true, digest
	var buf bytes.Buffer
	buf.Grow(sealedSize(len(payload)))
	if err := c.writePayload(&buf, h, payload); err != nil {
		return nil, digest, err
	}
	return buf.Bytes(), digest, nil
}

// SealAll writes to w an object of plain with NewWriter's header, for a payload held whole
// in memory. zstd compresses it in one call into scratch (with the C encoder when the codec
// uses it), instead of through the streaming encoder; SealAll returns
// scratch, grown as needed, for the caller's next call. With stored, the payload is not
// compressed: for payloads the caller knows do not compress (random bytes, compressed data);
// readers need no setting, the header says so.
func (c *Codec) SealAll(w io.Writer, plain []byte, stored bool, scratch []byte) ([]byte, error) {
	h := c.header
	if stored {
		h.Compression = CompressionNone
	}
	payload, err := c.compressWhole(h, plain, scratch[:0])
	if h.Compression == CompressionZstd {
		scratch = payload
	}
	if err != nil {
		return scratch, err
	}
	return scratch, c.writePayload(w, h, payload)
}

// compressWhole returns plain compressed as h says, appended to dst (plain itself when h
// says no compression).
func (c *Codec) compressWhole(h Header, plain, dst []byte) ([]byte, error) {
	if h.Compression != CompressionZstd {
		return plain, nil
	}
	if c.useC() {
		return c.compressWholeC(plain, dst)
	}
	enc, err := c.wholeEncoder()
	if err != nil {
		return dst, err
	}
	return enc.EncodeAll(plain, dst), nil
}

// writePayload writes the object with header h around a payload already compressed as h says.
func (c *Codec) writePayload(w io.Writer, h Header, payload []byte) error {
	ow, err := c.newWriter(w, h, false)
	if err != nil {
		return err
	}
	if _, err := ow.Write(payload); err != nil {
		return err
	}
	return ow.Close()
}

// sealedSize bounds the size of an object around n payload bytes: both copies of the
// header, the age header and a 16-byte tag per 64 KiB chunk (or the CRC trailer).
func sealedSize(n int) int { return n + n/1024 + 2*MaxHeaderSize + 4096 }

// newWriter starts an object with header h on w. Without encode, the caller writes the
// payload already compressed as h says.
func (c *Codec) newWriter(w io.Writer, h Header, encode bool) (io.WriteCloser, error) {
	hdr := h.Append(make([]byte, 0, MaxHeaderSize))
	ow := &writer{c: c, dst: w}
	if h.Encryption == EncryptionNone {
		ow.crc = crc32.New(castagnoli)
		ow.crcDst = io.MultiWriter(w, ow.crc)
	} else {
		ow.crcDst = w
	}
	if _, err := ow.crcDst.Write(hdr); err != nil {
		return nil, fmt.Errorf("write object header: %w", err)
	}
	inner := ow.crcDst
	if h.Encryption != EncryptionNone {
		aw, err := age.Encrypt(w, c.recipients...)
		if err != nil {
			return nil, fmt.Errorf("start age encryption: %w", err)
		}
		// The authenticated copy of the header (see the package doc).
		if _, err := aw.Write(hdr); err != nil {
			return nil, fmt.Errorf("write object header: %w", err)
		}
		ow.age = aw
		inner = aw
	}
	ow.top = inner
	if h.Compression == CompressionZstd && encode {
		enc, err := c.getEncoder(inner)
		if err != nil {
			return nil, err
		}
		ow.zw = enc
		ow.top = enc
	}
	return ow, nil
}

type writer struct {
	c      *Codec
	dst    io.Writer
	crcDst io.Writer   // dst, or dst+crc when unencrypted
	crc    hash.Hash32 // nil when encrypted
	age    io.WriteCloser
	zw     *zstd.Encoder
	top    io.Writer // where payload bytes go
	err    error     // sticky
	closed bool
}

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errWriterClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.top.Write(p)
	if err != nil {
		w.fail(fmt.Errorf("write object: %w", err))
		return n, w.err
	}
	return n, nil
}

// fail records the first error and abandons the encoder (its state is unknown).
func (w *writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
	w.zw = nil
}

// Close finishes the object. It is idempotent and returns the first error.
func (w *writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	if w.zw != nil {
		if err := w.zw.Close(); err != nil {
			w.fail(fmt.Errorf("finish zstd frame: %w", err))
			return w.err
		}
		w.c.putEncoder(w.zw)
		w.zw = nil
	}
	if w.age != nil {
		if err := w.age.Close(); err != nil {
			w.fail(fmt.Errorf("finish age stream: %w", err))
			return w.err
		}
	}
	if w.crc != nil {
		var t [4]byte
		binary.BigEndian.PutUint32(t[:], w.crc.Sum32())
		if _, err := w.dst.Write(t[:]); err != nil {
			w.fail(fmt.Errorf("write object trailer: %w", err))
			return w.err
		}
	}
	return nil
}
