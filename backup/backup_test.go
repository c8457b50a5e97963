package backup

import (
	"bytes"
	"context"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/fs"
	"github.com/pgharbor/pgharbor/storage/mem"
)

// storedObject returns the bytes stored under key, as they are (sealed).
func storedObject(t *testing.T, b storage.Backend, key string) []byte {
	t.Helper()
	rc, err := b.Get(context.Background(), key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	obj, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func memRepo(t *testing.T) *repo.Repo {
	t.Helper()
	return repoOn(t, mem.New())
}

// pipelineBackends are the two ways a pipeline hands sealed bundles to a backend: held
// whole until an upload takes them (an object store; here the in-memory backend), and
// streamed through a pipe while they are sealed (a local filesystem, storage.Streamer).
func pipelineBackends(t *testing.T) map[string]func() storage.Backend {
	return map[string]func() storage.Backend{
		"held":     func() storage.Backend { return mem.New() },
		"streamed": func() storage.Backend { return fsBackend(t) },
	}
}

func fsBackend(t testing.TB) storage.Backend {
	t.Helper()
	b, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !storage.StreamsPuts(b) {
		t.Fatal("the file backend does not say it streams")
	}
	return b
}

// repoOn is an unencrypted repository of cluster main on backend b.
func repoOn(t testing.TB, b storage.Backend) *repo.Repo {
	t.Helper()
	c, err := codec.New(codec.Config{Encryption: "none"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.New(b, c, "main")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A cancelled backup must end at once: the sealers, idle between bundles, once kept waiting
// for a bundle that never came, and the backup (and a server's shutdown) with them.
func TestPipelineEndsWhenItsContextIsCancelled(t *testing.T) {
	for name, backend := range pipelineBackends(t) {
		t.Run(name, func(t *testing.T) { testPipelineEndsWhenItsContextIsCancelled(t, repoOn(t, backend())) })
	}
}

func testPipelineEndsWhenItsContextIsCancelled(t *testing.T, r *repo.Repo) {
	ctx, cancel := context.WithCancel(context.Background())
	p := newPipeline(ctx, r, "L", 64<<10, 2, 2)
	data := make([]byte, 100<<10)
	if _, err := p.write(data, nil); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := feedPipeline(t, p, data, 100, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pipeline returned %v, want context.Canceled", err)
	}
}

// feedPipeline writes data into p up to n times (refilled by fill first, unless nil) until
// a write fails, then closes p and returns the first error. It fails the test when that
// takes over 10 s: a pipeline that fails or is cancelled must end at once.
func feedPipeline(t *testing.T, p *pipeline, data []byte, n int, fill func([]byte)) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < n && err == nil; i++ {
			if fill != nil {
				fill(data)
			}
			_, err = p.write(data, nil)
		}
		if _, cerr := p.close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the pipeline did not end within 10 s")
		return nil
	}
}

func TestPipelineBundlesSmallFilesAndSplitsLargeOnes(t *testing.T) {
	for name, backend := range pipelineBackends(t) {
		t.Run(name, func(t *testing.T) { testPipelineBundlesSmallFilesAndSplitsLargeOnes(t, repoOn(t, backend())) })
	}
}

func testPipelineBundlesSmallFilesAndSplitsLargeOnes(t *testing.T, r *repo.Repo) {
	ctx := context.Background()
	const bundle = 64 << 10
	p := newPipeline(ctx, r, "L", bundle, 2, 2)
	rng := rand.New(rand.NewPCG(7, 8))
	sizes := []int{0, 1, 100, 5000, bundle - 1, bundle, 3*bundle + 17, 10, 200000}
	var files [][]byte
	var extents [][]Extent
	for _, n := range sizes {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		var ex []Extent
		var err error
		// Feed in uneven chunks, as the tar reader does.
		for off := 0; off < n; {
			k := min(n-off, 1+rng.IntN(40000))
			if ex, err = p.write(data[off:off+k], ex); err != nil {
				t.Fatal(err)
			}
			off += k
		}
		files, extents = append(files, data), append(extents, ex)
	}
	bundles, err := p.close()
	if err != nil {
		t.Fatal(err)
	}
	var total int
	for _, n := range sizes {
		total += n
	}
	if want := (total + bundle - 1) / bundle; bundles != want {
		t.Fatalf("%d bundles for %d bytes, want %d", bundles, total, want)
	}
	decoded := map[int][]byte{}
	var stored int64
	for b := 0; b < bundles; b++ {
		data, err := r.GetBytes(ctx, BundleKey(r, "L", b))
		if err != nil {
			t.Fatal(err)
		}
		decoded[b] = data
		stored += int64(len(storedObject(t, r.Backend(), BundleKey(r, "L", b))))
	}
	if got := p.stored.Load(); got != stored {
		t.Errorf("the pipeline counted %d bytes stored, the bundles hold %d", got, stored)
	}
	for i, data := range files {
		var got []byte
		for _, e := range extents[i] {
			piece := decoded[e.Bundle][e.Offset : e.Offset+e.Length]
			if crc32.Checksum(piece, castagnoli) != e.CRC {
				t.Fatalf("file %d: extent %+v CRC mismatch", i, e)
			}
			got = append(got, piece...)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("file %d (%d bytes): reassembled %d bytes differ", i, len(data), len(got))
		}
		if len(data) > 0 && len(data) <= bundle/2 && len(extents[i]) > 2 {
			t.Fatalf("small file %d spread over %d extents", i, len(extents[i]))
		}
	}
}

func TestLockIsExclusiveAndStaleLocksAreTakenOver(t *testing.T) {
	ctx := context.Background()
	r := memRepo(t)
	l, err := AcquireLock(ctx, r, "backup", "A", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := AcquireLock(ctx, r, "backup", "B", time.Minute); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	cases := []struct {
		name string
		held lockInfo
		ok   bool
	}{
		{"dead process on this host", lockInfo{Host: host, PID: 1 << 30, Heartbeat: time.Now()}, true},
		{"live process on this host", lockInfo{Host: host, PID: os.Getpid(), Heartbeat: time.Now()}, false},
		{"other host, fresh heartbeat", lockInfo{Host: "elsewhere", PID: 1, Heartbeat: time.Now()}, false},
		{"other host, expired heartbeat", lockInfo{Host: "elsewhere", PID: 1, Heartbeat: time.Now().Add(-time.Hour)}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := r.PutJSON(ctx, lockKey(r, "backup"), c.held, false); err != nil {
				t.Fatal(err)
			}
			l, err := AcquireLock(ctx, r, "backup", "C", time.Minute)
			if c.ok != (err == nil) {
				t.Fatalf("acquire: %v (want ok=%v)", err, c.ok)
			}
			if l != nil {
				l.Release(ctx)
			} else {
				r.Backend().Delete(ctx, lockKey(r, "backup"))
			}
		})
	}
}

func TestCatalogListsOnlyBackupsWithAManifest(t *testing.T) {
	ctx := context.Background()
	r := memRepo(t)
	now := time.Now().UTC()
	done := Summary{Format: ManifestFormat, Label: "20260101T000000Z", StartTime: now.Add(-time.Hour)}
	if err := r.PutJSON(ctx, BackupPrefix(r, done.Label)+"/summary", done, true); err != nil {
		t.Fatal(err)
	}
	if err := r.PutJSON(ctx, BackupPrefix(r, done.Label)+"/manifest", Manifest{Summary: done}, true); err != nil {
		t.Fatal(err)
	}
	if err := r.PutBytes(ctx, BundleKey(r, "20260102T000000Z", 0), []byte("half a backup"), false); err != nil {
		t.Fatal(err)
	}
	cat, err := LoadCatalog(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(cat.Backups) != 1 || cat.Backups[0].Label != done.Label {
		t.Fatalf("backups %+v", cat.Backups)
	}
	if len(cat.Incomplete) != 1 || cat.Incomplete[0].Label != "20260102T000000Z" || cat.Incomplete[0].Running {
		t.Fatalf("incomplete %+v", cat.Incomplete)
	}
	removed, err := Cleanup(ctx, r)
	if err != nil || len(removed) != 1 {
		t.Fatalf("cleanup: %v %v", removed, err)
	}
	if cat, _ := LoadCatalog(ctx, r); len(cat.Incomplete) != 0 || len(cat.Backups) != 1 {
		t.Fatalf("after cleanup %+v", cat)
	}
}

func TestCrossCheckCatchesAMismatchWithTheServersManifest(t *testing.T) {
	files := []File{{Path: "base/1/1", Type: "file", Size: 3, CRC: crc32.Checksum([]byte("abc"), castagnoli)}}
	good := []byte(`{"Files":[{"Path":"base/1/1","Size":3,"Checksum-Algorithm":"CRC32C","Checksum":"b73f4b36"}]}`)
	if err := crossCheck(files, good); err != nil {
		t.Fatalf("matching manifest: %v", err)
	}
	for _, bad := range []string{
		`{"Files":[{"Path":"base/1/1","Size":4,"Checksum-Algorithm":"CRC32C","Checksum":"b73f4b36"}]}`,
		`{"Files":[{"Path":"base/1/1","Size":3,"Checksum-Algorithm":"CRC32C","Checksum":"00000000"}]}`,
		`{"Files":[{"Path":"base/1/2","Size":3,"Checksum-Algorithm":"CRC32C","Checksum":"b73f4b36"}]}`,
		`{"Files":[{"Path":"base/1/1","Size":3,"Checksum-Algorithm":"CRC32C","Checksum":"b73f4b36"},{"Path":"x","Size":1}]}`,
	} {
		if err := crossCheck(files, []byte(bad)); err == nil {
			t.Errorf("mismatch accepted: %s", bad)
		}
	}
}

// The pipeline seals each bundle by how its samples compress: random bytes stored as they
// are, pages that keep more than half their size under zstd at the dense level, the rest at
// the repository's level; every bundle reads back as it was written, and the summary's
// counters say how many went each way.
func TestPipelineSealsEachBundleByHowItCompresses(t *testing.T) {
	for name, backend := range pipelineBackends(t) {
		t.Run(name, func(t *testing.T) { testPipelineSealsEachBundleByHowItCompresses(t, backend()) })
	}
}

func testPipelineSealsEachBundleByHowItCompresses(t *testing.T, be storage.Backend) {
	ctx := context.Background()
	const bundle = 256 << 10
	cfg := codec.Config{Encryption: "none", Level: 3, DenseLevel: 1}
	c, err := codec.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.New(be, c, "main")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	random := func(b []byte) {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	text := func(b []byte) {
		words := []string{"aid ", "bid ", "tid ", "balance ", "filler ", "history ", "delta "}
		for i := 0; i < len(b); {
			i += copy(b[i:], words[rng.IntN(len(words))])
		}
	}
	// Each 8 KiB page: a compressible third (tuple headers and text), then random bytes.
	dense := func(b []byte) {
		for p := 0; p < len(b); p += 8 << 10 {
			text(b[p : p+(8<<10)/3])
			random(b[p+(8<<10)/3 : p+8<<10])
		}
	}
	bundles := []struct {
		name string
		fill func([]byte)
		want codec.SealMode
	}{{"random", random, codec.SealStored}, {"text", text, codec.SealCompressed}, {"dense", dense, codec.SealDense}}

	p := newPipeline(ctx, r, "L", bundle, 2, 2)
	var datas [][]byte
	for _, b := range bundles {
		data := make([]byte, bundle)
		b.fill(data)
		if _, err := p.write(data, nil); err != nil {
			t.Fatal(err)
		}
		datas = append(datas, data)
	}
	n, err := p.close()
	if err != nil {
		t.Fatal(err)
	}
	if n != len(bundles) {
		t.Fatalf("%d bundles, want %d", n, len(bundles))
	}
	if got := p.uncompressed.Load(); got != 1 {
		t.Errorf("%d bundles stored uncompressed, want 1", got)
	}
	if got := p.dense.Load(); got != 1 {
		t.Errorf("%d bundles compressed at the dense level, want 1", got)
	}
	for i, b := range bundles {
		sealed := storedObject(t, r.Backend(), BundleKey(r, "L", i))
		// What a sealer of the same settings makes of the bundle in the expected mode: the
		// unencrypted envelope is deterministic.
		s, err := c.NewDataSealer()
		if err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		if err := s.Seal(&want, datas[i], b.want); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if !bytes.Equal(sealed, want.Bytes()) {
			t.Errorf("%s bundle: sealed as %d bytes, not as the %d bytes of mode %d", b.name, len(sealed), want.Len(), b.want)
		}
		got, err := r.GetBytes(ctx, BundleKey(r, "L", i))
		if err != nil || !bytes.Equal(got, datas[i]) {
			t.Errorf("%s bundle: read back %d bytes, %v", b.name, len(got), err)
		}
	}
}
