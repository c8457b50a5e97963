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
	"strings"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// errReaderClosed is returned by Read after Close.
var errReaderClosed = errors.New("codec: read after close")

// keyError is a user-facing key problem that matches a sentinel.
type keyError struct {
	msg      string
	sentinel error
}

func (e *keyError) Error() string        { return e.msg }
func (e *keyError) Is(target error) bool { return target == e.sentinel }

// NewReader reads an object's header from r and returns a reader of its payload, decoded
// as the header says (whatever this Codec writes). Close releases pooled buffers; it does
// not close r.
//
// Bytes are returned as they are decoded, so a damaged object can yield some bytes before
// the error: treat any error as "the whole object is bad". Read returns io.EOF only after
// the object's integrity was verified to its last byte (age authentication or checksum,
// and no trailing data). Errors wrap ErrUnknownFormat, ErrNoIdentity, ErrWrongKey,
// ErrCorrupt or ErrTruncated; an error reading r is returned wrapped as it is (it may be
// transient).
func (c *Codec) NewReader(r io.Reader) (io.ReadCloser, error) {
	return c.newReader(r, "", false)
}

// NewReaderFor is NewReader for the object stored under name. When the codec holds verify
// keys it authenticates the object: one without a signature is refused at once (before any
// payload byte), and Read returns io.EOF only after the signature was checked against a
// verify key for name; failures wrap ErrUnauthenticated. Without verify keys it is
// NewReader.
func (c *Codec) NewReaderFor(r io.Reader, name string) (io.ReadCloser, error) {
	return c.newReader(r, name, c.Verifies())
}

func (c *Codec) newReader(r io.Reader, name string, auth bool) (io.ReadCloser, error) {
	src := &recorder{r: r}
	hb, h, err := readHeader(src)
	if err != nil && src.err != nil {
		return nil, fmt.Errorf("read object header: %w", src.err)
	}
	if err != nil {
		return nil, err
	}
	if auth && !h.Signed {
		return nil, fmt.Errorf("%w: the object carries no signature (written by a host without the write key, or before signing was turned on: see `pgharbor repo sign-existing`)", ErrUnauthenticated)
	}
	rd := &reader{c: c, src: src, name: name, auth: auth}
	var body io.Reader = src
	if h.Signed {
		rd.sig = newSigReader(src, hb)
		body = rd.sig
	}
	switch h.Encryption {
	case EncryptionNone:
		rd.inner = &recorder{r: newCRCReader(body, unsignedHeader(hb))}
	default:
		ar, err := c.decrypt(h, body, src)
		if err != nil {
			return nil, err
		}
		rd.inner = &recorder{r: ar}
		cp := make([]byte, len(hb))
		if _, err := io.ReadFull(rd.inner, cp); err != nil {
			if rd.inner.err == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				return nil, damaged(false, "encrypted payload lacks the header copy", nil)
			}
			return nil, rd.classify(err)
		}
		if !bytes.Equal(cp, unsignedHeader(hb)) {
			return nil, damaged(false, "clear header does not match its authenticated copy", nil)
		}
	}
	rd.body = rd.inner
	if h.Compression == CompressionZstd {
		dec, err := c.getDecoder(rd.inner)
		if err != nil {
			return nil, err
		}
		rd.dec = dec
		rd.body = dec
	}
	if h.HasDigest {
		rd.digest, rd.want = sha256.New(), h.Digest
		rd.body = io.TeeReader(rd.body, rd.digest)
	}
	return rd, nil
}

func (c *Codec) decrypt(h Header, body io.Reader, src *recorder) (io.Reader, error) {
	var ids []age.Identity
	var missing string
	var wrong func() string
	switch h.Encryption {
	case EncryptionPassphraseKey:
		ids = c.dataIDs
		missing = "object is sealed to the repository's data key, which the passphrase unlocks; configure the passphrase"
		wrong = func() string {
			return "the repository's data key does not open this object (it belongs to another repository or cluster, or its key block is damaged)"
		}
	case EncryptionPassphrase:
		for _, id := range c.identities {
			if _, scrypt := id.(*age.ScryptIdentity); scrypt {
				ids = append(ids, id)
			}
		}
		missing = "object is encrypted with a passphrase; configure the passphrase"
		wrong = func() string { return "wrong passphrase for this object" }
	default:
		for _, id := range c.identities {
			if _, scrypt := id.(*age.ScryptIdentity); !scrypt {
				ids = append(ids, id)
			}
		}
		missing = ErrNoIdentity.Error()
		wrong = func() string {
			return fmt.Sprintf("%s (the object was sealed to other recipients; check --identity, or the object's key block is damaged; configured identities: %s)",
				ErrWrongKey, strings.Join(c.idFPs, ", "))
		}
	}
	if len(ids) == 0 {
		return nil, &keyError{missing, ErrNoIdentity}
	}
	ar, err := age.Decrypt(body, ids...)
	if err == nil {
		return ar, nil
	}
	var noMatch *age.NoIdentityMatchError
	switch {
	case src.err != nil:
		return nil, fmt.Errorf("read object: %w", src.err)
	case errors.As(err, &noMatch):
		return nil, &keyError{wrong(), ErrWrongKey}
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "unexpected EOF") || strings.Contains(err.Error(), "file is empty"):
		return nil, damaged(true, "in the age header", err)
	}
	return nil, damaged(false, "age header", err)
}

