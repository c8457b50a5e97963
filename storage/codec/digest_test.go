package codec

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
)

func TestDigestTravelsInTheClearHeaderAndIsChecked(t *testing.T) {
	id, rcpt, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	configs := map[string]Config{
		"zstd+age":  {Encryption: "age", Recipients: []string{rcpt}, Identities: []string{id}},
		"none+none": {Compression: "none", Encryption: "none"},
		"zstd+none": {Encryption: "none"},
		"none+age":  {Compression: "none", Encryption: "age", Recipients: []string{rcpt}, Identities: []string{id}},
	}
	plain := bytes.Repeat([]byte("wal segment bytes "), 5000)
	for name, cfg := range configs {
		t.Run(name, func(t *testing.T) {
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			sealed, digest, err := c.SealDigest(plain)
			if err != nil {
				t.Fatal(err)
			}
			if digest != sha256.Sum256(plain) {
				t.Fatal("digest is not the payload's SHA-256")
			}
			// A writer without any identity can read the digest from the clear header.
			h, err := ReadHeader(bytes.NewReader(sealed[:MaxHeaderSize]))
			if err != nil || !h.HasDigest || h.Digest != digest {
				t.Fatalf("ReadHeader: %+v, %v", h, err)
			}
			got, err := c.Open(sealed)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("open: %v (equal %v)", err, bytes.Equal(got, plain))
			}
			// Changing the clear digest is detected (authenticated copy or checksum).
			bad := bytes.Clone(sealed)
			bad[HeaderSize+3] ^= 0x40
			if _, err := c.Open(bad); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("tampered digest: got %v, want ErrCorrupt", err)
			}
			// A header cut inside the digest is truncation.
			if _, err := ReadHeader(bytes.NewReader(sealed[:HeaderSize+5])); !errors.Is(err, ErrTruncated) {
				t.Fatalf("short digest: got %v", err)
			}
		})
	}
}

func TestDigestMismatchWithPayloadIsCorrupt(t *testing.T) {
	c, err := New(Config{Compression: "none", Encryption: "none"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := c.NewWriterDigest(&buf, sha256.Sum256([]byte("something else")))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("payload"))
	w.Close()
	if _, err := c.Open(buf.Bytes()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("got %v, want ErrCorrupt", err)
	}
}

func TestStoredWriterSkipsCompressionAndReadsBack(t *testing.T) {
	id, rcpt, _ := GenerateIdentity()
	c, err := New(Config{Encryption: "age", Recipients: []string{rcpt}, Identities: []string{id}})
	if err != nil {
		t.Fatal(err)
	}
	plain := bytes.Repeat([]byte("x"), 100000)
	var buf bytes.Buffer
	if _, err := c.SealAll(&buf, plain, true, nil); err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(bytes.NewReader(buf.Bytes()))
	if err != nil || h.Compression != CompressionNone || h.Encryption != EncryptionAge {
		t.Fatalf("header %+v %v", h, err)
	}
	if buf.Len() < len(plain) {
		t.Fatalf("stored object is %d bytes: it was compressed", buf.Len())
	}
	got, err := c.Open(buf.Bytes())
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open: %v", err)
	}
}
