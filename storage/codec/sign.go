package codec

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
)

// Write authentication: age recipients are public, so anyone who can write to the bucket
// can seal an object that every reader decrypts. A repository may therefore have a write
// key, an Ed25519 key pair: writers (backup and WAL hosts) hold the signing key, readers
// the public verify key, which is no secret and lets no one sign. See the package doc for
// the trailer format.

// ErrUnauthenticated: the object is not signed, or not by a configured verify key, or its
// signature does not cover these bytes under this name. Errors wrapping it name the reason.
var ErrUnauthenticated = errors.New("object is not authenticated by the repository's write key")

// FlagSigned in the header's flags byte says that the object ends with a SignatureSize-byte
// signature trailer. It is left out of the authenticated header copy and of the CRC-32C
// trailer, so that an existing object can be signed later without being decrypted
// (`pgharbor repo sign-existing`); the signature itself covers the header as stored.
const FlagSigned = 0x02

// KeyIDSize is the length of a verify key's id in the signature trailer.
const KeyIDSize = 8

// SignatureSize is the length of the signature trailer: the signer's key id, then the
// Ed25519 signature.
const SignatureSize = KeyIDSize + ed25519.SignatureSize

// Key encodings. The checksum catches a key pasted with a typo before it is used.
const (
	verifyKeyPrefix  = "pgharbor-verify1"
	signingKeyPrefix = "PGHARBOR-SIGN-KEY-1"
	keyChecksumSize  = 4
	signatureDomain  = "pgharbor signed object v1\x00"
	keyIDDomain      = "pgharbor verify key id\x00"
)

var (
	lowerB32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
	upperB32 = base32.StdEncoding.WithPadding(base32.NoPadding)
)

func keyChecksum(prefix string, key []byte) []byte {
	sum := sha256.Sum256(append([]byte(prefix), key...))
	return sum[:keyChecksumSize]
}

func encodeKey(prefix string, enc *base32.Encoding, key []byte) string {
	return prefix + enc.EncodeToString(append(append([]byte(nil), key...), keyChecksum(prefix, key)...))
}

func decodeKey(prefix string, enc *base32.Encoding, s string, size int) ([]byte, error) {
	raw, err := enc.DecodeString(strings.TrimPrefix(s, prefix))
	if err != nil || len(raw) != size+keyChecksumSize {
		return nil, errors.New("is malformed")
	}
	key, sum := raw[:size], raw[size:]
	if !bytes.Equal(sum, keyChecksum(prefix, key)) {
		return nil, errors.New("has a bad checksum (mistyped or truncated?)")
	}
	return key, nil
}

// GenerateSigningKey makes a new write key: signing is the secret "PGHARBOR-SIGN-KEY-1…"
// string for writer hosts, verify the public "pgharbor-verify1…" one for readers.
func GenerateSigningKey() (signing, verify string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate signing key: %w", err)
	}
	return encodeKey(signingKeyPrefix, upperB32, priv.Seed()), encodeKey(verifyKeyPrefix, lowerB32, pub), nil
}

func parseSigningKey(s string) (ed25519.PrivateKey, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(strings.ToUpper(s), signingKeyPrefix) {
		return nil, fmt.Errorf("signing key is not a pgharbor signing key: it must start with %s", signingKeyPrefix)
	}
	seed, err := decodeKey(signingKeyPrefix, upperB32, strings.ToUpper(s), ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("signing key %w", err)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

func parseVerifyKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	switch {
	case strings.HasPrefix(strings.ToUpper(s), signingKeyPrefix):
		// Never echo it: a secret key in the wrong place.
		return nil, errors.New("is a signing key (PGHARBOR-SIGN-KEY-…), not a verify key: keep it on writer hosts only and configure its pgharbor-verify1… key here")
	case !strings.HasPrefix(strings.ToLower(s), verifyKeyPrefix):
		return nil, fmt.Errorf("%s is not a pgharbor verify key: it must start with %s", shorten(s), verifyKeyPrefix)
	}
	pub, err := decodeKey(verifyKeyPrefix, lowerB32, strings.ToLower(s), ed25519.PublicKeySize)
	if err != nil {
		return nil, fmt.Errorf("%s %w", shorten(s), err)
	}
	return ed25519.PublicKey(pub), nil
}

// VerifyKeyOf returns the public verify key of a signing key.
func VerifyKeyOf(signing string) (string, error) {
	priv, err := parseSigningKey(signing)
	if err != nil {
		return "", err
	}
	return encodeKey(verifyKeyPrefix, lowerB32, priv.Public().(ed25519.PublicKey)), nil
}

// VerifyKeyID returns the hex id of a verify key, as signature trailers and messages name it.
func VerifyKeyID(verify string) (string, error) {
	pub, err := parseVerifyKey(verify)
	if err != nil {
		return "", err
	}
	id := keyID(pub)
	return hex.EncodeToString(id[:]), nil
}

func keyID(pub ed25519.PublicKey) [KeyIDSize]byte {
	sum := sha256.Sum256(append([]byte(keyIDDomain), pub...))
	var id [KeyIDSize]byte
	copy(id[:], sum[:])
	return id
}

// LoadSigningKey reads a signing key file (one key; blank lines and # comments allowed).
// Checking the file's permissions is the caller's business, as for identity files.
func LoadSigningKey(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("signing key file: %w", err)
	}
	var key string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if key != "" {
			return "", fmt.Errorf("signing key file %s holds more than one key", path)
		}
		key = line
	}
	if key == "" {
		return "", fmt.Errorf("signing key file %s holds no key", path)
	}
	if _, err := parseSigningKey(key); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// signedMessage is what the Ed25519 signature covers: a domain tag, the object's name (its
