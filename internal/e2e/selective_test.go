package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestRestoreOnlySomeDatabases: `restore --db-include app` of a cluster with two user
// databases, with writes to both after the backup (so recovery replays WAL onto the left-out
// database's zeroed files): app and postgres hold exactly the primary's data at the target,
// the other database's relation files are sparse and zero, and it can be dropped; fewer bytes are written than for a whole restore. `refresh --db-include app`
// drops the left-out database itself. A name the backup does not have is refused before
// anything is written.
func TestRestoreOnlySomeDatabases(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Exec(t, "CREATE DATABASE app")
	pg.Exec(t, "CREATE DATABASE big")
	pg.Pgbench(t, "app", "-i", "-s", "2", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	bigConn := pg.Connect(t, "big")
	if _, err := bigConn.Exec(context.Background(), "CREATE TABLE blob AS SELECT g, md5(g::text) || repeat('x', 500) AS v FROM generate_series(1, 40000) g"); err != nil {
		t.Fatal(err)
	}
	e.must("repo", "init")
	e.must("backup", "--conn", pg.ConnString("postgres"))
	// After the backup: writes in every database.
	pg.Pgbench(t, "app", "-n", "-c", "2", "-t", "100")
	pg.Exec(t, "INSERT INTO marks VALUES (1)")
	if _, err := bigConn.Exec(context.Background(), "UPDATE blob SET v = v || 'y' WHERE g % 7 = 0"); err != nil {
		t.Fatal(err)
	}
	bigConn.Close(context.Background())
	appWant := appSnapshot(t, pg.ConnString("app"))
	bigWant := bigSnapshot(t, pg.ConnString("big"))
	waitArchived(t, pg)

	var out struct {
		Result struct {
			Files       int   `json:"files"`
			FilesZeroed int   `json:"files_zeroed"`
			Bytes       int64 `json:"bytes_written"`
			Excluded    []struct {
				OID  uint32 `json:"oid"`
				Name string `json:"name"`
			} `json:"databases_excluded"`
		} `json:"result"`
	}
	c := e.restoreStarted(pg, "--db-include", "app")
	if got := appSnapshot(t, c.ConnString("app")); got != appWant {
		t.Fatalf("app after the selective restore: %s, want %s", got, appWant)
	}
	if got := c.QueryString(t, "postgres", "SELECT string_agg(k::text, ',') FROM marks"); got != "1" {
		t.Fatalf("postgres.marks after the selective restore: %q", got)
	}
	// The left-out database is dropped without connecting to it (a connection would meet
	// zeroed catalogs: PostgreSQL restarts with a PANIC).
	c.Exec(t, "DROP DATABASE big")
	if got := c.QueryString(t, "app", "SELECT count(*)::text FROM pgbench_branches"); got != "2" {
		t.Fatalf("app after dropping big: %q branches", got)
	}

	// The same restore into a directory of its own, to look at the files and the report.
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Chown(filepath.Dir(dir), int(e.cred.Uid), int(e.cred.Gid)); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(e.must("restore", "--pgdata", dir, "--db-include", "app", "--output", "json")), &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Result.Excluded) != 1 || out.Result.Excluded[0].Name != "big" || out.Result.FilesZeroed == 0 {
		t.Fatalf("selective restore report: %+v", out.Result)
	}
	bigDir := filepath.Join(dir, "base", strconv.FormatUint(uint64(out.Result.Excluded[0].OID), 10))
	entries, err := os.ReadDir(bigDir)
	if err != nil {
		t.Fatal(err)
	}
	var zeroedBytes int64
	for _, en := range entries {
		p := filepath.Join(bigDir, en.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if regexp.MustCompile(`^[0-9]+(_(fsm|vm|init))?(\.[0-9]+)?$`).MatchString(en.Name()) {
			if strings.Trim(string(b), "\x00") != "" {
				t.Fatalf("%s is not zeroed", p)
			}
			zeroedBytes += int64(len(b))
		} else if en.Name() == "PG_VERSION" && strings.TrimSpace(string(b)) != "15" {
			t.Fatalf("PG_VERSION of the left-out database: %q", b)
		}
	}
	var whole struct {
		Result struct {
			Bytes int64 `json:"bytes_written"`
		} `json:"result"`
	}
	dir2 := filepath.Join(filepath.Dir(dir), "whole")
	if err := json.Unmarshal([]byte(e.must("restore", "--pgdata", dir2, "--output", "json")), &whole); err != nil {
		t.Fatal(err)
	}
	if zeroedBytes < 20<<20 || out.Result.Bytes > whole.Result.Bytes-zeroedBytes+(1<<20) {
		t.Fatalf("selective restore wrote %d bytes, the whole one %d; the left-out database holds %d zeroed bytes", out.Result.Bytes, whole.Result.Bytes, zeroedBytes)
	}
	t.Logf("selective restore: %d bytes written, whole restore %d; %d files (%d bytes) zeroed", out.Result.Bytes, whole.Result.Bytes, out.Result.FilesZeroed, zeroedBytes)

	// Wrong names: refused before anything is written.
	empty := filepath.Join(filepath.Dir(dir), "empty")
	r := e.run("restore", "--pgdata", empty, "--db-include", "nosuch")
	if r.code == 0 || !strings.Contains(r.stderr, `--db-include "nosuch": backup`) || !strings.Contains(r.stderr, "app, big, postgres") {
		t.Fatalf("restore --db-include nosuch: exit %d %s", r.code, r.stderr)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Fatalf("a refused selective restore wrote %d entries", len(ents))
	}

	// refresh drops what it left out, also over a directory an earlier whole refresh filled
	// (the delta zeroes big's real files), and a whole refresh after it brings big back.
	node := e.newNode(pg)
	type refreshReport struct {
		Dropped []struct {
			Name string `json:"name"`
		} `json:"dropped_databases"`
		Restore struct {
			FilesZeroed int `json:"files_zeroed"`
		} `json:"restore"`
	}
	refresh := func(args ...string) refreshReport {
		t.Helper()
		var rr refreshReport
		if err := json.Unmarshal([]byte(e.must(append([]string{"refresh", "--pgdata", node.DataDir, "--port", strconv.Itoa(node.Port),
			"--socket-dir", node.SocketDir, "--output", "json"}, args...)...)), &rr); err != nil {
			t.Fatal(err)
		}
		return rr
	}
	if rr := refresh(); len(rr.Dropped) != 0 || rr.Restore.FilesZeroed != 0 || bigSnapshot(t, node.ConnString("big")) != bigWant {
		t.Fatalf("whole refresh: %+v, big %s, want %s", rr, bigSnapshot(t, node.ConnString("big")), bigWant)
	}
	rr := refresh("--db-include", "app")
	if rr.Restore.FilesZeroed == 0 || len(rr.Dropped) != 1 || rr.Dropped[0].Name != "big" {
		t.Fatalf("refresh dropped %+v", rr.Dropped)
	}
	if got := node.QueryString(t, "postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"); got != "app,postgres,template0,template1" {
		t.Fatalf("databases after refresh --db-include app: %q", got)
	}
	if got := appSnapshot(t, node.ConnString("app")); got != appWant {
		t.Fatalf("app after refresh: %s, want %s", got, appWant)
	}
	if rr := refresh(); len(rr.Dropped) != 0 || bigSnapshot(t, node.ConnString("big")) != bigWant || appSnapshot(t, node.ConnString("app")) != appWant {
		t.Fatalf("whole refresh after a selective one: %+v", rr)
	}
}

// bigSnapshot is a digest of the blob table of the database left out.
func bigSnapshot(t *testing.T, connStr string) string {
	t.Helper()
	return queryDigest(t, connStr, `SELECT md5(string_agg(g::text || ':' || v, ',' ORDER BY g)) FROM blob`)
}

// appSnapshot is a digest of the pgbench tables of a database.
func appSnapshot(t *testing.T, connStr string) string {
	t.Helper()
	return queryDigest(t, connStr, `SELECT md5(
		(SELECT string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid) FROM pgbench_accounts) || '|' ||
		(SELECT count(*)::text || ':' || coalesce(sum(delta), 0)::text FROM pgbench_history))`)
}
