// Package storagetest is the conformance suite every storage.Backend driver passes.
//
//	func TestConformance(t *testing.T) { storagetest.Run(t, func(t *testing.T) storage.Backend { ... }) }
//
// The factory returns a fresh, empty backend for each subtest (for example a new prefix in a
// shared bucket) and arranges its cleanup with t.Cleanup.
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"testing"

	"github.com/pgharbor/pgharbor/storage"
)

// Factory makes a fresh empty backend for one subtest.
type Factory func(t *testing.T) storage.Backend

// Options tune the suite for slow backends.
type Options struct {
	// LargeSize is the size of the big round-trip object; 100 MiB by default.
	LargeSize int64
	// ManyKeys is the number of keys in the listing test; 1200 by default (more than one
	// 1000-key page of S3 and GCS listings).
	ManyKeys int
	// Writers is the number of concurrent IfNotExists writers; 8 by default.
	Writers int
}

// Run runs the whole suite with default options.
func Run(t *testing.T, newBackend Factory) { RunWith(t, newBackend, Options{}) }

// RunWith runs the whole suite.
func RunWith(t *testing.T, newBackend Factory, o Options) {
	if o.LargeSize == 0 {
		o.LargeSize = 100 << 20
	}
	if o.ManyKeys == 0 {
		o.ManyKeys = 1200
	}
	if o.Writers == 0 {
		o.Writers = 8
	}
	t.Run("RoundTripSizes", func(t *testing.T) { testRoundTrip(t, newBackend(t)) })
	t.Run("RoundTripLargeStreamed", func(t *testing.T) { testLarge(t, newBackend(t), o.LargeSize) })
	t.Run("RangedReads", func(t *testing.T) { testRanges(t, newBackend(t)) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, newBackend(t)) })
	t.Run("PutReplacesWithoutIfNotExists", func(t *testing.T) { testReplace(t, newBackend(t)) })
	t.Run("IfNotExistsRefusesAndKeepsOriginal", func(t *testing.T) { testIfNotExists(t, newBackend(t)) })
	t.Run("IfNotExistsConcurrentExactlyOneWins", func(t *testing.T) { testConcurrentIfNotExists(t, newBackend(t), o.Writers) })
	t.Run("FailedPutStoresNothing", func(t *testing.T) { testFailedPut(t, newBackend(t)) })
	t.Run("ListPrefixes", func(t *testing.T) { testListPrefixes(t, newBackend(t)) })
	t.Run("ListManyKeys", func(t *testing.T) { testListMany(t, newBackend(t), o.ManyKeys) })
	t.Run("ListStopsOnCallbackError", func(t *testing.T) { testListStops(t, newBackend(t)) })
	t.Run("DeleteIdempotent", func(t *testing.T) { testDelete(t, newBackend(t)) })
	t.Run("DeleteManyRemovesExactlyTheKeys", func(t *testing.T) { testDeleteMany(t, newBackend(t), o.ManyKeys) })
	t.Run("InvalidKeysRefused", func(t *testing.T) { testInvalidKeys(t, newBackend(t)) })
}

func put(t *testing.T, b storage.Backend, key string, data []byte, opts storage.PutOptions) error {
	t.Helper()
	if opts.Size == 0 && len(data) != 0 {
		opts.Size = int64(len(data))
	}
	return b.Put(context.Background(), key, bytes.NewReader(data), opts)
}

func mustPut(t *testing.T, b storage.Backend, key string, data []byte) {
	t.Helper()
	if err := put(t, b, key, data, storage.PutOptions{Size: int64(len(data))}); err != nil {
		t.Fatalf("put %s (%d bytes): %v", key, len(data), err)
	}
}

