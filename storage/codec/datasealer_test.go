package codec

import (
	"bytes"
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
