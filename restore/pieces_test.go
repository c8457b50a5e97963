package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"path"
	"reflect"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/fs"
)

const piecesLabel = "20261205T000000Z"

// testRepo is an unencrypted file:// repository in a temporary directory.
func testRepo(t testing.TB) *repo.Repo {
	t.Helper()
	be, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := codec.New(codec.Config{Encryption: "none"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.New(be, c, "main")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// putManifest stores m as its backup's manifest: the object is the manifest's JSON.
func putManifest(t testing.TB, r *repo.Repo, m *backup.Manifest) {
	t.Helper()
	err := r.PutStreamed(context.Background(), path.Join(backup.BackupPrefix(r, m.Label), "manifest"), true, func(w io.Writer) error {
		return json.NewEncoder(w).Encode(m)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// An incremental's manifest, read for a restore, gives back every extent as the manifest
// has it, but for the page hashes, which no restore reads, and the SHA-256s where they are
// not kept: everywhere for a delta restore, pg_control's only for the others.
func TestReadPiecesKeepsEveryExtent(t *testing.T) {
	r := testRepo(t)
	rng := rand.New(rand.NewPCG(3, 4))
	ext := func(label string, tree bool) backup.Extent {
		e := backup.Extent{Backup: label, Bundle: rng.IntN(1000), Offset: rng.Int64N(1 << 30), Length: 1 + rng.Int64N(1<<17),
			CRC: rng.Uint32(), PageTree: tree, Pages: []byte("12345678")}
		for i := range e.SHA256 {
			e.SHA256[i] = byte(rng.Uint32())
		}
		return e
	}
	m := &backup.Manifest{Summary: backup.Summary{Format: backup.ManifestFormat, Label: piecesLabel, Type: "incr",
		Parent: "20261204T000000Z", References: []string{"20261203T000000Z", "20261204T000000Z"}}}
	m.FileList = []backup.File{
		{Path: "base", Type: "dir", Mode: 0o700},
		{Path: "base/5/16384", Type: "file", Mode: 0o600, Chunk: 131072, Extents: []backup.Extent{
			ext("20261203T000000Z", true), ext("", true), ext("20261204T000000Z", true), ext("", false)}},
		{Path: controlFile, Type: "file", Mode: 0o600, Extents: []backup.Extent{ext("20261204T000000Z", false)}},
		{Path: "PG_VERSION", Type: "file", Mode: 0o600, Extents: []backup.Extent{ext("", false)}},
		{Path: "base/5/empty", Type: "file", Mode: 0o600},
	}
	for i := range m.FileList {
		for _, e := range m.FileList[i].Extents {
			m.FileList[i].Size += e.Length
		}
	}
	putManifest(t, r, m)
	for _, delta := range []bool{false, true} {
		got, ps, err := readPieces(context.Background(), r, piecesLabel, delta)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.FileList) != len(m.FileList) || !reflect.DeepEqual(got.References, m.References) {
			t.Fatalf("delta %v: %d files, references %v", delta, len(got.FileList), got.References)
		}
		for i, f := range m.FileList {
			if got.FileList[i].Extents != nil || got.FileList[i].Path != f.Path || got.FileList[i].Size != f.Size {
				t.Errorf("delta %v: file %d is %+v", delta, i, got.FileList[i])
			}
			want := make([]backup.Extent, 0, len(f.Extents))
			for _, e := range f.Extents {
				e.Pages = nil
				if !delta && f.Path != controlFile {
					e.SHA256 = backup.Digest{}
				}
				want = append(want, e)
			}
			if have := ps.Extents(i); !reflect.DeepEqual(have, want) && (len(have) != 0 || len(want) != 0) {
				t.Errorf("delta %v: %s: extents\n%+v\nwant\n%+v", delta, f.Path, have, want)
			}
			for j, e := range ps.File(i) {
				if ps.Owner(e) != f.Extents[j].Owner(piecesLabel) {
					t.Errorf("delta %v: %s extent %d is in backup %s, want %s", delta, f.Path, j, ps.Owner(e), f.Extents[j].Owner(piecesLabel))
				}
			}
		}
		if err := validatePieces(got, map[uint32]string{0: "/tmp/x/data"}, ps); err != nil {
			t.Errorf("delta %v: %v", delta, err)
		}
	}
}

// What the manifest's form could say and the restore's cannot hold is refused as a bad
// manifest, and so is an extent that names the backup itself, as before.
func TestPiecesRefuseWhatTheyCannotHold(t *testing.T) {
	for name, e := range map[string]backup.Extent{
		"bundle past int32": {Bundle: math.MaxInt32 + 1, Length: 1},
		"negative bundle":   {Bundle: -1, Length: 1},
		"negative offset":   {Offset: -1, Length: 1},
		"empty piece":       {Length: 0},
		"its own label":     {Backup: piecesLabel, Length: 1},
		"unlisted backup":   {Backup: "20261201T000000Z", Length: 1},
	} {
		m := &backup.Manifest{Summary: backup.Summary{Label: piecesLabel}, FileList: []backup.File{
			{Path: "base/5/1", Type: "file", Size: e.Length, Extents: []backup.Extent{e}}}}
		if err := validateManifest(m, map[uint32]string{0: "/tmp/x/data"}); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: %v, want ErrBadManifest", name, err)
		}
	}
	var owners []backup.Extent
	for i := range math.MaxUint16 + 1 {
		owners = append(owners, backup.Extent{Backup: fmt.Sprintf("b%d", i), Length: 1})
	}
	ps := backup.NewPieces(piecesLabel)
	if err := ps.Add(&backup.File{Path: "base/5/1", Extents: owners}, false); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("pieces in %d backups: %v", len(owners), err)
	}
}
