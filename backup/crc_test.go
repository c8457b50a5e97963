package backup

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// Combining the CRCs of pieces gives the CRC of the whole, for any split.
func TestExtentsCRCEqualsTheWholeFileCRC(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 300_000)
	for i := range data {
		data[i] = byte(rng.IntN(256))
	}
	for trial := range 200 {
		n := rng.IntN(len(data) + 1)
		if trial%7 == 0 {
			n %= 5000 // many one-byte pieces
		}
		var extents []Extent
		for off := 0; off < n; {
			l := min(n-off, 1+rng.IntN(70_000))
			if trial%7 == 0 {
				l = min(n-off, 1)
			}
			extents = append(extents, Extent{Length: int64(l), CRC: crc32.Checksum(data[off:off+l], castagnoli)})
			off += l
		}
		if got, want := extentsCRC(extents), crc32.Checksum(data[:n], castagnoli); got != want {
			t.Fatalf("trial %d, %d bytes in %d pieces: combined %08x, want %08x", trial, n, len(extents), got, want)
		}
	}
	if extentsCRC(nil) != 0 {
		t.Fatal("an empty file's CRC is not 0")
	}
}
