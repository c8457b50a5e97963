package wal

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/fs"
)

const testSysid = 7312345678901234567

// countingBackend counts Puts that store something.
type countingBackend struct {
	storage.Backend
	puts atomic.Int32
}

func (c *countingBackend) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	err := c.Backend.Put(ctx, key, r, opts)
	if err == nil {
		c.puts.Add(1)
	}
	return err
}

func fetchBytes(t *testing.T, r *repo.Repo, name string) []byte {
	t.Helper()
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	if err := Fetch(context.Background(), r, name, dest, FetchOptions{}); err != nil {
		t.Fatalf("fetch %s: %v", name, err)
	}
	b, err := os.ReadFile(dest)
	must(t, err)
	return b
}

func TestPushSameBytesTwiceSucceeds(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	pgdata := fakePGData(t, testSysid)
	name, data := addSegment(t, pgdata, testSysid, Segment{1, 3}, true)
	writer := fsRepo(t, t.TempDir(), codecFor(t, k, false)) // writers hold only recipients
	opts := PushOptions{DataDir: pgdata, SpoolDir: t.TempDir()}
	for i := range 2 {
		if err := Push(ctx, writer, filepath.Join("pg_wal", name), opts); err != nil {
			t.Fatalf("push #%d: %v", i+1, err)
		}
	}
	reader, err := repo.New(writer.Backend(), codecFor(t, k, true), "test")
	must(t, err)
	if got := fetchBytes(t, reader, name); !bytes.Equal(got, data) {
		t.Fatal("fetched segment differs")
	}
	id, err := writer.ReadIdentity(ctx)
	must(t, err)
	if id.SystemIdentifier != "7312345678901234567" || id.PGVersion != 150000 || id.WALSegmentSize != testSegSize {
		t.Fatalf("identity not attached: %+v", id)
	}
}

func TestPushDifferentBytesRefusedAndStoredCopyUnchanged(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	pgdata := fakePGData(t, testSysid)
	name, data := addSegment(t, pgdata, testSysid, Segment{1, 3}, false)
	dir := t.TempDir()
	writer := fsRepo(t, dir, codecFor(t, k, false))
	opts := PushOptions{DataDir: pgdata, SpoolDir: t.TempDir()}
	walPath := filepath.Join(pgdata, "pg_wal", name)
	must(t, Push(ctx, writer, walPath, opts))
	p, _ := ObjectPath(name)
	stored := filepath.Join(dir, "test", p)
	before, err := os.ReadFile(stored)
	must(t, err)

	other := fakeSegment(testSysid, Segment{1, 3}, testSegSize, 99)
	must(t, os.WriteFile(walPath, other, 0o600))
	err = Push(ctx, writer, walPath, opts)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("push of different bytes: %v, want ErrConflict", err)
	}
	if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "kept") {
		t.Errorf("message does not name the segment or say the copy is kept: %v", err)
	}
	after, err := os.ReadFile(stored)
	must(t, err)
	if !bytes.Equal(before, after) {
		t.Fatal("the stored copy changed")
	}
	reader, _ := repo.New(writer.Backend(), codecFor(t, k, true), "test")
	if !bytes.Equal(fetchBytes(t, reader, name), data) {
		t.Fatal("fetched content is not the first push")
	}
}

func TestPushRefusesAnotherServersRepository(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	r := fsRepo(t, t.TempDir(), codecFor(t, k, false))
	a := fakePGData(t, testSysid)
	name, _ := addSegment(t, a, testSysid, Segment{1, 1}, false)
	must(t, Push(ctx, r, filepath.Join(a, "pg_wal", name), PushOptions{DataDir: a, Parallel: -1}))
	b := fakePGData(t, testSysid+1)
	name, _ = addSegment(t, b, testSysid+1, Segment{1, 2}, false)
	err := Push(ctx, r, filepath.Join(b, "pg_wal", name), PushOptions{DataDir: b, Parallel: -1})
	if !errors.Is(err, repo.ErrIdentityMismatch) {
		t.Fatalf("push from another server: %v, want ErrIdentityMismatch", err)
	}
}

