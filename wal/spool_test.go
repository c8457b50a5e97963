package wal

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestSpoolsOfTwoRepositoriesWithOneClusterNameAreApart(t *testing.T) {
	a := SpoolID("file:///var/lib/pgharbor-a", "main")
	b := SpoolID("file:///var/lib/pgharbor-b", "main")
	c := SpoolID("s3://bucket/x\x00http://127.0.0.1:9000", "main")
	if a == b || a == c || b == c {
		t.Fatalf("spool ids collide: %s %s %s", a, b, c)
	}
	if a != SpoolID("file:///var/lib/pgharbor-a", "main") {
		t.Fatal("spool id is not stable")
	}
}

// A segment whose header names another database system is refused: handed to PostgreSQL,
// it ends recovery there, silently.
func TestFetchRefusesSegmentOfAnotherSystem(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	r := fsRepo(t, t.TempDir(), codecFor(t, k, true))
	names, _ := pushFake(t, r, 2)
	other := fakePGData(t, testSysid+1) // the cluster being recovered is another system
	dest := filepath.Join(other, "pg_wal", "RECOVERYXLOG")
	err := Fetch(ctx, r, names[0], dest, FetchOptions{Prefetch: -1})
	if !errors.Is(err, ErrForeignSegment) {
		t.Fatalf("fetch into another system's pg_wal: %v, want ErrForeignSegment", err)
	}
	if _, serr := os.Stat(dest); !os.IsNotExist(serr) {
		t.Fatalf("a refused segment reached %s", dest)
	}
	t.Log(err)
	own := fakePGData(t, testSysid)
	if err := Fetch(ctx, r, names[0], filepath.Join(own, "pg_wal", "RECOVERYXLOG"), FetchOptions{Prefetch: -1}); err != nil {
		t.Fatalf("fetch into the own system's pg_wal: %v", err)
	}
}

// What another cluster (or repository) left in a spool is never handed over: the spool is
// the repository's own, and every segment's header is checked before use.
func TestFetchDropsSpooledSegmentOfAnotherSystem(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	r := fsRepo(t, t.TempDir(), codecFor(t, k, true))
	names, datas := pushFake(t, r, 3)
	root := t.TempDir()
	id := SpoolID(r.Backend().Location(), r.Cluster())
	pre := filepath.Join(root, id, "prefetch")
	must(t, os.MkdirAll(pre, 0o700))
	foreign := fakeSegment(testSysid+7, Segment{1, 2}, testSegSize, 99)
	must(t, os.WriteFile(filepath.Join(pre, names[1]), foreign, 0o600))
	pgdata := fakePGData(t, testSysid)
	dest := filepath.Join(pgdata, "pg_wal", "RECOVERYXLOG")
	opts := FetchOptions{SpoolDir: root, Prefetch: 1, StartPrefetcher: func(string, string) error { return nil }}
	must(t, Fetch(ctx, r, names[1], dest, opts))
	got, err := os.ReadFile(dest)
	must(t, err)
	if !bytes.Equal(got, datas[1]) {
		t.Fatal("the spooled segment of another system was handed over")
	}
	if _, err := os.Stat(filepath.Join(pre, names[1])); !os.IsNotExist(err) {
		t.Fatal("the foreign segment is still in the spool")
	}
	// ClearPrefetched empties the spool of this repository only.
	must(t, os.WriteFile(filepath.Join(pre, names[2]), datas[2], 0o600))
	otherDir := filepath.Join(root, SpoolID("file:///elsewhere", r.Cluster()), "prefetch")
	must(t, os.MkdirAll(otherDir, 0o700))
	must(t, os.WriteFile(filepath.Join(otherDir, names[2]), datas[2], 0o600))
	must(t, ClearPrefetched(root, id))
	if _, err := os.Stat(filepath.Join(pre, names[2])); !os.IsNotExist(err) {
		t.Fatal("ClearPrefetched left a segment")
	}
	if _, err := os.Stat(filepath.Join(otherDir, names[2])); err != nil {
		t.Fatal("ClearPrefetched touched another repository's spool")
	}
}
