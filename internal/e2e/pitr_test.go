package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// journey: a primary archiving into env, a backup, then three recovery points under load.
type journey struct {
	pg     *pgtest.Cluster
	label  string
	atEnd  string // snapshot right after the backup (target immediate)
	points []point
	final  string // snapshot after everything was archived (target latest)
}

// runJourney backs up with --method method; auto must choose local here (pgharbor runs on
// the database host).
func runJourney(t *testing.T, e *env, method string) journey {
	t.Helper()
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	out := e.must("backup", "--conn", pg.ConnString("postgres"), "--method", method, "--output", "json")
	var sum struct {
		Label, Method    string
		ChecksumFailures int `json:"checksum_failures"`
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Label == "" {
		t.Fatalf("backup output %q: %v", out, err)
	}
	if want := strings.Replace(method, "auto", "local", 1); sum.Method != want {
		t.Fatalf("backup --method %s read the cluster by %q, want %q", method, sum.Method, want)
	}
	// The cluster has data checksums: a local backup verified every page pgbench wrote.
	if sum.ChecksumFailures != 0 {
		t.Fatalf("a healthy cluster's backup reports %d page checksum failures", sum.ChecksumFailures)
	}
	j := journey{pg: pg, label: sum.Label, atEnd: snapshot(t, pg.ConnString("postgres"))}
	for k := 1; k <= 3; k++ {
		pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "150")
		j.points = append(j.points, markPoint(t, pg, k))
	}
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	j.final = snapshot(t, pg.ConnString("postgres"))
	waitArchived(t, pg)
	return j
}

