package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// newBase is the base of parent m, read in full.
func newBase(m *Manifest, trustMtime bool) *base {
	b := emptyBase(trustMtime, spillInMemory)
	for i := range m.FileList {
		if err := b.add(&m.FileList[i]); err != nil {
			panic(err)
		}
	}
	b.setParent(m)
	return b
}

// storeFiles writes files (path → content) through a pipeline of backup label with parent
// base (nil: full) and returns the manifest it would write.
func storeFiles(t *testing.T, r *repo.Repo, label string, b *base, bundle int, paths []string, content map[string][]byte) *Manifest {
	t.Helper()
	pages, err := newPageHasher(b)
	if err != nil {
		t.Fatal(err)
	}
	p := newPipeline(context.Background(), r, label, bundle, 2, 2)
	p.base, p.pages = b, pages
	m := &Manifest{Summary: Summary{Label: label, StartTime: time.Now()}, PageKey: pages.key}
	for _, path := range paths {
		f := File{Path: path, Type: "file", Size: int64(len(content[path]))}
		n, err := p.readFile(bytes.NewReader(content[path]), &f)
		if err != nil || n != f.Size {
			t.Fatalf("%s: read %d of %d: %v", path, n, f.Size, err)
		}
		if err := p.addFile(f); err != nil {
			t.Fatal(err)
		}
	}
	if m.Bundles, err = p.close(); err != nil {
		t.Fatal(err)
	}
	fe, err := p.endFiles()
	if err != nil {
		t.Fatal(err)
	}
	defer fe.close()
	if err := json.NewDecoder(fe.entries()).Decode(&m.FileList); err != nil {
		t.Fatal(err)
	}
	if len(m.FileList) != len(paths) {
		t.Fatalf("%d manifest entries for %d files", len(m.FileList), len(paths))
	}
	m.References = fe.references()
	m.Reused = p.reused.Load()
	return m
}

