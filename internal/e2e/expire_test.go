package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/internal/testserver"
	"github.com/pgharbor/pgharbor/storage"
	storagefs "github.com/pgharbor/pgharbor/storage/fs"
	"github.com/pgharbor/pgharbor/storage/s3"
	"github.com/pgharbor/pgharbor/wal"
)

type backupJSON struct {
	Label    string    `json:"label"`
	StartLSN string    `json:"start_lsn"`
	StopTime time.Time `json:"stop_time"`
	Timeline uint32    `json:"timeline"`
}

type expireJSON struct {
	DryRun      bool      `json:"dry_run"`
	WindowStart time.Time `json:"window_start"`
	Backups     []struct {
		Label  string `json:"label"`
		Keep   bool   `json:"keep"`
		Reason string `json:"reason"`
	} `json:"backups"`
	Timelines []struct {
		Timeline  uint32 `json:"timeline"`
		FirstKept string `json:"first_kept"`
		Dropped   int    `json:"dropped"`
		Reason    string `json:"reason"`
	} `json:"timelines"`
	Finished       []string `json:"finished"`
	DeletedBackups int      `json:"deleted_backups"`
	DeletedWAL     int      `json:"deleted_wal"`
}

func (e *env) backupJSON(pg *pgtest.Cluster) backupJSON {
	e.t.Helper()
	var b backupJSON
	if err := json.Unmarshal([]byte(e.must("backup", "--conn", pg.ConnString("postgres"), "--output", "json")), &b); err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) expire(args ...string) expireJSON {
	e.t.Helper()
	var x expireJSON
	out := e.must(append([]string{"expire", "--output", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &x); err != nil {
		e.t.Fatalf("expire output %q: %v", out, err)
	}
	return x
}

// repoKeys lists every object of a filesystem repository as its storage key.
func repoKeys(t *testing.T, root string) []string {
	t.Helper()
	var keys []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		keys = append(keys, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}

func backendKeys(t *testing.T, b storage.Backend) []string {
	t.Helper()
	var keys []string
	if err := b.List(context.Background(), "", func(o storage.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	return keys
}

// copyRepo copies every object of one backend into another, byte for byte.
func copyRepo(t *testing.T, from, to storage.Backend) {
	t.Helper()
	ctx := context.Background()
	for _, k := range backendKeys(t, from) {
		data, err := storage.ReadAll(ctx, from, k)
		if err != nil {
			t.Fatal(err)
		}
		if err := to.Put(ctx, k, bytes.NewReader(data), storage.PutOptions{Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
	}
}

// withConfig returns a copy of e whose config file is e's with the repository URL replaced
// and extra appended (same keys, same cluster).
func (e *env) withConfig(name, repoURL, extra string) *env {
	e.t.Helper()
	data, err := os.ReadFile(e.config)
	if err != nil {
		e.t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "  url: ") {
			lines[i] = "  url: " + repoURL
		}
	}
	c := *e
	c.config = filepath.Join(e.dir, name+".yaml")
	e.writeOwned(c.config, strings.Join(lines, "\n")+extra, 0o600)
	return &c
}

// expected is before without the keys of the dropped backups and without the WAL segments
// of timeline 1 before firstKept.
func expected(before []string, dropped []string, firstKept string) []string {
	var out []string
	for _, k := range before {
		if rest, ok := strings.CutPrefix(k, "main/backups/"); ok {
			l, _, _ := strings.Cut(rest, "/")
			if slices.Contains(dropped, l) {
				continue
			}
		}
		if rest, ok := strings.CutPrefix(k, "main/wal/"); ok {
			name := filepath.Base(rest)
			if wal.Classify(name) != wal.KindHistory && name[:24] < firstKept {
				continue
			}
		}
		out = append(out, k)
	}
	return out
}

// TestExpireKeepsTheRecoveryWindowOnFilesystemAndS3: three backups of a real cluster with WAL
// between them; a recovery window that starts between the second and the third. The dry run
// deletes nothing; expire deletes exactly the first backup and the WAL before the second's
// start on the filesystem and (from a byte-for-byte copy) on the S3 gateway; verify passes
// on both; a restore to the window's first second equals a snapshot taken then.
func TestExpireKeepsTheRecoveryWindowOnFilesystemAndS3(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.primaryWithData()

	a := e.backupJSON(pg)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	waitArchived(t, pg)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	waitArchived(t, pg)
	b := e.backupJSON(pg)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	pg.Exec(t, "INSERT INTO marks VALUES (1)")
	// A quiet stretch around w: the window will start within a second before it.
	time.Sleep(2 * time.Second)
	w := time.Now()
	atW := snapshot(t, pg.ConnString("postgres"))
	time.Sleep(4 * time.Second)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	waitArchived(t, pg)
	c := e.backupJSON(pg)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	waitArchived(t, pg)
	if !(a.StopTime.Before(b.StopTime) && b.StopTime.Before(w) && w.Before(c.StopTime)) {
		t.Fatalf("backups stopped at %s, %s, %s; w %s", a.StopTime, b.StopTime, c.StopTime, w)
	}

	// The same repository on S3, copied object by object before anything is deleted.
	srv := testserver.StartVersity(t)
	srv.CreateBucket(t, "backups")
	s3cfg := s3.Config{Bucket: "backups", Prefix: "prod", Endpoint: srv.Endpoint, Region: "us-east-1", PathStyle: true, AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}
	s3b, err := s3.New(context.Background(), s3cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s3b.Close()
	repoDir := filepath.Join(e.dir, "repo")
	fsb, err := storagefs.New(repoDir)
	if err != nil {
		t.Fatal(err)
	}
	copyRepo(t, fsb, s3b)
	es3 := e.withConfig("s3", "s3://backups/prod", fmt.Sprintf("s3:\n  endpoint: %s\n  region: us-east-1\n  path_style: true\n  access_key_id: %s\n  secret_access_key: %s\n", srv.Endpoint, srv.AccessKey, srv.SecretKey))

	before := repoKeys(t, repoDir)
	if s3keys := backendKeys(t, s3b); !slices.Equal(s3keys, before) {
		t.Fatalf("the S3 copy holds %d keys, the filesystem %d", len(s3keys), len(before))
	}
	// The window reaches back to at most a second before w: whole seconds since then.
	window := func() string { return strconv.Itoa(int(math.Ceil(time.Since(w).Seconds()))) + "s" }

	dry := e.expire("--dry-run", "--window", window())
	if after := repoKeys(t, repoDir); !slices.Equal(after, before) {
		t.Fatalf("the dry run changed the repository")
	}
	text := e.must("expire", "--dry-run", "--window", window())
	t.Logf("pgharbor expire --dry-run:\n%s", text)
	for _, want := range []string{"dry run: nothing deleted", a.Label, "dropped: older than the base backup", "kept: recovery window (base for its start", "would delete 1 backup and"} {
		if !strings.Contains(text, want) {
			t.Errorf("dry-run text does not say %q:\n%s", want, text)
		}
	}
	firstKept, _ := wal.SegmentOf(mustLSN(t, b.StartLSN), wal.TimelineID(b.Timeline), 16<<20).SegmentName(16 << 20)
	checkDecision := func(x expireJSON) {
		t.Helper()
		if len(x.Backups) != 3 || x.Backups[0].Keep || !x.Backups[1].Keep || !x.Backups[2].Keep ||
			!strings.HasPrefix(x.Backups[1].Reason, "kept: recovery window (base") || x.Backups[2].Reason != "kept: recovery window" {
			t.Fatalf("decision: %+v", x.Backups)
		}
		if len(x.Timelines) != 1 || x.Timelines[0].FirstKept != firstKept || x.Timelines[0].Dropped == 0 {
			t.Fatalf("WAL decision: %+v, want the first kept segment %s", x.Timelines, firstKept)
		}
	}
	checkDecision(dry)
	if !dry.DryRun {
		t.Fatalf("dry run reported as a real one")
	}

	done := e.expire("--window", window())
	checkDecision(done)
	if done.DeletedBackups != 1 || done.DeletedWAL != dry.Timelines[0].Dropped {
		t.Fatalf("expire deleted %d backups and %d WAL objects; the dry run said 1 and %d", done.DeletedBackups, done.DeletedWAL, dry.Timelines[0].Dropped)
	}
	want := expected(before, []string{a.Label}, firstKept)
	after := repoKeys(t, repoDir)
	// The cluster keeps archiving: judge the keys that existed before.
	var kept []string
	for _, k := range after {
		if slices.Contains(before, k) {
			kept = append(kept, k)
		} else if !strings.HasPrefix(k, "main/wal/") {
			t.Errorf("new object %s", k)
		}
	}
	if !slices.Equal(kept, want) {
		t.Fatalf("filesystem after expire: %d keys, want %d\ngot  %v\nwant %v", len(kept), len(want), kept, want)
	}

	sx := es3.expire("--window", window())
	checkDecision(sx)
	if s3keys := backendKeys(t, s3b); !slices.Equal(s3keys, want) {
		t.Fatalf("S3 after expire: %d keys, want %d\ngot  %v\nwant %v", len(s3keys), len(want), s3keys, want)
	}

	e.must("verify")
	es3.must("verify")
	if r := e.run("restore", "--pgdata", filepath.Join(e.dir, "gone"), "--backup", a.Label); r.code == 0 || !strings.Contains(r.stderr, "no complete backup") {
		t.Fatalf("restore of the expired backup: exit %d, %s", r.code, r.stderr)
	}
	target := done.WindowStart.Format(time.RFC3339Nano)
	if got := e.restoreAndRead(pg, "--target-time", target); got != atW {
		t.Fatalf("restore to the window's start %s: %s, want the snapshot taken at %s: %s", target, got, w.Format(time.RFC3339Nano), atW)
	}
}

func mustLSN(t *testing.T, s string) wal.LSN {
	t.Helper()
	l, err := wal.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// buildWithHooks builds pgharbor with the test hooks (expire pauses before each delete
// request when PGHARBOR_TEST_EXPIRE_DELAY is set).
func buildWithHooks(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(filepath.Dir(binary), "pgharbor-hooks")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	out, err := exec.Command("go", "build", "-tags", "pgharbor_testhooks,disable_grpc_modules", "-o", bin, "github.com/pgharbor/pgharbor/cmd/pgharbor").CombinedOutput()
	if err != nil {
		t.Fatalf("build with hooks: %v\n%s", err, out)
	}
	return bin
}

// TestKilledExpireIsFinishedByTheNext: expire is killed with SIGKILL after it deleted the
// second dropped backup's manifest and before its other objects; the half-deleted backup
// never shows as complete; the next expire finishes it, and the repository ends exactly as
// a copy expired without interruption.
func TestKilledExpireIsFinishedByTheNext(t *testing.T) {
	hooks := buildWithHooks(t)
	e := newEnv(t, "", "backup:\n  bundle_size_mb: 1\n")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	e.must("repo", "init")
	var labels []string
	for i := 0; i < 4; i++ {
		labels = append(labels, e.backupJSON(pg).Label)
		pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
		waitArchived(t, pg)
	}
	pg.Stop(t, "fast") // nothing is archived any more: both copies stay comparable

	repoDir := filepath.Join(e.dir, "repo")
	refDir := filepath.Join(e.dir, "ref")
	if out, err := exec.Command("cp", "-a", repoDir, refDir).CombinedOutput(); err != nil {
		t.Fatalf("copy the repository: %v\n%s", err, out)
	}
	ref := e.withConfig("ref", "file://"+refDir, "")
	refRep := ref.expire("--full-count", "1")
	if refRep.DeletedBackups != 3 {
		t.Fatalf("uninterrupted expire deleted %d backups", refRep.DeletedBackups)
	}

	cmd := exec.Command(hooks, "--config", e.config, "expire", "--full-count", "1")
	cmd.Env = append(os.Environ(), "PGHARBOR_TEST_EXPIRE_DELAY=700ms")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(repoDir, "main", "backups", labels[1])
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, errManifest := os.Stat(filepath.Join(second, "manifest"))
		_, errMarker := os.Stat(filepath.Join(second, "expiring"))
		if os.IsNotExist(errManifest) && errMarker == nil {
			break // manifest gone, the other objects not yet: expire sleeps before deleting them
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("expire did not reach the second backup in 60 s: %s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	info := e.info()
	var complete []string
	for _, b := range info.Catalog.Backups {
		complete = append(complete, b.Label)
	}
	// Expire deletes newest first (dependents before what they reference): the third
	// backup is gone, the first not yet.
	if want := []string{labels[0], labels[3]}; !slices.Equal(complete, want) {
		t.Fatalf("complete backups after the kill: %v, want %v", complete, want)
	}
	if len(info.Catalog.Incomplete) != 1 || info.Catalog.Incomplete[0].Label != labels[1] || info.Catalog.Incomplete[0].Running || info.Catalog.Incomplete[0].Objects < 3 {
		t.Fatalf("incomplete after the kill: %+v", info.Catalog.Incomplete)
	}
	if text := e.must("info"); !strings.Contains(text, "half-deleted by an interrupted expire") {
		t.Fatalf("info does not explain the leftover:\n%s", text)
	}

	// The next expire takes over the dead process's lock, finishes the second backup, and
	// expires the first and the WAL.
	x := e.expire("--full-count", "1")
	if !slices.Equal(x.Finished, []string{labels[1]}) || x.DeletedBackups != 1 {
		t.Fatalf("second expire finished %v and deleted %d backups", x.Finished, x.DeletedBackups)
	}
	if got, want := repoKeys(t, repoDir), repoKeys(t, refDir); !slices.Equal(got, want) {
		t.Fatalf("after kill and re-run: %d keys; uninterrupted: %d\ngot  %v\nwant %v", len(got), len(want), got, want)
	}
	e.must("verify")
}

// TestPinKeepsABackupThroughExpire: a pinned backup survives a count policy, info shows it,
// and after unpin the next expire deletes it.
func TestPinKeepsABackupThroughExpire(t *testing.T) {
	e := newEnv(t, "", "retention:\n  full_count: 1\n")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	e.must("repo", "init")
	first := e.backupJSON(pg)
	waitArchived(t, pg)
	last := e.backupJSON(pg)
	waitArchived(t, pg)
	e.must("backup", "pin", first.Label)
	if r := e.run("backup", "pin", "20000101T000000Z"); r.code == 0 || !strings.Contains(r.stderr, "no complete backup") {
		t.Fatalf("pin of a missing backup: exit %d %s", r.code, r.stderr)
	}
	if text := e.must("info"); !strings.Contains(text, "backup "+first.Label+" is pinned") {
		t.Fatalf("info does not show the pin:\n%s", text)
	}
	x := e.expire()
	if x.DeletedBackups != 0 || x.Backups[0].Reason != "kept: pinned" {
		t.Fatalf("expire with a pin: %+v", x)
	}
	e.must("backup", "unpin", first.Label)
	x = e.expire()
	if x.DeletedBackups != 1 || len(e.info().Catalog.Backups) != 1 || e.info().Catalog.Backups[0].Label != last.Label {
		t.Fatalf("expire after unpin: %+v", x)
	}
	e.must("verify")
}

// TestExpireSetDeletesOneBackupAndWhatDependsOnIt: `expire --set` deletes the named backup
// and the incremental taken on it, whatever the policy (none is configured here), keeps the
// rest restorable, and refuses to delete the last backup.
func TestExpireSetDeletesOneBackupAndWhatDependsOnIt(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	e.must("repo", "init")
	full1 := e.backupJSON(pg)
	pg.Pgbench(t, "postgres", "-n", "-t", "100")
	var incr backupJSON
	if err := json.Unmarshal([]byte(e.must("backup", "--conn", pg.ConnString("postgres"), "--type", "incr", "--output", "json")), &incr); err != nil {
		t.Fatal(err)
	}
	full2 := e.backupJSON(pg)
	waitArchived(t, pg)

	x := e.expire("--set", full1.Label, "--dry-run")
	reasons := map[string]string{}
	for _, b := range x.Backups {
		reasons[b.Label] = b.Reason
	}
	if x.DeletedBackups != 2 || !strings.Contains(reasons[incr.Label], "depends on "+full1.Label) || reasons[full2.Label] != "kept: not named by --set" {
		t.Fatalf("dry run of --set %s: %d backups, reasons %v", full1.Label, x.DeletedBackups, reasons)
	}
	if n := len(e.info().Catalog.Backups); n != 3 {
		t.Fatalf("the dry run deleted something: %d backups left", n)
	}
	x = e.expire("--set", full1.Label)
	left := e.info().Catalog.Backups
	if x.DeletedBackups != 2 || len(left) != 1 || left[0].Label != full2.Label {
		t.Fatalf("--set %s deleted %d, left %+v", full1.Label, x.DeletedBackups, left)
	}
	e.must("verify")
	if r := e.run("expire", "--set", full2.Label); r.code == 0 || !strings.Contains(r.stderr, "would delete every backup") {
		t.Fatalf("--set of the last backup: exit %d %s", r.code, r.stderr)
	}
	if r := e.run("expire", "--set", full1.Label); r.code == 0 || !strings.Contains(r.stderr, "no complete backup has that label") {
		t.Fatalf("--set of a deleted backup: exit %d %s", r.code, r.stderr)
	}
}

// TestExpireAcrossATimelineSwitch: a backup on timeline 1, a restore promoted in the past
// (timeline 2, archiving into the same repository) with a backup of its own, and the old
// primary writing on along timeline 1. Keeping both backups keeps timeline 2 from where it
// begins; keeping only the newest drops timeline 1 entirely (no kept backup can reach it)
// and keeps the history file; the latest restore still follows timeline 2 and verify passes.
func TestExpireAcrossATimelineSwitch(t *testing.T) {
	e := newEnv(t, "", "")
	j := runJourney(t, e, "stream")
	p1 := j.points[0]
	c := e.restoreStarted(j.pg, "--target-time", p1.time.Format(time.RFC3339Nano), "--target-action", "promote", "--archive-mode", "preserve")
	c.Exec(t, "INSERT INTO marks VALUES (1000)")
	c.Pgbench(t, "postgres", "-n", "-t", "100")
	b := e.backupJSON(c)
	if b.Timeline != 2 {
		t.Fatalf("backup of the promoted cluster on timeline %d", b.Timeline)
	}
	c.Exec(t, "INSERT INTO marks VALUES (1001)")
	want := snapshot(t, c.ConnString("postgres"))
	waitArchived(t, c)
	// The old primary goes on along timeline 1.
	j.pg.Pgbench(t, "postgres", "-n", "-t", "100")
	waitArchived(t, j.pg)

	both := e.expire("--dry-run", "--full-count", "2")
	// Timeline 1 from the first backup's start (only WAL written before it goes); timeline 2
	// from where it begins, reached through its history file.
	if len(both.Timelines) != 2 || both.DeletedBackups != 0 || both.Timelines[1].Dropped != 0 ||
		!strings.Contains(both.Timelines[0].Reason, "the start of kept backup "+j.label) ||
		!strings.Contains(both.Timelines[1].Reason, "where this timeline begins; kept backup "+j.label+" reaches it") {
		t.Fatalf("keeping both backups: %+v", both)
	}
	x := e.expire("--full-count", "1")
	if x.DeletedBackups != 1 || x.Backups[0].Keep || x.Backups[1].Label != b.Label || !x.Backups[1].Keep {
		t.Fatalf("expire: %+v", x.Backups)
	}
	firstKept, _ := wal.SegmentOf(mustLSN(t, b.StartLSN), 2, 16<<20).SegmentName(16 << 20)
	walDir := filepath.Join(e.dir, "repo", "main", "wal")
	var tl1, tl2 []string
	history := false
	for _, k := range repoKeys(t, walDir) {
		name := filepath.Base(k)
		switch {
		case name == "00000002.history":
			history = true
		case strings.HasPrefix(name, "00000001"):
			tl1 = append(tl1, name)
		case strings.HasPrefix(name, "00000002"):
			tl2 = append(tl2, name)
		}
	}
	if len(tl1) != 0 || !history || len(tl2) == 0 || tl2[0] != firstKept {
		t.Fatalf("after expire: timeline 1 %v, history %v, timeline 2 from %v (want %s)", tl1, history, tl2[:min(1, len(tl2))], firstKept)
	}
	for _, tl := range e.info().WAL.Timelines {
		if len(tl.Gaps) != 0 {
			t.Fatalf("info shows gaps after expire: %+v", tl.Gaps)
		}
	}
	e.must("verify")
	if got := e.restoreAndRead(j.pg); got != want {
		t.Fatalf("latest restore after expire: %s, want the new timeline's data %s", got, want)
	}
}
