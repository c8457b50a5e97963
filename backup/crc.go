package backup

// The whole-file CRC-32C is derived from the extents' CRCs instead of a second pass over
// every byte: crc(A‖B) = crc(A)·x^(8·len(B)) mod P ⊕ crc(B), in the bit-reflected
// representation CRC-32C uses (P = 0x82F63B78 reflected; the top bit stands for x^0).

const castagnoliReflected = 0x82F63B78

// gfMul multiplies a and b modulo the Castagnoli polynomial (reflected representation).
func gfMul(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
		}
		if b&1 != 0 {
			b = b>>1 ^ castagnoliReflected
		} else {
			b >>= 1
		}
	}
	return p
}

// xPow8n returns x^(8·n) modulo the polynomial: the shift that appending n bytes applies.
func xPow8n(n int64) uint32 {
	result := uint32(1) << 31 // x^0
	sq := uint32(1) << 23     // x^8
	for ; n > 0; n >>= 1 {
		if n&1 != 0 {
			result = gfMul(result, sq)
		}
		sq = gfMul(sq, sq)
	}
	return result
}

// crcCombine returns the CRC-32C of A‖B from crc(A), crc(B) and len(B).
func crcCombine(crcA, crcB uint32, lenB int64) uint32 {
	return gfMul(xPow8n(lenB), crcA) ^ crcB
}

// extentsCRC is the CRC-32C of a file's bytes from the CRCs of its extents, in order.
func extentsCRC(extents []Extent) uint32 {
	var crc uint32
	for _, e := range extents {
		crc = crcCombine(crc, e.CRC, e.Length)
	}
	return crc
}