// reassemble reads a file's bytes back from the bundles its extents name, checking each
// extent's CRC-32C and SHA-256.
func reassemble(t *testing.T, r *repo.Repo, label string, f File) []byte {
	t.Helper()
	out, err := tryReassemble(r, label, f)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tryReassemble(r *repo.Repo, label string, f File) ([]byte, error) {
	var out []byte
	for _, e := range f.Extents {
		data, err := r.GetBytes(context.Background(), BundleKey(r, e.Owner(label), e.Bundle))
		if err != nil {
			return nil, err
		}
		piece := data[e.Offset : e.Offset+e.Length]
		if crc32.Checksum(piece, castagnoli) != e.CRC || PieceDigest(e, piece) != e.SHA256 {
			return nil, fmt.Errorf("%s: extent %+v does not match its checksums", f.Path, e)
		}
		out = append(out, piece...)
	}
	if extentsCRC(f.Extents) != f.CRC {
		return nil, fmt.Errorf("%s: whole-file CRC does not combine from its extents", f.Path)
	}
	return out, nil
}

func TestIncrementalStoresOnlyChangedChunksAndPointsAtTheBackupThatHoldsTheRest(t *testing.T) {
	r := memRepo(t)
	const bundle = 1 << 20 // 8 chunks
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	paths := []string{"small", "big", "shrinks", "grows", "gone"}
	v1 := map[string][]byte{
		"small": random(5000), "big": random(20*ChunkSize + 300), "shrinks": random(6 * ChunkSize),
		"grows": random(3*ChunkSize - 10), "gone": random(ChunkSize),
	}
	full := storeFiles(t, r, "A", nil, bundle, paths, v1)
	for _, f := range full.FileList {
		if f.Chunk != ChunkSize {
			t.Fatalf("%s: chunk %d", f.Path, f.Chunk)
		}
		for i, e := range f.Extents {
			if e.Length != min(ChunkSize, f.Size-int64(i)*ChunkSize) {
				t.Fatalf("%s: extent %d has %d bytes: not cut at chunk boundaries", f.Path, i, e.Length)
			}
		}
	}

	// Change one chunk of big, shrink, extend, drop one, add one.
	v2 := map[string][]byte{
		"small":   v1["small"],
		"big":     bytes.Clone(v1["big"]),
		"shrinks": v1["shrinks"][:2*ChunkSize+100],
		"grows":   append(bytes.Clone(v1["grows"]), random(2*ChunkSize)...),
		"new":     random(ChunkSize + 1),
	}
	v2["big"][7*ChunkSize+5] ^= 1
	paths2 := []string{"small", "big", "shrinks", "grows", "new"}
	incr1 := storeFiles(t, r, "B", newBase(full, false), bundle, paths2, v2)
	// big: 1 chunk; shrinks: its last partial chunk; grows: the old partial chunk and two
	// more; new: two; small: unchanged.
	var stored int64
	for _, f := range incr1.FileList {
		for _, e := range f.Extents {
			if e.Backup == "" {
				stored += e.Length
			} else if e.Backup != "A" {
				t.Fatalf("%s: extent in %q", f.Path, e.Backup)
			}
		}
		if got := reassemble(t, r, "B", f); !bytes.Equal(got, v2[f.Path]) {
			t.Fatalf("%s: incremental reassembles to other bytes", f.Path)
		}
	}
	want := int64(ChunkSize + 100 + (ChunkSize - 10) + 2*ChunkSize + ChunkSize + 1)
	if stored != want {
		t.Fatalf("incremental stored %d bytes, want %d (only the changed chunks)", stored, want)
	}
	if len(incr1.References) != 1 || incr1.References[0] != "A" {
		t.Fatalf("references %v", incr1.References)
	}

	// An incremental of the incremental: unchanged chunks point straight at A, never at B
	// when B only pointed at A.
	v3 := map[string][]byte{"big": bytes.Clone(v2["big"]), "new": v2["new"]}
	v3["big"][0] ^= 1
	incr2 := storeFiles(t, r, "C", newBase(incr1, false), bundle, []string{"big", "new"}, v3)
	for _, f := range incr2.FileList {
		if got := reassemble(t, r, "C", f); !bytes.Equal(got, v3[f.Path]) {
			t.Fatalf("%s: second incremental reassembles to other bytes", f.Path)
		}
	}
	big := incr2.FileList[0]
	if big.Extents[0].Backup != "" || big.Extents[7].Backup != "B" || big.Extents[1].Backup != "A" {
		t.Fatalf("big's extents point at %q, %q, %q; want this backup, B, A", big.Extents[0].Backup, big.Extents[7].Backup, big.Extents[1].Backup)
	}
	if got := incr2.References; len(got) != 2 || got[0] != "A" || got[1] != "B" {
		t.Fatalf("references %v, want [A B]", got)
	}
}

// A file whose size and mtime are unchanged and older than the parent's start is taken
// from the parent without reading; a newer mtime, or checksum-all, reads it.
func TestUnchangedTrustsMtimeOnlyWellBeforeTheParentStarted(t *testing.T) {
	start := time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)
	old := start.Add(-time.Minute)
	m := &Manifest{Summary: Summary{Label: "A", StartTime: start}, FileList: []File{
		{Path: "base/5/1", Type: "file", Size: 8192, ModTime: old},
		{Path: "base/5/2", Type: "file", Size: 8192, ModTime: start.Add(-time.Second)},
		{Path: "global/pg_control", Type: "file", Size: 8192, ModTime: old},
	}}
	b := newBase(m, true)
	cases := []struct {
		f    File
		want bool
	}{
		{File{Path: "base/5/1", Size: 8192, ModTime: old}, true},
		{File{Path: "base/5/1", Size: 16384, ModTime: old}, false},
		{File{Path: "base/5/1", Size: 8192, ModTime: old.Add(time.Second)}, false},
		{File{Path: "base/5/2", Size: 8192, ModTime: start.Add(-time.Second)}, false}, // inside the margin
		{File{Path: "global/pg_control", Size: 8192, ModTime: old}, false},
		{File{Path: "base/5/3", Size: 8192, ModTime: old}, false},
	}
	for _, c := range cases {
		prev, err := b.unchanged(&c.f)
		if err != nil {
			t.Fatal(err)
		}
		if got := prev != nil; got != c.want {
			t.Errorf("%s size %d mtime %s: unchanged %v, want %v", c.f.Path, c.f.Size, c.f.ModTime, got, c.want)
		}
	}
	if prev, err := newBase(m, false).unchanged(&cases[0].f); prev != nil || err != nil {
		t.Errorf("checksum-all trusted an mtime (%v)", err)
	}
}

