// Package pgtest starts real PostgreSQL 15 clusters for tests.
//
// Clusters run as the "postgres" OS user when the test runs as root (PostgreSQL refuses
// root), listen on a free loopback TCP port and on a unix socket in their own temp dir, are
// configured for backups and streaming replication, and are always stopped in t.Cleanup.
//
//	pg := pgtest.Start(t, pgtest.Options{})
//	conn := pg.Connect(t, "postgres")
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgharbor/pgharbor/internal/ci"
)

// DefaultBinDir is where Debian's PostgreSQL 15 server binaries live.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// Options configure a new cluster.
type Options struct {
	// BinDir holds initdb, pg_ctl, postgres; DefaultBinDir when empty (or $PGHARBOR_PG_BIN).
	BinDir string
	// Config lines appended to postgresql.conf (key -> value, values quoted as needed by caller).
	Config map[string]string
	// HBA lines appended to pg_hba.conf (trust for local and 127.0.0.1 is always there).
	HBA []string
	// DataChecksums turns on page checksums at initdb.
	DataChecksums bool
	// NoStart leaves the cluster initialised but stopped.
	NoStart bool
}

// Cluster is a running (or stopped) test cluster.
type Cluster struct {
	BinDir    string
	Root      string // temp dir holding data/ and sock/, owned by the cluster's OS user
	DataDir   string
	SocketDir string
	Port      int
	// Cred is the OS credential PostgreSQL runs with (nil when not root).
	Cred *syscall.Credential
	t    testing.TB
}

