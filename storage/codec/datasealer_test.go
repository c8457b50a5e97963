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
		c.denseLevel = 1 // as the backup's default; the combinations' level is 3
		s, err := c.NewDataSealer()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for _, p := range payloads {
			for _, mode := range []SealMode{SealCompressed, SealStored, SealDense} {
				var buf bytes.Buffer
				if err := s.Seal(&buf, p.data, mode); err != nil {
					t.Fatalf("%s mode %d: %v", p.name, mode, err)
				}
				h, err := ParseHeader(buf.Bytes())
				if err != nil {
					t.Fatalf("%s: header: %v", p.name, err)
				}
				want := c.Header()
				if mode == SealStored {
					want.Compression = CompressionNone
				}
				if h != want {
					t.Fatalf("%s mode %d: header %+v, want %+v", p.name, mode, h, want)
				}
				got, err := open(c, buf.Bytes())
				if err != nil || !bytes.Equal(got, p.data) {
					t.Fatalf("%s mode %d: round trip: %d bytes in, %d out, %v", p.name, mode, len(p.data), len(got), err)
				}
				if h.Compression == CompressionZstd && mode == SealCompressed && len(p.data) >= 4<<20 {
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

// A payload sealed dense is compressed at the dense level, exactly as a codec whose level
// is the dense level compresses it, and one sealed normally at the codec's level, in any
// order on one sealer; with both
// levels the same, dense changes nothing. Each encoder kind.
func TestDataSealerDenseLevel(t *testing.T) {
	data := pgLikeData(4<<20, 11)
	// sealWith seals data once per mode, in order, with one DataSealer.
	sealWith := func(t *testing.T, cfg Config, modes ...SealMode) [][]byte {
		t.Helper()
		s, err := mustNew(t, cfg).NewDataSealer()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var out [][]byte
		for _, m := range modes {
			var buf bytes.Buffer
			if err := s.Seal(&buf, data, m); err != nil {
				t.Fatal(err)
			}
			out = append(out, buf.Bytes())
		}
		return out
	}
	for _, enc := range []string{EncoderGo, AutoEncoder()} {
		t.Run(enc, func(t *testing.T) {
			cfg := testConfig("zstd", "none")
			cfg.Encoder = enc
			cfg.Level, cfg.DenseLevel = 3, 1
			one := cfg
			one.Level, one.DenseLevel = 1, 0
			atOne := sealWith(t, one, SealCompressed)[0]
			three := cfg
			three.DenseLevel = 0
			atThree := sealWith(t, three, SealCompressed)[0]
			if bytes.Equal(atOne, atThree) {
				t.Fatalf("levels 1 and 3 made the same %d bytes: the test cannot tell them apart", len(atOne))
			}

			got := sealWith(t, cfg, SealDense, SealCompressed, SealDense, SealCompressed)
			for i, want := range [][]byte{atOne, atThree, atOne, atThree} {
				if !bytes.Equal(got[i], want) {
					t.Errorf("object %d: %d bytes, not the %d bytes of its level", i, len(got[i]), len(want))
				}
				if back, err := open(mustNew(t, cfg), got[i]); err != nil || !bytes.Equal(back, data) {
					t.Errorf("object %d: round trip: %d bytes out, %v", i, len(back), err)
				}
			}
			if got := sealWith(t, three, SealDense)[0]; !bytes.Equal(got, atThree) {
				t.Errorf("with no dense level, a dense object (%d bytes) differs from a normal one (%d bytes)", len(got), len(atThree))
			}
		})
	}
}

// New refuses a dense level it cannot use.
func TestDenseLevelConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		comp  string
		dense int
		want  string
	}{
		{"zstd", 23, "dense zstd level 23 out of range"},
		{"zstd", -1, "dense zstd level -1 out of range"},
		{"none", 1, "dense compression level 1 is set but compression is none"},
	} {
		cfg := testConfig(tc.comp, "none")
		cfg.DenseLevel = tc.dense
		_, err := New(cfg)
		if !errors.Is(err, ErrConfig) || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s dense %d: error %v, want ErrConfig with %q", tc.comp, tc.dense, err, tc.want)
		}
	}
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
	if err := s.Seal(&buf, payload, SealCompressed); err != nil {
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
				if err := s.Seal(&buf, p, SealCompressed); err != nil {
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
