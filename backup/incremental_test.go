package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"hash/crc32"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// storeFiles writes files (path → content) through a pipeline of backup label with parent
// base (nil: full) and returns the manifest it would write.
func storeFiles(t *testing.T, r *repo.Repo, label string, b *base, bundle int, paths []string, content map[string][]byte) *Manifest {
	t.Helper()
	p := newPipeline(context.Background(), r, label, bundle, 2, 2)
	p.base = b
	m := &Manifest{Summary: Summary{Label: label, StartTime: time.Now()}}
	for _, path := range paths {
		f := File{Path: path, Type: "file", Size: int64(len(content[path]))}
		n, err := p.readFile(bytes.NewReader(content[path]), &f)
		if err != nil || n != f.Size {
			t.Fatalf("%s: read %d of %d: %v", path, n, f.Size, err)
		}
		m.FileList = append(m.FileList, f)
	}
	var err error
	if m.Bundles, err = p.close(); err != nil {
		t.Fatal(err)
	}
	if err := p.setDigests(m.FileList); err != nil {
		t.Fatal(err)
	}
	m.References = references(m.FileList)
	m.Reused = p.reused.Load()
	return m
}

// reassemble reads a file's bytes back from the bundles its extents name, checking each
// extent's CRC-32C and SHA-256.
func reassemble(t *testing.T, r *repo.Repo, label string, f File) []byte {
	t.Helper()
	var out []byte
	for _, e := range f.Extents {
		data, err := r.GetBytes(context.Background(), BundleKey(r, e.Owner(label), e.Bundle))
		if err != nil {
			t.Fatal(err)
		}
		piece := data[e.Offset : e.Offset+e.Length]
		if crc32.Checksum(piece, castagnoli) != e.CRC || Digest(sha256.Sum256(piece)) != e.SHA256 {
			t.Fatalf("%s: extent %+v does not match its checksums", f.Path, e)
		}
		out = append(out, piece...)
	}
	if extentsCRC(f.Extents) != f.CRC {
		t.Fatalf("%s: whole-file CRC does not combine from its extents", f.Path)
	}
	return out
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
		if got := b.unchanged(&c.f) != nil; got != c.want {
			t.Errorf("%s size %d mtime %s: unchanged %v, want %v", c.f.Path, c.f.Size, c.f.ModTime, got, c.want)
		}
	}
	if newBase(m, false).unchanged(&cases[0].f) != nil {
		t.Error("checksum-all trusted an mtime")
	}
}
