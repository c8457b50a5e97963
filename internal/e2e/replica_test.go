package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// replicaReport is the JSON of `replica create|rebuild --output json`.
type replicaReport struct {
	Method    string `json:"method"`
	Backup    string `json:"backup"`
	Diverged  bool   `json:"diverged"`
	Streaming bool   `json:"streaming"`
	AppName   string `json:"application_name"`
	WALStaged int    `json:"wal_staged"`
	Restore   *struct {
		Files        int `json:"files"`
		FilesWritten int `json:"files_written"`
		FilesKept    int `json:"files_kept"`
	} `json:"restore"`
}

// newNode reserves a directory, port and socket directory for a node pgharbor will create;
// whatever runs there is stopped at cleanup.
func (e *env) newNode(primary *pgtest.Cluster) *pgtest.Cluster {
	e.t.Helper()
	root := pgtest.MkdirOwned(e.t, e.cred, "pgharbor-node-")
	c := &pgtest.Cluster{BinDir: primary.BinDir, Root: root, DataDir: filepath.Join(root, "data"), SocketDir: root, Port: pgtest.FreePort(e.t), Cred: e.cred}
	e.t.Cleanup(func() { stopNode(c, "immediate") })
	return c
}

func stopNode(c *pgtest.Cluster, mode string) {
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err == nil {
		c.Command("pg_ctl", "-D", c.DataDir, "-m", mode, "-w", "-t", "60", "stop").Run()
	}
}

// replica runs `replica VERB` for node c with the given extra args and decodes its report.
func (e *env) replica(verb string, c *pgtest.Cluster, primary string, args ...string) replicaReport {
	e.t.Helper()
	all := append([]string{"replica", verb, "--pgdata", c.DataDir, "--primary", primary, "--start", "--wait", "2m",
		"--port", strconv.Itoa(c.Port), "--socket-dir", c.SocketDir, "--output", "json"}, args...)
	out := e.must(all...)
	var rep replicaReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		e.t.Fatalf("replica %s output %q: %v", verb, out, err)
	}
	if !rep.Streaming {
		e.t.Fatalf("replica %s returned without streaming: %s", verb, out)
	}
	return rep
}

// waitSame waits until the standby replayed everything the primary wrote, then compares
// the data.
func waitSame(t *testing.T, primary, standby *pgtest.Cluster) {
	t.Helper()
	primary.WaitReplay(t, standby)
	if got, want := snapshot(t, standby.ConnString("postgres")), snapshot(t, primary.ConnString("postgres")); got != want {
		t.Fatalf("standby %s holds %s, primary %s", standby.DataDir, got, want)
	}
}

