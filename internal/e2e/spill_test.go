package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// A backup of a multi-terabyte cluster keeps its manifest entries, and an incremental its
// parent's extents, in temporary files. The test hook moves them there at a byte, on a small
// cluster: a full backup and an incremental taken so restore exactly the data each had, and
// verify passes.
func TestBackupsWithEntriesAndParentInTemporaryFilesRestoreExactly(t *testing.T) {
	parallel(t)
	hooks := buildWithHooks(t)
	e := newEnv(t, "", "")
	e.initRepoFirst()
	pg := e.startPrimary(map[string]string{"autovacuum": "off"})
	pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)") // read by snapshot
	tmp := pgtest.MkdirOwned(t, e.cred, "pgharbor-spill-")
	backup := func(typ string) (incrJSON, string) {
		t.Helper()
		cmd := exec.Command(hooks, "--config", e.config, "--log-level", "debug", "backup", "--conn", pg.ConnString("postgres"), "--type", typ, "--output", "json")
		cmd.Env = append(os.Environ(), "PGHARBOR_TEST_SPILL_BYTES=1", "TMPDIR="+tmp)
		var so, se bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, &se
		if err := cmd.Run(); err != nil {
			t.Fatalf("backup --type %s: %v\n%s", typ, err, se.String())
		}
		var b incrJSON
		if err := json.Unmarshal(so.Bytes(), &b); err != nil || b.Type != typ {
			t.Fatalf("backup --type %s: output %q (%v)", typ, so.String(), err)
		}
		return b, se.String()
	}
	onDisk := func(log, msg string) {
		t.Helper()
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, `msg="`+msg+`"`) {
				if !strings.Contains(line, "temporary_file=true") {
					t.Fatalf("not in a temporary file: %s", line)
				}
				return
			}
		}
		t.Fatalf("no %q in the backup's log:\n%s", msg, log)
	}

	full, log := backup("full")
	onDisk(log, "manifest entries written out")
	atFull := snapshot(t, pg.ConnString("postgres"))
	pg.Pgbench(t, "postgres", "-n", "-t", "300", "-c", "2")
	incr, log := backup("incr")
	onDisk(log, "parent's extents set aside")
	onDisk(log, "manifest entries written out")
	if incr.Parent != full.Label || incr.Reused == 0 {
		t.Fatalf("incr: parent %q, reused %d; want parent %s and bytes taken from it", incr.Parent, incr.Reused, full.Label)
	}
	atIncr := snapshot(t, pg.ConnString("postgres"))
	if atIncr == atFull {
		t.Fatal("pgbench changed nothing between the backups")
	}
	if entries, err := os.ReadDir(tmp); err != nil || len(entries) != 0 {
		t.Fatalf("temporary files left behind: %v (%v)", entries, err)
	}

	e.must("verify")
	for _, c := range []struct{ label, want string }{{full.Label, atFull}, {incr.Label, atIncr}} {
		if got := e.restoreAndRead(pg, "--backup", c.label, "--target", "immediate", "--target-action", "promote"); got != c.want {
			t.Fatalf("backup %s restored to data %s, want %s", c.label, got, c.want)
		}
	}
}
