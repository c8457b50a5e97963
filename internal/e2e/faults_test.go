package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/ci"
	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/internal/testserver"
)

// Faults survived, nothing lost: the storage server dies and comes back, the restore target
// fills up, the spool cannot be written, the target time comes in another zone.

// TestS3ServerKilledDuringBackupAndWALPush kills the S3 server (SIGKILL) in the middle of a
// backup and while PostgreSQL archives, then starts it again over the same data. The backup
// completes through retries or fails saying why and leaves nothing that looks complete; the
// segment that could not be pushed is pushed on PostgreSQL's next try; verify is clean and a
// restore gives the data.
func TestS3ServerKilledDuringBackupAndWALPush(t *testing.T) {
	parallel(t)
	srv := testserver.StartVersityProcess(t)
	srv.CreateBucket(t, "backups")
	e := newEnv(t, "s3://backups/faults", fmt.Sprintf(`s3:
  endpoint: %s
  region: us-east-1
  path_style: true
  access_key_id: %s
  secret_access_key: %s
`, srv.Endpoint, srv.AccessKey, srv.SecretKey))
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "8", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	waitArchived(t, pg)

	// A backup with the server killed under it, and back 2 s later.
	type res struct {
		r result
		d time.Duration
	}
	done := make(chan res, 1)
	start := time.Now()
	go func() {
		r := e.run("backup", "--conn", pg.ConnString("postgres"), "--method", "stream", "--output", "json")
		done <- res{r, time.Since(start)}
	}()
	time.Sleep(700 * time.Millisecond)
	srv.Kill()
	killedAt := time.Since(start)
	time.Sleep(2 * time.Second)
	srv.Restart()
	b := <-done
	if b.d < killedAt {
		t.Fatalf("the backup ended (%s) before the server was killed (%s): the test proved nothing; make the cluster bigger", b.d, killedAt)
	}
	info := e.info()
	if b.r.code == 0 {
		t.Logf("backup completed through the outage in %s (killed at %s)", b.d, killedAt)
		if len(info.Catalog.Backups) != 1 {
			t.Fatalf("a completed backup, but info lists %d", len(info.Catalog.Backups))
		}
	} else {
		t.Logf("backup failed after %s (killed at %s): %s", b.d, killedAt, strings.TrimSpace(b.r.stderr))
		if !strings.Contains(b.r.stderr, "connect") && !strings.Contains(b.r.stderr, "refused") && !strings.Contains(b.r.stderr, "EOF") && !strings.Contains(b.r.stderr, "reset") {
			t.Fatalf("the failed backup does not say that the storage server went away:\n%s", b.r.stderr)
		}
		if len(info.Catalog.Backups) != 0 {
			t.Fatalf("a failed backup is listed as complete: %+v", info.Catalog.Backups)
		}
		e.must("backup", "cleanup")
		e.must("backup", "--conn", pg.ConnString("postgres"), "--method", "stream")
	}

	// WAL push with the server down: the archiver fails and retries until it is back.
	srv.Kill()
	pg.Exec(t, "INSERT INTO marks VALUES (1)")
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	pg.Exec(t, "SELECT pg_switch_wal()")
	deadline := time.Now().Add(30 * time.Second)
	for pg.QueryString(t, "postgres", "SELECT failed_count FROM pg_stat_archiver") == "0" {
		if time.Now().After(deadline) {
			t.Fatal("the archiver did not fail while the S3 server was down")
		}
		time.Sleep(100 * time.Millisecond)
	}
	srv.Restart()
	want := snapshot(t, pg.ConnString("postgres"))
	waitArchived(t, pg)
	if out := e.run("verify"); out.code != 0 {
		t.Fatalf("verify after the outages: exit %d\n%s%s", out.code, out.stdout, out.stderr)
	}
	if got := e.restoreAndRead(pg); got != want {
		t.Fatalf("restored %s, want %s", got, want)
	}
}

// TestRestoreIntoAFullFilesystem restores into a tmpfs too small for the backup: a clear
// ENOSPC error that names the file, a non-zero exit; then, with room, --delta finishes the
// same directory and PostgreSQL starts on the right data.
func TestRestoreIntoAFullFilesystem(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	j := runJourney(t, e, "local")
	root := pgtest.MkdirOwned(t, e.cred, "pgharbor-enospc-")
	uid, gid := 0, 0
	if e.cred != nil {
		uid, gid = int(e.cred.Uid), int(e.cred.Gid)
	}
	opts := fmt.Sprintf("size=12m,mode=0700,uid=%d,gid=%d", uid, gid)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", root).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", root).Run() })
	pgdata := filepath.Join(root, "data")
	r := e.run("restore", "--pgdata", pgdata)
	if r.code == 0 {
		t.Fatal("restore into a 12 MiB filesystem succeeded: the backup is too small for the test")
	}
	if !strings.Contains(r.stderr, "no space left on device") || !strings.Contains(r.stderr, pgdata+"/") || !strings.Contains(r.stderr, "--delta") {
		t.Fatalf("restore on a full filesystem: exit %d, want an error naming the file and ENOSPC:\n%s", r.code, r.stderr)
	}
	t.Logf("full filesystem: %s", strings.TrimSpace(r.stderr))
	if out, err := exec.Command("mount", "-o", "remount,size=512m", root).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	c := &pgtest.Cluster{BinDir: j.pg.BinDir, Root: root, DataDir: pgdata, SocketDir: root, Port: pgtest.FreePort(t), Cred: e.cred}
	t.Cleanup(func() { _ = c.Command("pg_ctl", "-D", c.DataDir, "-m", "immediate", "-w", "stop").Run() })
	e.must("restore", "--pgdata", pgdata, "--delta", "--start", "--port", strconv.Itoa(c.Port), "--socket-dir", root, "--archive-mode", "off")
	if got := snapshot(t, c.ConnString("postgres")); got != j.final {
		t.Fatalf("restored %s, want %s", got, j.final)
	}
}