// storedBytes sums the bytes a backup stored itself (extents without a reference).
func storedBytes(m *Manifest) int64 {
	var n int64
	for _, f := range m.FileList {
		for _, e := range f.Extents {
			if e.Backup == "" {
				n += e.Length
			}
		}
	}
	return n
}

// checkPages checks that every extent of a relation file carries the keyed hash of each of
// its pages, as the bytes it stands for hash with key, and the page tree of those bytes as
// its digest.
func checkPages(t *testing.T, key []byte, f File, content []byte) {
	t.Helper()
	ph := &pageHasher{key: key}
	var off int64
	for i, e := range f.Extents {
		piece := content[off : off+e.Length]
		if want := ph.keyed(pageDigests(nil, piece)); !bytes.Equal(e.Pages, want) {
			t.Fatalf("%s: extent %d: page hashes %x, want %x", f.Path, i, e.Pages, want)
		}
		if !e.PageTree || e.SHA256 != PieceDigest(e, piece) {
			t.Fatalf("%s: extent %d: page tree %v, digest %x: not the page tree of its bytes", f.Path, i, e.PageTree, e.SHA256)
		}
		off += e.Length
	}
}

// asFormat1 rewrites the extents of m's file i, whose content is content, as a manifest of
// format 1 has them: the plain SHA-256 of each piece, and page hashes (when withPages) of
// the pages themselves.
func asFormat1(m *Manifest, i int, content []byte, withPages bool) {
	m.Format = 1
	m.FileList[i].Extents = slices.Clone(m.FileList[i].Extents)
	var off int64
	for j := range m.FileList[i].Extents {
		e := &m.FileList[i].Extents[j]
		piece := content[off : off+e.Length]
		e.SHA256, e.PageTree, e.Pages = sha256.Sum256(piece), false, nil
		if withPages {
			for p := 0; p+PageSize <= len(piece); p += PageSize {
				h := sha256.Sum256(append(slices.Clone(m.PageKey), piece[p:p+PageSize]...))
				e.Pages = append(e.Pages, h[:PageHashSize]...)
			}
		}
		off += e.Length
	}
}

