package retention

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/fault"
	"github.com/pgharbor/pgharbor/storage/mem"
	"github.com/pgharbor/pgharbor/wal"
)

// The tests below exercise Expire's ordering and recovery logic on the in-memory store; the
// end-to-end tests in internal/e2e run it against real clusters, the filesystem and S3.

func openRepo(t *testing.T, b storage.Backend) *repo.Repo {
	t.Helper()
	c, err := codec.New(codec.Config{Compression: "none", Encryption: "none"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.New(b, c, "main")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fakeRepo holds 4 backups on timeline 1 (one a day, starting in segments 2, 10, 18, 26),
// 3 bundles each, and WAL segments 1..40.
func fakeRepo(t *testing.T) *mem.Backend {
	t.Helper()
	ctx := context.Background()
	b := mem.New()
	r := openRepo(t, b)
	if _, err := r.Init(ctx, repo.Identity{WALSegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	for i, startSeg := range []uint64{2, 10, 18, 26} {
		bb := bk(fmt.Sprintf("2026120%dT000000Z", i+1), days(4-i), 1, startSeg)
		sum := backup.Summary{Format: backup.ManifestFormat, Label: bb.Label, Type: "full", Timeline: 1, StopTimeline: 1,
			StartLSN: bb.StartLSN.String(), StopLSN: bb.StopLSN.String(), StartTime: bb.StartTime, StopTime: bb.StopTime, WALSegmentSize: segSize, Bundles: 3}
		prefix := backup.BackupPrefix(r, bb.Label)
		for n := 0; n < 3; n++ {
			put(t, r, backup.BundleKey(r, bb.Label, n), "bundle")
		}
		put(t, r, path.Join(prefix, "backup_manifest"), "{}")
		if err := r.PutJSON(ctx, path.Join(prefix, "summary"), sum, true); err != nil {
			t.Fatal(err)
		}
		if err := r.PutJSON(ctx, backup.ManifestKey(r, bb.Label), backup.Manifest{Summary: sum}, true); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range segs(1, 1, 40) {
		k, _ := wal.ObjectPath(f.Name)
		put(t, r, r.Key(k), "wal")
	}
	return b
}

func put(t *testing.T, r *repo.Repo, key, body string) {
	t.Helper()
	if err := r.PutBytes(context.Background(), key, []byte(body), false); err != nil {
		t.Fatal(err)
	}
}

func keys(t *testing.T, b storage.Backend) []string {
	t.Helper()
	var out []string
	if err := b.List(context.Background(), "", func(o storage.ObjectInfo) error { out = append(out, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func clone(t *testing.T, b storage.Backend) *mem.Backend {
	t.Helper()
	c := mem.New()
	for _, k := range keys(t, b) {
		data, err := storage.ReadAll(context.Background(), b, k)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Put(context.Background(), k, bytes.NewReader(data), storage.PutOptions{Size: -1}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func backupLabels(ks []string) []string {
	var out []string
	for _, k := range ks {
		if rest, ok := strings.CutPrefix(k, "main/backups/"); ok {
			l, _, _ := strings.Cut(rest, "/")
			if !slices.Contains(out, l) {
				out = append(out, l)
			}
		}
	}
	return out
}

func TestExpireDryRunDeletesNothingAndApplyDeletesExactlyThePlan(t *testing.T) {
	ctx := context.Background()
	b := fakeRepo(t)
	r := openRepo(t, b)
	before := keys(t, b)
	p := Policy{FullCount: 2}
	dry, err := Expire(ctx, r, p, ExpireOptions{DryRun: true, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(t, b); !slices.Equal(got, before) {
		t.Fatalf("dry run changed the repository")
	}
	// 2 backups of 6 objects and segments 1..17 (the third backup starts in segment 18).
	if dry.DeletedBackups != 2 || dry.DeletedWAL != 17 || dry.DeletedObjects != 2*6+17 || !slices.Equal(dry.Dropped(), []string{"20261201T000000Z", "20261202T000000Z"}) {
		t.Fatalf("dry run report: %d backups, %d WAL, %d objects, dropped %v", dry.DeletedBackups, dry.DeletedWAL, dry.DeletedObjects, dry.Dropped())
	}
	rep, err := Expire(ctx, r, p, ExpireOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if rep.DeletedBackups != dry.DeletedBackups || rep.DeletedWAL != dry.DeletedWAL || rep.DeletedObjects != dry.DeletedObjects || rep.FreedBytes != dry.FreedBytes {
		t.Fatalf("apply did %+v, the dry run said %+v", rep, dry)
	}
	after := keys(t, b)
	if got := backupLabels(after); !slices.Equal(got, []string{"20261203T000000Z", "20261204T000000Z"}) {
		t.Fatalf("backups left: %v", got)
	}
	var walLeft []string
	for _, k := range after {
		if strings.HasPrefix(k, "main/wal/") {
			walLeft = append(walLeft, path.Base(k))
		}
		if strings.HasPrefix(k, "main/locks/") {
			t.Errorf("lock left behind: %s", k)
		}
	}
	if len(walLeft) != 23 || walLeft[0] != "000000010000000000000012" {
		t.Fatalf("WAL left: %d from %v", len(walLeft), walLeft[:1])
	}
	// Nothing more to do: a second expire deletes nothing.
	again, err := Expire(ctx, r, p, ExpireOptions{Now: now})
	if err != nil || again.DeletedObjects != 0 {
		t.Fatalf("second expire: %v, deleted %d", err, again.DeletedObjects)
	}
}

// An expire that stops part-way (here: a store failing one delete; in internal/e2e: SIGKILL)
// leaves the half-deleted backup without its manifest and with its expiring marker; the
// next expire finishes it and ends in the same state as one uninterrupted expire.
func TestInterruptedExpireIsFinishedByTheNext(t *testing.T) {
	ctx := context.Background()
	p := Policy{FullCount: 2}
	ref := fakeRepo(t)
	want := clone(t, ref)
	if _, err := Expire(ctx, openRepo(t, want), p, ExpireOptions{Now: now}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		match    func(string) bool
		finished []string // what the second expire must recognise as left half-deleted
	}{
		{"at a bundle of the second dropped backup", func(k string) bool { return k == "main/backups/20261202T000000Z/data/00000001" }, []string{"20261202T000000Z"}},
		{"at the expiring marker of the first", func(k string) bool { return strings.HasSuffix(k, "20261201T000000Z/expiring") }, []string{"20261201T000000Z"}},
		{"during the WAL", func(k string) bool { return strings.HasSuffix(k, "000000010000000000000005") }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner := clone(t, ref)
			fb := fault.New(inner)
			fb.Add(fault.Rule{Op: fault.OpDelete, Match: tc.match, Err: storage.Permanent(errors.New("disk on fire"))})
			_, err := Expire(ctx, openRepo(t, fb), p, ExpireOptions{Now: now})
			if err == nil || !strings.Contains(err.Error(), "disk on fire") {
				t.Fatalf("interrupted expire: %v", err)
			}
			cat, err := backup.LoadCatalog(ctx, openRepo(t, inner))
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range cat.Backups {
				if slices.Contains(tc.finished, b.Label) {
					t.Errorf("the half-deleted backup %s is still listed as complete", b.Label)
				}
			}
			var half []string
			for _, inc := range cat.Incomplete {
				if !inc.Expiring || inc.Running {
					t.Errorf("incomplete after the interruption: %+v", inc)
				}
				half = append(half, inc.Label)
			}
			if !slices.Equal(half, tc.finished) {
				t.Errorf("half-deleted backups %v, want %v", half, tc.finished)
			}
			rep, err := Expire(ctx, openRepo(t, inner), p, ExpireOptions{Now: now})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rep.Finished, tc.finished) {
				t.Errorf("second expire finished %v, want %v", rep.Finished, tc.finished)
			}
			if got, w := keys(t, inner), keys(t, want); !slices.Equal(got, w) {
				t.Fatalf("after the interrupted and a second expire:\n%v\nwant\n%v", got, w)
			}
		})
	}
}

func TestExpireAndBackupExcludeEachOther(t *testing.T) {
	ctx := context.Background()
	b := fakeRepo(t)
	r := openRepo(t, b)
	l, err := backup.AcquireLock(ctx, r, backup.LockName, "20261205T000000Z", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Expire(ctx, r, Policy{FullCount: 1}, ExpireOptions{Now: now}); !errors.Is(err, backup.ErrLocked) || !strings.Contains(err.Error(), "backup 20261205T000000Z") {
		t.Fatalf("expire during a backup: %v", err)
	}
	// A dry run only reads: it works while a backup runs.
	if _, err := Expire(ctx, r, Policy{FullCount: 1}, ExpireOptions{Now: now, DryRun: true}); err != nil {
		t.Fatalf("dry run during a backup: %v", err)
	}
	l.Release(ctx)
	// And a backup cannot take the lock while expire holds it: OnDelete runs under the lock.
	var during error
	_, err = Expire(ctx, r, Policy{FullCount: 3}, ExpireOptions{Now: now, OnDelete: func(string, int) {
		if during == nil {
			_, during = backup.AcquireLock(ctx, r, backup.LockName, "20261205T000000Z", time.Minute)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(during, backup.ErrLocked) || !strings.Contains(during.Error(), "expire on host") {
		t.Fatalf("backup during expire: %v", during)
	}
}

func TestPinnedBackupSurvivesAndUnpinLetsItGo(t *testing.T) {
	ctx := context.Background()
	b := fakeRepo(t)
	r := openRepo(t, b)
	if err := backup.Pin(ctx, r, "20261201T000000Z", "before the upgrade"); err != nil {
		t.Fatal(err)
	}
	if err := backup.Pin(ctx, r, "20991231T000000Z", ""); !errors.Is(err, backup.ErrNoBackup) {
		t.Fatalf("pin of a missing backup: %v", err)
	}
	rep, err := Expire(ctx, r, Policy{FullCount: 1}, ExpireOptions{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if got := backupLabels(keys(t, b)); !slices.Equal(got, []string{"20261201T000000Z", "20261204T000000Z"}) {
		t.Fatalf("backups left: %v", got)
	}
	if rep.Backups[0].Reason != "kept: pinned" || rep.Timelines[0].FirstKept != "000000010000000000000002" {
		t.Fatalf("pinned backup: %+v, WAL %+v", rep.Backups[0], rep.Timelines[0])
	}
	cat, _ := backup.LoadCatalog(ctx, r)
	if !cat.IsPinned("20261201T000000Z") {
		t.Fatalf("catalog does not show the pin: %+v", cat.Pinned)
	}
	if err := backup.Unpin(ctx, r, "20261201T000000Z"); err != nil {
		t.Fatal(err)
	}
	if _, err := Expire(ctx, r, Policy{FullCount: 1}, ExpireOptions{Now: now}); err != nil {
		t.Fatal(err)
	}
	if got := backupLabels(keys(t, b)); !slices.Equal(got, []string{"20261204T000000Z"}) {
		t.Fatalf("after unpin: %v", got)
	}
}

// A pin and an expire racing: whichever writes its marker second sees the other's.
func TestPinRacingExpire(t *testing.T) {
	ctx := context.Background()
	b := fakeRepo(t)
	r := openRepo(t, b)
	// Expire marked the backup first: the pin fails and leaves no pin object behind.
	if err := r.PutJSON(ctx, backup.ExpiringKey(r, "20261201T000000Z"), backup.NewMarker("expire"), false); err != nil {
		t.Fatal(err)
	}
	if err := backup.Pin(ctx, r, "20261201T000000Z", ""); !errors.Is(err, backup.ErrExpiring) {
		t.Fatalf("pin of a backup being expired: %v", err)
	}
	if ok, _ := storage.Exists(ctx, b, backup.PinKey(r, "20261201T000000Z")); ok {
		t.Fatalf("failed pin left its object")
	}
	// The pin comes after expire planned: expire sees it after marking and keeps the backup.
	b2 := fakeRepo(t)
	r2 := openRepo(t, b2)
	pinned := false
	rep, err := Expire(ctx, r2, Policy{FullCount: 1}, ExpireOptions{Now: now, OnDelete: func(what string, _ int) {
		if !pinned {
			pinned = true
			// While the first dropped backup (the newest: dependents go first) is being
			// deleted, someone pins the oldest.
			if err := r2.PutJSON(ctx, backup.PinKey(r2, "20261201T000000Z"), backup.NewMarker(""), false); err != nil {
				t.Error(err)
			}
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Skipped, []string{"20261201T000000Z"}) {
		t.Fatalf("skipped %v", rep.Skipped)
	}
	if got := backupLabels(keys(t, b2)); !slices.Equal(got, []string{"20261201T000000Z", "20261204T000000Z"}) {
		t.Fatalf("backups left: %v", got)
	}
	if ok, _ := storage.Exists(ctx, b2, backup.ExpiringKey(r2, "20261201T000000Z")); ok {
		t.Fatalf("the kept backup still carries the expiring marker")
	}
	// Its WAL stays too: from its start in segment 2, not from the newest backup's.
	if rep.Timelines[0].FirstKept != "000000010000000000000002" || rep.DeletedWAL != 1 {
		t.Fatalf("WAL after a pin during expire: %+v, deleted %d", rep.Timelines[0], rep.DeletedWAL)
	}
	if ok, _ := storage.Exists(ctx, b2, "main/wal/0000000100000000/000000010000000000000002"); !ok {
		t.Fatalf("the WAL of the backup pinned during expire is gone")
	}
	for _, bd := range rep.Backups {
		if bd.Label == "20261201T000000Z" && bd.Reason != "kept: pinned while expire ran" {
			t.Errorf("reason %q", bd.Reason)
		}
	}
}
