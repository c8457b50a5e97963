// Package e2e holds the user journeys of pgharbor, run against real PostgreSQL 15 clusters
// and real storage servers with the real binary: archive_command and restore_command call
// it exactly as a user's configuration would.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/storage/codec"
)

// binary is the pgharbor binary built once for the package, in a directory the postgres OS
// user can read.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pgharbor-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	binary = filepath.Join(dir, "pgharbor")
	out, err := exec.Command("go", "build", "-tags", "disable_grpc_modules", "-o", binary, "github.com/pgharbor/pgharbor/cmd/pgharbor").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build pgharbor: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one repository with its keys and config file, usable by root (the test) and by
// the postgres OS user (archive_command, restore_command).
type env struct {
	t        *testing.T
	cred     *syscall.Credential
	dir      string // owned by the cluster user
	config   string
	identity string
	// recipient is the public key objects are sealed to.
	recipient string
	cluster   string
}

// newEnv writes keys and a config file for repoURL; extra is appended to the config YAML.
// The spool is a directory of the env's own.
func newEnv(t *testing.T, repoURL, extra string) *env {
	t.Helper()
	return newEnvSpool(t, repoURL, extra, false)
}

// newEnvSpool is newEnv; with defaultSpool the config names no spool directory, so WAL
// push and fetch use the host's shared default ($TMPDIR/pgharbor-spool), as a user's would.
func newEnvSpool(t *testing.T, repoURL, extra string, defaultSpool bool) *env {
	t.Helper()
	cred, err := pgtest.OSUser()
	if err != nil {
		t.Fatal(err)
	}
	dir := pgtest.MkdirOwned(t, cred, "pgharbor-e2e-")
	e := &env{t: t, cred: cred, dir: dir, cluster: "main"}
	identity, recipient, err := codec.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	e.recipient = recipient
	e.identity = filepath.Join(dir, "identity.txt")
	e.writeOwned(e.identity, identity+"\n", 0o600)
	if repoURL == "" {
		repoURL = "file://" + filepath.Join(dir, "repo")
	}
	e.config = filepath.Join(dir, "pgharbor.yaml")
	spool := fmt.Sprintf("wal:\n  spool_dir: %s\n", filepath.Join(dir, "spool"))
	if defaultSpool {
		spool = ""
	}
	e.writeOwned(e.config, fmt.Sprintf(`repo:
  url: %s
  cluster: main
encryption:
  mode: age
  recipients: [%s]
  identity_file: %s
%s%s`, repoURL, recipient, e.identity, spool, extra), 0o600)
	return e
}

func (e *env) writeOwned(p, text string, mode os.FileMode) {
	if err := os.WriteFile(p, []byte(text), mode); err != nil {
		e.t.Fatal(err)
	}
	if e.cred != nil {
		if err := os.Chown(p, int(e.cred.Uid), int(e.cred.Gid)); err != nil {
			e.t.Fatal(err)
		}
	}
}

// archiveCommand is what postgresql.conf gets.
func (e *env) archiveCommand() string {
	return fmt.Sprintf("'%s --config %s wal push %%p'", binary, e.config)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs pgharbor with the env's config; it does not fail the test on a non-zero exit.
func (e *env) run(args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"--config", e.config}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			e.t.Fatalf("run pgharbor %v: %v", args, err)
		}
	}
	return result{so.String(), se.String(), code}
}