func TestIncrementalStoresOnlyTheChangedPagesOfARelationFile(t *testing.T) {
	r := memRepo(t)
	const bundle = 1 << 20
	rng := rand.New(rand.NewPCG(3, 4))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	const rel, other = "base/5/16384", "pg_xact/0000"
	paths := []string{rel, other}
	v1 := map[string][]byte{rel: random(20 * ChunkSize), other: random(2 * ChunkSize)}
	full := storeFiles(t, r, "A", nil, bundle, paths, v1)
	if len(full.PageKey) != pageKeySize {
		t.Fatalf("page key of %d bytes", len(full.PageKey))
	}
	checkPages(t, full.PageKey, full.FileList[0], v1[rel])
	if full.FileList[1].Extents[0].Pages != nil {
		t.Fatal("a file that is not a relation got page hashes")
	}

	touch := func(b []byte, pages ...int) {
		for _, p := range pages {
			b[p*PageSize+100] ^= 0xff
		}
	}
	// Pages 40 and 41 are adjacent (one stored run), 100 and 159 (the last) alone, 3 too;
	// the other file changes one byte and is stored by the chunk.
	v2 := map[string][]byte{rel: bytes.Clone(v1[rel]), other: bytes.Clone(v1[other])}
	touch(v2[rel], 3, 40, 41, 100, 159)
	touch(v2[other], 1)
	incr1 := storeFiles(t, r, "B", newBase(full, false), bundle, paths, v2)
	if got, want := storedBytes(incr1), int64(5*PageSize+ChunkSize); got != want {
		t.Fatalf("incr stored %d bytes, want %d: five changed pages and one chunk of the other file", got, want)
	}
	if !bytes.Equal(incr1.PageKey, full.PageKey) {
		t.Fatal("the incremental did not inherit its parent's page key")
	}
	for _, f := range incr1.FileList {
		if got := reassemble(t, r, "B", f); !bytes.Equal(got, v2[f.Path]) {
			t.Fatalf("%s: incremental reassembles to other bytes", f.Path)
		}
	}
	checkPages(t, incr1.PageKey, incr1.FileList[0], v2[rel])

	// A second incremental: page 42 changes, beside pages B stored (the chunk's pieces now
	// come from A, B and C, each pointing at the backup that holds the bytes), and the file
	// grows by three pages, in a chunk the parent does not have.
	v3 := map[string][]byte{rel: append(bytes.Clone(v2[rel]), random(3*PageSize)...), other: v2[other]}
	touch(v3[rel], 42)
	incr2 := storeFiles(t, r, "C", newBase(incr1, false), bundle, paths, v3)
	if got := storedBytes(incr2); got != 4*PageSize {
		t.Fatalf("second incr stored %d bytes, want one changed page and three new ones", got)
	}
	for _, f := range incr2.FileList {
		if got := reassemble(t, r, "C", f); !bytes.Equal(got, v3[f.Path]) {
			t.Fatalf("%s: second incremental reassembles to other bytes", f.Path)
		}
	}
	checkPages(t, incr2.PageKey, incr2.FileList[0], v3[rel])
	if got := incr2.References; len(got) != 2 || got[0] != "A" || got[1] != "B" {
		t.Fatalf("references %v, want [A B]", got)
	}
	// A diff against A stores every page changed since A.
	diff := storeFiles(t, r, "D", newBase(full, false), bundle, []string{rel}, v3)
	if got := storedBytes(diff); got != 9*PageSize {
		t.Fatalf("diff stored %d bytes, want six changed pages and three new ones", got)
	}
	if got := reassemble(t, r, "D", diff.FileList[0]); !bytes.Equal(got, v3[rel]) {
		t.Fatal("diff reassembles to other bytes")
	}

	// A parent of format 1, written before page hashes or with page hashes of the pages
	// themselves (and plain SHA-256 digests): the unchanged chunks are taken from it
	// (compared by the plain SHA-256) and gain page trees and page hashes for the next
	// backup; the changed ones are stored whole.
	for _, withPages := range []bool{false, true} {
		old := *full
		old.FileList = []File{full.FileList[0]}
		asFormat1(&old, 0, v1[rel], withPages)
		if !withPages {
			old.PageKey = nil
		}
		label := map[bool]string{false: "E", true: "F"}[withPages]
		fromOld := storeFiles(t, r, label, newBase(&old, false), bundle, []string{rel}, v2)
		if got := storedBytes(fromOld); got != 4*ChunkSize {
			t.Fatalf("incr of a format-1 parent (page hashes %v) stored %d bytes, want four chunks", withPages, got)
		}
		if got := reassemble(t, r, label, fromOld.FileList[0]); !bytes.Equal(got, v2[rel]) {
			t.Fatal("incr of an old parent reassembles to other bytes")
		}
		checkPages(t, fromOld.PageKey, fromOld.FileList[0], v2[rel])
	}
}

// A page hash that matches although the page changed (forged here in the parent's manifest)
// makes a reference to stale bytes; the reference carries the checksums of the bytes read,
// so reading it back fails instead of returning the parent's page.
func TestIncrementalPageHashMatchCannotRestoreStaleBytes(t *testing.T) {
	r := memRepo(t)
	rng := rand.New(rand.NewPCG(5, 6))
	v1 := make([]byte, 2*ChunkSize)
	for i := range v1 {
		v1[i] = byte(rng.Uint32())
	}
	const rel = "base/5/16385"
	full := storeFiles(t, r, "A", nil, 1<<20, []string{rel}, map[string][]byte{rel: v1})
	v2 := bytes.Clone(v1)
	v2[2*PageSize] ^= 1 // page 2 changes
	v2[3*PageSize] ^= 1 // page 3 changes, and its hash is forged to match
	ph := &pageHasher{key: full.PageKey}
	forged := ph.keyed(pageDigests(nil, v2[3*PageSize:4*PageSize]))
	copy(full.FileList[0].Extents[0].Pages[3*PageHashSize:], forged)
	incr := storeFiles(t, r, "B", newBase(full, false), 1<<20, []string{rel}, map[string][]byte{rel: v2})
	if got := storedBytes(incr); got != PageSize {
		t.Fatalf("stored %d bytes, want the one page whose hash differs", got)
	}
	if _, err := tryReassemble(r, "B", incr.FileList[0]); err == nil {
		t.Fatal("a reference to stale bytes read back without a checksum error")
	}
}