// treeState is every path under dir with its size, mode and content hash: equal before and
// after means nothing was written.
func treeState(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d", p, st.Mode(), st.Size())
		if st.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			b.WriteString(" " + hex.EncodeToString(sum[:8]))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func slotActive(t *testing.T, pg *pgtest.Cluster, slot string) bool {
	t.Helper()
	return pg.QueryString(t, "postgres", "SELECT coalesce((SELECT active::text FROM pg_replication_slots WHERE slot_name = $1), 'missing')", slot) == "true"
}

// Two standbys seeded from the repository while pgbench writes to the primary stream and
// end with the primary's data; wrong inputs are refused with nothing written; a stopped
// standby with damaged files is rebuilt by a delta restore and streams again.
func TestReplicaCreateUnderLoadThenRebuildDamagedStandby(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "4", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	e.must("backup", "--conn", pg.ConnString("postgres"))
	primary := pg.TCPConnString("postgres")

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
	s1, s2 := e.newNode(pg), e.newNode(pg)
	t0 := time.Now()
	r1 := e.replica("create", s1, primary, "--slot", "standby1", "--create-slot")
	t.Logf("standby 1 seeded and streaming in %.1f s under load", time.Since(t0).Seconds())
	t0 = time.Now()
	r2 := e.replica("create", s2, primary, "--slot", "standby2", "--create-slot")
	t.Logf("standby 2 seeded and streaming in %.1f s under load", time.Since(t0).Seconds())
	if r1.Method != "restore" || r1.Backup == "" || r2.AppName != "standby2" {
		t.Fatalf("reports: %+v %+v", r1, r2)
	}
	time.Sleep(2 * time.Second) // more load while both stream
	stopLoad()
	pg.Exec(t, "INSERT INTO marks VALUES (1)")
	if n := pg.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming' AND application_name IN ('standby1', 'standby2')"); n != "2" {
		t.Fatalf("the primary sees %s streaming standbys, want 2", n)
	}
	if n := pg.QueryString(t, "postgres", "SELECT count(*)::text FROM pgbench_history"); n == "0" {
		t.Fatal("pgbench wrote nothing: the test would prove little")
	}
	waitSame(t, pg, s1)
	waitSame(t, pg, s2)
	conf, err := os.ReadFile(filepath.Join(s1.DataDir, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"primary_slot_name = 'standby1'", "recovery_target_timeline = 'latest'", "application_name=standby1", "wal fetch %f %p", "port = '" + strconv.Itoa(s1.Port) + "'"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("standby 1's postgresql.auto.conf lacks %q:\n%s", want, conf)
		}
	}

	t.Run("wrong-inputs", func(t *testing.T) {
		cases := []struct {
			name, verb string
			node       *pgtest.Cluster
			primary    string
			args       []string
			want       string
		}{
			{"slot in use", "create", e.newNode(pg), primary, []string{"--slot", "standby1"}, `primary: slot in use: slot "standby1" is active on the primary`},
			{"unreachable primary", "create", e.newNode(pg), fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", pgtest.FreePort(t)), nil, "primary: primary unreachable"},
			{"missing slot", "create", e.newNode(pg), primary, []string{"--slot", "nosuch"}, `primary: slot missing: slot "nosuch" does not exist on the primary`},
			{"running postmaster", "rebuild", s1, primary, []string{"--slot", "standby1"}, "is running on " + s1.DataDir + ": stop it first"},
		}
		for _, c := range cases {
			before := ""
			if c.verb == "rebuild" {
				before = treeState(t, filepath.Join(c.node.DataDir, "global")) + readFile(t, filepath.Join(c.node.DataDir, "postgresql.auto.conf"))
			}
			r := e.run(append([]string{"replica", c.verb, "--pgdata", c.node.DataDir, "--primary", c.primary, "--start", "--port", strconv.Itoa(c.node.Port)}, c.args...)...)
			if r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("%s: exit %d, stderr %q; want an error with %q", c.name, r.code, r.stderr, c.want)
			}
			t.Logf("%s: %s", c.name, strings.TrimSpace(r.stderr))
			if c.verb == "create" {
				if _, err := os.Stat(c.node.DataDir); !os.IsNotExist(err) {
					t.Errorf("%s: %s was created (%v)", c.name, c.node.DataDir, err)
				}
			} else if after := treeState(t, filepath.Join(c.node.DataDir, "global")) + readFile(t, filepath.Join(c.node.DataDir, "postgresql.auto.conf")); after != before {
				t.Errorf("%s: the running node's files changed", c.name)
			}
		}
		// A second server refuses in the ways a primary can: pg_hba, password, and being
		// another cluster altogether.
		guard := pgtest.Start(t, pgtest.Options{HBA: []string{
			"host replication rep 127.0.0.1/32 reject",
			"host all postgres 127.0.0.1/32 scram-sha-256",
			"host replication postgres 127.0.0.1/32 scram-sha-256",
		}})
		guard.Exec(t, "CREATE ROLE rep LOGIN REPLICATION")
		guard.Exec(t, "CREATE ROLE anyone LOGIN SUPERUSER REPLICATION")
		guard.Exec(t, "ALTER ROLE postgres PASSWORD 'right'")
		conn := func(user, extra string) string {
			return fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable %s", guard.Port, user, extra)
		}
		for _, c := range []struct{ name, primary, want string }{
			{"pg_hba rejection", conn("rep", ""), "primary: rejected by pg_hba.conf: replication connection to 127.0.0.1:"},
			{"wrong password", conn("postgres", "password=wrong"), "primary: authentication failed: replication connection to 127.0.0.1:"},
			{"another cluster", conn("anyone", ""), "primary: primary belongs to another cluster: the primary's system identifier is"},
		} {
			node := e.newNode(pg)
			r := e.run("replica", "create", "--pgdata", node.DataDir, "--primary", c.primary)
			if r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("%s: exit %d, stderr %q; want an error with %q", c.name, r.code, r.stderr, c.want)
			}
			t.Logf("%s: %s", c.name, strings.TrimSpace(r.stderr))
			if _, err := os.Stat(node.DataDir); !os.IsNotExist(err) {
				t.Errorf("%s: %s was created (%v)", c.name, node.DataDir, err)
			}
		}
		if !slotActive(t, pg, "standby1") {
			t.Error("standby 1 stopped streaming after the refusals")
		}
		// A directory of another cluster (another initdb) is refused and left as it was.
		other := pgtest.New(t, pgtest.Options{NoStart: true})
		before := treeState(t, other.DataDir)
		r := e.run("replica", "rebuild", "--pgdata", other.DataDir, "--primary", primary)
		if r.code == 0 || !strings.Contains(r.stderr, "belongs to another cluster: its system identifier is") {
			t.Errorf("foreign system identifier: exit %d, stderr %q", r.code, r.stderr)
		}
		t.Logf("foreign system identifier: %s", strings.TrimSpace(r.stderr))
		if treeState(t, other.DataDir) != before {
			t.Error("the foreign cluster's directory changed")
		}
	})

	t.Run("rebuild-damaged-standby", func(t *testing.T) {
		stopNode(s2, "fast")
		pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "300")
		pg.Exec(t, "INSERT INTO marks VALUES (2)")
		// Damage two of the stopped standby's relation files: one cut short, one with
		// garbage in the middle (same size, so only the content tells).
		for i, rel := range []string{"pgbench_accounts", "pgbench_branches"} {
			p := filepath.Join(s2.DataDir, strings.TrimSpace(pg.QueryString(t, "postgres", "SELECT pg_relation_filepath($1)", rel)))
			if i == 0 {
				if err := os.Truncate(p, 8192); err != nil {
					t.Fatal(err)
				}
				continue
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte(strings.Repeat("damaged!", 64)), 100); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		t0 := time.Now()
		rep := e.replica("rebuild", s2, primary, "--slot", "standby2")
		t.Logf("damaged standby rebuilt and streaming in %.1f s: %+v", time.Since(t0).Seconds(), *rep.Restore)
		if rep.Method != "delta-restore" || rep.Diverged || rep.Restore == nil || rep.Restore.FilesKept == 0 || rep.Restore.FilesWritten == 0 {
			t.Fatalf("rebuild of a damaged standby: %+v", rep)
		}
		if !slotActive(t, pg, "standby2") {
			t.Fatal("slot standby2 is not active after the rebuild")
		}
		// The archived WAL after the backup was staged in pg_wal, and the standby, started
		// without restore_command, got it once it streamed (a reload, not a restart).
		if rep.WALStaged == 0 {
			t.Errorf("no archived WAL staged: %+v", rep)
		}
		for i := 0; ; i++ {
			// The reload is a signal: the postmaster may take a moment to apply it.
			got := s2.QueryString(t, "postgres", "SHOW restore_command")
			if strings.Contains(got, " wal fetch %f %p") {
				break
			}
			if i == 50 {
				t.Fatalf("rebuilt standby runs with restore_command %q", got)
			}
			time.Sleep(100 * time.Millisecond)
		}
		pg.Pgbench(t, "postgres", "-n", "-c", "1", "-t", "100")
		waitSame(t, pg, s2)
		// The rebuilt node kept its own port (its postgresql.conf came back).
		if got := s2.QueryString(t, "postgres", "SHOW port"); got != strconv.Itoa(s2.Port) {
			t.Fatalf("rebuilt standby listens on %s, want %d", got, s2.Port)
		}
	})
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A former primary, after a standby was promoted and the old primary kept writing (so it
// diverged), comes back as a standby of the new primary: with pg_rewind when its cluster can
// be rewound (data checksums), otherwise by a delta restore.
func TestReplicaRebuildFormerPrimary(t *testing.T) {
	for _, c := range []struct {
		name      string
		checksums bool
		args      []string
		want      string
	}{
		{"rewind", true, nil, "rewind"},                                            // auto: diverged and rewindable
		{"method-restore", true, []string{"--method", "restore"}, "delta-restore"}, // asked for
		{"restore", false, nil, "delta-restore"},                                   // auto: pg_rewind cannot apply
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, "", "")
			pg := pgtest.Start(t, pgtest.Options{Config: map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand()}, DataChecksums: c.checksums})
			pg.Pgbench(t, "postgres", "-i", "-s", "2", "-q")
			pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
			e.must("repo", "init")
			e.must("backup", "--conn", pg.ConnString("postgres"))
			pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
			s := e.newNode(pg)
			e.replica("create", s, pg.TCPConnString("postgres"), "--slot", "standby1", "--create-slot")
			waitSame(t, pg, s)
			// Failover: the standby becomes the primary; the old one still commits a little
			// (WAL the new primary never received) and then dies, as a crashed primary
			// that was ahead of its standby does. Its diverged WAL stays in its pg_wal: an
			// old primary that goes on archiving after the promotion is a split brain the
			// archive cannot undo (docs/replicas.md).
			s.Exec(t, "SELECT pg_promote()")
			s.Exec(t, "INSERT INTO marks VALUES (1)")
			pg.Exec(t, "INSERT INTO marks VALUES (-1)")
			pg.Exec(t, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 1000")
			pg.Stop(t, "immediate")
			s.Pgbench(t, "postgres", "-n", "-c", "1", "-t", "100")
			if c.name == "restore" {
				r := e.run("replica", "rebuild", "--pgdata", pg.DataDir, "--primary", s.TCPConnString("postgres"), "--method", "rewind")
				if r.code == 0 || !strings.Contains(r.stderr, "pg_rewind cannot work on") {
					t.Fatalf("--method rewind without checksums or wal_log_hints: exit %d: %s", r.code, r.stderr)
				}
				t.Logf("rewind impossible: %s", strings.TrimSpace(r.stderr))
			}
			node := &pgtest.Cluster{BinDir: pg.BinDir, Root: pg.Root, DataDir: pg.DataDir, SocketDir: pg.SocketDir, Port: pg.Port, Cred: pg.Cred}
			t0 := time.Now()
			rep := e.replica("rebuild", node, s.TCPConnString("postgres"), append([]string{"--slot", "oldprimary", "--create-slot"}, c.args...)...)
			t.Logf("former primary rebuilt by %s and streaming in %.1f s", rep.Method, time.Since(t0).Seconds())
			if rep.Method != c.want || !rep.Diverged {
				t.Fatalf("rebuild of a former primary: method %q diverged %v, want %q and diverged", rep.Method, rep.Diverged, c.want)
			}
			if got := pg.QueryString(t, "postgres", "SELECT pg_is_in_recovery()::text"); got != "true" {
				t.Fatal("the rebuilt former primary is not in recovery")
			}
			if got := pg.QueryString(t, "postgres", "SELECT count(*)::text FROM marks WHERE k = -1"); got != "0" {
				t.Fatal("the rebuilt node kept a row written after the failover on the old timeline")
			}
			s.Pgbench(t, "postgres", "-n", "-c", "1", "-t", "100")
			s.Exec(t, "INSERT INTO marks VALUES (2)")
			waitSame(t, s, pg)
		})
	}
}