// must runs pgharbor and fails the test on a non-zero exit.
func (e *env) must(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("pgharbor %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// primaryWithData starts a primary archiving into the env's repository, with pgbench's
// tables at scale 1 and an empty marks table (what snapshot and markPoint read), and
// initialises the repository.
func (e *env) primaryWithData() *pgtest.Cluster {
	e.t.Helper()
	pg := e.startPrimary(nil)
	pg.Pgbench(e.t, "postgres", "-i", "-s", "1", "-q")
	pg.Exec(e.t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("repo", "init")
	return pg
}

// startPrimary starts a cluster archiving into the env's repository.
func (e *env) startPrimary(extraConf map[string]string) *pgtest.Cluster {
	e.t.Helper()
	conf := map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand()}
	for k, v := range extraConf {
		conf[k] = v
	}
	pg := pgtest.Start(e.t, pgtest.Options{Config: conf, DataChecksums: true})
	e.writeOwned(filepath.Join(e.dir, "conn"), pg.ConnString("postgres"), 0o600)
	return pg
}

// waitArchived switches WAL and waits until the archiver pushed everything up to the switch.
func waitArchived(t *testing.T, pg *pgtest.Cluster) {
	t.Helper()
	conn := pg.Connect(t, "postgres")
	defer conn.Close(context.Background())
	ctx := context.Background()
	var seg string
	if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var last string
		var failed int64
		if err := conn.QueryRow(ctx, "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver").Scan(&last, &failed); err != nil {
			t.Fatal(err)
		}
		if len(last) >= 24 && last[:24] >= seg {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("archiver did not reach %s (last %s, failed %d); log:\n%s", seg, last, failed, pg.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// snapshot is a checksum of the test data: pgbench tables and the marks table.
func snapshot(t *testing.T, connStr string) string {
	t.Helper()
	return queryDigest(t, connStr, `SELECT md5(
		(SELECT coalesce(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid), '') FROM pgbench_accounts) || '|' ||
		(SELECT coalesce(string_agg(tid::text || ':' || tbalance::text, ',' ORDER BY tid), '') FROM pgbench_tellers) || '|' ||
		(SELECT count(*)::text || ':' || coalesce(sum(delta), 0)::text FROM pgbench_history) || '|' ||
		(SELECT coalesce(string_agg(k::text, ',' ORDER BY k), '') FROM marks))`)
}

// queryDigest runs a query returning one text value (a digest of some data) on connStr.
func queryDigest(t *testing.T, connStr, query string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, connStr)
	if err != nil {
		t.Fatalf("connect %s: %v", connStr, err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, query).Scan(&s); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return s
}

// point is a moment of the load with everything needed to restore to it.
type point struct {
	snap string
	time time.Time
	lsn  string
	xid  string
	name string
}

// markPoint records a recovery point k after the load so far.
func markPoint(t *testing.T, pg *pgtest.Cluster, k int) point {
	t.Helper()
	ctx := context.Background()
	conn := pg.Connect(t, "postgres")
	defer conn.Close(ctx)
	var p point
	if err := conn.QueryRow(ctx, "INSERT INTO marks VALUES ($1) RETURNING txid_current()::text", k).Scan(&p.xid); err != nil {
		t.Fatal(err)
	}
	p.snap = snapshot(t, pg.ConnString("postgres"))
	p.name = "point" + strconv.Itoa(k)
	if err := conn.QueryRow(ctx, "SELECT clock_timestamp(), pg_current_wal_lsn()::text FROM pg_create_restore_point($1)", p.name).Scan(&p.time, &p.lsn); err != nil {
		t.Fatal(err)
	}
	// Commits after this point get later timestamps than p.time.
	time.Sleep(1100 * time.Millisecond)
	return p
}

// restoreAndRead restores into a fresh directory with args, starts PostgreSQL, and returns the
// snapshot of the recovered data (the server is stopped at cleanup).
func (e *env) restoreAndRead(pg *pgtest.Cluster, args ...string) string {
	e.t.Helper()
	c := e.restoreStarted(pg, args...)
	return snapshot(e.t, c.ConnString("postgres"))
}

// restoreStarted restores with --start into a fresh directory and returns the cluster.
func (e *env) restoreStarted(pg *pgtest.Cluster, args ...string) *pgtest.Cluster {
	e.t.Helper()
	root := pgtest.MkdirOwned(e.t, e.cred, "pgharbor-restore-")
	c := &pgtest.Cluster{BinDir: pg.BinDir, Root: root, DataDir: filepath.Join(root, "data"), SocketDir: root, Port: pgtest.FreePort(e.t), Cred: e.cred}
	all := append([]string{"restore", "--pgdata", c.DataDir, "--start", "--port", strconv.Itoa(c.Port), "--socket-dir", c.SocketDir, "--archive-mode", "off"}, args...)
	e.t.Cleanup(func() {
		cmd := c.Command("pg_ctl", "-D", c.DataDir, "-m", "immediate", "-w", "stop")
		cmd.Run()
	})
	e.must(all...)
	return c
}

// parallel lets a test run beside the other parallel tests once the sequential ones are
// done. For tests that wait on servers more than they compute, that measure no timing, and
// that set no environment: the package's run then fits CI's time on two cores.
func parallel(t *testing.T) {
	t.Parallel()
}