func TestPITREveryTargetKindOnFilesystem(t *testing.T) {
	e := newEnv(t, "", "")
	j := runJourney(t, e, "local")
	p1, p2 := j.points[0], j.points[1]
	if p1.snap == p2.snap || p2.snap == j.final || j.atEnd == p1.snap {
		t.Fatal("the load did not change the data between points: the test would prove nothing")
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"time", []string{"--target-time", p1.time.Format(time.RFC3339Nano)}, p1.snap},
		{"lsn", []string{"--target-lsn", p2.lsn}, p2.snap},
		{"xid", []string{"--target-xid", p2.xid}, p2.snap},
		{"name", []string{"--target-name", p1.name}, p1.snap},
		{"immediate", []string{"--target", "immediate"}, j.atEnd},
		// A flush (syncfs, then the pages leave the cache) after every MiB: the background
		// flusher runs many times during this restore, whose data must still be exact.
		{"latest", []string{"--flush-after", "1"}, j.final},
		{"time-promote", []string{"--target-time", p2.time.Format(time.RFC3339Nano), "--target-action", "promote"}, p2.snap},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := e.restoreAndRead(j.pg, c.args...); got != c.want {
				t.Fatalf("restored data %s, want the snapshot at the target %s", got, c.want)
			}
		})
	}
	// The "latest" restore above flushed every MiB; show that the background flusher did run.
	t.Run("background-flush-runs", func(t *testing.T) {
		dir := pgtest.MkdirOwned(t, e.cred, "pgharbor-flush-") + "/data"
		r := e.run("--log-level", "debug", "restore", "--pgdata", dir, "--flush-after", "1", "--target", "immediate")
		if r.code != 0 {
			t.Fatalf("restore: exit %d: %s", r.code, r.stderr)
		}
		if n := strings.Count(r.stderr, "restore flushed"); n < 2 {
			t.Fatalf("restore of a cluster of several MiB with --flush-after 1 flushed %d times in the background, want several\n%s", n, r.stderr)
		}
	})
	// Exclusive: recovery stops just before point 2's marks row commits, so the restored
	// data is point 2 without that row; adding it back must give point 2's snapshot exactly.
	t.Run("xid-exclusive", func(t *testing.T) {
		c := e.restoreStarted(j.pg, "--target-xid", p2.xid, "--target-exclusive", "--target-action", "promote")
		if marks := c.QueryString(t, "postgres", "SELECT string_agg(k::text, ',' ORDER BY k) FROM marks"); marks != "1" {
			t.Fatalf("marks after an exclusive restore to point 2's transaction: %q, want \"1\"", marks)
		}
		c.Exec(t, "INSERT INTO marks VALUES (2)")
		if got := snapshot(t, c.ConnString("postgres")); got != p2.snap {
			t.Fatalf("exclusive restore plus point 2's row: %s, want %s: recovery did not stop right before the transaction", got, p2.snap)
		}
	})
	// Shutdown: --start returns once the server shut itself down at the target; started
	// again with the action changed to promote, it holds exactly point 1's data.
	t.Run("time-shutdown", func(t *testing.T) {
		c := e.restoreStarted(j.pg, "--target-time", p1.time.Format(time.RFC3339Nano), "--target-action", "shutdown")
		if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err == nil {
			t.Fatal("restore --start --target-action shutdown returned with the server still running")
		}
		out, err := c.Command("pg_controldata", c.DataDir).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "shut down in recovery") {
			t.Fatalf("pg_controldata after a shutdown at the target: %v\n%s", err, out)
		}
		auto, err := os.OpenFile(filepath.Join(c.DataDir, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = fmt.Fprintf(auto, "recovery_target_action = 'promote'\nport = %d\nunix_socket_directories = '%s'\n", c.Port, c.SocketDir)
		if cerr := auto.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		c.Start(t)
		deadline := time.Now().Add(60 * time.Second)
		for c.QueryString(t, "postgres", "SELECT pg_is_in_recovery()::text") == "true" {
			if time.Now().After(deadline) {
				t.Fatalf("the restarted server did not promote\n%s", c.Log())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got := snapshot(t, c.ConnString("postgres")); got != p1.snap {
			t.Fatalf("data after shutdown at the target and promotion: %s, want point 1's %s", got, p1.snap)
		}
	})
}

// Both ways of reading the cluster give a directory that passes PostgreSQL's own
// pg_verifybackup against the backup_manifest stored with the backup (PostgreSQL's for
// stream, pgharbor's for local): every file, size and CRC-32C, tablespaces included.
func TestRestoredDirectoryPassesPgVerifybackup(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	pg.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+pgtest.MkdirOwned(t, e.cred, "pgharbor-ts-")+"'")
	pg.Exec(t, "CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g FROM generate_series(1, 10000) g")
	pg.Exec(t, "CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 10000) g")
	e.must("repo", "init")
	var oldTS string
	{
		conn := pg.Connect(t, "postgres")
		if err := conn.QueryRow(t.Context(), "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'").Scan(&oldTS); err != nil {
			t.Fatal(err)
		}
	}
	scratch := strings.TrimSpace(pg.QueryString(t, "postgres", "SELECT pg_relation_filepath('scratch')"))
	// A temporary table lives while its session does: its files exist during both backups.
	session := pg.Connect(t, "postgres")
	defer session.Close(context.Background())
	if _, err := session.Exec(t.Context(), "CREATE TEMP TABLE tmp AS SELECT g FROM generate_series(1, 10000) g"); err != nil {
		t.Fatal(err)
	}
	trees := map[string][]string{} // method: every path of the restored data directory and tablespace
	for _, method := range []string{"stream", "local"} {
		t.Run(method, func(t *testing.T) {
			out := e.must("backup", "--conn", pg.ConnString("postgres"), "--method", method, "--output", "json")
			var sum struct{ Label, Method string }
			if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Method != method {
				t.Fatalf("backup --method %s: %q (%v)", method, out, err)
			}
			e.must("verify", "--backup", sum.Label)
			root := pgtest.MkdirOwned(t, e.cred, "pgharbor-restore-")
			newTS := pgtest.MkdirOwned(t, e.cred, "pgharbor-ts-new-")
			pgdata := root + "/data"
			// --no-sync: what a test-database refresh uses; the files must be just as complete.
			e.must("restore", "--pgdata", pgdata, "--backup", sum.Label, "--target", "immediate", "--tablespace-map", oldTS+"="+newTS, "--no-sync")
			cmd := pg.Command("pg_verifybackup", "-n", pgdata)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("pg_verifybackup: %v\n%s", err, out)
			} else if !strings.Contains(string(out), "successfully verified") {
				t.Fatalf("pg_verifybackup said: %s", out)
			}
			// The tablespace's files went to the new location, and an unlogged table kept only
			// its init fork, as PostgreSQL's own base backup does.
			if ents, err := os.ReadDir(newTS); err != nil || len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), "PG_15_") {
				t.Fatalf("tablespace location after restore: %v %v", ents, err)
			}
			if _, err := os.Stat(filepath.Join(pgdata, scratch+"_init")); err != nil {
				t.Fatalf("unlogged table's init fork: %v", err)
			}
			if _, err := os.Stat(filepath.Join(pgdata, scratch)); !os.IsNotExist(err) {
				t.Fatalf("unlogged table's main fork was backed up: %v", err)
			}
			for i, root := range []string{pgdata, newTS} {
				err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
					if err != nil {
						return err
					}
					rel, _ := filepath.Rel(root, p)
					trees[method] = append(trees[method], []string{"pgdata", "tablespace"}[i]+":"+rel)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	// pgharbor's own walk leaves out and keeps exactly what PostgreSQL's BASE_BACKUP does.
	if !slices.Equal(trees["stream"], trees["local"]) {
		t.Fatalf("the restored trees differ:\nstream %q\nlocal  %q", trees["stream"], trees["local"])
	}
}

func TestDeltaRestoreRewritesOnlyWhatDiffers(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	e.must("repo", "init")
	e.must("backup", "--conn", pg.ConnString("postgres"))
	waitArchived(t, pg)
	root := pgtest.MkdirOwned(t, e.cred, "pgharbor-delta-")
	pgdata := root + "/data"
	e.must("restore", "--pgdata", pgdata)
	// Damage the copy the way a diverged or half-rebuilt node would be.
	accounts := strings.TrimSpace(pg.QueryString(t, "postgres", "SELECT pg_relation_filepath('pgbench_accounts')"))
	if err := os.Truncate(pgdata+"/"+accounts, 8192); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pgdata+"/PG_VERSION", []byte("14\n"), 0o600); err != nil { // same size, other bytes
		t.Fatal(err)
	}
	if err := os.WriteFile(pgdata+"/base/stray-file", []byte("not from the backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	// One damaged page in the middle of an index: only the piece holding it is written.
	pkey := strings.TrimSpace(pg.QueryString(t, "postgres", "SELECT pg_relation_filepath('pgbench_accounts_pkey')"))
	fh, err := os.OpenFile(pgdata+"/"+pkey, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt([]byte("damaged"), 1<<20+100); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	if r := e.run("restore", "--pgdata", pgdata); r.code == 0 || !strings.Contains(r.stderr, "--delta") {
		t.Fatalf("restore into a non-empty directory without --delta: exit %d: %s", r.code, r.stderr)
	}
	var res struct {
		Result struct {
			Files        int `json:"files"`
			FilesWritten int `json:"files_written"`
			FilesKept    int `json:"files_kept"`
			FilesRemoved int `json:"files_removed"`
			FilesPatched int `json:"files_patched"`
		} `json:"result"`
	}
	out := e.must("restore", "--pgdata", pgdata, "--delta", "--output", "json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	r := res.Result
	// Written: the truncated relation, PG_VERSION, postgresql.auto.conf (the first restore
	// appended recovery settings to it: patched, cut back to its size), the damaged index
	// (patched: one piece), and the files
	// PostgreSQL treats specially, which a delta always rewrites: pg_control, backup_label
	// and every pg_filenode.map. Removed: the stray file, plus recovery.signal and
	// backup_manifest of the first restore (written anew).
	maps, _ := filepath.Glob(pgdata + "/base/*/pg_filenode.map")
	special := 3 + len(maps) // pg_control, backup_label, global/pg_filenode.map
	if r.FilesWritten != 4+special || r.FilesPatched != 2 || r.FilesRemoved != 3 || r.FilesKept != r.Files-4-special {
		t.Fatalf("delta restore: %+v (want %d written of which 2 patched, 3 removed, the rest kept)", r, 4+special)
	}
	cmd := pg.Command("pg_verifybackup", "-n", pgdata)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_verifybackup after delta restore: %v\n%s", err, out)
	}
}

// A local backup reads files while PostgreSQL writes them: pages change under the reader,
// relation files grow, tables are created and dropped during the walk. WAL replay from the
// backup's start must make all of that whole: the latest restore equals the cluster.
func TestLocalBackupUnderLoadRestoresExactly(t *testing.T) {
	e := newEnv(t, "", "backup:\n  bundle_size_mb: 1\n  workers: 1\n  uploads: 1\n")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "10", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	load := pg.Command("pgbench", "-n", "-c", "2", "-T", "120", "postgres")
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
	churn := make(chan struct{})
	churned := make(chan int)
	conn := pg.Connect(t, "postgres")
	defer conn.Close(context.Background())
	go func() { // tables appear and vanish while the backup walks the directory
		n := 1
		for {
			select {
			case <-churn:
				churned <- n
				return
			default:
			}
			if _, err := conn.Exec(context.Background(), fmt.Sprintf("CREATE TABLE churn_%d AS SELECT g FROM generate_series(1, 20000) g; DROP TABLE IF EXISTS churn_%d", n, n-1)); err != nil {
				t.Errorf("churn: %v", err)
				churned <- n
				return
			}
			n++
		}
	}()
	time.Sleep(time.Second)
	out := e.must("backup", "--conn", pg.ConnString("postgres"), "--method", "local", "--output", "json")
	close(churn)
	if n := <-churned; n < 3 {
		t.Fatalf("only %d tables came and went during the backup: the test would prove little", n)
	}
	stopLoad()
	var sum struct {
		Method           string
		ChecksumFailures int    `json:"checksum_failures"`
		StartLSN         string `json:"start_lsn"`
		StopLSN          string `json:"stop_lsn"`
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Method != "local" || sum.StartLSN == sum.StopLSN {
		t.Fatalf("backup: %q (%v)", out, err)
	}
	if sum.ChecksumFailures != 0 {
		t.Fatalf("pages being written counted as damaged: %d", sum.ChecksumFailures)
	}
	pg.Exec(t, "INSERT INTO marks VALUES (1)")
	want := snapshot(t, pg.ConnString("postgres"))
	waitArchived(t, pg)
	if got := e.restoreAndRead(pg); got != want {
		t.Fatalf("latest restore of a backup taken under load: %s, want %s", got, want)
	}
}