// OSUser returns the credential to run PostgreSQL programs with: the postgres user when
// running as root, nil (the current user) otherwise.
func OSUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres OS user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// MkdirOwned makes a fresh temp dir that the cluster's OS user owns, removed at cleanup.
func MkdirOwned(t testing.TB, cred *syscall.Credential, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func binDir(o Options) string {
	if o.BinDir != "" {
		return o.BinDir
	}
	if d := os.Getenv("PGHARBOR_PG_BIN"); d != "" {
		return d
	}
	return DefaultBinDir
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// New initialises a cluster (initdb) without starting it.
func New(t testing.TB, o Options) *Cluster {
	t.Helper()
	bin := binDir(o)
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		msg := fmt.Sprintf("PostgreSQL 15 server binaries not found in %s (apt-get install postgresql-15)", bin)
		if ci.Enabled() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cred, err := OSUser()
	if err != nil {
		t.Fatal(err)
	}
	root := MkdirOwned(t, cred, "pgharbor-pg-")
	c := &Cluster{BinDir: bin, Root: root, DataDir: filepath.Join(root, "data"), SocketDir: filepath.Join(root, "sock"), Port: FreePort(t), Cred: cred, t: t}
	c.mkdir(c.SocketDir)
	args := []string{"-D", c.DataDir, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"}
	if o.DataChecksums {
		args = append(args, "--data-checksums")
	}
	c.run(t, "initdb", args...)
	c.configure(t, o)
	return c
}

// Start initialises and starts a cluster; it is stopped at cleanup.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	c := New(t, o)
	if !o.NoStart {
		c.Start(t)
	}
	return c
}

func (c *Cluster) mkdir(dir string) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	if c.Cred != nil {
		if err := os.Chown(dir, int(c.Cred.Uid), int(c.Cred.Gid)); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *Cluster) configure(t testing.TB, o Options) {
	conf := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"port":                    strconv.Itoa(c.Port),
		"unix_socket_directories": "'" + c.SocketDir + "'",
		"wal_level":               "replica",
		"max_wal_senders":         "10",
		"max_replication_slots":   "10",
		"fsync":                   "off",
		"full_page_writes":        "on",
		"shared_buffers":          "32MB",
		"max_connections":         "100",
		"hot_standby":             "on",
		"wal_keep_size":           "64MB",
		"log_min_messages":        "warning",
		"logging_collector":       "off",
	}
	for k, v := range o.Config {
		conf[k] = v
	}
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("\n# pgtest\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, conf[k])
	}
	c.appendFile(t, "postgresql.conf", b.String())
	if len(o.HBA) > 0 {
		// pg_hba.conf is first-match: the caller's lines go before the defaults.
		c.prependHBA(t, strings.Join(o.HBA, "\n")+"\n")
	}
	c.appendFile(t, "pg_hba.conf", "\nlocal all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")
}

func (c *Cluster) prependHBA(t testing.TB, lines string) {
	p := filepath.Join(c.DataDir, "pg_hba.conf")
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, append([]byte(lines), old...), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (c *Cluster) appendFile(t testing.TB, name, text string) {
	f, err := os.OpenFile(filepath.Join(c.DataDir, name), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// AppendConf appends settings to postgresql.conf (effective at the next start or reload).
func (c *Cluster) AppendConf(t testing.TB, settings map[string]string) {
	t.Helper()
	var b strings.Builder
	for k, v := range settings {
		fmt.Fprintf(&b, "%s = %s\n", k, v)
	}
	c.appendFile(t, "postgresql.conf", b.String())
}

// Command returns an exec.Cmd for a PostgreSQL binary that runs as the cluster's OS user.
func (c *Cluster) Command(name string, args ...string) *exec.Cmd {
	path := name
	if !strings.Contains(name, "/") {
		path = filepath.Join(c.BinDir, name)
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = c.Root
	if c.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.Cred}
	}
	cmd.Env = append(os.Environ(), "PGHOST="+c.SocketDir, "PGPORT="+strconv.Itoa(c.Port), "PGUSER=postgres", "LC_ALL=C")
	return cmd
}

func (c *Cluster) run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := c.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Start starts the server and waits until it accepts connections.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	logFile := filepath.Join(c.Root, "postgres.log")
	out, err := c.Command("pg_ctl", "-D", c.DataDir, "-l", logFile, "-w", "-t", "60", "start").CombinedOutput()
	if err != nil {
		logText, _ := os.ReadFile(logFile)
		t.Fatalf("pg_ctl start: %v\n%s\n--- log ---\n%s", err, out, logText)
	}
	t.Cleanup(func() { c.stop("immediate") })
}

// Stop stops the server with the given mode (smart, fast, immediate).
func (c *Cluster) Stop(t testing.TB, mode string) {
	t.Helper()
	if err := c.stop(mode); err != nil {
		t.Fatal(err)
	}
}

func (c *Cluster) stop(mode string) error {
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err != nil {
		return nil
	}
	out, err := c.Command("pg_ctl", "-D", c.DataDir, "-m", mode, "-w", "-t", "60", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

// Log returns the server log so far (for failure messages).
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Root, "postgres.log"))
	return string(b)
}

// ConnString returns a libpq connection string over the unix socket.
func (c *Cluster) ConnString(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", c.SocketDir, c.Port, db)
}

// TCPConnString returns a libpq connection string over loopback TCP.
func (c *Cluster) TCPConnString(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable", c.Port, db)
}

// Connect opens a pgx connection closed at cleanup.
func (c *Cluster) Connect(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString(db))
	if err != nil {
		t.Fatalf("connect to %s: %v", c.ConnString(db), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Exec runs SQL on database "postgres" and fails the test on error.
func (c *Cluster) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	conn := c.Connect(t, "postgres")
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
	conn.Close(context.Background())
}

// QueryString runs a query returning one text value.
func (c *Cluster) QueryString(t testing.TB, db, sql string, args ...any) string {
	t.Helper()
	conn := c.Connect(t, db)
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
	return s
}

// StartStandby creates a streaming standby of c with pg_basebackup -R and starts it.
func (c *Cluster) StartStandby(t testing.TB) *Cluster {
	t.Helper()
	root := MkdirOwned(t, c.Cred, "pgharbor-pg-standby-")
	s := &Cluster{BinDir: c.BinDir, Root: root, DataDir: filepath.Join(root, "data"), SocketDir: filepath.Join(root, "sock"), Port: FreePort(t), Cred: c.Cred, t: t}
	s.mkdir(s.SocketDir)
	s.run(t, "pg_basebackup", "-h", c.SocketDir, "-p", strconv.Itoa(c.Port), "-U", "postgres", "-D", s.DataDir, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync")
	s.appendFile(t, "postgresql.conf", fmt.Sprintf("\nport = %d\nunix_socket_directories = '%s'\n", s.Port, s.SocketDir))
	s.Start(t)
	return s
}

// Pgbench runs pgbench against database db with args; it fails the test on error.
func (c *Cluster) Pgbench(t testing.TB, db string, args ...string) string {
	t.Helper()
	return c.run(t, "pgbench", append(append([]string{"-h", c.SocketDir, "-p", strconv.Itoa(c.Port), "-U", "postgres"}, args...), db)...)
}

// WaitReplay waits until the standby s has replayed up to the primary's current WAL
// position (timeout 60 s).
func (c *Cluster) WaitReplay(t testing.TB, s *Cluster) {
	t.Helper()
	lsn := c.QueryString(t, "postgres", "SELECT pg_current_wal_flush_lsn()::text")
	conn := s.Connect(t, "postgres")
	defer conn.Close(context.Background())
	deadline := time.Now().Add(60 * time.Second)
	for {
		var ok bool
		err := conn.QueryRow(context.Background(), "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok)
		if err != nil {
			t.Fatalf("wait replay: %v", err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby did not replay up to %s in 60 s; log:\n%s", lsn, s.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
