package codec

import (
	"bytes"
	"fmt"
	"io"
	"testing"
)

// benchPayload is 8 MiB: alternating 1 MiB of incompressible bytes (already compressed
// TOAST, images) and 1 MiB of heap pages like pgbench_accounts.
func benchPayload() []byte {
	var out []byte
	for i := range 4 {
		out = append(out, randomData(1<<20, uint64(100+i))...)
		out = append(out, pgLikeData(1<<20, uint64(200+i))...)
	}
	return out
}

func benchWriter(b *testing.B, cfg Config) {
	c := mustNew(b, cfg)
	payload := benchPayload()
	var sink bytes.Buffer
	sink.Grow(len(payload) + 1<<20)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		sink.Reset()
		w, err := c.NewWriter(&sink)
		if err != nil {
			b.Fatal(err)
		}
		// 1 MiB writes, as a bundler hands over file data.
		for p := payload; len(p) > 0; p = p[min(len(p), 1<<20):] {
			if _, err := w.Write(p[:min(len(p), 1<<20)]); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(sink.Len())/float64(len(payload)), "ratio")
}

func BenchmarkWriterZstdAge(b *testing.B) {
	benchWriter(b, Config{Encryption: "age", Recipients: []string{testRecipientA}})
}

func BenchmarkWriterZstd(b *testing.B) {
	benchWriter(b, Config{Encryption: "none"})
}

func BenchmarkWriterNoneAge(b *testing.B) {
	benchWriter(b, Config{Compression: "none", Encryption: "age", Recipients: []string{testRecipientA}})
}

func BenchmarkWriterZstdLevel1Age(b *testing.B) {
	benchWriter(b, Config{Level: 1, Encryption: "age", Recipients: []string{testRecipientA}})
}

func benchReader(b *testing.B, cfg Config) {
	c := mustNew(b, cfg)
	payload := benchPayload()
	sealed := seal(b, c, payload)
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r, err := c.NewReader(bytes.NewReader(sealed))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, r, buf)
		if err != nil || n != int64(len(payload)) {
			b.Fatalf("read %d bytes: %v", n, err)
		}
		r.Close()
	}
}

func BenchmarkReaderZstdAge(b *testing.B) {
	benchReader(b, Config{Encryption: "age", Recipients: []string{testRecipientA}, Identities: []string{testIdentityA}})
}

func BenchmarkReaderZstd(b *testing.B) {
	benchReader(b, Config{Encryption: "none"})
}

// BenchmarkSealPassphraseDefaultWorkFactor shows the per-object cost of passphrase mode
// at age's default scrypt work factor (one scrypt per object written).
func BenchmarkSealPassphraseDefaultWorkFactor(b *testing.B) {
	c := mustNew(b, Config{Encryption: "passphrase", Passphrase: testPassphrase})
	for b.Loop() {
		if _, err := c.Seal([]byte("small manifest")); err != nil {
			b.Fatal(err)
		}
	}
}

// benchSegment is a 16 MiB WAL-sized payload of heap-like pages.
func benchSegment() []byte { return pgLikeData(16<<20, 300) }

// BenchmarkSealDigestSignSegment is what `wal push` does per segment with the write key:
// seal with the digest, then sign (the signature alone is BenchmarkSignSealedSegment).
func BenchmarkSealDigestSignSegment(b *testing.B) {
	sk, _, err := GenerateSigningKey()
	if err != nil {
		b.Fatal(err)
	}
	c := mustNew(b, Config{Level: 1, Encryption: "age", Recipients: []string{testRecipientA}, SigningKey: sk})
	payload := benchSegment()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		sealed, _, err := c.SealDigest(payload)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Sign(sealed, "main/wal/0000000100000000/000000010000000000000001"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignSealedSegment(b *testing.B) {
	sk, _, err := GenerateSigningKey()
	if err != nil {
		b.Fatal(err)
	}
	c := mustNew(b, Config{Level: 1, Encryption: "age", Recipients: []string{testRecipientA}, SigningKey: sk})
	payload := benchSegment()
	sealed, _, err := c.SealDigest(payload)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := c.Sign(sealed, "main/wal/0000000100000000/000000010000000000000001"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(sealed)), "sealed-bytes")
}

// benchOpenSegment reads a sealed segment as `wal fetch` does, with or without checking its
// signature.
func benchOpenSegment(b *testing.B, verify bool) {
	sk, vk, err := GenerateSigningKey()
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{Level: 1, Encryption: "age", Recipients: []string{testRecipientA}, Identities: []string{testIdentityA}, SigningKey: sk}
	if verify {
		cfg.VerifyKeys = []string{vk}
	}
	c := mustNew(b, cfg)
	payload := benchSegment()
	name := "main/wal/0000000100000000/000000010000000000000001"
	sealed, _, err := c.SealDigest(payload)
	if err != nil {
		b.Fatal(err)
	}
	if sealed, err = c.Sign(sealed, name); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		r, err := c.NewReaderFor(bytes.NewReader(sealed), name)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}

func BenchmarkOpenSegmentVerified(b *testing.B)   { benchOpenSegment(b, true) }
func BenchmarkOpenSegmentUnverified(b *testing.B) { benchOpenSegment(b, false) }

// benchEncoders are the zstd encoders this binary has.
func benchEncoders() []string {
	if haveCZstd {
		return []string{EncoderGo, EncoderC}
	}
	return []string{EncoderGo}
}

// mixedPages is n bytes of heap-like pages with 1 KiB of random bytes inline in each, like
// the backup benchmark's inline data set.
func mixedPages(n int, seed uint64) []byte {
	data := pgLikeData(n, seed)
	rnd := randomData(n/8+1024, seed)
	for off := 0; off+8192 <= len(data); off += 8192 {
		copy(data[off+4096:off+5120], rnd[off/8:])
	}
	return data
}

// BenchmarkDataSealerBundle seals 4 MiB bundles as a backup's sealers do, with each zstd
// encoder at levels 1 and 3; "ratio" is the payload's size over the sealed size.
func BenchmarkDataSealerBundle(b *testing.B) {
	payload := mixedPages(4<<20, 400)
	for _, encoder := range benchEncoders() {
		for _, level := range []int{1, 3} {
			b.Run(fmt.Sprintf("%s/level%d", encoder, level), func(b *testing.B) {
				c := mustNew(b, Config{Level: level, Encoder: encoder, Encryption: "age", Recipients: []string{testRecipientA}})
				s, err := c.NewDataSealer()
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				var buf bytes.Buffer
				b.SetBytes(int64(len(payload)))
				for b.Loop() {
					buf.Reset()
					if err := s.Seal(&buf, payload, SealCompressed); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(len(payload))/float64(buf.Len()), "ratio")
			})
		}
	}
}

// BenchmarkSealDigestSegmentEncoders is a `wal push` seal of one segment at the WAL level
// (1) with each zstd encoder.
func BenchmarkSealDigestSegmentEncoders(b *testing.B) {
	payload := benchSegment()
	for _, encoder := range benchEncoders() {
		b.Run(encoder, func(b *testing.B) {
			c := mustNew(b, Config{Level: 1, Encoder: encoder, Encryption: "age", Recipients: []string{testRecipientA}})
			b.SetBytes(int64(len(payload)))
			var n int
			for b.Loop() {
				sealed, _, err := c.SealDigest(payload)
				if err != nil {
					b.Fatal(err)
				}
				n = len(sealed)
			}
			b.ReportMetric(float64(len(payload))/float64(n), "ratio")
		})
	}
}
