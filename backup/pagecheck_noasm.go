//go:build !amd64 || purego

package backup

const useAVX2 = false

func pageSumsAVX2(page *[pageSize]byte, offsets *[32]uint32) uint32 { panic("unreachable") }
