package backup

import (
	"bytes"
	"encoding/binary"
	"io"
	"slices"
	"testing"
	"testing/iotest"
)

// The verifier assembles pages split across reads of any size, skips new pages and pages
// newer than the backup's start, and reports a damaged page by its block number, counting
// from the segment file's first block.
func TestPageVerifierFindsTheDamagedPage(t *testing.T) {
	const pages = 6
	file := make([]byte, pages*pageSize)
	base := firstBlock("16384.1")
	for i := range pages {
		p := file[i*pageSize : (i+1)*pageSize]
		if i == 4 {
			continue // new page: all zeros
		}
		binary.LittleEndian.PutUint32(p[4:], uint32(0x1000+i)) // LSN 0/1000+i
		binary.LittleEndian.PutUint16(p[12:], 24)              // pd_lower
		binary.LittleEndian.PutUint16(p[14:], 8000)            // pd_upper
		for j := 100; j < pageSize; j += 7 {
			p[j] = byte(i + j)
		}
		binary.LittleEndian.PutUint16(p[8:], pageChecksum(p, base+uint32(i)))
	}
	file[2*pageSize+5000] ^= 1                                 // damaged, old LSN: reported
	binary.LittleEndian.PutUint32(file[5*pageSize+4:], 0x9000) // newer than the start...
	file[5*pageSize+6000] ^= 1                                 // ...so not judged
	v := &pageVerifier{r: iotest.HalfReader(bytes.NewReader(file)), at: bytes.NewReader(file), startLSN: 0x8000, base: base}
	got, err := io.ReadAll(io.LimitReader(readerFunc(func(b []byte) (int, error) { return v.Read(b[:min(len(b), 3000)]) }), int64(len(file))))
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("bytes passed through changed: %v", err)
	}
	if want := []uint32{base + 2}; !slices.Equal(v.bad, want) {
		t.Fatalf("damaged blocks %v, want %v", v.bad, want)
	}
	if base != relSegPages {
		t.Fatalf("first block of segment 1: %d", base)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }
