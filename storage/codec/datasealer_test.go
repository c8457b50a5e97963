package codec

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// A DataSealer is reused from object to object: every object must read back whole, with
// the header asked for, whatever the objects before it were.
func TestDataSealerRoundTripsWhenReused(t *testing.T) {
	payloads := []struct {
		name string
		data []byte
	}{
		{"4MiBPgLike", pgLikeData(4<<20, 4)},
		{"0B", nil},
		{"1MiBRandom", randomData(1<<20, 3)},
		{"1B", []byte{0x42}},
		{"9MiBPgLike", pgLikeData(9<<20, 5)},
		{"64KiBPgLike", pgLikeData(64<<10, 6)},
		{"4MiBPgLikeAgain", pgLikeData(4<<20, 7)},
	}
	forEachCombo(t, func(t *testing.T, c *Codec) {
		s, err := c.NewDataSealer()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for _, p := range payloads {
			for _, stored := range []bool{false, true} {
				var buf bytes.Buffer
				if err := s.Seal(&buf, p.data, stored); err != nil {
					t.Fatalf("%s stored=%v: %v", p.name, stored, err)
				}
				h, err := ParseHeader(buf.Bytes())
				if err != nil {
					t.Fatalf("%s: header: %v", p.name, err)
				}
				want := c.Header()
				if stored {
					want.Compression = CompressionNone
				}
				if h != want {
					t.Fatalf("%s stored=%v: header %+v, want %+v", p.name, stored, h, want)
				}
				got, err := open(c, buf.Bytes())
				if err != nil || !bytes.Equal(got, p.data) {
					t.Fatalf("%s stored=%v: round trip: %d bytes in, %d out, %v", p.name, stored, len(p.data), len(got), err)
				}
				if h.Compression == CompressionZstd && len(p.data) >= 4<<20 {
					// The smaller window must not cost size on page-like data.
					streamed := seal(t, c, p.data)
					if buf.Len() > len(streamed)+len(streamed)/50 {
						t.Errorf("%s: DataSealer made %d bytes, the streaming writer %d", p.name, buf.Len(), len(streamed))
					}
				}
			}
		}
	})
}

// Objects from a DataSealer declare a window of at most dataZstdWindow at the default
// level, so that readers need less memory for them; Seal's objects too. Neither carries a zstd
// content checksum.
func TestDataSealerWindow(t *testing.T) {
	c := mustNew(t, testConfig("zstd", "none"))
	s, err := c.NewDataSealer()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	payload := pgLikeData(4<<20, 8)
	var buf bytes.Buffer
	if err := s.Seal(&buf, payload, false); err != nil {
		t.Fatal(err)
	}
	small, err := c.Seal(payload)
	if err != nil {
		t.Fatal(err)
	}
	for name, obj := range map[string][]byte{"DataSealer": buf.Bytes(), "Seal": small} {
		var zh zstd.Header
		if err := zh.Decode(obj[HeaderSize:]); err != nil {
			t.Fatalf("%s: zstd frame header: %v", name, err)
		}
		if zh.WindowSize == 0 || zh.WindowSize > dataZstdWindow {
			t.Errorf("%s: window %d, want 1..%d", name, zh.WindowSize, dataZstdWindow)
		}
		// Objects sealed whole leave the content checksum out: the envelope covers the frame.
		if zh.HasCheckSum {
			t.Errorf("%s: the zstd frame has a content checksum", name)
		}
	}
}

// Both zstd encoders write frames the one reader opens, at the levels users pick, with the
// window and checksum rules of TestDataSealerWindow; the C encoder, at the same level, makes
// objects no larger than the Go encoder's (beyond a small margin) on page-like data.
func TestDataSealerEncodersWriteFramesTheReaderReads(t *testing.T) {
	mixed := mixedPages(2<<20, 11) // incompressible values inline
	payloads := map[string][]byte{"pgLike": pgLikeData(4<<20, 12), "mixed": mixed, "random": randomData(1<<20, 13), "tiny": []byte("x")}
	encoders := []string{EncoderGo, EncoderC}
	if !haveCZstd {
		encoders = encoders[:1]
		if _, err := New(Config{Compression: "zstd", Encryption: "none", Encoder: EncoderC}); !errors.Is(err, ErrConfig) {
			t.Errorf("encoder libzstd without cgo: %v, want a configuration error", err)
		}
	}
	for _, level := range []int{1, 3, 9} {
		sizes := map[string]map[string]int{}
		for _, encoder := range encoders {
			cfg := testConfig("zstd", "age")
			cfg.Level, cfg.Encoder = level, encoder
			c := mustNew(t, cfg)
			if got := c.EncoderName(); got != encoder {
				t.Fatalf("EncoderName %q, want %q", got, encoder)
			}
			s, err := c.NewDataSealer()
			if err != nil {
				t.Fatal(err)
			}
			sizes[encoder] = map[string]int{}
			for name, p := range payloads {
				var buf bytes.Buffer
				if err := s.Seal(&buf, p, false); err != nil {
					t.Fatalf("%s level %d %s: %v", encoder, level, name, err)
				}
				got, err := open(c, buf.Bytes())
				if err != nil || !bytes.Equal(got, p) {
					t.Fatalf("%s level %d %s: round trip: %d bytes in, %d out, %v", encoder, level, name, len(p), len(got), err)
				}
				sizes[encoder][name] = buf.Len()
			}
			s.Close()
		}
		t.Logf("level %d: %v", level, sizes)
		if len(encoders) == 2 && level <= 3 {
			for _, name := range []string{"pgLike", "mixed"} {
				if c, g := sizes[EncoderC][name], sizes[EncoderGo][name]; c > g+g/50 {
					t.Errorf("level %d %s: libzstd made %d bytes, Go %d", level, name, c, g)
				}
			}
		}
	}
}

func TestUnknownEncoderIsAConfigError(t *testing.T) {
	_, err := New(Config{Compression: "zstd", Encryption: "none", Encoder: "lz4"})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), `"lz4"`) {
		t.Fatalf("got %v, want a configuration error naming the encoder", err)
	}
}
