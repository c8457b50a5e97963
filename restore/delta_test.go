package restore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/pgharbor/pgharbor/backup"
)

// The parallel compare cuts big files into runs read by several workers: every piece, on
// either side of a run's edge, is still judged by its own content, and the verdicts equal
// those of reading each file alone from start to end.
func TestDeltaCompareInRunsJudgesEveryPiece(t *testing.T) {
	dir := t.TempDir()
	const piece = 128 << 10
	mk := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*31) ^ seed ^ byte(i>>17)
		}
		return b
	}
	type tc struct {
		path  string
		want  []byte // the backup's content
		disk  []byte // nil: no file on disk
		kept  []bool // expected verdict per piece (nil: nothing usable)
		sized bool
	}
	big := mk(3*compareUnit+5*piece+77, 1)
	bigDisk := append([]byte(nil), big...)
	edge := compareUnit / piece // the first piece of the second run
	bigDisk[(edge-1)*piece+3] ^= 1
	bigDisk[edge*piece] ^= 1
	bigDisk[len(bigDisk)-1] ^= 1 // the short last piece
	bigKept := make([]bool, (len(big)+piece-1)/piece)
	for i := range bigKept {
		bigKept[i] = i != edge-1 && i != edge && i != len(bigKept)-1
	}
	short := mk(2*compareUnit+3*piece, 2)
	shortKept := make([]bool, len(short)/piece)
	for i := range shortKept {
		shortKept[i] = i < compareUnit/piece+1 // the disk copy ends one piece into the second run, mid-piece after
	}
	cases := []tc{
		{path: "base/5/1", want: big, disk: bigDisk, kept: bigKept, sized: true},
		{path: "base/5/2", want: short, disk: short[:compareUnit+piece+100], kept: shortKept},
		{path: "base/5/3", want: mk(5*piece, 3), disk: mk(5*piece, 4)},                          // nothing in common
		{path: "base/5/4", want: mk(5*piece, 5)},                                                // missing
		{path: "base/5/5", want: mk(700, 6), disk: mk(700, 6), kept: []bool{true}, sized: true}, // small
		{path: "base/5/6", want: []byte{}, disk: []byte{}, kept: []bool{}, sized: true},         // empty
		{path: "base/5/7", want: []byte{}, disk: []byte{1}},                                     // should be empty
	}
	m := &backup.Manifest{}
	var idx []int
	for i, c := range cases {
		m.FileList = append(m.FileList, fileOf(c.path, c.want, piece))
		idx = append(idx, i)
		if c.disk == nil {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(c.path))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, c.disk, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	full := slices.Clone(m.FileList) // the extents as the manifest has them, for compareContent
	ps := backup.NewPieces(m.Label)
	for i := range m.FileList {
		if err := ps.Add(&m.FileList[i], true); err != nil {
			t.Fatal(err)
		}
		m.FileList[i].Extents = nil
	}
	x := &executor{m: m, ps: ps, o: Options{Delta: true, Workers: 3}, roots: map[uint32]string{0: dir}}
	got, err := x.compare(context.Background(), idx)
	if err != nil {
		t.Fatal(err)
	}
	for k, c := range cases {
		if fmt.Sprint(got[k].kept) != fmt.Sprint(c.kept) || (got[k].kept == nil) != (c.kept == nil) || got[k].kept != nil && got[k].sized != c.sized {
			t.Errorf("%s: kept %v sized %v, want %v sized %v", c.path, got[k].kept, got[k].sized, c.kept, c.sized)
		}
		one := compareContent(filepath.Join(dir, filepath.FromSlash(c.path)), full[k])
		if fmt.Sprint(one) != fmt.Sprint(got[k]) {
			t.Errorf("%s: compared alone %v, among others %v", c.path, one, got[k])
		}
	}
	if !got[4].same() || !got[5].same() || got[0].same() {
		t.Errorf("same(): small %v empty %v big %v, want true true false", got[4].same(), got[5].same(), got[0].same())
	}
}
