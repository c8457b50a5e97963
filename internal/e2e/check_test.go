package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

type checkJSON struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		Detail string `json:"detail"`
	} `json:"checks"`
}

// check runs `pgharbor check` and returns its JSON report, its exit code and stderr.
func (e *env) check(args ...string) (checkJSON, int, string) {
	e.t.Helper()
	r := e.run(append([]string{"check", "--output", "json"}, args...)...)
	var rep checkJSON
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		e.t.Fatalf("check: %v\nstdout: %s\nstderr: %s", err, r.stdout, r.stderr)
	}
	return rep, r.code, r.stderr
}

func (c checkJSON) status(name string) (string, string) {
	for _, x := range c.Checks {
		if x.Name == name {
			return x.Status, x.Detail
		}
	}
	return "", ""
}

// TestCheck: `pgharbor check` on a working setup passes every check, with a WAL segment
// switched, archived and read back; and each broken setup fails the check that names it:
// an uninitialised repository, a failing archive_command (noticed from pg_stat_archiver long
// before the timeout), archiving turned off, and another cluster's server.
func TestCheck(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	conn := pg.ConnString("postgres")

	rep, code, _ := e.check("--conn", conn)
	if code == 0 || rep.OK {
		t.Fatalf("uninitialised repository passed: %+v", rep)
	}
	if st, d := rep.status("repository"); st != "fail" || !strings.Contains(d, "repo init") {
		t.Fatalf("uninitialised repository: %s %q", st, d)
	}

	e.must("repo", "init")
	rep, code, stderr := e.check("--conn", conn)
	if code != 0 || !rep.OK {
		t.Fatalf("working setup: exit %d %+v\n%s\nserver log:\n%s", code, rep, stderr, pg.Log())
	}
	for _, name := range []string{"repository", "encryption", "server", "system", "wal_level", "archiving", "archiver", "archive", "read back"} {
		st, d := rep.status(name)
		if st != "ok" && !(name == "system" && st == "warn") {
			t.Errorf("%s: %s %q", name, st, d)
		}
	}
	_, d := rep.status("archive")
	t.Logf("archive: %s", d)
	if _, rb := rep.status("read back"); !strings.Contains(rb, strings.Fields(d)[1]) {
		t.Fatalf("read back %q is not the switched segment (%q)", rb, d)
	}
	rep, _, _ = e.check("--conn", conn) // the system identifier is recorded by now
	if st, d := rep.status("system"); st != "ok" {
		t.Fatalf("system after the first archived segment: %s %q", st, d)
	}

	// A failing archive_command: the check fails as soon as the archiver reports it.
	pg.Exec(t, "ALTER SYSTEM SET archive_command = 'false'")
	pg.Exec(t, "SELECT pg_reload_conf()")
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	rep, code, _ = e.check("--conn", conn, "--archive-timeout", "60s")
	took := time.Since(start)
	st, d := rep.status("archive")
	if code == 0 || st != "fail" || !strings.Contains(d, "archive_command failed for segment") {
		t.Fatalf("failing archive_command: exit %d, archive %s %q", code, st, d)
	}
	if took > 30*time.Second {
		t.Fatalf("the failure took %v to report (the timeout is 60s)", took)
	}
	if st, d := rep.status("archiving"); st != "warn" {
		t.Errorf("archive_command 'false': archiving %s %q, want warn", st, d)
	}
	t.Logf("failing archive_command reported after %v: %s", took.Round(time.Millisecond), d)
	pg.Exec(t, "ALTER SYSTEM RESET archive_command")
	pg.Exec(t, "SELECT pg_reload_conf()")

	// archive_mode off (a restart): no WAL reaches the repository.
	pg.Exec(t, "ALTER SYSTEM SET archive_mode = off")
	pg.Stop(t, "fast")
	pg.Start(t)
	rep, code, _ = e.check("--conn", conn, "--no-switch")
	if st, d := rep.status("archiving"); code == 0 || st != "fail" || !strings.Contains(d, "archive_mode = off") {
		t.Fatalf("archive_mode off: exit %d, %s %q", code, st, d)
	}

	// Another cluster's server against this repository.
	other := pgtest.Start(t, pgtest.Options{})
	rep, code, _ = e.check("--conn", other.ConnString("postgres"))
	if st, d := rep.status("system"); code == 0 || st != "fail" || !strings.Contains(d, "another PostgreSQL cluster") {
		t.Fatalf("foreign server: exit %d, %s %q", code, st, d)
	}
	if st, _ := rep.status("archive"); st != "" {
		t.Fatalf("the check switched WAL on a foreign server: archive %s", st)
	}
}
