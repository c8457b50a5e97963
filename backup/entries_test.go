package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/fs"
)

// A file's manifest entry leaves memory as soon as the sealers have hashed the bundles it lies
// in, not when the backup ends: however large the cluster, the backup holds the entries of
// the files in the last few bundles only. The entries written out make the same manifest,
// every file reassembling from its extents with their digests and page hashes.
func TestManifestEntriesLeaveMemoryAsBundlesAreHashed(t *testing.T) {
	r := memRepo(t)
	// One sealer hashes the bundles in order, so how many files may wait is fixed; with more,
	// it depends on how long one sealer is kept off a core while the others go on.
	const bundle, workers = 64 << 10, 1
	pages, err := newPageHasher(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := newPipeline(context.Background(), r, "A", bundle, workers, 2)
	p.pages = pages
	defer p.files.close()
	rng := rand.New(rand.NewPCG(3, 4))
	content := map[string][]byte{}
	var paths []string
	// Unhashed bundles are the one being filled, the ones the sealer holds and those queued
	// for it (rawBundles in all, beside the one being filled); files of at least 40 KiB in 64
	// KiB bundles touch at most 3 per bundle.
	maxPending := (rawBundles(workers) + 1) * 3
	for i := range 300 {
		path := fmt.Sprintf("base/5/%d", 16384+i) // a relation file: its pages are hashed
		n := (5 + rng.IntN(8)) * 8192
		if i%3 == 0 {
			path = fmt.Sprintf("pg_xact/%04d", i) // hashed whole
			n = 40<<10 + rng.IntN(60<<10)
		}
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(rng.Uint32() >> 28) // compressible
		}
		f := File{Path: path, Type: "file", Mode: 0o600, Size: int64(n), ModTime: time.Unix(1733270400, 0).UTC()}
		if got, err := p.readFile(bytes.NewReader(data), &f); err != nil || got != int64(n) {
			t.Fatalf("%s: read %d of %d: %v", path, got, n, err)
		}
		if err := p.addFile(f); err != nil {
			t.Fatal(err)
		}
		if len(p.files.pending) > maxPending {
			t.Fatalf("after %d files, %d wait for their sums (at most %d may)", i+1, len(p.files.pending), maxPending)
		}
		// Sums are held for the hashed bundles of the pending files only.
		p.mu.Lock()
		held := len(p.sums)
		p.mu.Unlock()
		if held > maxPending {
			t.Fatalf("after %d files, the sums of %d bundles are held", i+1, held)
		}
		content[path], paths = data, append(paths, path)
	}
	if p.files.out.n < 300-maxPending {
		t.Fatalf("%d of 300 entries written out before the end", p.files.out.n)
	}
	if _, err := p.close(); err != nil {
		t.Fatal(err)
	}
	fe, err := p.endFiles()
	if err != nil {
		t.Fatal(err)
	}
	if len(fe.pending) != 0 || p.sums != nil {
		t.Fatalf("%d files still pending, %d bundles' sums held after the end", len(fe.pending), len(p.sums))
	}
	var files []File
	if err := json.NewDecoder(fe.entries()).Decode(&files); err != nil {
		t.Fatal(err)
	}
	if len(files) != len(paths) || len(fe.lean) != len(paths) {
		t.Fatalf("%d entries and %d files listed for %d files read", len(files), len(fe.lean), len(paths))
	}
	paged := 0
	for i, f := range files {
		if f.Path != paths[i] || fe.lean[i].Path != paths[i] || fe.lean[i].Extents != nil || fe.lean[i].CRC != f.CRC {
			t.Fatalf("entry %d is %s (listed as %s, CRC %x/%x), read as %s", i, f.Path, fe.lean[i].Path, fe.lean[i].CRC, f.CRC, paths[i])
		}
		got := reassemble(t, r, "A", f)
		if string(got) != string(content[f.Path]) {
			t.Fatalf("%s: reassembled %d bytes differ from the %d read", f.Path, len(got), len(content[f.Path]))
		}
		for _, e := range f.Extents {
			if e.PageTree {
				paged++
				if len(e.Pages) != int(e.Length/8192)*PageHashSize {
					t.Fatalf("%s: %d bytes of page hashes for %d bytes", f.Path, len(e.Pages), e.Length)
				}
			}
		}
	}
	if paged == 0 {
		t.Fatal("no extent carries page hashes")
	}

	// The manifest made from the entries is what json.Marshal makes of it, and reads back.
	m := &Manifest{Summary: Summary{Format: ManifestFormat, Label: "A", Type: TypeFull, Files: len(files)}, PageKey: pages.key}
	if err := writeManifestEntries(context.Background(), r, m, fe.entries()); err != nil {
		t.Fatal(err)
	}
	m.FileList = files
	want, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if stored, err := r.GetBytes(context.Background(), ManifestKey(r, "A")); err != nil || !bytes.Equal(stored, want) {
		t.Fatalf("stored manifest of %d bytes is not json.Marshal's %d (%v)", len(stored), len(want), err)
	}
	got, err := ReadManifest(context.Background(), r, "A")
	if err != nil {
		t.Fatal(err)
	}
	if back, _ := json.Marshal(got); !bytes.Equal(back, want) {
		t.Fatal("manifest read back differs")
	}
}

