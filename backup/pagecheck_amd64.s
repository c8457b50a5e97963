//go:build amd64 && !purego

#include "textflag.h"

// mix sums s (lanes of 32 bits) with t := s: s = t*fnvPrime ^ t>>17 (P holds the prime;
// T is scratch).
#define MIX(s, P, T) \
	VPMULLD P, s, T \
	VPSRLD  $17, s, s \
	VPXOR   T, s, s

// func pageSumsAVX2(page *[8192]byte, offsets *[32]uint32) uint32
TEXT ·pageSumsAVX2(SB), NOSPLIT, $0-20
	MOVQ page+0(FP), SI
	MOVQ offsets+8(FP), DI
	VMOVDQU 0(DI), Y0
	VMOVDQU 32(DI), Y1
	VMOVDQU 64(DI), Y2
	VMOVDQU 96(DI), Y3
	MOVL $16777619, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	MOVQ $64, CX // rows of 32 words

row:
	VPXOR 0(SI), Y0, Y0
	VPXOR 32(SI), Y1, Y1
	VPXOR 64(SI), Y2, Y2
	VPXOR 96(SI), Y3, Y3
	MIX(Y0, Y15, Y4)
	MIX(Y1, Y15, Y5)
	MIX(Y2, Y15, Y6)
	MIX(Y3, Y15, Y7)
	ADDQ $128, SI
	DECQ CX
	JNZ  row

	// Two rounds of zeros.
	MIX(Y0, Y15, Y4)
	MIX(Y1, Y15, Y5)
	MIX(Y2, Y15, Y6)
	MIX(Y3, Y15, Y7)
	MIX(Y0, Y15, Y4)
	MIX(Y1, Y15, Y5)
	MIX(Y2, Y15, Y6)
	MIX(Y3, Y15, Y7)

	// Xor the 32 sums together.
	VPXOR Y1, Y0, Y0
	VPXOR Y3, Y2, Y2
	VPXOR Y2, Y0, Y0
	VEXTRACTI128 $1, Y0, X1
	VPXOR X1, X0, X0
	VPSHUFD $0x4e, X0, X1
	VPXOR X1, X0, X0
	VPSHUFD $0xb1, X0, X1
	VPXOR X1, X0, X0
	VMOVD X0, AX
	VZEROUPPER
	MOVL AX, ret+16(FP)
	RET
