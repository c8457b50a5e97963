package restore

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgharbor/pgharbor/backup"
)

// controlLike returns a file shaped like pg_control: a record followed by its own CRC-32C,
// then zeros to 8 KiB.
func controlLike(seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	data := make([]byte, 8192)
	rec := data[:288]
	for i := range rec {
		rec[i] = byte(rng.Uint32())
	}
	binary.LittleEndian.PutUint32(data[288:], crc32.Checksum(rec, castagnoli))
	return data
}

// fileOf describes data as a backup stores it, in pieces of at most piece bytes.
func fileOf(path string, data []byte, piece int) backup.File {
	f := backup.File{Path: path, Type: "file", Size: int64(len(data)), Mode: 0o600}
	for off := 0; off < len(data); off += piece {
		b := data[off:min(off+piece, len(data))]
		f.Extents = append(f.Extents, backup.Extent{Bundle: off / piece, Length: int64(len(b)), CRC: crc32.Checksum(b, castagnoli), SHA256: sha256.Sum256(b)})
	}
	f.CRC = crc32.Checksum(data, castagnoli)
	return f
}

// pageTreeFileOf is fileOf as a backup of format 2 describes a relation file: page-tree
// digests (backup.Extent.PageTree).
func pageTreeFileOf(path string, data []byte, piece int) backup.File {
	f := fileOf(path, data, piece)
	var off int
	for i := range f.Extents {
		e := &f.Extents[i]
		e.PageTree = true
		e.SHA256 = backup.PieceDigest(*e, data[off:off+int(e.Length)])
		off += int(e.Length)
	}
	return f
}

// A delta restore compares the pieces of a format-2 relation file by their page trees: equal
// bytes are kept, one changed bit is not, and a page tree is never taken for a plain SHA-256.
func TestDeltaComparesPageTreePieces(t *testing.T) {
	data := make([]byte, 40*8192)
	for i := range data {
		data[i] = byte(i * 13)
	}
	p := filepath.Join(t.TempDir(), "16390")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f := pageTreeFileOf("base/5/16390", data, 16*8192)
	if f.Extents[0].SHA256 == fileOf("base/5/16390", data, 16*8192).Extents[0].SHA256 {
		t.Fatal("the page tree equals the plain SHA-256")
	}
	if !compareContent(p, f).same() {
		t.Fatal("identical file judged changed")
	}
	changed := append([]byte(nil), data...)
	changed[33*8192+5] ^= 1
	if compareContent(p, pageTreeFileOf("base/5/16390", changed, 16*8192)).same() {
		t.Fatal("a file differing in one bit was judged unchanged")
	}
	plain := fileOf("base/5/16390", data, 16*8192)
	plain.Extents[1].PageTree = true
	if compareContent(p, plain).same() {
		t.Fatal("a plain SHA-256 was taken for a page tree")
	}
}

func TestDeltaNeverTakesTwoControlFilesForEqual(t *testing.T) {
	a, b := controlLike(1), controlLike(2)
	if crc32.Checksum(a, castagnoli) != crc32.Checksum(b, castagnoli) {
		t.Fatal("the two files were meant to share their whole-file CRC-32C (the trap a CRC comparison falls into)")
	}
	p := filepath.Join(t.TempDir(), "pg_control")
	if err := os.WriteFile(p, a, 0o600); err != nil {
		t.Fatal(err)
	}
	if compareContent(p, fileOf(controlFile, b, 8192)).same() {
		t.Fatal("a pg_control with other content was judged unchanged")
	}
	if !compareContent(p, fileOf(controlFile, a, 8192)).same() {
		t.Fatal("the same bytes were judged changed")
	}
}

func TestDeltaComparesEveryPieceByContent(t *testing.T) {
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(i * 7)
	}
	p := filepath.Join(t.TempDir(), "16384")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f := fileOf("base/5/16384", data, 1<<20)
	if !compareContent(p, f).same() {
		t.Fatal("identical file judged changed")
	}
	changed := append([]byte(nil), data...)
	changed[2<<20+5] ^= 1 // one bit in the third piece
	if compareContent(p, fileOf("base/5/16384", changed, 1<<20)).same() {
		t.Fatal("a file differing in one bit was judged unchanged")
	}
	old := f
	old.Extents = append([]backup.Extent(nil), f.Extents...)
	old.Extents[1].SHA256 = backup.Digest{}
	if compareContent(p, old).same() {
		t.Fatal("a piece without a recorded SHA-256 (older manifest) must make the file be rewritten")
	}
	if compareContent(p, fileOf("base/5/16384", data[:len(data)-1], 1<<20)).same() {
		t.Fatal("a file of another size was judged unchanged")
	}
}

// A file that differs in some pieces keeps the others: only the differing ones, and those
// the file on disk is too short to hold, are written.
func TestDeltaKeepsThePiecesThatMatch(t *testing.T) {
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 13)
	}
	p := filepath.Join(t.TempDir(), "16385")
	disk := append([]byte(nil), data[:3<<20+100]...) // shorter by most of a piece
	disk[1<<20+7] ^= 0x80                            // second piece differs
	if err := os.WriteFile(p, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	d := compareContent(p, fileOf("base/5/16385", data, 1<<20))
	if want := []bool{true, false, true, false}; fmt.Sprint(d.kept) != fmt.Sprint(want) || d.same() {
		t.Fatalf("kept %v (same %v), want %v", d.kept, d.same(), want)
	}
	// same bytes, file on disk longer than recorded: every piece matches, the size does not
	if err := os.WriteFile(p, append(append([]byte(nil), data...), 1, 2, 3), 0o600); err != nil {
		t.Fatal(err)
	}
	if d := compareContent(p, fileOf("base/5/16385", data, 1<<20)); d.same() || d.kept == nil {
		t.Fatalf("longer file: kept %v same %v, want every piece kept and the file cut", d.kept, d.same())
	}
	// nothing in common: rewritten whole
	if err := os.WriteFile(p, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if d := compareContent(p, fileOf("base/5/16385", data, 1<<20)); d.kept != nil {
		t.Fatalf("file with no matching piece: kept %v, want a whole rewrite", d.kept)
	}
}

func TestDeltaAlwaysRewritesFilesPostgreSQLTreatsSpecially(t *testing.T) {
	for _, tc := range []struct {
		f    backup.File
		want bool
	}{
		{backup.File{Path: "global/pg_control"}, true},
		{backup.File{Path: "global/pg_filenode.map"}, true},
		{backup.File{Path: "base/16384/pg_filenode.map"}, true},
		{backup.File{Path: "backup_label"}, true},
		{backup.File{Path: "tablespace_map"}, true},
		{backup.File{Path: "base/16384/1259"}, false},
		{backup.File{Path: "PG_15_202209061/16384/pg_filenode.map", Tablespace: 16390}, true},
		{backup.File{Path: "PG_15_202209061/16384/backup_label", Tablespace: 16390}, false},
	} {
		if got := alwaysWritten(tc.f); got != tc.want {
			t.Errorf("alwaysWritten(%s) = %v, want %v", tc.f.Path, got, tc.want)
		}
	}
}