// Entries beyond the spill's memory go to a temporary file and come back in order, each as
// json.Marshal makes it, that of a 1 GB segment too (written out in pieces). Where no
// temporary file can be made, they stay in memory and come back the same.
func TestManifestEntriesSpillToATemporaryFile(t *testing.T) {
	for _, disk := range []bool{true, false} {
		t.Run(fmt.Sprintf("on disk %v", disk), func(t *testing.T) {
			tmp := t.TempDir()
			if !disk {
				tmp = filepath.Join(tmp, "missing")
			}
			t.Setenv("TMPDIR", tmp)
			spillEntries(t, disk)
		})
	}
}

func spillEntries(t *testing.T, disk bool) {
	p := newPipeline(context.Background(), memRepo(t), "A", 64<<10, 2, 2)
	defer p.files.close()
	const n = 60000 // about 6 MB of entries
	var segment File
	syntheticFiles(1, func(f File) { segment = f })
	segment.Extents[5].Backup = "20261201T000000Z"
	var want bytes.Buffer
	for i := range n {
		f := File{Path: fmt.Sprintf("base/5/%d_fsm", i), Type: "file", Mode: 0o600, ModTime: time.Unix(1733270400, 0).UTC()}
		if i == n/2 {
			f = segment
		}
		if err := p.addFile(f); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			want.WriteByte(',')
		}
		b, _ := json.Marshal(f)
		want.Write(b)
	}
	if _, err := p.close(); err != nil {
		t.Fatal(err)
	}
	fe, err := p.endFiles()
	if err != nil {
		t.Fatal(err)
	}
	if fe.json.OnDisk() != disk {
		t.Fatalf("%d bytes of entries on disk %v, want %v", fe.json.Size(), fe.json.OnDisk(), disk)
	}
	got, err := io.ReadAll(fe.entries())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(append([]byte{'['}, want.Bytes()...), ']')) {
		t.Fatalf("%d bytes of entries, not the %d json.Marshal makes", len(got), want.Len()+2)
	}
	if refs := fe.references(); len(refs) != 1 || refs[0] != "20261201T000000Z" {
		t.Fatalf("references %v", refs)
	}
}