func mustGet(t *testing.T, b storage.Backend, key string, off, n int64) []byte {
	t.Helper()
	rc, err := b.Get(context.Background(), key, off, n)
	if err != nil {
		t.Fatalf("get %s [%d,%d): %v", key, off, n, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return data
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func testRoundTrip(t *testing.T, b storage.Backend) {
	for _, n := range []int{0, 1, 1000, 1 << 20, 5<<20 + 3} {
		key := fmt.Sprintf("rt/obj-%d", n)
		data := randBytes(t, n)
		mustPut(t, b, key, data)
		got := mustGet(t, b, key, 0, -1)
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: got %d bytes back, want %d identical bytes", key, len(got), n)
		}
		info, err := b.Stat(context.Background(), key)
		if err != nil {
			t.Fatalf("stat %s: %v", key, err)
		}
		if info.Size != int64(n) || info.Key != key {
			t.Fatalf("stat %s: got %+v, want size %d", key, info, n)
		}
	}
}

// patternReader yields size pseudo-random bytes without holding them in memory.
type patternReader struct {
	remaining int64
	state     uint64
}

func (p *patternReader) Read(buf []byte) (int, error) {
	if p.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(buf)) > p.remaining {
		buf = buf[:p.remaining]
	}
	for i := range buf {
		p.state = p.state*6364136223846793005 + 1442695040888963407
		buf[i] = byte(p.state >> 56)
	}
	p.remaining -= int64(len(buf))
	return len(buf), nil
}

func testLarge(t *testing.T, b storage.Backend, size int64) {
	ctx := context.Background()
	h := sha256.New()
	src := io.TeeReader(&patternReader{remaining: size, state: 42}, h)
	// Size unknown (-1) forces the streaming path (multipart on S3).
	if err := b.Put(ctx, "large/object", src, storage.PutOptions{Size: -1}); err != nil {
		t.Fatalf("put large: %v", err)
	}
	want := h.Sum(nil)
	rc, err := b.Get(ctx, "large/object", 0, -1)
	if err != nil {
		t.Fatalf("get large: %v", err)
	}
	defer rc.Close()
	h2 := sha256.New()
	n, err := io.Copy(h2, rc)
	if err != nil {
		t.Fatalf("read large: %v", err)
	}
	if n != size || !bytes.Equal(h2.Sum(nil), want) {
		t.Fatalf("large object: read %d bytes (want %d), checksum match %v", n, size, bytes.Equal(h2.Sum(nil), want))
	}
	// A range read deep inside the large object.
	p := &patternReader{remaining: size, state: 42}
	if _, err := io.CopyN(io.Discard, p, size/2); err != nil {
		t.Fatal(err)
	}
	wantMid := make([]byte, 4096)
	if _, err := io.ReadFull(p, wantMid); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, b, "large/object", size/2, 4096); !bytes.Equal(got, wantMid) {
		t.Fatalf("range in large object differs")
	}
}

func testRanges(t *testing.T, b storage.Backend) {
	data := randBytes(t, 10000)
	mustPut(t, b, "ranges/obj", data)
	cases := []struct{ off, n, wantOff, wantEnd int64 }{
		{0, -1, 0, 10000},
		{0, 1, 0, 1},
		{1, 9999, 1, 10000},
		{5000, -1, 5000, 10000},
		{9999, 1, 9999, 10000},
		{9990, 100, 9990, 10000}, // cut at the end
		{1234, 0, 1234, 1234},
		{10000, -1, 10000, 10000}, // at the end: empty
	}
	for _, c := range cases {
		got := mustGet(t, b, "ranges/obj", c.off, c.n)
		if !bytes.Equal(got, data[c.wantOff:c.wantEnd]) {
			t.Errorf("get [%d,+%d): got %d bytes, want %d", c.off, c.n, len(got), c.wantEnd-c.wantOff)
		}
	}
}

func testNotFound(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	if _, err := b.Get(ctx, "missing/key", 0, -1); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("get missing: got %v, want ErrNotFound", err)
	}
	if _, err := b.Stat(ctx, "missing/key"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("stat missing: got %v, want ErrNotFound", err)
	}
	if _, err := b.Get(ctx, "missing/key", 10, 5); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("ranged get missing: got %v, want ErrNotFound", err)
	}
	ok, err := storage.Exists(ctx, b, "missing/key")
	if err != nil || ok {
		t.Errorf("exists missing: %v %v", ok, err)
	}
}

func testReplace(t *testing.T, b storage.Backend) {
	mustPut(t, b, "replace/obj", []byte("first"))
	mustPut(t, b, "replace/obj", []byte("second, longer"))
	if got := mustGet(t, b, "replace/obj", 0, -1); string(got) != "second, longer" {
		t.Fatalf("got %q", got)
	}
}

