package restore

import (
	"crypto/sha256"
	"encoding/binary"
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

func TestDeltaNeverTakesTwoControlFilesForEqual(t *testing.T) {
	a, b := controlLike(1), controlLike(2)
	if crc32.Checksum(a, castagnoli) != crc32.Checksum(b, castagnoli) {
		t.Fatal("the two files were meant to share their whole-file CRC-32C (the trap a CRC comparison falls into)")
	}
	p := filepath.Join(t.TempDir(), "pg_control")
	if err := os.WriteFile(p, a, 0o600); err != nil {
		t.Fatal(err)
	}
	if sameContent(p, fileOf(controlFile, b, 8192)) {
		t.Fatal("a pg_control with other content was judged unchanged")
	}
	if !sameContent(p, fileOf(controlFile, a, 8192)) {
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
	if !sameContent(p, f) {
		t.Fatal("identical file judged changed")
	}
	changed := append([]byte(nil), data...)
	changed[2<<20+5] ^= 1 // one bit in the third piece
	if sameContent(p, fileOf("base/5/16384", changed, 1<<20)) {
		t.Fatal("a file differing in one bit was judged unchanged")
	}
	old := f
	old.Extents = append([]backup.Extent(nil), f.Extents...)
	old.Extents[1].SHA256 = backup.Digest{}
	if sameContent(p, old) {
		t.Fatal("a piece without a recorded SHA-256 (older manifest) must make the file be rewritten")
	}
	if sameContent(p, fileOf("base/5/16384", data[:len(data)-1], 1<<20)) {
		t.Fatal("a file of another size was judged unchanged")
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