// BenchmarkBackupEntriesMemory measures the live heap a backup's manifest entries take, from
// the first file read to the manifest stored, for a cluster of 8 and of 32 GB of relation files
// ("held": every entry kept until the end, as backups did before entries were written out).
func BenchmarkBackupEntriesMemory(b *testing.B) {
	ctx := context.Background()
	for _, gb := range []int{8, 32} {
		for _, held := range []bool{false, true} {
			name := fmt.Sprintf("%dGB", gb)
			if held {
				name += "-held"
			}
			b.Run(name, func(b *testing.B) {
				be, err := fs.New(b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				b.Setenv("TMPDIR", b.TempDir())
				r := repoOn(b, be)
				var peak uint64
				i := 0
				for b.Loop() {
					label := fmt.Sprintf("20261205T%06dZ", i)
					i++
					stop := livePeak()
					if err := storeSyntheticEntries(ctx, r, label, gb, held); err != nil {
						b.Fatal(err)
					}
					peak = max(peak, stop())
				}
				b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
			})
		}
	}
}

// storeSyntheticEntries passes the entries of syntheticFiles through a pipeline's file
// entries (or, held, keeps them all) and stores the manifest.
func storeSyntheticEntries(ctx context.Context, r *repo.Repo, label string, gb int, held bool) error {
	p := newPipeline(ctx, r, label, 4<<20, 1, 1)
	defer p.files.close()
	m := &Manifest{Summary: Summary{Format: ManifestFormat, Label: label, Type: TypeFull}, PageKey: make([]byte, 32)}
	var err error
	syntheticFiles(gb, func(f File) {
		if held {
			m.FileList = append(m.FileList, f)
		} else if err == nil {
			err = p.addFile(f)
		}
	})
	if err != nil {
		return err
	}
	if _, err := p.close(); err != nil {
		return err
	}
	if held {
		return writeManifestTo(ctx, r, m)
	}
	fe, err := p.endFiles()
	if err != nil {
		return err
	}
	return writeManifestEntries(ctx, r, m, fe.entries())
}

// A parent's extents set aside by base come back as they were, from memory and from the
// temporary file, and a damaged record is refused, never misread.
func TestBaseSetsParentExtentsAsideAndReadsThemBack(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	var files []File
	syntheticFiles(3, func(f File) { files = append(files, f) }) // beyond the spill's memory
	files[1].Extents[7].Backup, files[1].Extents[8].Backup = "20261201T000000Z", "20261202T000000Z"
	files[2].Extents[0].Pages, files[2].Extents[0].PageTree = nil, false
	files = append(files, File{Path: "PG_VERSION", Type: "file", Size: 3, CRC: 9, Extents: []Extent{{Bundle: 1 << 40, Offset: -1, Length: 3}}},
		File{Path: "empty", Type: "file"}, File{Path: "base", Type: "dir"})
	b := emptyBase(false, spillInMemory)
	defer b.close()
	for i := range files {
		if err := b.add(&files[i]); err != nil {
			t.Fatal(err)
		}
	}
	b.setParent(&Manifest{Summary: Summary{Label: "20261203T000000Z"}})
	if !b.extents.OnDisk() {
		t.Fatalf("%d bytes of extents held in memory", b.extents.Size())
	}
	for _, want := range files {
		got, err := b.file(fileKey{want.Tablespace, want.Path})
		if err != nil {
			t.Fatal(err)
		}
		if want.Type != "file" {
			if got != nil {
				t.Fatalf("%s (%s) listed as a file", want.Path, want.Type)
			}
			continue
		}
		wb, _ := json.Marshal(want)
		gb, _ := json.Marshal(got)
		if !bytes.Equal(wb, gb) {
			t.Fatalf("%s read back differs", want.Path)
		}
	}
	if f, err := b.file(fileKey{0, "missing"}); f != nil || err != nil {
		t.Fatalf("a file the parent lacks: %v, %v", f, err)
	}

	rec := appendExtents(nil, files[1].Extents[:10])
	for n := range len(rec) {
		if _, err := b.decodeExtents(rec[:n]); err == nil {
			t.Fatalf("a record cut to %d of %d bytes read without an error", n, len(rec))
		}
	}
	if _, err := b.decodeExtents(append(rec, 0)); err == nil {
		t.Fatal("a record with a byte too many read without an error")
	}
}

// BenchmarkParentBaseMemory measures the live heap an incremental backup's parent takes
// while it is read ("manifest": the whole manifest with page hashes, as backups held it
// before base set the extents aside).
func BenchmarkParentBaseMemory(b *testing.B) {
	ctx := context.Background()
	for _, gb := range []int{8, 32} {
		r, _ := syntheticRepo(b, gb)
		for _, whole := range []bool{false, true} {
			name := fmt.Sprintf("%dGB", gb)
			if whole {
				name += "-manifest"
			}
			b.Run(name, func(b *testing.B) {
				b.Setenv("TMPDIR", b.TempDir())
				var peak uint64
				for b.Loop() {
					stop := livePeak()
					if whole {
						if _, err := ReadManifest(ctx, r, "20261204T000000Z"); err != nil {
							b.Fatal(err)
						}
					} else {
						base := emptyBase(true, spillInMemory)
						if _, err := readManifestFiles(ctx, r, "20261204T000000Z", true, base.add); err != nil {
							b.Fatal(err)
						}
						if f, err := base.file(fileKey{0, "base/5/16384"}); err != nil || f == nil {
							b.Fatal(f, err)
						}
						base.close()
					}
					peak = max(peak, stop())
				}
				b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
			})
		}
	}
}
