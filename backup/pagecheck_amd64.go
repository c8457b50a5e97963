//go:build amd64 && !purego

package backup

import "golang.org/x/sys/cpu"

// useAVX2 says pageSums runs on AVX2: the 32 sums of PostgreSQL's page checksum are
// independent lanes, which is what the algorithm was designed for (four registers of
// eight), where the portable loop goes through them eight at a time in general registers.
var useAVX2 = cpu.X86.HasAVX2

// pageSumsAVX2 is pageSumsGeneric with offsets as the starting sums.
//
//go:noescape
func pageSumsAVX2(page *[pageSize]byte, offsets *[32]uint32) uint32
