package backup

import (
	"bytes"
	"context"
	"io"
	"maps"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/mem"
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

// countingBackend counts the reads of each object.
type countingBackend struct {
	storage.Backend
	mu    sync.Mutex
	reads map[string]int
}

func (b *countingBackend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	b.mu.Lock()
	b.reads[key]++
	b.mu.Unlock()
	return b.Backend.Get(ctx, key, offset, length)
}

// One Verifier over a chain (a full backup and two incrementals whose unchanged pieces
// point into it) reads a bundle of the full backup once when the incrementals point at
// whole pieces of it (unchanged chunks and files); a bundle they point into by parts of
// pieces (the unchanged pages of a changed chunk) is read again for those parts. Verifying
// an incremental alone reads the full backup's bundles it needs; damage in the full backup is
// named by the verify of either.
func TestVerifierReadsWholePiecesOfAChainOnce(t *testing.T) {
	ctx := context.Background()
	cb := &countingBackend{Backend: mem.New(), reads: map[string]int{}}
	r := repoOn(t, cb)
	rng := rand.New(rand.NewPCG(9, 10))
	const rel, other = "base/5/16390", "base/5/16391"
	// With 1 MiB bundles (8 chunks), rel fills bundle 0 of A and other bundles 1 and 2.
	v1 := map[string][]byte{rel: make([]byte, 8*ChunkSize), other: make([]byte, 16*ChunkSize)}
	for _, b := range v1 {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	save := func(m *Manifest) {
		t.Helper()
		m.Format = ManifestFormat
		prefix := BackupPrefix(r, m.Label)
		if err := r.PutBytes(ctx, path.Join(prefix, pgManifestName), []byte("{}"), false); err != nil {
			t.Fatal(err)
		}
		if err := r.PutJSON(ctx, path.Join(prefix, manifestName), m, false); err != nil {
			t.Fatal(err)
		}
	}
	paths := []string{rel, other}
	full := storeFiles(t, r, "A", nil, 1<<20, paths, v1)
	save(full)
	v2 := map[string][]byte{rel: bytes.Clone(v1[rel]), other: v1[other]}
	v2[rel][5*ChunkSize+100] ^= 1
	incr1 := storeFiles(t, r, "B", newBase(full, false), 1<<20, paths, v2)
	save(incr1)
	v3 := map[string][]byte{rel: bytes.Clone(v2[rel]), other: v2[other]}
	v3[rel][6*ChunkSize+PageSize+7] ^= 1
	incr2 := storeFiles(t, r, "C", newBase(incr1, false), 1<<20, paths, v3)
	save(incr2)
	if full.Bundles != 3 {
		t.Fatalf("full backup in %d bundles, want 3", full.Bundles)
	}

	v := NewVerifier(r, 2)
	for _, label := range []string{"A", "B", "C"} {
		res, err := v.Verify(ctx, label)
		if err != nil {
			t.Fatalf("verify %s: %v", label, err)
		}
		if label != "A" && res.AlreadyVerified == 0 {
			t.Errorf("verify %s: no bundle of its chain was taken as verified", label)
		}
	}
	for n := 1; n < full.Bundles; n++ {
		if got := cb.reads[BundleKey(r, "A", n)]; got != 1 {
			t.Errorf("bundle %d of A read %d times by one run over the chain, want 1", n, got)
		}
	}
	// Once for A, once for the parts of chunk 5 that B points at, once for chunk 6 and C.
	if got := cb.reads[BundleKey(r, "A", 0)]; got != 3 {
		t.Errorf("bundle 0 of A read %d times, want 3", got)
	}

	// The same run told what is still to come reads the same, remembers only the pieces of
	// backups a later one points into, and ends holding none.
	firstRun := maps.Clone(cb.reads)
	clear(cb.reads)
	chain := []Summary{full.Summary, incr1.Summary, incr2.Summary}
	if len(incr2.References) == 0 {
		t.Fatal("C references no backup")
	}
	v = NewVerifier(r, 2)
	for i, b := range chain {
		v.Expect(chain[i:])
		if _, err := v.Verify(ctx, b.Label); err != nil {
			t.Fatalf("verify %s: %v", b.Label, err)
		}
		for k := range v.intact {
			for l, n := range v.labels {
				if n == k.label && !slices.ContainsFunc(chain[i:], func(s Summary) bool { return slices.Contains(s.References, l) }) {
					t.Fatalf("after %s, pieces of %s are remembered, which neither it nor a later backup references", b.Label, l)
				}
			}
		}
		if i == 0 && len(v.intact) == 0 {
			t.Fatal("the pieces of A, which B points into, were not remembered")
		}
	}
	v.Expect(nil) // the run is over
	if len(v.intact) != 0 {
		t.Fatalf("pieces of %d bundles remembered after the run", len(v.intact))
	}
	if !maps.Equal(cb.reads, firstRun) {
		t.Fatalf("reads %v, the run without Expect read %v", cb.reads, firstRun)
	}
	// A run over A alone, which nothing to come references, remembers nothing of it.
	v = NewVerifier(r, 2)
	v.Expect(chain[:1])
	if _, err := v.Verify(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	if len(v.intact) != 0 {
		t.Fatalf("pieces of %d bundles of A remembered with no backup to come", len(v.intact))
	}

	// Alone, C's verify reads what it needs of A (and B) itself.
	clear(cb.reads)
	res, err := Verify(ctx, r, "C", 2)
	if err != nil {
		t.Fatal(err)
	}
	if res.AlreadyVerified != 0 {
		t.Errorf("a fresh verify took %d bundles as verified", res.AlreadyVerified)
	}
	readA := 0
	for n := 0; n < full.Bundles; n++ {
		readA += cb.reads[BundleKey(r, "A", n)]
	}
	if readA == 0 {
		t.Error("verifying C alone read no bundle of A")
	}

	// Damage in A: a run over the chain stops at A, and C alone names A's object.
	key := BundleKey(r, "A", 0)
	obj := storedObject(t, cb.Backend, key)
	obj[len(obj)/2] ^= 0x40
	if err := cb.Backend.Put(ctx, key, bytes.NewReader(obj), storage.PutOptions{Size: int64(len(obj))}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(r, 2).Verify(ctx, "A"); err == nil {
		t.Fatal("verify of A passed with a damaged bundle")
	}
	_, err = NewVerifier(r, 2).Verify(ctx, "C")
	if err == nil || !strings.Contains(err.Error(), "backup A") {
		t.Fatalf("verify of C with A's bundle damaged: %v, want an error naming backup A", err)
	}
}
