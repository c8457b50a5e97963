package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestBackupMaxRateAndAnnotations: `backup --max-rate` reads the cluster no faster than the
// rate, by both methods (a lower bound on the wall time, which a loaded machine cannot
// break), and the throttled backup restores like any other; a malformed rate is refused up
// front. `--annotation` notes are stored with the backup and shown by info.
func TestBackupMaxRateAndAnnotations(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	pg := e.primaryWithData()
	const rate = 8 << 20
	for _, method := range []string{"local", "stream"} {
		start := time.Now()
		var sum struct {
			Label string `json:"label"`
			Size  int64  `json:"size"`
		}
		out := e.must("backup", "--conn", pg.ConnString("postgres"), "--method", method, "--max-rate", "8M", "--output", "json",
			"--annotation", "method="+method, "--annotation", "reason=before upgrade")
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
	var info struct {
		Catalog struct {
			Backups []struct {
				Label       string            `json:"label"`
				Annotations map[string]string `json:"annotations"`
			} `json:"backups"`
		} `json:"catalog"`
	}
	if err := json.Unmarshal([]byte(e.must("info", "--output", "json")), &info); err != nil {
		t.Fatal(err)
	}
	if b := info.Catalog.Backups; len(b) != 2 || b[1].Annotations["method"] != "stream" || b[1].Annotations["reason"] != "before upgrade" {
		t.Fatalf("info --output json annotations: %+v", b)
	}
	if text := e.must("info"); !strings.Contains(text, `annotations: method="local" reason="before upgrade"`) {
		t.Fatalf("info does not show the annotations:\n%s", text)
	}
	if r := e.run("backup", "--conn", pg.ConnString("postgres"), "--annotation", "=x"); r.code == 0 || !strings.Contains(r.stderr, "annotation key") {
		t.Fatalf("--annotation =x: exit %d %s", r.code, r.stderr)
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
