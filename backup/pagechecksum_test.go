package backup

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// pageChecksumReference is PostgreSQL's checksum_impl.h written as plainly as possible: the
// optimised pageChecksum must give the same value for every page.
func pageChecksumReference(page []byte, blkno uint32) uint16 {
	sums := checksumBaseOffsets
	for row := 0; row < pageSize/(4*32); row++ {
		for j := 0; j < 32; j++ {
			v := binary.LittleEndian.Uint32(page[4*(row*32+j):])
			if row == 0 && j == 2 {
				v &^= 0xFFFF
			}
			t := sums[j] ^ v
			sums[j] = t*fnvPrime ^ t>>17
		}
	}
	var r uint32
	for j := 0; j < 32; j++ {
		for k := 0; k < 2; k++ {
			t := sums[j]
			sums[j] = t*fnvPrime ^ t>>17
		}
		r ^= sums[j]
	}
	return uint16((r^blkno)%65535 + 1)
}

func TestPageChecksumMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	page := make([]byte, pageSize)
	for i := range 2000 {
		for j := range page {
			page[j] = byte(rng.Uint32())
		}
		if i%3 == 0 { // sparse pages as well as random ones
			clear(page[64:])
			page[rng.IntN(pageSize)] = byte(i)
		}
		blk := rng.Uint32()
		want := pageChecksumReference(page, blk)
		if got := pageChecksum(page, blk); got != want {
			t.Fatalf("page %d block %d: checksum %#x, reference %#x", i, blk, got, want)
		}
		// The portable loop too, where pageChecksum runs on AVX2.
		r := pageSumsGeneric((*[pageSize]byte)(page)) ^ blk
		if got := uint16(r%65535 + 1); got != want {
			t.Fatalf("page %d block %d: portable checksum %#x, reference %#x", i, blk, got, want)
		}
	}
}

// BenchmarkPageChecksum: "avx2" is what backups run where the CPU has it, "portable" the loop
// for other machines.
func BenchmarkPageChecksum(b *testing.B) {
	page := make([]byte, pageSize)
	for j := range page {
		page[j] = byte(j * 7)
	}
	b.Run("avx2", func(b *testing.B) {
		if !useAVX2 {
			b.Skip("no AVX2 here")
		}
		b.SetBytes(pageSize)
		for b.Loop() {
			pageChecksum(page, 12345)
		}
	})
	b.Run("portable", func(b *testing.B) {
		b.SetBytes(pageSize)
		for b.Loop() {
			pageSumsGeneric((*[pageSize]byte)(page))
		}
	})
}