// key in the repository, so that a signed object moved to another name does not verify),
// and the SHA-256 of the object's bytes before the trailer.
func signedMessage(name string, sum []byte) []byte {
	m := make([]byte, 0, len(signatureDomain)+4+len(name)+len(sum))
	m = append(m, signatureDomain...)
	m = binary.BigEndian.AppendUint32(m, uint32(len(name)))
	m = append(m, name...)
	return append(m, sum...)
}

// Signs reports whether the codec holds a signing key.
func (c *Codec) Signs() bool { return c.signer != nil }

// Verifies reports whether the codec holds verify keys, so that NewReaderFor authenticates.
func (c *Codec) Verifies() bool { return len(c.verifiers) > 0 }

// VerifyKeyIDs returns the ids of the configured verify keys.
func (c *Codec) VerifyKeyIDs() []string {
	out := make([]string, 0, len(c.verifiers))
	for id := range c.verifiers {
		out = append(out, hex.EncodeToString(id[:]))
	}
	return out
}

// Sign returns sealed, a whole object from Seal, SealDigest or SealAll, signed for name
// with the codec's signing key. It sets the header's FlagSigned in place and appends the
// trailer, so the result may share sealed's array. An object that is already signed gets
// its old signature replaced. Signing needs no identity: the payload is not decoded.
func (c *Codec) Sign(sealed []byte, name string) ([]byte, error) {
	if c.signer == nil {
		return nil, fmt.Errorf("%w: no signing key configured", ErrConfig)
	}
	h, err := ParseHeader(sealed[:min(len(sealed), MaxHeaderSize)])
	if err != nil {
		return nil, err
	}
	body := sealed
	if h.Signed {
		if len(sealed) < h.Size()+SignatureSize {
			return nil, damaged(true, "signed object shorter than its signature", nil)
		}
		body = sealed[:len(sealed)-SignatureSize]
	}
	body[flagOffset] |= FlagSigned
	sum := sha256.Sum256(body)
	return append(body, c.signatureTrailer(name, sum[:])...), nil
}

// signatureTrailer is what follows a signed object whose bytes, FlagSigned set, hash to sum.
func (c *Codec) signatureTrailer(name string, sum []byte) []byte {
	id := keyID(c.signer.Public().(ed25519.PublicKey))
	return append(id[:], ed25519.Sign(c.signer, signedMessage(name, sum))...)
}

// ObjectSigner signs a sealed object as it is written through it, for objects too large to
// hold whole: what it passes to its destination, followed by the trailer Finish writes, is
// exactly what Sign returns for the same sealed bytes.
type ObjectSigner struct {
	c    *Codec
	name string
	dst  io.Writer
	sum  hash.Hash
	n    int64 // bytes passed so far
}

// NewObjectSigner returns a signer of the new (not yet signed) object to be stored under
// name, writing to dst.
func (c *Codec) NewObjectSigner(dst io.Writer, name string) (*ObjectSigner, error) {
	if c.signer == nil {
		return nil, fmt.Errorf("%w: no signing key configured", ErrConfig)
	}
	return &ObjectSigner{c: c, name: name, dst: dst, sum: sha256.New()}, nil
}

// flagOffset is the header byte that carries FlagSigned.
const flagOffset = 7

// Write passes p on, with FlagSigned set in the header, and hashes it.
func (s *ObjectSigner) Write(p []byte) (int, error) {
	out := p
	if s.n <= flagOffset && s.n+int64(len(p)) > flagOffset {
		out = bytes.Clone(p)
		out[flagOffset-s.n] |= FlagSigned
	}
	s.sum.Write(out)
	n, err := s.dst.Write(out)
	s.n += int64(n)
	return n, err
}

