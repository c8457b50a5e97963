package retry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/fault"
	"github.com/pgharbor/pgharbor/storage/fs"
	"github.com/pgharbor/pgharbor/storage/mem"
	"github.com/pgharbor/pgharbor/storage/retry"
	"github.com/pgharbor/pgharbor/storage/storagetest"
)

var fast = retry.Policy{Attempts: 4, Base: time.Millisecond, Max: 5 * time.Millisecond}

func TestConformanceThroughRetry(t *testing.T) {
	storagetest.RunWith(t, func(t *testing.T) storage.Backend { return retry.New(mem.New(), fast) },
		storagetest.Options{LargeSize: 8 << 20})
}

func TestTransientPutFailuresAreRetried(t *testing.T) {
	f := fault.New(mem.New())
	f.Add(fault.Rule{Op: fault.OpPut, Times: 2, AfterBytes: 10})
	b := retry.New(f, fast)
	data := bytes.Repeat([]byte("abc"), 1000)
	if err := b.Put(context.Background(), "k", bytes.NewReader(data), storage.PutOptions{}); err != nil {
		t.Fatalf("put: %v", err)
	}
	got, err := storage.ReadAll(context.Background(), b, "k")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("stored %d bytes, err %v", len(got), err)
	}
	if n := f.Calls(fault.OpPut); n != 3 {
		t.Fatalf("put called %d times, want 3", n)
	}
}

func TestPermanentErrorsAreNotRetried(t *testing.T) {
	f := fault.New(mem.New())
	f.Add(fault.Rule{Op: fault.OpStat, Err: storage.Permanent(errors.New("access denied"))})
	b := retry.New(f, fast)
	if _, err := b.Stat(context.Background(), "k"); err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("got %v", err)
	}
	if n := f.Calls(fault.OpStat); n != 1 {
		t.Fatalf("stat called %d times, want 1", n)
	}
	f.Reset()
	if _, err := b.Stat(context.Background(), "missing"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("got %v", err)
	}
	if n := f.Calls(fault.OpStat); n != 2 {
		t.Fatalf("not-found was retried: %d calls", n)
	}
}

func TestGivesUpAfterAttempts(t *testing.T) {
	f := fault.New(mem.New())
	f.Add(fault.Rule{Op: fault.OpDelete})
	b := retry.New(f, fast)
	if err := b.Delete(context.Background(), "k"); !errors.Is(err, fault.ErrInjected) {
		t.Fatalf("got %v", err)
	}
	if n := f.Calls(fault.OpDelete); n != 4 {
		t.Fatalf("delete called %d times, want 4", n)
	}
}

func TestReadResumesWhereItBroke(t *testing.T) {
	inner := mem.New()
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	if err := inner.Put(context.Background(), "obj", bytes.NewReader(data), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	f := fault.New(inner)
	f.Add(fault.Rule{Op: fault.OpRead, Times: 2, AfterBytes: 300000})
	b := retry.New(f, fast)
	rc, err := b.Get(context.Background(), "obj", 100, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, data[100:]) {
		t.Fatalf("resumed read returned %d bytes, content equal %v", len(got), bytes.Equal(got, data[100:]))
	}
	if n := f.Calls(fault.OpGet); n != 3 {
		t.Fatalf("get called %d times, want 3 (first + 2 resumes)", n)
	}
}

func TestCancelledContextStopsRetrying(t *testing.T) {
	f := fault.New(mem.New())
	f.Add(fault.Rule{Op: fault.OpStat})
	b := retry.New(f, retry.Policy{Attempts: 100, Base: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.Stat(ctx, "k")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
}

// A retrying backend streams Puts exactly when the backend it wraps does, so that a backup
// over a local filesystem still streams its bundles through the retry layer.
func TestStreamsPutsIsTheInnerBackends(t *testing.T) {
	local, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !storage.StreamsPuts(retry.New(local, fast)) {
		t.Error("retry over the file backend does not stream")
	}
	if storage.StreamsPuts(retry.New(mem.New(), fast)) {
		t.Error("retry over the in-memory backend streams")
	}
}
