package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/wal"
)

// standbyBackup is the JSON of `backup --output json` that this test reads.
type standbyBackup struct {
	Label        string `json:"label"`
	Method       string `json:"method"`
	From         string `json:"from"`
	Timeline     uint32 `json:"timeline"`
	StopTimeline uint32 `json:"stop_timeline"`
	StartLSN     string `json:"start_lsn"`
	StopLSN      string `json:"stop_lsn"`
}

// A streaming standby of a primary that archives through pgharbor is backed up with both
// methods while pgbench writes to the primary (the local one with --primary, so the
// primary switches WAL at the end; the stream one without, waiting for the primary's
// archive_timeout). The primary takes no checkpoint for them. Both backups restore to a
// time after them with exactly the data the primary had then, and verify passes. Wrong
// inputs are refused with a clear message and leave no backup behind.
func TestBackupFromStandbyBothMethodsRestoreToTimeTarget(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "backup:\n  from: standby\n")
	pg := e.startPrimary(map[string]string{"archive_timeout": "'3s'"})
	pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	sb := pg.StartStandby(t)
	defer sb.Stop(t, "immediate")
	pg.WaitReplay(t, sb)
	primary, standbyConn := pg.ConnString("postgres"), sb.ConnString("postgres")

	t.Run("refused", func(t *testing.T) {
		cases := []struct {
			name string
			args []string
			want string
		}{
			{"from-standby at the primary", []string{"--conn", primary}, "--from-standby: the server is not a standby (pg_is_in_recovery() is false)"},
			{"standby without from-standby", []string{"--conn", standbyConn, "--from-standby=false"}, "the server is a standby (pg_is_in_recovery() is true): give --from-standby"},
			{"primary that is a standby", []string{"--conn", standbyConn, "--primary", standbyConn}, "--primary: that server is a standby too"},
		}
		for _, c := range cases {
			r := e.run(append([]string{"backup"}, c.args...)...)
			if r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("%s: exit %d, stderr %q; want an error with %q", c.name, r.code, r.stderr, c.want)
			}
			t.Logf("%s: %s", c.name, strings.TrimSpace(r.stderr))
		}
		// The primary's archiver fails: the standby's backup cannot become consistent from
		// the repository, waits its bound saying why, and fails.
		pg.Exec(t, "ALTER SYSTEM SET archive_command = 'false'")
		pg.Exec(t, "SELECT pg_reload_conf()")
		time.Sleep(500 * time.Millisecond)
		// New WAL in a segment the archiver cannot push, replayed by the standby: the
		// backup's stop position lies there.
		pg.Exec(t, "SELECT pg_switch_wal()")
		pg.Pgbench(t, "postgres", "-n", "-c", "1", "-t", "50")
		pg.WaitReplay(t, sb)
		t0 := time.Now()
		r := e.run("backup", "--conn", standbyConn, "--method", "stream", "--archive-timeout", "6s")
		want := "a backup from a standby waits for the primary to archive segment"
		if r.code == 0 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "waiting for the primary to archive the backup's WAL") {
			t.Errorf("archive failing: exit %d, stderr %q; want the waiting message and an error with %q", r.code, r.stderr, want)
		}
		t.Logf("archive failing (%.1f s): %s", time.Since(t0).Seconds(), lastLine(r.stderr))
		pg.Exec(t, "ALTER SYSTEM RESET archive_command")
		pg.Exec(t, "SELECT pg_reload_conf()")
		if n := len(e.info().Catalog.Backups); n != 0 {
			t.Fatalf("refused backups left %d backups in the repository", n)
		}
	})
	waitArchived(t, pg)

	load := pg.Command("pgbench", "-n", "-c", "2", "-T", "600", "postgres")
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	stopLoad := func() {
		if load.Process != nil {
			load.Process.Signal(os.Interrupt)
			load.Wait()
			load.Process = nil
		}
	}
	defer stopLoad()
	checkpoints := func() string {
		return pg.QueryString(t, "postgres", "SELECT checkpoints_req::text FROM pg_stat_bgwriter")
	}
	ckptBefore := checkpoints()
	time.Sleep(time.Second)
	backupOf := func(args ...string) standbyBackup {
		t.Helper()
		t0 := time.Now()
		out := e.must(append([]string{"backup", "--conn", standbyConn, "--output", "json"}, args...)...)
		var b standbyBackup
		if err := json.Unmarshal([]byte(out), &b); err != nil {
			t.Fatalf("backup output %q: %v", out, err)
		}
		t.Logf("backup %s from the standby by %s under load: %.1f s, WAL %s..%s timeline %d", b.Label, b.Method, time.Since(t0).Seconds(), b.StartLSN, b.StopLSN, b.Timeline)
		return b
	}
	local := backupOf("--method", "local", "--primary", primary)
	time.Sleep(time.Second)
	stream := backupOf("--method", "stream")
	for _, b := range []struct {
		standbyBackup
		method string
	}{{local, "local"}, {stream, "stream"}} {
		start, err1 := wal.ParseLSN(b.StartLSN)
		stop, err2 := wal.ParseLSN(b.StopLSN)
		if err1 != nil || err2 != nil || stop <= start || b.Method != b.method || b.From != "standby" || b.Timeline != 1 || b.StopTimeline != 1 {
			t.Fatalf("backup summary %+v: want method %s, from standby, timeline 1, stop after start", b.standbyBackup, b.method)
		}
	}
	time.Sleep(time.Second)
	stopLoad()
	if got := checkpoints(); got != ckptBefore {
		t.Errorf("the primary ran %s requested checkpoints during the standby's backups (before %s): the backups touched the primary", got, ckptBefore)
	}
	if n := pg.QueryString(t, "postgres", "SELECT count(*)::text FROM pgbench_history"); n == "0" {
		t.Fatal("pgbench wrote nothing: the test would prove little")
	}
	p1 := markPoint(t, pg, 1)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	markPoint(t, pg, 2)
	waitArchived(t, pg)

	for _, b := range []standbyBackup{local, stream} {
		t.Run(b.Method, func(t *testing.T) {
			e.must("verify", "--backup", b.Label)
			// The restored files match the backup's PostgreSQL manifest, and the standby's
			// standby.signal is not among them.
			dir := pgtest.MkdirOwned(t, e.cred, "pgharbor-restore-") + "/data"
			e.must("restore", "--pgdata", dir, "--backup", b.Label, "--target", "immediate", "--no-sync")
			if out, err := pg.Command("pg_verifybackup", "-n", dir).CombinedOutput(); err != nil || !strings.Contains(string(out), "successfully verified") {
				t.Fatalf("pg_verifybackup of the restored standby backup: %v\n%s", err, out)
			}
			if _, err := os.Stat(filepath.Join(dir, "standby.signal")); !os.IsNotExist(err) {
				t.Fatalf("the restore of a standby's backup holds standby.signal (%v)", err)
			}
			c := e.restoreStarted(pg, "--backup", b.Label, "--target-time", p1.time.Format(time.RFC3339Nano), "--target-action", "promote")
			if got := snapshot(t, c.ConnString("postgres")); got != p1.snap {
				t.Fatalf("restore of the standby's %s backup to point 1: %s, want %s", b.Method, got, p1.snap)
			}
			if _, err := os.Stat(filepath.Join(c.DataDir, "standby.signal")); err == nil {
				t.Fatal("the restored cluster has the standby's standby.signal")
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// After a failover the standby that was promoted is the primary of timeline 2 and archives
// into the same repository; a standby of it is backed up there, on timeline 2, and that
// backup restores to a time target with the data of that moment (recovery reads timeline 2's
// history from the repository).
func TestBackupFromStandbyOnNewTimelineAfterPromotion(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	old := e.primaryWithData()
	e.must("backup", "--conn", old.ConnString("postgres"))
	promoted := old.StartStandby(t)
	defer promoted.Stop(t, "immediate")
	old.Pgbench(t, "postgres", "-n", "-c", "1", "-t", "100")
	old.WaitReplay(t, promoted)
	waitArchived(t, old)
	old.Stop(t, "fast")
	promoted.Exec(t, "SELECT pg_promote()")
	promoted.Exec(t, "CHECKPOINT")
	if tli := promoted.QueryString(t, "postgres", "SELECT timeline_id::text FROM pg_control_checkpoint()"); tli != "2" {
		t.Fatalf("the promoted standby is on timeline %s, want 2", tli)
	}
	sb := promoted.StartStandby(t)
	defer sb.Stop(t, "immediate")
	promoted.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	promoted.WaitReplay(t, sb)

	out := e.must("backup", "--conn", sb.ConnString("postgres"), "--from-standby", "--primary", promoted.ConnString("postgres"), "--output", "json")
	var b standbyBackup
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("backup output %q: %v", out, err)
	}
	if b.From != "standby" || b.Timeline != 2 || b.StopTimeline != 2 {
		t.Fatalf("backup from the standby of the promoted primary: %+v, want from standby on timeline 2", b)
	}
	promoted.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	p1 := markPoint(t, promoted, 1)
	promoted.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	waitArchived(t, promoted)
	c := e.restoreStarted(promoted, "--backup", b.Label, "--target-time", p1.time.Format(time.RFC3339Nano), "--target-action", "promote")
	if got := snapshot(t, c.ConnString("postgres")); got != p1.snap {
		t.Fatalf("restore of the timeline-2 standby backup to point 1: %s, want %s", got, p1.snap)
	}
}
