package backup

import (
	"context"
	"math/rand/v2"
	"path"
	"strings"
	"testing"
)

// Verify checks page-tree digests (manifest format 2) and the plain SHA-256 of manifests of
// format 1, which stay readable, and names damage in either.
func TestVerifyReadsManifestFormats1And2(t *testing.T) {
	ctx := context.Background()
	r := memRepo(t)
	rng := rand.New(rand.NewPCG(7, 8))
	const rel, other = "base/5/16390", "pg_xact/0000"
	content := map[string][]byte{rel: make([]byte, 5*ChunkSize+3*PageSize), other: make([]byte, ChunkSize+17)}
	for _, b := range content {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	m := storeFiles(t, r, "A", nil, 1<<20, []string{rel, other}, content)
	m.Format = ManifestFormat
	checkPages(t, m.PageKey, m.FileList[0], content[rel])
	if e := m.FileList[1].Extents[0]; e.PageTree || e.Pages != nil {
		t.Fatal("a file that is not a relation got a page tree")
	}
	prefix := BackupPrefix(r, "A")
	if err := r.PutBytes(ctx, path.Join(prefix, pgManifestName), []byte("{}"), false); err != nil {
		t.Fatal(err)
	}
	put := func(m *Manifest) {
		t.Helper()
		if err := r.PutJSON(ctx, path.Join(prefix, manifestName), m, false); err != nil {
			t.Fatal(err)
		}
	}
	verify := func() error {
		_, err := Verify(ctx, r, "A", 2)
		return err
	}

	put(m)
	if err := verify(); err != nil {
		t.Fatalf("format 2: %v", err)
	}
	old := *m
	old.FileList = append([]File(nil), m.FileList...)
	asFormat1(&old, 0, content[rel], true)
	put(&old)
	if err := verify(); err != nil {
		t.Fatalf("format 1: %v", err)
	}

	// A page tree where the plain SHA-256 is recorded, and the other way round, is damage.
	for _, tc := range []struct {
		name string
		m    *Manifest
	}{{"format 2 read as plain", m}, {"format 1 read as a page tree", &old}} {
		bad := *tc.m
		bad.FileList = append([]File(nil), tc.m.FileList...)
		bad.FileList[0].Extents = append([]Extent(nil), tc.m.FileList[0].Extents...)
		bad.FileList[0].Extents[2].PageTree = !bad.FileList[0].Extents[2].PageTree
		put(&bad)
		if err := verify(); err == nil || !strings.Contains(err.Error(), rel) {
			t.Fatalf("%s: verify said %v, want an error naming %s", tc.name, err, rel)
		}
	}

	newer := *m
	newer.Format = ManifestFormat + 1
	put(&newer)
	if err := verify(); err == nil || !strings.Contains(err.Error(), "manifest format") {
		t.Fatalf("a manifest of a newer format: %v", err)
	}
}

// PieceDigest and the streaming pieceHash agree however a piece is written, and a page tree
// of bytes that are not whole pages matches nothing.
func TestPieceHashMatchesPieceDigest(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	data := make([]byte, 7*PageSize)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	ph := newPieceHash()
	for _, tree := range []bool{false, true} {
		e := Extent{PageTree: tree}
		want := PieceDigest(e, data)
		for _, step := range []int{1000, PageSize, 3*PageSize + 5, len(data)} {
			ph.reset(e)
			for off := 0; off < len(data); off += step {
				ph.Write(data[off:min(off+step, len(data))])
			}
			if got := ph.sum(); got != want {
				t.Fatalf("tree %v, parts of %d: %x, want %x", tree, step, got, want)
			}
		}
	}
	if PieceDigest(Extent{PageTree: true}, data) == PieceDigest(Extent{}, data) {
		t.Fatal("a page tree equals the plain SHA-256")
	}
	short := data[:len(data)-1]
	if d := PieceDigest(Extent{PageTree: true}, short); !d.IsZero() {
		t.Fatal("a page tree of a partial page")
	}
	ph.reset(Extent{PageTree: true})
	ph.Write(short)
	if d := ph.sum(); !d.IsZero() {
		t.Fatal("a streamed page tree of a partial page")
	}
}