func testIfNotExists(t *testing.T, b storage.Backend) {
	if err := put(t, b, "ine/obj", []byte("original"), storage.PutOptions{IfNotExists: true}); err != nil {
		t.Fatalf("first if-not-exists put: %v", err)
	}
	for _, body := range [][]byte{[]byte("different"), []byte("original"), randBytes(t, 6<<20)} {
		err := put(t, b, "ine/obj", body, storage.PutOptions{IfNotExists: true, Size: int64(len(body))})
		if !errors.Is(err, storage.ErrExists) {
			t.Fatalf("second if-not-exists put (%d bytes): got %v, want ErrExists", len(body), err)
		}
		if !storage.IsPermanent(err) {
			t.Fatalf("ErrExists must be permanent")
		}
	}
	// Unknown size takes the streaming path on drivers that have one.
	err := b.Put(context.Background(), "ine/obj", bytes.NewReader(randBytes(t, 6<<20)), storage.PutOptions{IfNotExists: true, Size: -1})
	if !errors.Is(err, storage.ErrExists) {
		t.Fatalf("streamed if-not-exists put: got %v, want ErrExists", err)
	}
	if got := mustGet(t, b, "ine/obj", 0, -1); string(got) != "original" {
		t.Fatalf("object changed to %d bytes", len(got))
	}
}

func testConcurrentIfNotExists(t *testing.T, b storage.Backend, writers int) {
	for round := 0; round < 3; round++ {
		key := fmt.Sprintf("race/obj-%d", round)
		var wg sync.WaitGroup
		errs := make([]error, writers)
		bodies := make([][]byte, writers)
		for i := range bodies {
			bodies[i] = []byte(fmt.Sprintf("writer %d of round %d", i, round))
		}
		start := make(chan struct{})
		for i := 0; i < writers; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				<-start
				errs[i] = b.Put(context.Background(), key, bytes.NewReader(bodies[i]), storage.PutOptions{IfNotExists: true, Size: int64(len(bodies[i]))})
			}(i)
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil:
				if winner >= 0 {
					t.Fatalf("round %d: writers %d and %d both won", round, winner, i)
				}
				winner = i
			case errors.Is(err, storage.ErrExists):
			default:
				t.Fatalf("round %d: writer %d: unexpected error %v", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no writer won", round)
		}
		if got := mustGet(t, b, key, 0, -1); !bytes.Equal(got, bodies[winner]) {
			t.Fatalf("round %d: stored %q, winner wrote %q", round, got, bodies[winner])
		}
	}
}

type failingReader struct {
	r    io.Reader
	left int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, errors.New("source failed on purpose")
	}
	if len(p) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= n
	return n, err
}

