package e2e

import (
	"encoding/json"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/storage/codec"
)

type infoJSON struct {
	Catalog struct {
		Backups []struct {
			Label string `json:"label"`
		} `json:"backups"`
		Incomplete []struct {
			Label   string `json:"label"`
			Objects int    `json:"objects"`
			Running bool   `json:"running"`
		} `json:"incomplete"`
	} `json:"catalog"`
	WAL struct {
		Timelines []struct {
			Gaps []struct {
				From string `json:"from"`
			} `json:"gaps"`
		} `json:"timelines"`
	} `json:"wal"`
}

func (e *env) info() infoJSON {
	e.t.Helper()
	var i infoJSON
	if err := json.Unmarshal([]byte(e.must("info", "--output", "json")), &i); err != nil {
		e.t.Fatal(err)
	}
	return i
}

func TestKilledBackupNeverLooksFinished(t *testing.T) {
	e := newEnv(t, "", "backup:\n  bundle_size_mb: 1\n  workers: 1\n  uploads: 1\n")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "15", "-q")
	e.must("repo", "init")
	cmd := exec.Command(binary, "--config", e.config, "backup", "--conn", pg.ConnString("postgres"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill it once some bundles are stored, before it could finish.
	repoDir := filepath.Join(e.dir, "repo", "main", "backups")
	deadline := time.Now().Add(60 * time.Second)
	for {
		matches, _ := filepath.Glob(filepath.Join(repoDir, "*", "data", "0000000[3-9]"))
		if len(matches) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("backup stored no bundle in 60 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	// The writes the kill cut short were to unnamed files (O_TMPFILE): nothing of them is left.
	if left := tempFiles(t, filepath.Join(e.dir, "repo")); len(left) != 0 {
		t.Fatalf("the killed backup left temporary files: %v", left)
	}

	info := e.info()
	if len(info.Catalog.Backups) != 0 {
		t.Fatalf("a killed backup is listed as a backup: %+v", info.Catalog.Backups)
	}
	if len(info.Catalog.Incomplete) != 1 || info.Catalog.Incomplete[0].Objects == 0 || info.Catalog.Incomplete[0].Running {
		t.Fatalf("incomplete backups reported: %+v", info.Catalog.Incomplete)
	}
	killed := info.Catalog.Incomplete[0].Label
	if r := e.run("restore", "--pgdata", filepath.Join(e.dir, "r"), "--backup", killed); r.code == 0 || !strings.Contains(r.stderr, "no complete backup") {
		t.Fatalf("restore of the killed backup: exit %d, %s", r.code, r.stderr)
	}
	// The lock the killed process held does not block the next backup.
	e.must("backup", "--conn", pg.ConnString("postgres"))
	// A temporary file as a writer without unnamed files leaves it (another filesystem, an
	// older version), not written to for two hours, and one being written now.
	stale := filepath.Join(repoDir, killed, "data", ".pgharbor-tmp-0123456789abcdef")
	live := filepath.Join(e.dir, "repo", "main", ".pgharbor-tmp-fedcba9876543210")
	for _, p := range []string{stale, live} {
		if err := os.WriteFile(p, make([]byte, 3000), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, past, past); err != nil {
		t.Fatal(err)
	}
	// A negative age would take files still being written: refused, nothing removed (the
	// cleanup after it still finds both the backup and the stale file).
	if r := e.run("backup", "cleanup", "--temp-age", "-1h"); r.code == 0 || !strings.Contains(r.stderr, "must not be negative") {
		t.Fatalf("cleanup --temp-age -1h: exit %d, %s", r.code, r.stderr)
	}
	out := e.must("backup", "cleanup")
	if !strings.Contains(out, killed) || !strings.Contains(out, "removed 1 temporary files of interrupted writes (2.9 KiB)") {
		t.Fatalf("cleanup did not remove %s and one temporary file: %s", killed, out)
	}
	if left := tempFiles(t, filepath.Join(e.dir, "repo")); len(left) != 1 || left[0] != live {
		t.Fatalf("temporary files after cleanup: %v, want only %s", left, live)
	}
	info = e.info()
	if len(info.Catalog.Backups) != 1 || len(info.Catalog.Incomplete) != 0 {
		t.Fatalf("after cleanup: %+v", info.Catalog)
	}
	if _, err := os.Stat(filepath.Join(repoDir, killed, "data", "00000000")); !os.IsNotExist(err) {
		t.Fatalf("leftover bundle still there: %v", err)
	}
}

// tempFiles lists the temporary files of unfinished writes under dir.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	var left []string
	err := filepath.WalkDir(dir, func(path string, d iofs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".pgharbor-tmp-") {
			left = append(left, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return left
}

func TestSecondConcurrentBackupIsRefused(t *testing.T) {
	e := newEnv(t, "", "backup:\n  bundle_size_mb: 1\n  workers: 1\n  uploads: 1\n")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "15", "-q")
	e.must("repo", "init")
	first := exec.Command(binary, "--config", e.config, "backup", "--conn", pg.ConnString("postgres"))
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	lock := filepath.Join(e.dir, "repo", "main", "locks", "backup.lock")
	for i := 0; i < 2000; i++ {
		if _, err := os.Stat(lock); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := e.run("backup", "--conn", pg.ConnString("postgres"))
	if err := first.Wait(); err != nil {
		t.Fatalf("first backup: %v", err)
	}
	if r.code == 0 || !strings.Contains(r.stderr, "another backup or expire of this cluster is running") {
		t.Fatalf("second backup: exit %d: %s", r.code, r.stderr)
	}
}

func TestDamageAndWrongKeysAreClearErrors(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	e.must("repo", "init")
	e.must("backup", "--conn", pg.ConnString("postgres"))
	pg.Pgbench(t, "postgres", "-n", "-t", "200")
	for i := 0; i < 3; i++ {
		pg.Exec(t, "CREATE TABLE t"+string(rune('a'+i))+" AS SELECT 1")
		waitArchived(t, pg)
	}

	t.Run("wrong identity", func(t *testing.T) {
		other, _, _ := codec.GenerateIdentity()
		otherFile := filepath.Join(e.dir, "other-identity.txt")
		e.writeOwned(otherFile, other+"\n", 0o600)
		r := e.run("restore", "--pgdata", filepath.Join(e.dir, "wrong-key"), "--identity", otherFile)
		if r.code == 0 || !strings.Contains(r.stderr, "no identity matched") && !strings.Contains(r.stderr, "wrong key") && !strings.Contains(r.stderr, "other recipients") {
			t.Fatalf("restore with a wrong identity: exit %d: %s", r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, "repo/main/backups/") {
			t.Fatalf("the error does not name the object: %s", r.stderr)
		}
	})

	t.Run("flipped byte in a bundle", func(t *testing.T) {
		bundles, _ := filepath.Glob(filepath.Join(e.dir, "repo", "main", "backups", "*", "data", "00000001"))
		if len(bundles) != 1 {
			t.Fatalf("bundles: %v", bundles)
		}
		data, err := os.ReadFile(bundles[0])
		if err != nil {
			t.Fatal(err)
		}
		orig := append([]byte(nil), data...)
		data[len(data)/2] ^= 0x01
		if err := os.WriteFile(bundles[0], data, 0o640); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(bundles[0], orig, 0o640)
		r := e.run("verify")
		if r.code == 0 || !strings.Contains(r.stderr, "data/00000001") {
			t.Fatalf("verify of a damaged bundle: exit %d: %s", r.code, r.stderr)
		}
		r = e.run("restore", "--pgdata", filepath.Join(e.dir, "damaged"))
		if r.code == 0 || !strings.Contains(r.stderr, "data/00000001") || !strings.Contains(r.stderr, "corrupt") {
			t.Fatalf("restore of a damaged bundle: exit %d: %s", r.code, r.stderr)
		}
	})

	t.Run("missing WAL segment", func(t *testing.T) {
		segs, _ := filepath.Glob(filepath.Join(e.dir, "repo", "main", "wal", "*", "0000000100000000000000??"))
		if len(segs) < 3 {
			t.Fatalf("archived segments: %v", segs)
		}
		victim := segs[len(segs)-2]
		saved, _ := os.ReadFile(victim)
		os.Remove(victim)
		defer func() {
			os.WriteFile(victim, saved, 0o640)
			if e.cred != nil {
				os.Chown(victim, int(e.cred.Uid), int(e.cred.Gid))
			}
		}()
		info := e.info()
		if len(info.WAL.Timelines) == 0 || len(info.WAL.Timelines[0].Gaps) != 1 || info.WAL.Timelines[0].Gaps[0].From != filepath.Base(victim) {
			t.Fatalf("info does not show the gap at %s: %+v", filepath.Base(victim), info.WAL)
		}
		r := e.run("restore", "--pgdata", filepath.Join(e.dir, "gap"))
		if r.code == 0 || !strings.Contains(r.stderr, "gap") || !strings.Contains(r.stderr, filepath.Base(victim)) {
			t.Fatalf("restore across a gap: exit %d: %s", r.code, r.stderr)
		}
		fetch := e.run("wal", "fetch", filepath.Base(victim), filepath.Join(e.dir, "x"))
		if fetch.code != 1 {
			t.Fatalf("wal fetch of a missing segment: exit %d (want 1): %s", fetch.code, fetch.stderr)
		}
	})
}

// A restore promoted at a point in the past starts timeline 2; after writes and a new backup
// there, a restore to the latest WAL follows timeline 2, not the old timeline 1.
func TestRestoreFollowsTheNewTimeline(t *testing.T) {
	e := newEnv(t, "", "")
	j := runJourney(t, e, "stream")
	p1 := j.points[0]
	c := e.restoreStarted(j.pg, "--target-time", p1.time.Format(time.RFC3339Nano), "--target-action", "promote", "--archive-mode", "preserve")
	if got := snapshot(t, c.ConnString("postgres")); got != p1.snap {
		t.Fatalf("restored %s, want %s", got, p1.snap)
	}
	if tli := c.QueryString(t, "postgres", "SELECT timeline_id::text FROM pg_control_checkpoint()"); tli == "1" {
		t.Fatalf("promoted cluster is still on timeline 1")
	}
	c.Exec(t, "INSERT INTO marks VALUES (1000)")
	c.Pgbench(t, "postgres", "-n", "-t", "100")
	e.must("backup", "--conn", c.ConnString("postgres"))
	c.Exec(t, "INSERT INTO marks VALUES (1001)")
	want := snapshot(t, c.ConnString("postgres"))
	waitArchived(t, c)
	if got := e.restoreAndRead(j.pg); got != want {
		t.Fatalf("latest restore: %s, want the new timeline's data %s", got, want)
	}
	// The old timeline's latest state is still reachable from the first backup.
	if got := e.restoreAndRead(j.pg, "--backup", j.label, "--target-timeline", "1", "--target", "immediate"); got != j.atEnd {
		t.Fatalf("timeline 1 immediate: %s, want %s", got, j.atEnd)
	}
	_ = pgtest.DefaultBinDir
}

// --method local reads only a data directory proven to be the server's: pointed at another
// running cluster's directory it refuses, and auto falls back to streaming.
func TestLocalMethodRefusesAnotherClustersDirectory(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	other := pgtest.Start(t, pgtest.Options{})
	// Everything as the archiver's user: the first command to reach the repository records
	// the server there, and files made by root would shut the archiver out.
	pgharbor := func(args ...string) (string, string, error) {
		cmd := exec.Command(binary, append([]string{"--config", e.config}, args...)...)
		cmd.Env = append(os.Environ(), "PGHARBOR_POSTGRES_DATA_DIR="+other.DataDir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
		var so, se strings.Builder
		cmd.Stdout, cmd.Stderr = &so, &se
		err := cmd.Run()
		return so.String(), se.String(), err
	}
	if _, stderr, err := pgharbor("repo", "init"); err != nil {
		t.Fatalf("repo init: %v\n%s", err, stderr)
	}
	backup := func(method string) (string, string, error) {
		return pgharbor("backup", "--conn", pg.ConnString("postgres"), "--method", method, "--output", "json")
	}
	_, stderr, err := backup("local")
	if err == nil || !strings.Contains(stderr, "cannot be read here") || !strings.Contains(stderr, "another cluster") {
		t.Fatalf("--method local on another cluster's directory: %v\n%s", err, stderr)
	}
	out, stderr, err := backup("auto")
	var sum struct{ Method string }
	if err != nil || json.Unmarshal([]byte(out), &sum) != nil || sum.Method != "stream" {
		t.Fatalf("--method auto with another cluster's directory: %v, %q\n%s", err, out, stderr)
	}
	if got := e.info().Catalog.Backups; len(got) != 1 {
		t.Fatalf("backups after one refused and one streamed: %+v", got)
	}
}

// A backup whose WAL never reaches the repository fails after --archive-timeout, naming the
// segment, by either method; it does not hang in the server's own wait for the archiver,
// and it leaves no backup behind.
func TestBackupFailsClearlyWhenArchivingIsBroken(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(map[string]string{"archive_command": "'/bin/false'"})
	e.must("repo", "init")
	for _, method := range []string{"stream", "local"} {
		start := time.Now()
		r := e.run("backup", "--conn", pg.ConnString("postgres"), "--method", method, "--archive-timeout", "2s")
		if r.code == 0 || !strings.Contains(r.stderr, "is not in") || !strings.Contains(r.stderr, "archive_command") {
			t.Fatalf("--method %s with archiving broken: exit %d\n%s", method, r.code, r.stderr)
		}
		if d := time.Since(start); d > 60*time.Second {
			t.Fatalf("--method %s took %s to give up", method, d)
		}
	}
	if got := e.info().Catalog.Backups; len(got) != 0 {
		t.Fatalf("backups listed after two failed ones: %+v", got)
	}
}

// A data page damaged on disk: a local backup verifies page checksums, completes with the
// page as read, and says which file and block; PostgreSQL's BASE_BACKUP (stream) refuses.
func TestLocalBackupReportsADamagedPage(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Exec(t, "CREATE TABLE victim WITH (autovacuum_enabled = false) AS SELECT g, md5(g::text) AS m FROM generate_series(1, 5000) g")
	pg.Exec(t, "VACUUM FREEZE victim")
	pg.Exec(t, "CHECKPOINT")
	file := strings.TrimSpace(pg.QueryString(t, "postgres", "SELECT pg_relation_filepath('victim')"))
	pg.Stop(t, "fast")
	f, err := os.OpenFile(filepath.Join(pg.DataDir, file), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	const at = 3*8192 + 4000 // in the tuples of block 3
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xFF
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pg.Start(t)
	e.must("repo", "init")
	r := e.run("backup", "--conn", pg.ConnString("postgres"), "--method", "local", "--output", "json")
	var sum struct {
		ChecksumFailures int `json:"checksum_failures"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &sum) != nil || sum.ChecksumFailures != 1 ||
		!strings.Contains(r.stderr, "page checksum verification failed") || !strings.Contains(r.stderr, file) {
		t.Fatalf("local backup of a damaged page: exit %d, %s\n%s", r.code, r.stdout, r.stderr)
	}
	if r := e.run("backup", "--conn", pg.ConnString("postgres"), "--method", "stream"); r.code == 0 || !strings.Contains(r.stderr, "checksum") {
		t.Fatalf("stream backup of a damaged page: exit %d\n%s", r.code, r.stderr)
	}
}
