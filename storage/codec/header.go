package codec

import (
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the length of the clear header at the start of every object.
const HeaderSize = 8

// FormatVersion is the envelope version this package writes and reads.
const FormatVersion = 1

// Magic opens every object.
const Magic = "PGHB"

// Compression identifies how the payload inside an object is compressed.
type Compression uint8

// Compression ids as stored in the header.
const (
	CompressionNone Compression = 0
	CompressionZstd Compression = 1
)

func (c Compression) String() string {
	switch c {
	case CompressionNone:
		return "none"
	case CompressionZstd:
		return "zstd"
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// Encryption identifies how an object's body is encrypted.
type Encryption uint8

// Encryption ids as stored in the header.
const (
	EncryptionNone       Encryption = 0
	EncryptionAge        Encryption = 1 // age, X25519 or hybrid post-quantum recipients
	EncryptionPassphrase Encryption = 2 // age, scrypt passphrase
	// EncryptionPassphraseKey: age, X25519 to the repository's data key, which is itself
	// sealed with the passphrase (one scrypt per process instead of one per object).
	EncryptionPassphraseKey Encryption = 3
)

func (e Encryption) String() string {
	switch e {
	case EncryptionNone:
		return "none"
	case EncryptionAge:
		return "age"
	case EncryptionPassphrase, EncryptionPassphraseKey:
		return "passphrase"
	}
	return fmt.Sprintf("encryption(%d)", uint8(e))
}

// FlagDigest in the header's flags byte says that the SHA-256 of the payload follows the
// fixed header in clear (DigestSize bytes). Write-once objects (WAL segments) carry it so a
// host holding only public recipients can tell an identical re-push from a conflicting one.
const FlagDigest = 0x01

// DigestSize is the length of the optional payload digest.
const DigestSize = 32

// MaxHeaderSize is the longest clear header: the fixed part plus the digest.
const MaxHeaderSize = HeaderSize + DigestSize

// Header is the decoded clear header of an object.
type Header struct {
	Version     uint8
	Compression Compression
	Encryption  Encryption
	// HasDigest says Digest holds the SHA-256 of the payload.
	HasDigest bool
	Digest    [DigestSize]byte
	// Signed says the object ends with a signature trailer (FlagSigned).
	Signed bool
}

// Size is the length of the header's encoding.
func (h Header) Size() int {
	if h.HasDigest {
		return MaxHeaderSize
	}
	return HeaderSize
}

// Append appends the encoding of h to b.
func (h Header) Append(b []byte) []byte {
	var flags byte
	if h.HasDigest {
		flags |= FlagDigest
	}
	if h.Signed {
		flags |= FlagSigned
	}
	b = append(b, Magic[0], Magic[1], Magic[2], Magic[3], h.Version, byte(h.Compression), byte(h.Encryption), flags)
	if h.HasDigest {
		b = append(b, h.Digest[:]...)
	}
	return b
}

// ParseHeader decodes the first HeaderSize bytes of an object. Errors wrap ErrUnknownFormat
// (not a pgharbor object, or one from a newer pgharbor) or ErrTruncated.
func ParseHeader(b []byte) (Header, error) {
	if m := min(len(b), len(Magic)); string(b[:m]) != Magic[:m] {
		return Header{}, fmt.Errorf("%w: object does not start with %q (not written by pgharbor?)", ErrUnknownFormat, Magic)
	}
	if len(b) < HeaderSize {
		return Header{}, damaged(true, fmt.Sprintf("header is %d of %d bytes", len(b), HeaderSize), io.ErrUnexpectedEOF)
	}
	h := Header{Version: b[4], Compression: Compression(b[5]), Encryption: Encryption(b[6])}
	if h.Version != FormatVersion {
		return Header{}, fmt.Errorf("%w: envelope version %d (this pgharbor reads version %d; upgrade pgharbor)", ErrUnknownFormat, h.Version, FormatVersion)
	}
	switch h.Compression {
	case CompressionNone, CompressionZstd:
	default:
		return Header{}, fmt.Errorf("%w: unknown compression id %d (upgrade pgharbor?)", ErrUnknownFormat, b[5])
	}
	switch h.Encryption {
	case EncryptionNone, EncryptionAge, EncryptionPassphrase, EncryptionPassphraseKey:
	default:
		return Header{}, fmt.Errorf("%w: unknown encryption id %d (upgrade pgharbor?)", ErrUnknownFormat, b[6])
	}
	if b[7]&^(FlagDigest|FlagSigned) != 0 {
		return Header{}, fmt.Errorf("%w: unknown header flags %#02x (upgrade pgharbor?)", ErrUnknownFormat, b[7])
	}
	h.Signed = b[7]&FlagSigned != 0
	if b[7]&FlagDigest != 0 {
		if len(b) < MaxHeaderSize {
			return Header{}, damaged(true, fmt.Sprintf("header with digest is %d of %d bytes", len(b), MaxHeaderSize), io.ErrUnexpectedEOF)
		}
		h.HasDigest = true
		copy(h.Digest[:], b[HeaderSize:MaxHeaderSize])
	}
	return h, nil
}

// readHeader reads the fixed header and, when its flags say so, the digest.
func readHeader(r io.Reader) ([]byte, Header, error) {
	buf := make([]byte, HeaderSize, MaxHeaderSize)
	n, err := io.ReadFull(r, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, Header{}, err
	}
	buf = buf[:n]
	if n == HeaderSize && buf[7]&FlagDigest != 0 {
		buf = buf[:MaxHeaderSize]
		m, err := io.ReadFull(r, buf[HeaderSize:])
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return nil, Header{}, err
		}
		buf = buf[:HeaderSize+m]
	}
	h, err := ParseHeader(buf)
	return buf, h, err
}

// ReadHeader reads and decodes the header of an object without decoding the body, e.g. to
// tell how an object is sealed without holding its key.
func ReadHeader(r io.Reader) (Header, error) {
	_, h, err := readHeader(r)
	var de *damagedError
	if err != nil && !errors.Is(err, ErrUnknownFormat) && !errors.As(err, &de) {
		return Header{}, fmt.Errorf("read object header: %w", err)
	}
	return h, err
}

// unsignedHeader returns a copy of the header bytes hb with FlagSigned cleared: what the
// authenticated header copy and the CRC-32C trailer cover.
func unsignedHeader(hb []byte) []byte {
	out := append([]byte(nil), hb...)
	if len(out) >= HeaderSize {
		out[7] &^= FlagSigned
	}
	return out
}