func testFailedPut(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	for _, size := range []int{1000, 12 << 20} {
		key := fmt.Sprintf("failed/obj-%d", size)
		src := &failingReader{r: bytes.NewReader(randBytes(t, size+100)), left: size}
		err := b.Put(ctx, key, src, storage.PutOptions{Size: -1})
		if err == nil {
			t.Fatalf("put with failing reader (%d bytes then error) succeeded", size)
		}
		if ok, err := storage.Exists(ctx, b, key); err != nil || ok {
			t.Fatalf("failed put left an object behind (exists=%v, err=%v)", ok, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.Put(cctx, "failed/cancelled", bytes.NewReader([]byte("x")), storage.PutOptions{Size: 1}); err == nil {
		t.Fatalf("put with cancelled context succeeded")
	}
	if ok, _ := storage.Exists(ctx, b, "failed/cancelled"); ok {
		t.Fatalf("cancelled put left an object behind")
	}
}

func listKeys(t *testing.T, b storage.Backend, prefix string) []string {
	t.Helper()
	var keys []string
	err := b.List(context.Background(), prefix, func(info storage.ObjectInfo) error {
		keys = append(keys, info.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	return keys
}

func testListPrefixes(t *testing.T, b storage.Backend) {
	keys := []string{"a/b/c", "a/b/d", "a/bc", "a/c/x", "ab/x", "b"}
	for _, k := range keys {
		mustPut(t, b, k, []byte(k))
	}
	cases := map[string][]string{
		"":     keys,
		"a/":   {"a/b/c", "a/b/d", "a/bc", "a/c/x"},
		"a/b":  {"a/b/c", "a/b/d", "a/bc"},
		"a/b/": {"a/b/c", "a/b/d"},
		"a":    {"a/b/c", "a/b/d", "a/bc", "a/c/x", "ab/x"},
		"zzz":  nil,
	}
	for prefix, want := range cases {
		got := listKeys(t, b, prefix)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("list %q: got %v, want %v", prefix, got, want)
		}
	}
	var sizes []int64
	_ = b.List(context.Background(), "a/b/", func(info storage.ObjectInfo) error {
		sizes = append(sizes, info.Size)
		return nil
	})
	if fmt.Sprint(sizes) != "[5 5]" {
		t.Errorf("list sizes: %v", sizes)
	}
}

func testListMany(t *testing.T, b storage.Backend, n int) {
	want := putMany(t, b, "many", n)
	mustPut(t, b, "manyother/x", []byte("x"))
	got := listKeys(t, b, "many/")
	if !sort.StringsAreSorted(got) {
		t.Errorf("list not in lexical order")
	}
	if len(got) != n || got[0] != want[0] || got[n-1] != want[n-1] {
		t.Fatalf("list many: got %d keys, want %d", len(got), n)
	}
}

// putMany stores n one-byte objects dir/00000 … and returns their keys in order.
func putMany(t *testing.T, b storage.Backend, dir string, n int) []string {
	t.Helper()
	want := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var mu sync.Mutex
	var firstErr error
	for i := 0; i < n; i++ {
		want[i] = fmt.Sprintf("%s/%05d", dir, i)
		wg.Add(1)
		sem <- struct{}{}
		go func(k string) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := b.Put(context.Background(), k, bytes.NewReader([]byte("v")), storage.PutOptions{Size: 1}); err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
		}(want[i])
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("put: %v", firstErr)
	}
	return want
}

func testListStops(t *testing.T, b storage.Backend) {
	for i := 0; i < 5; i++ {
		mustPut(t, b, fmt.Sprintf("stop/%d", i), []byte("x"))
	}
	stop := errors.New("stop here")
	calls := 0
	err := b.List(context.Background(), "stop/", func(storage.ObjectInfo) error {
		calls++
		if calls == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 2 {
		t.Fatalf("list returned %v after %d calls, want the callback's error after 2", err, calls)
	}
}

func testDelete(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	mustPut(t, b, "del/obj", []byte("x"))
	if err := b.Delete(ctx, "del/obj"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := b.Stat(ctx, "del/obj"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat after delete: %v", err)
	}
	if err := b.Delete(ctx, "del/obj"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if err := b.Delete(ctx, "del/never-existed"); err != nil {
		t.Fatalf("delete of missing key: %v", err)
	}
	// A deleted key can be written again with IfNotExists.
	if err := put(t, b, "del/obj", []byte("y"), storage.PutOptions{IfNotExists: true}); err != nil {
		t.Fatalf("if-not-exists put after delete: %v", err)
	}
}

// testDeleteMany deletes every other key of n (more than one S3 DeleteObjects request at the
// default size) plus keys that never existed, through storage.DeleteMany (the backend's batch
// call when it has one), and checks that exactly the other half remains.
func testDeleteMany(t *testing.T, b storage.Backend, n int) {
	ctx := context.Background()
	keys := putMany(t, b, "batch", n)
	var drop, keep []string
	for i, k := range keys {
		if i%2 == 0 {
			drop = append(drop, k)
		} else {
			keep = append(keep, k)
		}
	}
	drop = append(drop, "batch/never-existed", "batchother/never-existed")
	if err := storage.DeleteMany(ctx, b, drop, 4); err != nil {
		t.Fatalf("delete many: %v", err)
	}
	got := listKeys(t, b, "batch/")
	if fmt.Sprint(got) != fmt.Sprint(keep) {
		t.Fatalf("after deleting %d of %d keys: %d remain, want %d", len(drop)-2, n, len(got), len(keep))
	}
	// Deleting the same keys again is harmless.
	if err := storage.DeleteMany(ctx, b, drop, 4); err != nil {
		t.Fatalf("second delete many: %v", err)
	}
	if err := storage.DeleteMany(ctx, b, []string{keep[0], "bad//key"}, 4); err == nil {
		t.Errorf("delete many with an invalid key succeeded")
	}
	if err := storage.DeleteMany(ctx, b, nil, 4); err != nil {
		t.Errorf("delete many of no keys: %v", err)
	}
}

func testInvalidKeys(t *testing.T, b storage.Backend) {
	for _, k := range []string{"", "/abs", "a/../b", "a//b", "trailing/", "./x"} {
		err := b.Put(context.Background(), k, bytes.NewReader([]byte("x")), storage.PutOptions{Size: 1})
		if err == nil {
			t.Errorf("put %q succeeded", k)
		}
	}
}