// Finish writes the signature trailer. The object must be whole by then.
func (s *ObjectSigner) Finish() error {
	if s.n <= flagOffset {
		return damaged(true, "object shorter than its header", nil)
	}
	_, err := s.dst.Write(s.c.signatureTrailer(s.name, s.sum.Sum(nil)))
	return err
}

// sigReader passes its source on minus the SignatureSize-byte trailer, hashing what it
// passes; once the source ends, trailer holds the trailer.
type sigReader struct {
	src        io.Reader
	sum        hash.Hash
	buf        []byte
	start, end int
	eof        bool
	err        error
	trailer    []byte
}

func newSigReader(src io.Reader, header []byte) *sigReader {
	s := &sigReader{src: src, sum: sha256.New(), buf: make([]byte, 64<<10)}
	s.sum.Write(header)
	return s
}

func (s *sigReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for s.end-s.start <= SignatureSize && !s.eof {
		if s.start > 0 {
			s.end = copy(s.buf, s.buf[s.start:s.end])
			s.start = 0
		}
		n, err := s.src.Read(s.buf[s.end:])
		s.end += n
		if err == io.EOF {
			s.eof = true
		} else if err != nil {
			s.err = err
			return 0, err
		}
	}
	if avail := s.end - s.start - SignatureSize; avail > 0 {
		n := copy(p, s.buf[s.start:s.start+min(avail, len(p))])
		s.sum.Write(s.buf[s.start : s.start+n])
		s.start += n
		return n, nil
	}
	if s.end-s.start < SignatureSize {
		s.err = damaged(true, "no signature trailer", io.ErrUnexpectedEOF)
		return 0, s.err
	}
	s.trailer = s.buf[s.start:s.end]
	s.err = io.EOF
	return 0, io.EOF
}

// finish reads what the layer above left (nothing, for an intact object) and returns the
// trailer.
func (s *sigReader) finish() ([]byte, error) {
	var b [1]byte
	for {
		n, err := s.Read(b[:])
		if n > 0 {
			return nil, damaged(false, "trailing data before the signature", nil)
		}
		if err == io.EOF {
			return s.trailer, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// verify checks the trailer against the bytes hashed, for name.
func (c *Codec) verify(s *sigReader, name string) error {
	trailer, err := s.finish()
	if err != nil {
		return err
	}
	var id [KeyIDSize]byte
	copy(id[:], trailer)
	pub, ok := c.verifiers[id]
	if !ok {
		return fmt.Errorf("%w: signed by key %x, which is not a configured verify key (configured: %s)", ErrUnauthenticated, id, strings.Join(c.VerifyKeyIDs(), ", "))
	}
	if !ed25519.Verify(pub, signedMessage(name, s.sum.Sum(nil)), trailer[KeyIDSize:]) {
		return fmt.Errorf("%w: the signature does not match: the object was modified after signing, or it was signed under another name than %s", ErrUnauthenticated, name)
	}
	return nil
}

// CheckSignature checks the signature trailer of a whole object stored under name against
// the configured verify keys and the codec's own signing key, without decoding the payload.
// An unsigned object yields an error wrapping ErrUnauthenticated.
func (c *Codec) CheckSignature(sealed []byte, name string) error {
	h, err := ParseHeader(sealed[:min(len(sealed), MaxHeaderSize)])
	if err != nil {
		return err
	}
	if !h.Signed {
		return fmt.Errorf("%w: the object carries no signature", ErrUnauthenticated)
	}
	if len(sealed) < h.Size()+SignatureSize {
		return damaged(true, "signed object shorter than its signature", nil)
	}
	body, trailer := sealed[:len(sealed)-SignatureSize], sealed[len(sealed)-SignatureSize:]
	var id [KeyIDSize]byte
	copy(id[:], trailer)
	pub, ok := c.verifiers[id]
	if !ok && c.signer != nil {
		if own := c.signer.Public().(ed25519.PublicKey); keyID(own) == id {
			pub, ok = own, true
		}
	}
	if !ok {
		return fmt.Errorf("%w: signed by key %x, which is not a configured verify key", ErrUnauthenticated, id)
	}
	sum := sha256.Sum256(body)
	if !ed25519.Verify(pub, signedMessage(name, sum[:]), trailer[KeyIDSize:]) {
		return fmt.Errorf("%w: the signature does not match: the object was modified after signing, or it was signed under another name than %s", ErrUnauthenticated, name)
	}
	return nil
}
