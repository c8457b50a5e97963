package codec

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
)

// An object sealed from the frames a FrameEncoder made of a payload written in pieces, with
// frames ended at arbitrary points, decodes to the payload and carries the SHA-256 SealDigest
// puts in the header for the same payload; each frame sealed alone decodes to its piece.
func TestFrameEncoderFramesDecodeToThePayload(t *testing.T) {
	forEachCombo(t, func(t *testing.T, c *Codec) {
		payload := pgLikeData(3<<20+1234, 7)
		fe, err := c.NewFrameEncoder(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		var sealed []byte
		for round := range 2 { // the second round reuses the encoder and its buffers
			fe.Reset()
			cuts := []int{0, 1, 8192, 100000, 100001, 2 << 20, len(payload)}
			for i := 1; i < len(cuts); i++ {
				piece := payload[cuts[i-1]:cuts[i]]
				start := len(fe.Bytes())
				for off := 0; off < len(piece); off += 7000 {
					if _, err := fe.Write(piece[off:min(off+7000, len(piece))]); err != nil {
						t.Fatal(err)
					}
				}
				if err := fe.EndFrame(); err != nil {
					t.Fatal(err)
				}
				one, err := c.SealCompressed(nil, fe.Bytes()[start:], sha256.Sum256(piece))
				if err != nil {
					t.Fatal(err)
				}
				got, err := c.Open(one)
				if err != nil || !bytes.Equal(got, piece) {
					t.Fatalf("round %d piece %d: %d bytes back, want %d: %v", round, i, len(got), len(piece), err)
				}
			}
			if err := fe.EndFrame(); err != nil { // no open frame: nothing happens
				t.Fatal(err)
			}
			sealed, err = c.SealCompressed(sealed, fe.Bytes(), sha256.Sum256(payload))
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Open(sealed)
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("round %d: whole payload: %d bytes back, want %d: %v", round, len(got), len(payload), err)
			}
			whole, sum, err := c.SealDigest(payload)
			if err != nil {
				t.Fatal(err)
			}
			h1, _ := ParseHeader(whole[:MaxHeaderSize])
			h2, _ := ParseHeader(sealed[:MaxHeaderSize])
			if h1 != h2 || h2.Digest != sum {
				t.Fatalf("headers differ: SealDigest %+v, SealCompressed %+v", h1, h2)
			}
		}
		// A wrong digest is caught by the reader.
		bad, err := c.SealCompressed(nil, fe.Bytes(), sha256.Sum256([]byte("other")))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Open(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("wrong digest: %v, want ErrCorrupt", err)
		}
	})
}
