package backup

import (
	"encoding/binary"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// Page checksums: a local backup of a cluster with data checksums verifies every data page
// it reads, as PostgreSQL's BASE_BACKUP and pgBackRest do. A page fails when its stored
// checksum differs from the computed one, it is not new, its LSN is older than the backup's
// start (a page changed since is being rewritten and comes back from WAL), and a second
// read gives the same verdict (the first may have met a write half done).

const (
	pageSize = 8192
	// relSegPages is RELSEG_SIZE: a relation segment file holds 1 GiB of 8 KiB pages.
	relSegPages = 131072
	fnvPrime    = 16777619
)

// checksumBaseOffsets start PostgreSQL's 32 parallel FNV-1a-style sums (checksum_impl.h).
var checksumBaseOffsets = [32]uint32{
	0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A,
	0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
	0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA,
	0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
	0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE,
	0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
	0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
	0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
}

// pageChecksum is PostgreSQL's pg_checksum_page for a page at block blkno of its relation
// fork: the page's words (its own checksum field counted as zero) folded into 32 sums, two
// rounds of zeros, the sums xor-ed together with the block number, reduced to 1..65535.
// The 32 sums are independent: with AVX2 all of them are computed at once in four vector
// registers (pagecheck_amd64.s), else eight at a time down the whole page.
func pageChecksum(page []byte, blkno uint32) uint16 {
	p := (*[pageSize]byte)(page)
	var r uint32
	if useAVX2 {
		// The sums start from the offsets with pd_checksum's bytes xor-ed into the third:
		// the same as counting those bytes as zero, without changing the page.
		offsets := checksumBaseOffsets
		offsets[2] ^= uint32(binary.LittleEndian.Uint16(p[8:]))
		r = pageSumsAVX2(p, &offsets)
	} else {
		r = pageSumsGeneric(p)
	}
	r ^= blkno
	return uint16(r%65535 + 1)
}

// pageSumsGeneric computes the 32 sums of a page and returns them xor-ed together: eight at
// a time, so that eight sums live in registers for 64 rows instead of all 32 going through
// memory on every row.
func pageSumsGeneric(p *[pageSize]byte) uint32 {
	const rowBytes = 4 * len(checksumBaseOffsets)
	var r uint32
	for g := 0; g < len(checksumBaseOffsets); g += 8 {
		s0, s1, s2, s3 := checksumBaseOffsets[g], checksumBaseOffsets[g+1], checksumBaseOffsets[g+2], checksumBaseOffsets[g+3]
		s4, s5, s6, s7 := checksumBaseOffsets[g+4], checksumBaseOffsets[g+5], checksumBaseOffsets[g+6], checksumBaseOffsets[g+7]
		for row := 0; row < pageSize; row += rowBytes {
			w := (*[32]byte)(p[row+4*g : row+4*g+32])
			a := binary.LittleEndian.Uint64(w[0:])
			b := binary.LittleEndian.Uint64(w[8:])
			c := binary.LittleEndian.Uint64(w[16:])
			d := binary.LittleEndian.Uint64(w[24:])
			if row == 0 && g == 0 {
				b &^= 0xFFFF // pd_checksum, bytes 8-9: the low half of word 2
			}
			s0 = mixChecksum(s0, uint32(a))
			s1 = mixChecksum(s1, uint32(a>>32))
			s2 = mixChecksum(s2, uint32(b))
			s3 = mixChecksum(s3, uint32(b>>32))
			s4 = mixChecksum(s4, uint32(c))
			s5 = mixChecksum(s5, uint32(c>>32))
			s6 = mixChecksum(s6, uint32(d))
			s7 = mixChecksum(s7, uint32(d>>32))
		}
		for _, s := range [8]uint32{s0, s1, s2, s3, s4, s5, s6, s7} {
			r ^= mixChecksum(mixChecksum(s, 0), 0)
		}
	}
	return r
}

// mixChecksum is CHECKSUM_COMP: one FNV-1a-style step of a sum with a word.
func mixChecksum(sum, v uint32) uint32 {
	t := sum ^ v
	return t*fnvPrime ^ t>>17
}

// checksummedFile tells which files hold checksummed pages: those under global/ and base/
// and in tablespaces, but not pg_control, pg_filenode.map, pg_internal.init or PG_VERSION.
func checksummedFile(f File) bool {
	if f.Tablespace == 0 && !strings.HasPrefix(f.Path, "global/") && !strings.HasPrefix(f.Path, "base/") {
		return false
	}
	name := path.Base(f.Path)
	return name != "pg_control" && name != "pg_filenode.map" && name != "PG_VERSION" && !strings.HasPrefix(name, "pg_internal.init")
}

// firstBlock is the block number of a relation segment file's first page ("16384.2": 2 GiB in).
func firstBlock(name string) uint32 {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		if n, err := strconv.ParseUint(name[i+1:], 10, 32); err == nil {
			return uint32(n) * relSegPages
		}
	}
	return 0
}

// pageVerifier passes a file's bytes through and checks each whole page it sees.
type pageVerifier struct {
	r        io.Reader
	at       io.ReaderAt // for the second read of a failed page
	startLSN uint64
	base     uint32 // block number of the file's first page
	off      int64  // file offset of the page being assembled
	partial  []byte // a page split across reads
	bad      []uint32
}

func (v *pageVerifier) Read(b []byte) (int, error) {
	n, err := v.r.Read(b)
	v.inspect(b[:n])
	return n, err
}

func (v *pageVerifier) inspect(b []byte) {
	for len(b) > 0 {
		if len(v.partial) == 0 && len(b) >= pageSize {
			v.check(b[:pageSize])
			b = b[pageSize:]
			continue
		}
		k := min(pageSize-len(v.partial), len(b))
		v.partial = append(v.partial, b[:k]...)
		b = b[k:]
		if len(v.partial) == pageSize {
			v.check(v.partial)
			v.partial = v.partial[:0]
		}
	}
}

func (v *pageVerifier) check(page []byte) {
	blk := uint32(v.off / pageSize)
	v.off += pageSize
	if v.pageOK(page, blk) {
		return
	}
	again := make([]byte, pageSize)
	if n, _ := v.at.ReadAt(again, int64(blk)*pageSize); n == pageSize && v.pageOK(again, blk) {
		return
	}
	v.bad = append(v.bad, v.base+blk)
}

func (v *pageVerifier) pageOK(page []byte, blk uint32) bool {
	if binary.LittleEndian.Uint16(page[14:]) == 0 { // pd_upper 0: a new page, no checksum yet
		return true
	}
	lsn := uint64(binary.LittleEndian.Uint32(page[0:]))<<32 | uint64(binary.LittleEndian.Uint32(page[4:]))
	if lsn >= v.startLSN {
		return true
	}
	return pageChecksum(page, v.base+blk) == binary.LittleEndian.Uint16(page[8:])
}

// parseLSN reads PostgreSQL's text form of an LSN, "16/B374D848".
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("LSN %q: want X/Y", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("LSN %q: want X/Y in hexadecimal", s)
	}
	return h<<32 | l, nil
}
