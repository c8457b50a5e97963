package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

type refreshJSON struct {
	Backup        string  `json:"backup"`
	Target        string  `json:"target"`
	StoppedServer bool    `json:"stopped_server"`
	Seconds       float64 `json:"seconds"`
	Restore       struct {
		Files        int   `json:"files"`
		FilesWritten int   `json:"files_written"`
		FilesKept    int   `json:"files_kept"`
		FilesRemoved int   `json:"files_removed"`
		Bytes        int64 `json:"bytes_written"`
	} `json:"restore"`
}

// repoKeys lists every object of the repository.
func (e *env) repoKeys() []string {
	e.t.Helper()
	var infos []struct {
		Key string `json:"key"`
	}
	out := e.must("repo", "ls", "--all", "--output", "json")
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		e.t.Fatalf("repo ls: %v: %s", err, out)
	}
	keys := make([]string, 0, len(infos))
	for _, i := range infos {
		keys = append(keys, i.Key)
	}
	slices.Sort(keys)
	return keys
}

// A test database refreshed twice from production with production writes in between: the
// second refresh rewrites only what changed, the scrubbing SQL ran both times, the copy does
// not archive, and production's repository gains no object from either refresh.
func TestRefreshTwiceRewritesOnlyWhatChanged(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	e.must("backup", "--conn", pg.ConnString("postgres"))
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	p1 := markPoint(t, pg, 1)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200") // after the target: must not show up
	waitArchived(t, pg)
	pg.Stop(t, "fast") // production idle: any new object would come from the refresh

	// The scrubbing script is readable by root only: refresh feeds it to psql itself.
	scrub := filepath.Join(t.TempDir(), "scrub.sql")
	if err := os.WriteFile(scrub, []byte("UPDATE pgbench_accounts SET filler = 'scrubbed';\nCREATE TABLE scrubbed_at AS SELECT now() AS t;\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	node := e.newNode(pg)
	refresh := func(args ...string) refreshJSON {
		t.Helper()
		before := e.repoKeys()
		out := e.must(append([]string{"refresh", "--pgdata", node.DataDir, "--port", strconv.Itoa(node.Port), "--socket-dir", node.SocketDir,
			"--sql", scrub, "--output", "json"}, args...)...)
		var r refreshJSON
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("refresh output %q: %v", out, err)
		}
		if after := e.repoKeys(); !slices.Equal(before, after) {
			t.Fatalf("the refresh added objects to the production repository:\nbefore %q\nafter  %q", before, after)
		}
		if got := node.QueryString(t, "postgres", "SELECT pg_is_in_recovery()::text || ' ' || current_setting('archive_mode') || ' ' || current_setting('port')"); got != "false off "+strconv.Itoa(node.Port) {
			t.Fatalf("refreshed server: in recovery, archive_mode, port = %q; want an independent primary with archive_mode off on %d", got, node.Port)
		}
		if got := node.QueryString(t, "postgres", "SELECT count(*) FILTER (WHERE filler <> 'scrubbed')::text || ' ' || (SELECT count(*) FROM scrubbed_at)::text FROM pgbench_accounts"); got != "0 1" {
			t.Fatalf("scrub SQL did not run: unscrubbed rows and scrubbed_at rows = %q", got)
		}
		return r
	}

	r1 := refresh("--target-time", p1.time.Format(time.RFC3339Nano))
	t.Logf("first refresh (empty directory, to a time): %.1f s, %d files written, %d kept", r1.Seconds, r1.Restore.FilesWritten, r1.Restore.FilesKept)
	if got := snapshot(t, node.ConnString("postgres")); got != p1.snap {
		t.Fatalf("first refresh holds %s, want the data at the target time %s", got, p1.snap)
	}
	if r1.StoppedServer || r1.Restore.FilesKept != 0 || r1.Restore.FilesWritten != r1.Restore.Files {
		t.Fatalf("first refresh into an empty directory: %+v", r1)
	}
	// Testers write into the copy; the next refresh must drop it.
	node.Exec(t, "INSERT INTO marks VALUES (999)")

	pg.Start(t)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	pg.Exec(t, "INSERT INTO marks VALUES (2)")
	want := snapshot(t, pg.ConnString("postgres"))
	waitArchived(t, pg)
	pg.Stop(t, "fast")

	r2 := refresh("--target", "latest")
	t.Logf("second refresh (server running, latest): %.1f s, %d files written, %d kept, %d removed", r2.Seconds, r2.Restore.FilesWritten, r2.Restore.FilesKept, r2.Restore.FilesRemoved)
	if got := snapshot(t, node.ConnString("postgres")); got != want {
		t.Fatalf("second refresh holds %s, want production's latest %s", got, want)
	}
	if !r2.StoppedServer {
		t.Fatal("the second refresh did not report stopping the running copy")
	}
	if r2.Restore.FilesKept == 0 || r2.Restore.FilesWritten >= r1.Restore.FilesWritten {
		t.Fatalf("second refresh rewrote %d files (kept %d); the first wrote %d: the delta did not keep unchanged files", r2.Restore.FilesWritten, r2.Restore.FilesKept, r1.Restore.FilesWritten)
	}

	// A directory that holds another cluster is refused before anything is stopped or written.
	other := pgtest.New(t, pgtest.Options{NoStart: true})
	before := treeState(t, other.DataDir)
	r := e.run("refresh", "--pgdata", other.DataDir, "--port", strconv.Itoa(pgtest.FreePort(t)))
	if r.code == 0 || !strings.Contains(r.stderr, "belongs to another cluster") {
		t.Fatalf("refresh of another cluster's directory: exit %d: %s", r.code, r.stderr)
	}
	t.Logf("foreign directory: %s", strings.TrimSpace(r.stderr))
	if treeState(t, other.DataDir) != before {
		t.Fatal("the foreign directory changed")
	}
}
