package pool

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// expectedDiff is a difference between a direct connection and the pool that the
// differential test accepts: the lines of a line diff ("-" direct, "+" through the pool), in
// order, and why. docs/pool.md lists them too.
type expectedDiff struct {
	reason string
	lines  []string
}

// resetInOneQuery is the one difference in both modes.
var resetInOneQuery = expectedDiff{
	reason: "the pool gives a startup setting back after the query that RESET it: a statement in the same query string (psql's \\;) still sees the server's default",
	lines:  []string{"+ 2024-01-02", "- 01-02-2024"},
}

// expectedDiffs are the accepted differences per pool mode and script. The pool runs with
// one server connection, so in transaction mode every transaction of the script's one client
// runs on the same server connection: what differs is what the pool itself does between
// transactions and between clients.
var expectedDiffs = map[PoolMode]map[string][]expectedDiff{
	ModeSession: {"01-settings.sql": {resetInOneQuery}},
	ModeTransaction: {
		"01-settings.sql": {resetInOneQuery},
		"02-roles.sql": {{
			reason: "SET ROLE and SET SESSION AUTHORIZATION end with the transaction: the server connection is reset before it goes back to the pool, so that no other client runs as that role",
			lines: []string{
				"+ postgres     | postgres",
				"- diff_role    | postgres",
				"+ postgres     | postgres     | on",
				"- diff_role    | diff_role    | off",
			},
		}},
		// The script counts only its own session's temporary tables (pg_my_temp_schema()):
		// after \c, the old session's backend may still be dropping its own.
		"09-reconnect.sql": {{
			reason: "temporary tables belong to the server connection: after \\c the new client's first transaction got the connection the old client's temporary table lives on",
			lines:  []string{"+     1", "-     0"},
		}, {
			reason: "SQL-level prepared statements belong to the server connection too",
			lines:  []string{"+     1", "-     0"},
		}, {
			reason: "so DROP TABLE IF EXISTS finds the temporary table",
			lines:  []string{"-psql:09-reconnect.sql:11: NOTICE:  table \"diff_reconnect\" does not exist, skipping"},
		}},
	},
}

// diffNormalizers replace what differs between any two runs (ports, process ids, large
// object ids) before outputs are compared.
var diffNormalizers = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`port "\d+"`), `port "N"`},
	{regexp.MustCompile(`(lo_import|lo_unlink) \d+`), `$1 N`},
	{regexp.MustCompile(`server process with PID \d+`), `server process with PID N`},
}

// runScript runs a psql script file against host:port as postgres and returns its
// normalized output (commands echoed, errors inline).
func runScript(t *testing.T, port int, script, dir string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lofile := filepath.Join(dir, "lo_in.txt")
	cmd := exec.CommandContext(ctx, filepath.Join(pgtest.DefaultBinDir, "psql"), "-X", "-a", "-h", "127.0.0.1",
		"-p", strconv.Itoa(port), "-U", "postgres", "-d", "postgres", "-v", "lofile="+lofile,
		"-v", "outfile="+filepath.Join(dir, "lo_out.txt"), "-f", filepath.Base(script))
	cmd.Dir = filepath.Dir(script)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10", "PGSSLMODE=disable", "PGDATESTYLE=Postgres, MDY",
		"PGTZ=America/New_York", "PGOPTIONS=-c work_mem=2MB", "PGAPPNAME=differential")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s: no end in 60 s:\n%s", script, out)
	}
	if err != nil {
		t.Fatalf("%s: psql: %v\n%s", script, err, out)
	}
	s := string(out)
	for _, n := range diffNormalizers {
		s = n.re.ReplaceAllString(s, n.with)
	}
	return s
}

// lineDiff returns the lines only in a ("-") or only in b ("+"), in order, from a longest
// common subsequence of the two.
func lineDiff(a, b string) []string {
	x, y := strings.Split(a, "\n"), strings.Split(b, "\n")
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var d []string
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			i++
			j++
		case j < len(y) && (i == len(x) || lcs[i][j+1] >= lcs[i+1][j]):
			d = append(d, "+"+y[j])
			j++
		default:
			d = append(d, "-"+x[i])
			i++
		}
	}
	return d
}

// testDifferential runs the psql scripts of testdata/direct on a direct connection and
// through the pool in both modes and both engines, and fails on every difference that is
// not in expectedDiffs.
func testDifferential(t *testing.T, f *fixture) {
	scripts, err := filepath.Glob("testdata/direct/*.sql")
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts in testdata/direct: %v", err)
	}
	for i := range scripts {
		if scripts[i], err = filepath.Abs(scripts[i]); err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(scripts)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lo_in.txt"), bytes.Repeat([]byte("large object line\n"), 2000), 0o644); err != nil {
		t.Fatal(err)
	}
	direct := map[string]string{}
	for _, sc := range scripts {
		direct[sc] = runScript(t, f.primary.Port, sc, dir)
	}
	for _, v := range poolVariants {
		t.Run(v.String(), func(t *testing.T) {
			s := startVariant(t, f, v)
			port, _ := strconv.Atoi(poolPort(s))
			for _, sc := range scripts {
				name := filepath.Base(sc)
				got := runScript(t, port, sc, dir)
				d := lineDiff(direct[sc], got)
				var want []string
				for _, e := range expectedDiffs[v.mode][name] {
					want = append(want, e.lines...)
				}
				if strings.Join(d, "\n") != strings.Join(want, "\n") {
					t.Errorf("%s: through the pool (%s) the output differs from a direct connection's:\n%s\nexpected differences:\n%s",
						name, v, strings.Join(d, "\n"), strings.Join(want, "\n"))
				}
			}
		})
	}
}
