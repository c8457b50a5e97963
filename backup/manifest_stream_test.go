package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/fs"
)

// syntheticManifest describes a full backup of gb GB of relation files (syntheticFiles).
func syntheticManifest(gb int) *Manifest {
	m := &Manifest{Summary: Summary{Format: ManifestFormat, Label: "20261204T000000Z", Type: TypeFull}, PageKey: make([]byte, 32)}
	syntheticFiles(gb, func(f File) { m.FileList = append(m.FileList, f) })
	return m
}

// syntheticFiles passes to add, one at a time, the entries of gb GB of relation files in 1 GB
// segments, cut into 128 KiB extents that each carry their page tree digest and 16 page
// hashes, as a local backup of such a cluster makes them.
func syntheticFiles(gb int, add func(File)) {
	const chunk, seg, bundle = 128 << 10, 1 << 30, 4 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	n := 0
	for i := 0; i < gb; i++ {
		f := File{Path: fmt.Sprintf("base/5/%d", 16384+i), Type: "file", Mode: 0o600, Size: seg, ModTime: time.Unix(1733270400, 0).UTC(), Chunk: chunk}
		for off := int64(0); off < seg; off += chunk {
			e := Extent{Bundle: n / (bundle / chunk), Offset: int64(n%(bundle/chunk)) * chunk, Length: chunk, CRC: rng.Uint32(), PageTree: true, Pages: make([]byte, chunk/8192*PageHashSize)}
			for j := range e.SHA256 {
				e.SHA256[j] = byte(rng.Uint32())
			}
			for j := range e.Pages {
				e.Pages[j] = byte(rng.Uint32())
			}
			f.Extents = append(f.Extents, e)
			n++
		}
		add(f)
	}
}

// A manifest is written and read one file at a time (encodeManifest, decodeManifest): the
// object holds exactly what json.Marshal makes of the manifest, reads back the same, an
// indented manifest of older pgharbor versions reads too, and a damaged or cut object is
// refused.
func TestManifestObjectIsJSONWrittenAndReadFileByFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	be, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := repoOn(t, be)
	big := syntheticManifest(1)
	big.Tablespaces = []Tablespace{{OID: 16400, Location: "/srv/ts"}}
	big.Annotations = map[string]string{"note": "<nightly> & \"quoted\""}
	big.FileList = append(big.FileList, File{Tablespace: 16400, Path: "PG_15_202209061/5/16401", Type: "file", Mode: 0o600, ModTime: time.Unix(1, 0).UTC()})
	for _, m := range []*Manifest{big, {Summary: Summary{Format: ManifestFormat, Label: "20261204T000001Z"}}, {Summary: Summary{Format: ManifestFormat, Label: "20261204T000002Z"}, FileList: []File{}}} {
		if err := writeManifestTo(ctx, r, m); err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := r.GetBytes(ctx, ManifestKey(r, m.Label))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(stored, want) {
			t.Fatalf("manifest %s: stored %d bytes, not json.Marshal's %d", m.Label, len(stored), len(want))
		}
		got, err := ReadManifest(ctx, r, m.Label)
		if err != nil {
			t.Fatal(err)
		}
		if back, _ := json.Marshal(got); !bytes.Equal(back, want) {
			t.Fatalf("manifest %s read back differs", m.Label)
		}
		if (got.FileList == nil) != (m.FileList == nil) {
			t.Fatalf("manifest %s: file list nil %v, written nil %v", m.Label, got.FileList == nil, m.FileList == nil)
		}
	}

	// A manifest as pgharbor wrote it before: indented JSON, sealed whole.
	old := syntheticManifest(1)
	old.Label = "20261204T000003Z"
	indented, err := json.MarshalIndent(old, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.PutBytes(ctx, ManifestKey(r, old.Label), indented, true); err != nil {
		t.Fatal(err)
	}
	got, err := ReadManifest(ctx, r, old.Label)
	if err != nil {
		t.Fatalf("indented manifest: %v", err)
	}
	want, _ := json.Marshal(old)
	if back, _ := json.Marshal(got); !bytes.Equal(back, want) {
		t.Fatal("indented manifest read back differs")
	}

	file := filepath.Join(dir, filepath.FromSlash(ManifestKey(r, big.Label)))
	orig, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for name, damaged := range map[string][]byte{
		"a byte flipped in the middle": func() []byte { b := bytes.Clone(orig); b[len(b)/2] ^= 0x10; return b }(),
		"cut short":                    orig[:len(orig)*2/3],
		"its trailer cut off":          orig[:len(orig)-2],
	} {
		if err := os.WriteFile(file, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadManifest(ctx, r, big.Label); err == nil {
			t.Errorf("manifest %s: read without an error", name)
		}
	}
}

// livePeak samples the live heap (as of the last collection) until stop is called and
// returns the largest value seen, in bytes above the live heap when it started.
func livePeak() (stop func() uint64) {
	base := liveHeap()
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	return func() uint64 {
		runtime.GC()
		close(done)
		if p := peak.Load(); p > base {
			return p - base
		}
		return 0
	}
}

// liveHeap returns the live heap after a collection.
func liveHeap() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// How much memory writing and reading a backup manifest takes beyond the manifest itself:
// reported as the largest live heap during each, above what was live before (the manifest
// being written, nothing for the read).
func BenchmarkManifestMemory(b *testing.B) {
	ctx := context.Background()
	m := syntheticManifest(8)
	// A filesystem repository: the memory backend would hold what was stored in the heap.
	be, err := fs.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	r := repoOn(b, be)
	old := debug.SetGCPercent(5) // collections often enough for the samples to see the peaks
	defer debug.SetGCPercent(old)
	var writePeak, readPeak, leanPeak uint64
	i := 0
	for b.Loop() {
		label := fmt.Sprintf("20261204T%06dZ", i)
		i++
		m.Label = label
		stop := livePeak()
		if err := writeManifestTo(ctx, r, m); err != nil {
			b.Fatal(err)
		}
		writePeak = max(writePeak, stop())
		for _, rd := range []struct {
			read func(context.Context, *repo.Repo, string) (*Manifest, error)
			peak *uint64
		}{{ReadManifest, &readPeak}, {ReadManifestWithoutPageHashes, &leanPeak}} {
			stop = livePeak()
			got, err := rd.read(ctx, r, label)
			if err != nil {
				b.Fatal(err)
			}
			*rd.peak = max(*rd.peak, stop())
			if len(got.FileList) != len(m.FileList) {
				b.Fatalf("read %d files, wrote %d", len(got.FileList), len(m.FileList))
			}
		}
	}
	b.ReportMetric(float64(writePeak)/(1<<20), "write-peak-MiB")
	b.ReportMetric(float64(readPeak)/(1<<20), "read-peak-MiB")
	b.ReportMetric(float64(leanPeak)/(1<<20), "read-no-pages-peak-MiB")
}
