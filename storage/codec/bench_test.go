package codec

import (
	"bytes"
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