type reader struct {
	c     *Codec
	src   *recorder // the caller's reader: its errors are I/O errors
	inner *recorder // the age reader or checksum reader: its errors are damage
	dec   *zstd.Decoder
	body  io.Reader
	err   error // sticky
	// digest hashes the payload when the header carries want.
	digest hash.Hash
	want   [DigestSize]byte
	// sig strips (and, with auth, checks) the signature trailer of a signed object.
	sig  *sigReader
	name string
	auth bool
}

func (r *reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.body.Read(p)
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		if err := r.checkEnd(); err != nil {
			r.fail(err)
			return n, r.err
		}
		r.release()
		r.err = io.EOF
		return n, io.EOF
	}
	r.fail(r.classify(err))
	return n, r.err
}

// checkEnd makes sure the object ended where it should, and checks its signature.
func (r *reader) checkEnd() error {
	if err := r.checkPayloadEnd(); err != nil {
		return err
	}
	if r.sig == nil {
		return nil
	}
	var err error
	if r.auth {
		err = r.c.verify(r.sig, r.name)
	} else {
		_, err = r.sig.finish()
	}
	if r.src.err != nil {
		return fmt.Errorf("read object: %w", r.src.err)
	}
	return err
}

// checkPayloadEnd makes sure the zstd frame ended exactly where the verified stream ends.
func (r *reader) checkPayloadEnd() error {
	if r.digest != nil {
		var got [DigestSize]byte
		if !bytes.Equal(r.digest.Sum(got[:0]), r.want[:]) {
			return damaged(false, "payload does not match the SHA-256 in the header", nil)
		}
	}
	if r.dec == nil {
		return nil // body is inner, whose EOF is already verified
	}
	var b [1]byte
	for {
		n, err := r.inner.Read(b[:])
		if n > 0 {
			return damaged(false, "trailing data after the zstd frame", nil)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return r.classify(err)
		}
	}
}

// classify turns an error seen while decoding into the most precise error: the caller's
// I/O error, the integrity error of the age or checksum layer, or zstd's own.
func (r *reader) classify(err error) error {
	if r.src.err != nil {
		return fmt.Errorf("read object: %w", r.src.err)
	}
	if r.inner.err != nil {
		err = r.inner.err
	}
	switch {
	case errors.Is(err, ErrCorrupt):
		return err
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return damaged(true, "", io.ErrUnexpectedEOF)
	case r.inner.err != nil && strings.Contains(err.Error(), "authenticate"):
		return damaged(false, "authentication failed, the object was modified or truncated", err)
	case r.inner.err != nil:
		return damaged(false, "", err)
	}
	return damaged(false, "zstd", err)
}

func (r *reader) fail(err error) {
	r.err = err
	r.dec = nil // its state is unknown: let it go
}

func (r *reader) release() {
	if r.dec != nil {
		r.c.putDecoder(r.dec)
		r.dec = nil
	}
	r.body = nil
}

// Close releases the reader's pooled resources. It does not close the underlying reader.
func (r *reader) Close() error {
	r.release()
	if r.err == nil || r.err == io.EOF {
		r.err = errReaderClosed
	}
	return nil
}

// recorder remembers the first error other than io.EOF its reader returned.
type recorder struct {
	r   io.Reader
	err error
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

const trailerSize = 4

// crcReader returns its source minus the 4-byte trailer, and returns io.EOF only when the
// trailer matches the CRC-32C of everything before it.
type crcReader struct {
	src        io.Reader
	crc        uint32
	buf        []byte
	start, end int
	eof        bool
	err        error
}

func newCRCReader(src io.Reader, header []byte) *crcReader {
	return &crcReader{src: src, crc: crc32.Update(0, castagnoli, header), buf: make([]byte, 64<<10)}
}

func (c *crcReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for c.end-c.start <= trailerSize && !c.eof {
		if c.start > 0 {
			c.end = copy(c.buf, c.buf[c.start:c.end])
			c.start = 0
		}
		n, err := c.src.Read(c.buf[c.end:])
		c.end += n
		if err == io.EOF {
			c.eof = true
		} else if err != nil {
			c.err = err
			return 0, err
		}
	}
	if avail := c.end - c.start - trailerSize; avail > 0 {
		n := copy(p, c.buf[c.start:c.start+min(avail, len(p))])
		c.crc = crc32.Update(c.crc, castagnoli, c.buf[c.start:c.start+n])
		c.start += n
		return n, nil
	}
	switch {
	case c.end-c.start < trailerSize:
		c.err = damaged(true, "no checksum trailer", io.ErrUnexpectedEOF)
	case binary.BigEndian.Uint32(c.buf[c.start:c.end]) != c.crc:
		c.err = damaged(false, "checksum mismatch (the object was truncated, modified or has trailing data)", nil)
	default:
		c.err = io.EOF
	}
	return 0, c.err
}
