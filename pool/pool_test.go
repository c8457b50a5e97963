package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/pool/cluster"
)

// fixture is one primary + standby shared by the subtests of TestPool.
type fixture struct {
	primary, standby *pgtest.Cluster
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("PGHARBOR_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func (f *fixture) clusterCfg(withStandby bool) cluster.Config {
	c := cluster.Config{HealthCheckPeriod: 200 * time.Millisecond, HealthCheckTimeout: time.Second, HealthCheckMaxRetries: -1,
		Nodes: []cluster.NodeConfig{{Host: "127.0.0.1", Port: f.primary.Port, Weight: 0}}}
	if withStandby && f.standby != nil {
		c.Nodes = append(c.Nodes, cluster.NodeConfig{Host: "127.0.0.1", Port: f.standby.Port, Weight: 1})
	}
	return c
}

// startPool starts a pool in-process and stops it at cleanup.
func startPool(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	s, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Serve did not return 30 s after cancel")
		}
	})
	waitReady(t, s)
	return s
}

func waitReady(t testing.TB, s *Server) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, ok := s.cl.Primary(); ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pool: no primary after 20 s: %+v", s.cl.Nodes())
}

func poolConnString(s *Server, user, db string) string {
	host, port, _ := strings.Cut(s.Addr(), ":")
	return fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", host, port, user, db)
}

func connect(t testing.TB, s *Server, user, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, poolConnString(s, user, db))
	if err != nil {
		t.Fatalf("connect through pool: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func poolPort(s *Server) string {
	_, port, _ := strings.Cut(s.Addr(), ":")
	return port
}

// psql runs psql against the pool and returns its output.
func psql(t testing.TB, s *Server, user, db, sql string, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(pgtest.DefaultBinDir, "psql"), "-h", "127.0.0.1", "-p", poolPort(s), "-U", user, "-d", db, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql)
	cmd.Env = append(os.Environ(), append([]string{"PGCONNECT_TIMEOUT=10", "PGSSLMODE=disable"}, env...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// pgbench runs pgbench against the pool.
func pgbench(t testing.TB, s *Server, db string, args ...string) string {
	t.Helper()
	all := append([]string{"-h", "127.0.0.1", "-p", poolPort(s), "-U", "postgres"}, args...)
	cmd := exec.Command(filepath.Join(pgtest.DefaultBinDir, "pgbench"), append(all, db)...)
	cmd.Env = append(os.Environ(), "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func adminQuery(t testing.TB, s *Server, sql string) [][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, poolConnString(s, "postgres", AdminDatabase))
	if err != nil {
		t.Fatalf("admin connect: %v", err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("admin %q: %v", sql, err)
	}
	var rows [][]string
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("admin %q: %v", sql, r.Err)
		}
		for _, row := range r.Rows {
			var out []string
			for _, v := range row {
				out = append(out, string(v))
			}
			rows = append(rows, out)
		}
	}
	return rows
}

// activeServers counts server connections in state active (SHOW SERVERS).
func activeServers(t testing.TB, s *Server) (active, total int) {
	for _, r := range adminQuery(t, s, "SHOW SERVERS") {
		total++
		if r[3] == "active" {
			active++
		}
	}
	return active, total
}

func baseConfig(f *fixture, mode PoolMode) Config {
	return Config{PoolMode: mode, AuthType: AuthTrust, AdminUsers: []string{"postgres"}, Cluster: f.clusterCfg(false),
		QueryWaitTimeout: 30 * time.Second}
}

func TestPool(t *testing.T) {
	primary := pgtest.Start(t, pgtest.Options{
		Config: map[string]string{"max_connections": "200", "password_encryption": "'scram-sha-256'"},
		HBA:    []string{"host all scram_user 127.0.0.1/32 scram-sha-256", "host all md5_user 127.0.0.1/32 scram-sha-256"},
	})
	f := &fixture{primary: primary}
	primary.Exec(t, "CREATE ROLE scram_user LOGIN PASSWORD 'scram-secret-pw'")
	primary.Exec(t, "CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw'")
	primary.Exec(t, "GRANT ALL ON SCHEMA public TO scram_user, md5_user")
	primary.Exec(t, "CREATE TABLE kv (k int PRIMARY KEY, v text)")
	primary.Pgbench(t, "postgres", "-i", "-s", "1", "-q")

	t.Run("PgxQueriesTransactionsPreparedCopyCancel", func(t *testing.T) {
		for _, mode := range []PoolMode{ModeSession, ModeTransaction} {
			t.Run(string(mode), func(t *testing.T) { testPgxJourney(t, f, mode) })
		}
	})
}

func testPgxJourney(t *testing.T, f *fixture, mode PoolMode) {
	s := startPool(t, baseConfig(f, mode))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := connect(t, s, "postgres", "postgres")
	var n int
	if err := c.QueryRow(ctx, "SELECT 40 + $1::int", 2).Scan(&n); err != nil || n != 42 {
		t.Fatalf("query: %v %d", err, n)
	}
	table := "kv_" + string(mode)
	if _, err := c.Exec(ctx, "CREATE TABLE "+table+" (k int PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	// transaction with an error in the middle, then rollback
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO "+table+" VALUES (1, 'a')"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("division by zero did not fail")
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err == nil || !strings.Contains(err.Error(), "aborted") {
		t.Fatalf("statement after error in transaction: %v, want 'current transaction is aborted'", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// committed transaction
	tx, err = c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		if _, err := tx.Exec(ctx, "INSERT INTO "+table+" VALUES ($1, $2)", i, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// prepared statements, used many times (pgx caches them by name)
	for i := 0; i < 20; i++ {
		var v string
		if err := c.QueryRow(ctx, "SELECT v FROM "+table+" WHERE k = $1", i%10+1).Scan(&v); err != nil {
			t.Fatalf("prepared select %d: %v", i, err)
		}
	}
	if _, err := c.Prepare(ctx, "named_stmt", "SELECT count(*) FROM "+table); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "named_stmt").Scan(&n); err != nil || n != 10 {
		t.Fatalf("named statement: %v %d", err, n)
	}
	// COPY in and out
	rows := [][]any{}
	for i := 100; i < 1100; i++ {
		rows = append(rows, []any{i, strings.Repeat("x", i%50)})
	}
	cnt, err := c.CopyFrom(ctx, pgx.Identifier{table}, []string{"k", "v"}, pgx.CopyFromRows(rows))
	if err != nil || cnt != 1000 {
		t.Fatalf("COPY FROM: %v %d", err, cnt)
	}
	var buf strings.Builder
	tag, err := c.PgConn().CopyTo(ctx, &buf, "COPY "+table+" TO STDOUT")
	if err != nil || tag.RowsAffected() != 1010 {
		t.Fatalf("COPY TO: %v %v", err, tag)
	}
	// cancel a running query: the CancelRequest goes to the pool, which routes it to the
	// server connection this session holds
	start := time.Now()
	errc := make(chan error, 1)
	go func() { _, err := c.Exec(context.Background(), "SELECT pg_sleep(20)"); errc <- err }()
	time.Sleep(300 * time.Millisecond)
	if err := c.PgConn().CancelRequest(ctx); err != nil {
		t.Fatalf("CancelRequest: %v", err)
	}
	err = <-errc
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" || time.Since(start) > 10*time.Second {
		t.Fatalf("cancel of pg_sleep: err %v after %v, want SQLSTATE 57014 at once", err, time.Since(start))
	}
	if err := c.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != 1010 {
		t.Fatalf("after cancel: %v %d", err, n)
	}
	_ = strconv.Itoa
	_ = sync.Mutex{}
}