// TestArchivingWithoutAUsableSpool makes the spool directory unwritable for the archiver
// (PostgreSQL's OS user), then full: wal push and wal fetch (restore_command) keep working
// without it, and no segment is skipped (verify, and a restore to the end).
func TestArchivingWithoutAUsableSpool(t *testing.T) {
	parallel(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: the spool is made unwritable for the postgres OS user, and a full one is a tmpfs")
	}
	e := newEnv(t, "", "")
	spool := filepath.Join(e.dir, "spool")
	// owned by root, read-only for everyone else: the archiver cannot create its spool
	if err := os.MkdirAll(spool, 0o555); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(spool, 0o555); err != nil {
		t.Fatal(err)
	}
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	if r := e.run("backup", "--conn", pg.ConnString("postgres"), "--method", "local"); r.code != 0 {
		t.Fatalf("backup with an unwritable spool: exit %d\n%s\nserver log:\n%s", r.code, r.stderr, pg.Log())
	}
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "300")
	waitArchived(t, pg)

	// Then full: a tmpfs of 64 KiB that the archiver owns, filled up.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=64k,uid=%d,gid=%d", e.cred.Uid, e.cred.Gid), "tmpfs", spool).CombinedOutput(); err != nil {
		t.Logf("cannot mount a tmpfs, the full-spool half is skipped: %v %s", err, out)
	} else {
		t.Cleanup(func() { _ = exec.Command("umount", "-l", spool).Run() })
		_ = os.WriteFile(filepath.Join(spool, "filler"), make([]byte, 1<<20), 0o644)
		pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "300")
		waitArchived(t, pg)
	}
	want := snapshot(t, pg.ConnString("postgres"))
	waitArchived(t, pg)
	if out := e.run("verify"); out.code != 0 {
		t.Fatalf("verify: exit %d\n%s%s", out.code, out.stdout, out.stderr)
	}
	// restore_command (wal fetch, as the postgres user) with the same unusable spool
	if got := e.restoreAndRead(pg); got != want {
		t.Fatalf("restored %s, want %s", got, want)
	}
}

// TestTargetTimeInAnotherZone gives --target-time with a +09:00 offset, in RFC 3339 and in
// PostgreSQL's own format: it names the same instant as in UTC, and the restore shows the data
// of that moment.
func TestTargetTimeInAnotherZone(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	j := runJourney(t, e, "local")
	p := j.points[1]
	tokyo := time.FixedZone("JST", 9*3600)
	for _, arg := range []string{p.time.In(tokyo).Format(time.RFC3339Nano), p.time.In(tokyo).Format("2006-01-02 15:04:05.999999-07")} {
		if got := e.restoreAndRead(j.pg, "--target-time", arg); got != p.snap {
			t.Fatalf("--target-time %s restored %s, want %s (point 2 at %s)", arg, got, p.snap, p.time.UTC())
		}
	}
}

// libfaketime is the Debian package faketime's preload library.
const libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

// TestBackupHostClockOffByMinutes runs PostgreSQL with its clock ten minutes ahead of the
// host that runs pgharbor (libfaketime), takes a backup before and one after a recovery
// point, and restores --target-time at that point (as read from the server, as users do).
// The restore must start from the backup before the point: one chosen by the host's clock
// would end after the target, and recovery could not stop there.
func TestBackupHostClockOffByMinutes(t *testing.T) {
	if _, err := os.Stat(libfaketime); err != nil {
		msg := fmt.Sprintf("%s not found (apt-get install faketime; scripts/setup.sh does): needed to run PostgreSQL with a clock of its own", libfaketime)
		if ci.Enabled() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// pgharbor (Go) reads the clock without libc: only PostgreSQL and its tools move.
	t.Setenv("LD_PRELOAD", libfaketime)
	t.Setenv("FAKETIME", "+10m")
	t.Setenv("FAKETIME_DONT_RESET", "1")
	e := newEnv(t, "", "")
	pg := e.primaryWithData()
	skew := pg.QueryString(t, "postgres", "SELECT round(extract(epoch FROM clock_timestamp()) - $1::float8)::text", float64(time.Now().UnixNano())/1e9)
	if skew < "590" || skew > "610" || len(skew) != 3 {
		t.Fatalf("the server's clock is %s s off the host's, want about 600: the test would prove nothing", skew)
	}
	e.must("backup", "--conn", pg.ConnString("postgres"), "--method", "local")
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	p := markPoint(t, pg, 1)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	e.must("backup", "--conn", pg.ConnString("postgres"), "--method", "local")
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	waitArchived(t, pg)
	if got := e.restoreAndRead(pg, "--target-time", p.time.Format(time.RFC3339Nano)); got != p.snap {
		t.Fatalf("--target-time %s restored %s, want %s", p.time.Format(time.RFC3339Nano), got, p.snap)
	}
}