func TestPushRefusesMisnamedOrForeignSegment(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	r := fsRepo(t, t.TempDir(), codecFor(t, k, false))
	pgdata := fakePGData(t, testSysid)
	// The content of segment 5 under the name of segment 4.
	name := Segment{1, 4}.name(testSegSize)
	must(t, os.WriteFile(filepath.Join(pgdata, "pg_wal", name), fakeSegment(testSysid, Segment{1, 5}, testSegSize, 1), 0o600))
	if err := Push(ctx, r, filepath.Join("pg_wal", name), PushOptions{DataDir: pgdata}); err == nil || !strings.Contains(err.Error(), "starts at") {
		t.Fatalf("misnamed segment: %v", err)
	}
	// A segment of another system in this PGDATA.
	name, _ = addSegment(t, pgdata, testSysid+1, Segment{1, 6}, false)
	if err := Push(ctx, r, filepath.Join("pg_wal", name), PushOptions{DataDir: pgdata}); err == nil || !strings.Contains(err.Error(), "not this server") {
		t.Fatalf("foreign segment: %v", err)
	}
	// A truncated segment.
	name = Segment{1, 7}.name(testSegSize)
	must(t, os.WriteFile(filepath.Join(pgdata, "pg_wal", name), fakeSegment(testSysid, Segment{1, 7}, testSegSize, 1)[:4096], 0o600))
	if err := Push(ctx, r, filepath.Join("pg_wal", name), PushOptions{DataDir: pgdata}); err == nil {
		t.Fatal("truncated segment pushed")
	}
	if err := Push(ctx, r, "pg_wal/RECOVERYXLOG", PushOptions{DataDir: pgdata}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("bad name: %v", err)
	}
}

func TestPushParallelBatchesReadySegments(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	b, err := fs.New(t.TempDir())
	must(t, err)
	cb := &countingBackend{Backend: b}
	r := openRepo(t, cb, codecFor(t, k, false))
	pgdata := fakePGData(t, testSysid)
	var names []string
	for no := uint64(1); no <= 7; no++ {
		name, _ := addSegment(t, pgdata, testSysid, Segment{1, no}, true)
		names = append(names, name)
	}
	spool := t.TempDir()
	opts := PushOptions{DataDir: pgdata, SpoolDir: spool, Parallel: 4, RepoID: SpoolID(cb.Location(), "test")}
	cb.puts.Store(0)
	must(t, Push(ctx, r, filepath.Join("pg_wal", names[0]), opts))
	// 1 identity update (first push) + 5 segments.
	if n := cb.puts.Load(); n != 6 {
		t.Errorf("first call stored %d objects, want 6 (identity + segments 1-5)", n)
	}
	for i, name := range names {
		p, _ := ObjectPath(name)
		ok, err := storage.Exists(ctx, b, r.Key(p))
		must(t, err)
		if ok != (i < 5) {
			t.Errorf("%s archived = %v after the first call", name, ok)
		}
	}
	// PostgreSQL marks each .done after its own call; the next calls return via the spool.
	markDone := func(name string) {
		must(t, os.Rename(filepath.Join(pgdata, "pg_wal", "archive_status", name+".ready"), filepath.Join(pgdata, "pg_wal", "archive_status", name+".done")))
	}
	markDone(names[0])
	cb.puts.Store(0)
	for i, name := range names[1:4] {
		if i == 0 {
			// What the CLI asks before it even opens the repository.
			done, err := PushedAhead("test", filepath.Join("pg_wal", name), opts)
			if err != nil || !done {
				t.Fatalf("PushedAhead(%s) = %v, %v", name, done, err)
			}
		} else {
			must(t, Push(ctx, r, filepath.Join("pg_wal", name), opts))
		}
		if _, err := os.Stat(filepath.Join(spool, opts.RepoID, "pushed", name)); !os.IsNotExist(err) {
			t.Errorf("marker of %s not removed: %v", name, err)
		}
		markDone(name)
	}
	if n := cb.puts.Load(); n != 0 {
		t.Errorf("calls for segments pushed ahead stored %d objects", n)
	}
	// A marker does not hide a changed file: segment 5 now differs from what was pushed.
	must(t, os.WriteFile(filepath.Join(pgdata, "pg_wal", names[4]), fakeSegment(testSysid, Segment{1, 5}, testSegSize, 42), 0o600))
	if err := Push(ctx, r, filepath.Join("pg_wal", names[4]), opts); !errors.Is(err, ErrConflict) {
		t.Fatalf("changed file after a marker: %v, want ErrConflict", err)
	}
}
