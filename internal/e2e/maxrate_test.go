package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestBackupMaxRate: `backup --max-rate` reads the cluster no faster than the rate, by
// both methods (a lower bound on the wall time, which a loaded machine cannot break), and
// the throttled backup restores like any other; a malformed rate is refused up front.
func TestBackupMaxRate(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	const rate = 8 << 20
	for _, method := range []string{"local", "stream"} {
		start := time.Now()
		var sum struct {
			Label string `json:"label"`
			Size  int64  `json:"size"`
		}
		out := e.must("backup", "--conn", pg.ConnString("postgres"), "--method", method, "--max-rate", "8M", "--output", "json")
		took := time.Since(start)
		if err := json.Unmarshal([]byte(out), &sum); err != nil {
			t.Fatal(err)
		}
		floor := time.Duration(float64(sum.Size) / rate * 0.95 * float64(time.Second))
		if sum.Size < 20<<20 || took < floor {
			t.Fatalf("%s backup of %d bytes at 8M/s took %v, below the %v the rate allows", method, sum.Size, took, floor)
		}
		t.Logf("%s: %d bytes in %v (the rate allows no less than %v)", method, sum.Size, took.Round(time.Millisecond), floor.Round(time.Millisecond))
	}
	pg.Exec(t, "INSERT INTO marks VALUES (1)")
	want := snapshot(t, pg.ConnString("postgres"))
	waitArchived(t, pg)
	if got := e.restoreAndRead(pg); got != want {
		t.Fatalf("restore after throttled backups: %s, want %s", got, want)
	}
	if r := e.run("backup", "--conn", pg.ConnString("postgres"), "--max-rate", "fast"); r.code == 0 || !strings.Contains(r.stderr, "--max-rate") {
		t.Fatalf("--max-rate fast: exit %d %s", r.code, r.stderr)
	}
}
