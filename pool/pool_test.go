package pool

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
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
	"github.com/jackc/pgx/v5/pgproto3"

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

// activeServers counts server connections in state active (SHOW SERVERS), giving sessions
// that are closing a moment to hand their connection back.
func activeServers(t testing.TB, s *Server) (active, total int) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		active, total = 0, 0
		for _, r := range adminQuery(t, s, "SHOW SERVERS") {
			total++
			if r[3] == "active" {
				active++
			}
		}
		if active == 0 || time.Now().After(deadline) {
			return active, total
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func baseConfig(f *fixture, mode PoolMode) Config {
	return Config{PoolMode: mode, AuthType: AuthTrust, AdminUsers: []string{"postgres"}, Cluster: f.clusterCfg(false),
		QueryWaitTimeout: 30 * time.Second}
}

func TestPool(t *testing.T) {
	primary := pgtest.Start(t, pgtest.Options{
		Config: map[string]string{"max_connections": "200", "password_encryption": "'scram-sha-256'"},
		HBA:    []string{"host all scram_user 127.0.0.1/32 scram-sha-256", "host all md5_user 127.0.0.1/32 scram-sha-256", "host all md5srv 127.0.0.1/32 md5"},
	})
	f := &fixture{primary: primary}
	primary.Exec(t, "CREATE ROLE scram_user LOGIN PASSWORD 'scram-secret-pw'")
	primary.Exec(t, "CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw'")
	primary.Exec(t, "SET password_encryption = 'md5'; CREATE ROLE md5srv LOGIN PASSWORD 'md5srv-pw'")
	primary.Exec(t, "GRANT ALL ON SCHEMA public TO scram_user, md5_user")
	primary.Exec(t, "CREATE TABLE kv (k int PRIMARY KEY, v text)")
	primary.Pgbench(t, "postgres", "-i", "-s", "1", "-q")

	t.Run("PgxQueriesTransactionsPreparedCopyCancel", func(t *testing.T) {
		for _, mode := range []PoolMode{ModeSession, ModeTransaction} {
			t.Run(string(mode), func(t *testing.T) { testPgxJourney(t, f, mode) })
		}
	})
	t.Run("PsqlAndPgbenchAllProtocolsBothModes", func(t *testing.T) { testPsqlPgbench(t, f) })
	t.Run("TwoThousandClientsOverTwentyServersNoLeaks", func(t *testing.T) { testManyClients(t, f) })
	t.Run("SCRAMEndToEndWithAuthFileSecret", func(t *testing.T) { testSCRAM(t, f) })
	t.Run("CleanErrorsForBadLogins", func(t *testing.T) { testBadLogins(t, f) })
	t.Run("AdminConsolePauseResumeMetrics", func(t *testing.T) { testAdmin(t, f) })
	t.Run("ClientTLS", func(t *testing.T) { testClientTLS(t, f) })
	t.Run("MarkDownEvictsIdleSessionsAndHoldsNewTransactions", func(t *testing.T) { testMarkDown(t, f) })
	t.Run("PreparedStatementsFollowClientsAcrossServerConnections", func(t *testing.T) { testPreparedChurn(t, f) })
	t.Run("PreparedStatementsPerServerAreCapped", func(t *testing.T) { testPreparedCap(t, f) })
	t.Run("PreparingBetweenTransactionsNeedsNoServer", func(t *testing.T) { testPrepareWithoutServer(t, f) })
	t.Run("NamedStatementSessionsStayOnTheEventLoop", func(t *testing.T) { testPreparedOnLoop(t, f) })
	t.Run("LargeMessagesBatchesAndPipelines", func(t *testing.T) { testLargeAndPipelined(t, f) })
	t.Run("EventLoopSessions", func(t *testing.T) { testEventLoop(t, f) })
	t.Run("EventLoopReadsAndWritesABatchInOneCall", func(t *testing.T) { testLoopBatchedIO(t, f) })
	t.Run("LimitsTimeoutsUnixSocketServerTLSMode", func(t *testing.T) { testLimits(t, f) })
	t.Run("StartsDegradedWithAnUnreachableStandby", func(t *testing.T) {
		cfg := baseConfig(f, ModeTransaction)
		cfg.LoadBalance, cfg.StatementLevelLoadBalance = true, true
		cfg.Cluster.Nodes = append(cfg.Cluster.Nodes, cluster.NodeConfig{Host: "127.0.0.1", Port: pgtest.FreePort(t), Weight: 1})
		s := startPool(t, cfg)
		waitNode(t, s, "1", "down", "")
		for i := 0; i < 5; i++ {
			if out, err := psql(t, s, "postgres", "postgres", "SELECT pg_is_in_recovery()"); err != nil || out != "f" {
				t.Fatalf("read with the standby down: %v %s", err, out)
			}
		}
	})
	// the standby comes last: it is stopped by its test
	f.standby = primary.StartStandby(t)
	t.Run("ReadsReachStandbyWritesNeverStandbyDownTrafficContinues", func(t *testing.T) { testRouting(t, f) })
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
	// DEALLOCATE ALL (pgx's DeallocateAll) and, in transaction mode, a DISCARD ALL the pool
	// cannot stop: statements keep working, re-prepared where needed
	if mode == ModeTransaction {
		if _, err := c.Exec(ctx, "DISCARD ALL"); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		var v string
		if err := c.QueryRow(ctx, "SELECT v FROM "+table+" WHERE k = $1", i+1).Scan(&v); err != nil {
			t.Fatalf("prepared select after DISCARD ALL: %v", err)
		}
	}
	if err := c.DeallocateAll(ctx); err != nil {
		t.Fatalf("DeallocateAll: %v", err)
	}
	for i := 0; i < 3; i++ {
		var v string
		if err := c.QueryRow(ctx, "SELECT v FROM "+table+" WHERE k = $1", i+1).Scan(&v); err != nil {
			t.Fatalf("prepared select after DEALLOCATE ALL: %v", err)
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
}

func testPsqlPgbench(t *testing.T, f *fixture) {
	for _, v := range []struct {
		mode   PoolMode
		engine string
	}{{ModeSession, ""}, {ModeTransaction, ""}, {ModeTransaction, IOEngineGoroutines}} {
		name := string(v.mode)
		if v.engine != "" {
			name += "-" + v.engine
		}
		mode := v.mode
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig(f, mode)
			cfg.IOEngine = v.engine
			cfg.DefaultPoolSize = 4
			s := startPool(t, cfg)
			out, err := psql(t, s, "postgres", "postgres", "SELECT 1 AS one; SELECT current_database()")
			if err != nil || out != "1\npostgres" {
				t.Fatalf("psql: %v\n%s", err, out)
			}
			out, err = psql(t, s, "postgres", "postgres", "SHOW POOL_NODES")
			if err != nil || !strings.HasPrefix(out, "0|127.0.0.1|") || !strings.Contains(out, "|up|") {
				t.Fatalf("psql SHOW POOL_NODES: %v\n%s", err, out)
			}
			if out, err := psql(t, s, "postgres", "postgres", "SELECT * FROM no_such_table"); err == nil || !strings.Contains(out, "does not exist") {
				t.Fatalf("psql error: %v\n%s", err, out)
			}
			for _, proto := range []string{"simple", "extended", "prepared"} {
				out := pgbench(t, s, "postgres", "-n", "-c", "8", "-j", "8", "-t", "60", "-M", proto)
				if !strings.Contains(out, "number of failed transactions: 0") || !strings.Contains(out, "number of transactions actually processed: 480/480") {
					t.Fatalf("pgbench -M %s:\n%s", proto, out)
				}
				out = pgbench(t, s, "postgres", "-n", "-S", "-c", "8", "-j", "8", "-t", "100", "-M", proto)
				if !strings.Contains(out, "800/800") {
					t.Fatalf("pgbench -S -M %s:\n%s", proto, out)
				}
			}
			if a, total := activeServers(t, s); a != 0 || total > 4 {
				t.Fatalf("after pgbench: %d active of %d server connections, want 0 active and at most 4", a, total)
			}
		})
	}
}

func testManyClients(t *testing.T, f *fixture) {
	const clients, perClient = 2000, 3
	cfg := baseConfig(f, ModeTransaction)
	cfg.DefaultPoolSize = 20
	cfg.MaxClientConn = clients + 10
	cfg.QueryWaitTimeout = 120 * time.Second
	s := startPool(t, cfg)
	f.primary.Exec(t, "CREATE TABLE many (client int, i int)")
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	conns := make(chan *pgconn.PgConn, clients)
	sem := make(chan struct{}, 200) // connect 200 at a time (the accept backlog)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			c, err := pgconn.Connect(ctx, poolConnString(s, "postgres", "postgres"))
			<-sem
			if err != nil {
				errs <- fmt.Errorf("client %d connect: %w", i, err)
				return
			}
			conns <- c
			for j := 0; j < perClient; j++ {
				sql := fmt.Sprintf("BEGIN; INSERT INTO many VALUES (%d, %d); SELECT pg_sleep(0.001); COMMIT", i, j)
				if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	close(conns)
	for err := range errs {
		t.Fatal(err)
	}
	var n int
	if err := connect(t, s, "postgres", "postgres").QueryRow(ctx, "SELECT count(*) FROM many").Scan(&n); err != nil || n != clients*perClient {
		t.Fatalf("rows: %v %d, want %d", err, n, clients*perClient)
	}
	a, total := activeServers(t, s)
	if a != 0 || total > 20 {
		t.Fatalf("SHOW SERVERS: %d active of %d, want 0 active and at most 20", a, total)
	}
	for c := range conns {
		c.Close(ctx)
	}
}

func writeFile(t testing.TB, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testSCRAM(t *testing.T, f *fixture) {
	secret := f.primary.QueryString(t, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_user'")
	if !strings.HasPrefix(secret, "SCRAM-SHA-256$") {
		t.Fatalf("server secret %q is not SCRAM", secret)
	}
	auth := writeFile(t, "userlist.txt", fmt.Sprintf("; pgharbor users\n\"scram_user\" \"%s\"\n\"md5_user\" \"md5-pw\"\n\"postgres\" \"pg-pw\"\n\"md5srv\" \"%s\"\n",
		secret, md5Hash("md5srv-pw", "md5srv")))
	for _, mode := range []PoolMode{ModeSession, ModeTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			cfg := baseConfig(f, mode)
			cfg.AuthType, cfg.AuthFile = AuthSCRAM, auth
			s := startPool(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// pgx with the right password: SCRAM with the pool, SCRAM pass-through to the server
			c, err := pgx.Connect(ctx, poolConnString(s, "scram_user", "postgres")+" password=scram-secret-pw")
			if err != nil {
				t.Fatalf("pgx SCRAM login: %v", err)
			}
			defer c.Close(ctx)
			var who string
			for i := 0; i < 3; i++ {
				if err := c.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "scram_user" {
					t.Fatalf("query as scram_user: %v %q", err, who)
				}
			}
			// psql with PGPASSWORD
			out, err := psql(t, s, "scram_user", "postgres", "SELECT current_user", "PGPASSWORD=scram-secret-pw")
			if err != nil || out != "scram_user" {
				t.Fatalf("psql SCRAM: %v %s", err, out)
			}
			// wrong password
			_, err = pgx.Connect(ctx, poolConnString(s, "scram_user", "postgres")+" password=wrong")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "28P01" {
				t.Fatalf("wrong password: %v, want SQLSTATE 28P01", err)
			}
			out, err = psql(t, s, "scram_user", "postgres", "SELECT 1", "PGPASSWORD=nope")
			if err == nil || !strings.Contains(out, "password authentication failed") {
				t.Fatalf("psql wrong password: %v %s", err, out)
			}
			// plaintext in auth_file: the pool derives SCRAM keys, and logs in to the server with the password
			c2, err := pgx.Connect(ctx, poolConnString(s, "md5_user", "postgres")+" password=md5-pw")
			if err != nil {
				t.Fatalf("plaintext-secret user: %v", err)
			}
			defer c2.Close(ctx)
			if err := c2.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "md5_user" {
				t.Fatalf("query as md5_user: %v %q", err, who)
			}
			// unknown user
			_, err = pgx.Connect(ctx, poolConnString(s, "nobody", "postgres")+" password=x")
			if !errors.As(err, &pe) || pe.Code != "28P01" {
				t.Fatalf("unknown user: %v", err)
			}
		})
	}
	t.Run("md5", func(t *testing.T) {
		cfg := baseConfig(f, ModeTransaction)
		cfg.AuthType, cfg.AuthFile = AuthMD5, auth
		s := startPool(t, cfg)
		out, err := psql(t, s, "md5_user", "postgres", "SELECT current_user", "PGPASSWORD=md5-pw")
		if err != nil || out != "md5_user" {
			t.Fatalf("psql md5: %v %s", err, out)
		}
		out, err = psql(t, s, "md5_user", "postgres", "SELECT current_user", "PGPASSWORD=bad")
		if err == nil || !strings.Contains(out, "password authentication failed") {
			t.Fatalf("psql md5 wrong password: %v %s", err, out)
		}
		// an md5 hash in auth_file: md5 with the client, and with a server that asks for md5
		out, err = psql(t, s, "md5srv", "postgres", "SELECT current_user", "PGPASSWORD=md5srv-pw")
		if err != nil || out != "md5srv" {
			t.Fatalf("psql md5 hash end to end: %v %s", err, out)
		}
	})
	t.Run("auth_query", func(t *testing.T) {
		cfg := baseConfig(f, ModeTransaction)
		cfg.AuthType, cfg.AuthUser = AuthSCRAM, "postgres"
		s := startPool(t, cfg)
		out, err := psql(t, s, "scram_user", "postgres", "SELECT current_user", "PGPASSWORD=scram-secret-pw")
		if err != nil || out != "scram_user" {
			t.Fatalf("psql via auth_query: %v %s", err, out)
		}
		out, err = psql(t, s, "scram_user", "postgres", "SELECT 1", "PGPASSWORD=bad")
		if err == nil || !strings.Contains(out, "password authentication failed") {
			t.Fatalf("auth_query wrong password: %v %s", err, out)
		}
	})
}

func testBadLogins(t *testing.T, f *fixture) {
	s := startPool(t, baseConfig(f, ModeTransaction))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, poolConnString(s, "postgres", "no_such_db"))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "3D000" {
		t.Fatalf("unknown database: %v, want SQLSTATE 3D000", err)
	}
	out, err := psql(t, s, "postgres", "no_such_db", "SELECT 1")
	if err == nil || !strings.Contains(out, `database "no_such_db" does not exist`) {
		t.Fatalf("psql unknown database: %v %s", err, out)
	}
	// malformed startup packets: each gets an error or a close, never a crash
	for name, pkt := range map[string][]byte{
		"short length":     {0, 0, 0, 3},
		"huge length":      {0x7f, 0, 0, 0, 0, 3, 0, 0},
		"protocol 2":       {0, 0, 0, 8, 0, 2, 0, 0},
		"no terminator":    append([]byte{0, 0, 0, 17, 0, 3, 0, 0}, []byte("user\x00postg")...),
		"truncated":        {0, 0, 0, 40, 0, 3, 0, 0, 'u'},
		"no user":          append([]byte{0, 0, 0, 9, 0, 3, 0, 0}, 0),
		"garbage":          []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"cancel bad":       {0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2},
		"gssenc then junk": {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30, 1, 2, 3},
	} {
		reply := rawExchange(t, s, pkt)
		if len(reply) > 0 && reply[0] != 'E' && reply[0] != 'N' {
			t.Errorf("%s: reply starts with %q, want an ErrorResponse, 'N' or a close", name, reply[0])
		}
		if strings.Contains(name, "protocol 2") && !strings.Contains(string(reply), "unsupported frontend protocol") {
			t.Errorf("%s: reply %q", name, reply)
		}
	}
	// the pool still serves
	if out, err := psql(t, s, "postgres", "postgres", "SELECT 'alive'"); err != nil || out != "alive" {
		t.Fatalf("after malformed packets: %v %s", err, out)
	}
}

// rawExchange sends pkt on a fresh TCP connection and returns what comes back until close.
func rawExchange(t testing.TB, s *Server, pkt []byte) []byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = conn.Write(pkt)
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	b, _ := io.ReadAll(conn)
	return b
}

func testAdmin(t *testing.T, f *fixture) {
	cfg := baseConfig(f, ModeTransaction)
	cfg.MetricsListen = "127.0.0.1:0"
	s := startPool(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connect(t, s, "postgres", "postgres")
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS", "SHOW STATS", "SHOW CONFIG", "SHOW POOL_NODES"} {
		if rows := adminQuery(t, s, cmd); len(rows) == 0 {
			t.Errorf("%s: no rows", cmd)
		}
	}
	stats := adminQuery(t, s, "SHOW STATS")
	if stats[0][0] != "postgres" || stats[0][1] == "0" {
		t.Errorf("SHOW STATS: %v", stats)
	}
	// only admin_users get in
	out, err := psql(t, s, "nobody", AdminDatabase, "SHOW POOLS")
	if err == nil || !strings.Contains(out, "admin_users") {
		t.Fatalf("non-admin on the console: %v %s", err, out)
	}
	// PAUSE holds new transactions; RESUME releases them
	adminQuery(t, s, "PAUSE")
	done := make(chan error, 1)
	go func() { _, err := c.Exec(ctx, "SELECT 2"); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("query ran while paused: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	adminQuery(t, s, "RESUME")
	if err := <-done; err != nil {
		t.Fatalf("query after resume: %v", err)
	}
	adminQuery(t, s, "RELOAD")
	// Pause with a deadline while a transaction is open reports it
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	if err := s.Pause(pctx); err == nil {
		t.Fatal("Pause returned nil while a transaction holds a server connection")
	}
	pcancel()
	s.Resume()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// /metrics
	resp, err := http.Get("http://" + s.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"pgharbor_pool_clients{state=\"idle\"}", "pgharbor_pool_transactions_total", "pgharbor_pool_servers", "pgharbor_pool_query_seconds_total"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s:\n%s", m, body)
		}
	}
}

func testClientTLS(t *testing.T, f *fixture) {
	certFile, keyFile := selfSignedCert(t)
	cfg := baseConfig(f, ModeTransaction)
	cfg.ClientTLSMode, cfg.ClientTLSCertFile, cfg.ClientTLSKeyFile = "require", certFile, keyFile
	s := startPool(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, strings.Replace(poolConnString(s, "postgres", "postgres"), "sslmode=disable", "sslmode=require", 1))
	if err != nil {
		t.Fatalf("TLS connect: %v", err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT 7").Scan(&n); err != nil || n != 7 {
		t.Fatalf("query over TLS: %v", err)
	}
	if _, err := pgx.Connect(ctx, poolConnString(s, "postgres", "postgres")); err == nil {
		t.Fatal("plaintext login accepted with client_tls_sslmode require")
	}
}

func selfSignedCert(t testing.TB) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))),
		writeFile(t, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
}

// selectCounts returns select_cnt by node id from SHOW POOL_NODES (admin console).
func poolNodes(t testing.TB, s *Server) map[string][]string {
	out := map[string][]string{}
	for _, r := range adminQuery(t, s, "SHOW POOL_NODES") {
		out[r[0]] = r
	}
	return out
}

func testRouting(t *testing.T, f *fixture) {
	f.primary.WaitReplay(t, f.standby)
	cfg := baseConfig(f, ModeTransaction)
	cfg.Cluster = f.clusterCfg(true)
	cfg.LoadBalance, cfg.StatementLevelLoadBalance = true, true
	s := startPool(t, cfg)
	waitNode(t, s, "1", "up", "standby")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := connect(t, s, "postgres", "postgres")
	before := poolNodes(t, s)
	for i := 0; i < 20; i++ {
		var inRecovery bool
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			t.Fatal(err)
		}
		if !inRecovery {
			t.Fatalf("read-only statement %d ran on the primary (primary weight 0)", i)
		}
		// writes, writes in SELECT clothing and explicit transactions go to the primary
		if _, err := c.Exec(ctx, "INSERT INTO kv VALUES ($1, 'x') ON CONFLICT (k) DO UPDATE SET v = 'y'", i); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery() FROM kv FOR UPDATE LIMIT 1").Scan(&inRecovery); err != nil || inRecovery {
			t.Fatalf("SELECT FOR UPDATE: %v, on standby %v", err, inRecovery)
		}
		var seq int64
		if err := c.QueryRow(ctx, "SELECT nextval('pgbench_history_seq'::regclass) FROM (SELECT 1) x").Scan(&seq); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42P01" { // no such sequence is fine: it was classified and ran on the primary
				t.Fatalf("nextval: %v", err)
			}
		}
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
			t.Fatalf("read in an explicit transaction: %v, on standby %v", err, inRecovery)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// SHOW POOL_NODES over the extended protocol (pgx prepares it), twice: the second time
	// from pgx's statement cache (Bind of a named statement only)
	for i := 0; i < 2; i++ {
		rows, err := c.Query(ctx, "SHOW POOL_NODES")
		if err != nil {
			t.Fatal(err)
		}
		var got [][]string
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			var r []string
			for _, v := range vals {
				r = append(r, fmt.Sprint(v))
			}
			got = append(got, r)
		}
		if err := rows.Err(); err != nil || len(got) != 2 || got[0][5] != "primary" || got[1][5] != "standby" || len(rows.FieldDescriptions()) != 10 {
			t.Fatalf("extended SHOW POOL_NODES: %v %v", err, got)
		}
	}
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("after SHOW POOL_NODES: %v", err)
	}
	// pgbench -S (prepared) load-balances too, and TPC-B writes all succeed
	pgbench(t, s, "postgres", "-n", "-S", "-c", "4", "-t", "50", "-M", "prepared")
	pgbench(t, s, "postgres", "-n", "-c", "4", "-t", "30", "-M", "extended")
	after := poolNodes(t, s)
	b, _ := strconv.Atoi(before["1"][6])
	a, _ := strconv.Atoi(after["1"][6])
	if a-b < 20 {
		t.Fatalf("standby select_cnt moved by %d, want >= 20: %v", a-b, after)
	}
	// a read-only session (default_transaction_read_only) goes to a reader as a whole
	ro, err := pgx.Connect(ctx, poolConnString(s, "postgres", "postgres")+" options='-c default_transaction_read_only=on'")
	if err != nil {
		t.Fatal(err)
	}
	var inRecovery bool
	if err := ro.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || !inRecovery {
		t.Fatalf("read-only session: %v, on standby %v", err, inRecovery)
	}
	ro.Close(ctx)
	// stop the standby: it is marked down and traffic continues on the primary
	f.standby.Stop(t, "immediate")
	waitNode(t, s, "1", "down", "")
	for i := 0; i < 10; i++ {
		if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
			t.Fatalf("read after standby stop: %v %v", err, inRecovery)
		}
	}
	pgbench(t, s, "postgres", "-n", "-S", "-c", "4", "-t", "50", "-M", "prepared")
	if a, total := activeServers(t, s); a != 0 {
		t.Fatalf("%d of %d server connections still active", a, total)
	}
}

func waitNode(t testing.TB, s *Server, id, status, role string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last []string
	for time.Now().Before(deadline) {
		last = poolNodes(t, s)[id]
		if len(last) > 5 && last[3] == status && (role == "" || last[5] == role) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("node %s did not become %s/%s: %v", id, status, role, last)
}

func testMarkDown(t *testing.T, f *fixture) {
	cfg := baseConfig(f, ModeSession)
	cfg.QueryWaitTimeout = 20 * time.Second
	s := startPool(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := connect(t, s, "postgres", "postgres")
	if _, err := a.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	c := connect(t, s, "postgres", "postgres") // logged in, no server yet
	s.Cluster().MarkDown(0, "test: failover")
	// the idle session on the fenced node is closed at once
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := a.Exec(ctx, "SELECT 1")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("session on a node marked down was not closed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// a new transaction waits for a primary instead of failing
	done := make(chan error, 1)
	go func() { _, err := c.Exec(ctx, "SELECT 2"); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("query ran with no primary: %v", err)
	case <-time.After(400 * time.Millisecond):
	}
	s.Cluster().MarkUp(0)
	s.Cluster().CheckNow(ctx)
	if err := <-done; err != nil {
		t.Fatalf("held query after the primary came back: %v", err)
	}
}

// rawClient speaks the protocol by hand through the pool.
func rawClient(t testing.TB, s *Server) (*pgproto3.Frontend, net.Conn) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "postgres", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	until(t, fe, 'Z')
	return fe, conn
}

// until reads messages up to the first of type want (or ReadyForQuery) and returns their types.
func until(t testing.TB, fe *pgproto3.Frontend, want byte) string {
	t.Helper()
	var got []byte
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v (got %q)", err, got)
		}
		raw, _ := m.Encode(nil)
		got = append(got, raw[0])
		if e, ok := m.(*pgproto3.ErrorResponse); ok && want != 'E' {
			t.Logf("server error: %s %s", e.Code, e.Message)
		}
		if raw[0] == want || raw[0] == 'Z' {
			return string(got)
		}
	}
}

// testPrepareWithoutServer: with one server connection held by another client's open
// transaction, a client that prepares synchronously (Parse, Sync, as libpq's PQprepare and
// pgbench -M prepared do) a statement a server has parsed before gets its answer at once
// instead of waiting for the server connection; its Bind prepares it where it runs. A
// client program that prepares while it holds an open transaction on another connection
// (pgbench's thread) would otherwise wait for itself.
func testPrepareWithoutServer(t *testing.T, f *fixture) {
	for _, engine := range []string{IOEngineEpoll, IOEngineGoroutines} {
		t.Run(engine, func(t *testing.T) {
			cfg := baseConfig(f, ModeTransaction)
			cfg.DefaultPoolSize, cfg.IOEngine = 1, engine
			cfg.QueryWaitTimeout = 20 * time.Second
			s := startPool(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const q = "SELECT count(*) FROM pgbench_branches WHERE bid > $1::int"
			holder := connect(t, s, "postgres", "postgres")
			if _, err := holder.Prepare(ctx, "warm", q); err != nil {
				t.Fatal(err)
			}
			f.primary.Exec(t, "CREATE TABLE IF NOT EXISTS prep_gone (x int)")
			if _, err := holder.Prepare(ctx, "warm_gone", "SELECT count(*) FROM prep_gone"); err != nil {
				t.Fatal(err)
			}
			tx, err := holder.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}

			fe, conn := rawClient(t, s)
			_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
			fe.Send(&pgproto3.Parse{Name: "mine", Query: q})
			fe.Send(&pgproto3.Parse{Name: "mine_gone", Query: "SELECT count(*) FROM prep_gone"})
			fe.Send(&pgproto3.Sync{})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := until(t, fe, 'Z'); got != "11Z" {
				t.Fatalf("Parse, Parse, Sync while the only server connection is in another client's transaction: %q, want ParseComplete twice and ReadyForQuery", got)
			}
			_ = conn.SetDeadline(time.Now().Add(25 * time.Second))
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			// the statement runs where the Bind lands
			fe.Send(&pgproto3.Bind{PreparedStatement: "mine", Parameters: [][]byte{[]byte("0")}})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Sync{})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			var rows []string
			for done := false; !done; {
				m, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				switch m := m.(type) {
				case *pgproto3.DataRow:
					rows = append(rows, string(m.Values[0]))
				case *pgproto3.ErrorResponse:
					t.Fatalf("Bind of the statement answered by the pool: %s %s", m.Code, m.Message)
				case *pgproto3.ReadyForQuery:
					done = true
				}
			}
			if len(rows) != 1 || rows[0] != "1" {
				t.Fatalf("rows %v, want [1] (pgbench -s 1 has one branch)", rows)
			}
			// a statement whose table went away since: the error comes with its Bind, and
			// the session goes on
			f.primary.Exec(t, "DROP TABLE prep_gone")
			fe.Send(&pgproto3.Bind{PreparedStatement: "mine_gone"})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Sync{})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := until(t, fe, 'Z'); !strings.Contains(got, "E") {
				t.Fatalf("Bind of a statement whose table was dropped: %q, want an ErrorResponse", got)
			}
			fe.Send(&pgproto3.Query{String: "SELECT 1"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := until(t, fe, 'Z'); got != "TDCZ" {
				t.Fatalf("query after the error: %q", got)
			}
			// pgbench -M prepared with more clients than server connections: each thread
			// prepares BEGIN while its other clients hold transactions open
			out := pgbench(t, s, "postgres", "-n", "-M", "prepared", "-c", "6", "-j", "2", "-t", "40")
			if !strings.Contains(out, "number of transactions actually processed: 240/240") {
				t.Fatalf("pgbench -M prepared, 6 clients over 1 server connection:\n%s", out)
			}
		})
	}
}

func testPreparedChurn(t *testing.T, f *fixture) {
	for _, engine := range []string{IOEngineEpoll, IOEngineGoroutines} {
		t.Run(engine, func(t *testing.T) { testPreparedChurnOn(t, f, engine) })
	}
}

// testPreparedChurnOn: named statements on engine, with a new server connection for every
// transaction, so every use prepares the statement again where it runs.
func testPreparedChurnOn(t *testing.T, f *fixture, engine string) {
	cfg := baseConfig(f, ModeTransaction)
	cfg.ServerLifetime = time.Nanosecond // every transaction gets a fresh server connection
	cfg.IOEngine = engine
	s := startPool(t, cfg)
	fe, _ := rawClient(t, s)
	send := func(msgs ...pgproto3.FrontendMessage) {
		for _, m := range msgs {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	send(&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int + 1"}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "1Z" {
		t.Fatalf("Parse: %q", got)
	}
	// a standalone Describe on another server connection: re-prepared transparently
	send(&pgproto3.Describe{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "tTZ" {
		t.Fatalf("standalone Describe: %q, want ParameterDescription, RowDescription, ReadyForQuery", got)
	}
	send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("41")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "2DCZ" {
		t.Fatalf("Bind/Execute: %q", got)
	}
	// Parse again under the same text in one batch with its use; then Close
	send(&pgproto3.Parse{Name: "s2", Query: "SELECT $1::int + 1"}, &pgproto3.Bind{PreparedStatement: "s2", Parameters: [][]byte{[]byte("1")}},
		&pgproto3.Execute{}, &pgproto3.Close{ObjectType: 'S', Name: "s2"}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "12DC3Z" {
		t.Fatalf("Parse/Bind/Execute/Close: %q", got)
	}
	send(&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "EZ" {
		t.Fatalf("Bind of a closed statement: %q, want an error", got)
	}
	// an error in the middle of a batch, then the statement still works
	send(&pgproto3.Parse{Name: "bad", Query: "SELEKT"}, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "EZ" {
		t.Fatalf("batch with a syntax error: %q", got)
	}
	send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("5")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "2DCZ" {
		t.Fatalf("after the error: %q", got)
	}
	// pgbench -M prepared with a new server connection for every transaction
	out := pgbench(t, s, "postgres", "-n", "-c", "2", "-j", "2", "-t", "20", "-M", "prepared")
	if !strings.Contains(out, "40/40") {
		t.Fatalf("pgbench: %s", out)
	}
}

// testPreparedCap: with max_prepared_statements 3 and one server connection, twelve
// statements used round after round (pgx prepares each) all keep answering right, while
// the server never holds more than three; inside a transaction block nothing is closed
// (a portal could depend on it) and the connection catches up after COMMIT.
func testPreparedCap(t *testing.T, f *fixture) {
	cfg := baseConfig(f, ModeTransaction)
	cfg.DefaultPoolSize = 1
	cfg.MaxPreparedStatements = 3
	s := startPool(t, cfg)
	c := connect(t, s, "postgres", "postgres")
	ctx := t.Context()
	onServer := func() int {
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for round := 0; round < 3; round++ {
		for i := 0; i < 12; i++ {
			var got int
			if err := c.QueryRow(ctx, fmt.Sprintf("SELECT $1::int + %d", i), round).Scan(&got); err != nil || got != round+i {
				t.Fatalf("round %d statement %d: %d, %v", round, i, got, err)
			}
			if n := onServer(); n > 3 {
				t.Fatalf("round %d statement %d: %d statements prepared on the server, want <= 3", round, i, n)
			}
		}
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		var got int
		if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT $1::int * %d", i+2), 10).Scan(&got); err != nil || got != 10*(i+2) {
			t.Fatalf("in a transaction, statement %d: %d, %v", i, got, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := onServer(); n < 6 {
		t.Fatalf("%d statements on the server after six in one transaction block: something was closed inside it", n)
	}
	for i := 0; i < 12; i++ {
		var got int
		if err := c.QueryRow(ctx, fmt.Sprintf("SELECT $1::int + %d", i), 1).Scan(&got); err != nil || got != 1+i {
			t.Fatalf("after the transaction, statement %d: %d, %v", i, got, err)
		}
	}
	if n := onServer(); n > 3 {
		t.Fatalf("%d statements on the server once idle again, want the cap (3)", n)
	}
}

func testLargeAndPipelined(t *testing.T, f *fixture) {
	for _, mode := range []PoolMode{ModeSession, ModeTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			s := startPool(t, baseConfig(f, mode))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c := connect(t, s, "postgres", "postgres")
			big := strings.Repeat("abcdefgh", 256*1024) // 2 MiB
			var got string
			if err := c.QueryRow(ctx, "SELECT $1::text || 'z'", big).Scan(&got); err != nil || got != big+"z" {
				t.Fatalf("2 MiB parameter and result: %v (len %d)", err, len(got))
			}
			if err := c.QueryRow(ctx, "SELECT repeat('x', 5000000)").Scan(&got); err != nil || len(got) != 5000000 {
				t.Fatalf("5 MB result: %v", err)
			}
			// a batch (pipelined queries, one Sync at the end)
			b := &pgx.Batch{}
			for i := 0; i < 50; i++ {
				b.Queue("SELECT $1::int * 2", i)
			}
			br := c.SendBatch(ctx, b)
			for i := 0; i < 50; i++ {
				var n int
				if err := br.QueryRow().Scan(&n); err != nil || n != 2*i {
					t.Fatalf("batch item %d: %v %d", i, err, n)
				}
			}
			if err := br.Close(); err != nil {
				t.Fatal(err)
			}
			// pipeline mode: several Syncs in flight
			pl := c.PgConn().StartPipeline(ctx)
			for i := 0; i < 20; i++ {
				pl.SendQueryParams("SELECT $1::text", [][]byte{[]byte(strconv.Itoa(i))}, nil, nil, nil)
				pl.SendPipelineSync()
			}
			if err := pl.Flush(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i++ {
				res, err := pl.GetResults()
				if err != nil {
					t.Fatal(err)
				}
				rr := res.(*pgconn.ResultReader)
				r := rr.Read()
				if r.Err != nil || string(r.Rows[0][0]) != strconv.Itoa(i) {
					t.Fatalf("pipeline %d: %v %q", i, r.Err, r.Rows)
				}
				if res, err = pl.GetResults(); err != nil {
					t.Fatal(err)
				}
				if _, ok := res.(*pgconn.PipelineSync); !ok {
					t.Fatalf("pipeline %d: want sync, got %T", i, res)
				}
			}
			if err := pl.Close(); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := c.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func testLimits(t *testing.T, f *fixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := baseConfig(f, ModeTransaction)
	cfg.DefaultPoolSize = 1
	cfg.MaxClientConn = 3
	cfg.QueryWaitTimeout = 300 * time.Millisecond
	cfg.ClientIdleTimeout = 700 * time.Millisecond
	cfg.ServerTLSMode = "prefer" // the test server has no TLS: falls back to plain
	cfg.UnixSocketDir = t.TempDir()
	s := startPool(t, cfg)
	a := connect(t, s, "postgres", "postgres")
	tx, err := a.Begin(ctx) // holds the only server connection
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	b := connect(t, s, "postgres", "postgres")
	start := time.Now()
	_, err = b.Exec(ctx, "SELECT 1")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || !strings.Contains(pe.Message, "query_wait_timeout") || time.Since(start) > 5*time.Second {
		t.Fatalf("waiting past query_wait_timeout: %v after %v", err, time.Since(start))
	}
	// max_client_conn: a, b and one more; the fourth is refused
	c3 := connect(t, s, "postgres", "postgres")
	_, err = pgx.Connect(ctx, poolConnString(s, "postgres", "postgres"))
	if !errors.As(err, &pe) || pe.Code != "53300" {
		t.Fatalf("client over max_client_conn: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// client_idle_timeout closes idle clients
	time.Sleep(1200 * time.Millisecond)
	if _, err := c3.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("idle client was not closed after client_idle_timeout")
	}
	// the unix socket
	out, err := psql(t, s, "postgres", "postgres", "SELECT 'via socket'", "PGHOST="+cfg.UnixSocketDir)
	if err != nil || out != "via socket" {
		// psql -h 127.0.0.1 in the helper wins over PGHOST: call it directly
		cmd := exec.Command(filepath.Join(pgtest.DefaultBinDir, "psql"), "-h", cfg.UnixSocketDir, "-p", poolPort(s), "-U", "postgres", "-d", "postgres", "-X", "-A", "-t", "-c", "SELECT 'via socket'")
		o, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(o)) != "via socket" {
			t.Fatalf("unix socket: %v %s", err, o)
		}
	}
	// server_tls_sslmode require against a server without TLS: a clean error
	cfg2 := baseConfig(f, ModeTransaction)
	cfg2.ServerTLSMode = "require"
	s2 := startPool(t, cfg2)
	_, err = pgx.Connect(ctx, poolConnString(s2, "postgres", "postgres"))
	if err == nil || !strings.Contains(err.Error(), "does not support TLS") {
		t.Fatalf("server_tls_sslmode require: %v", err)
	}
}

// testPreparedOnLoop: with the epoll engine, two server connections and more clients than
// that, sessions using named prepared statements (pgbench -M prepared, pgx's statement
// cache, a raw client) run on the event loop from start to end: none is handed to a
// goroutine. A statement parsed on one server connection runs on the other, where the
// pool prepares it first; the pool answers a repeated Parse of a known statement itself.
func testPreparedOnLoop(t *testing.T, f *fixture) {
	cfg := baseConfig(f, ModeTransaction)
	cfg.DefaultPoolSize, cfg.IOEngine = 2, IOEngineEpoll
	s := startPool(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	fe, conn := rawClient(t, s)
	send := func(msgs ...pgproto3.FrontendMessage) {
		for _, m := range msgs {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// rows reads up to ReadyForQuery and returns the first column of each row (failing on
	// an error)
	rows := func(what string) []string {
		var out []string
		for {
			m, err := fe.Receive()
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			switch m := m.(type) {
			case *pgproto3.DataRow:
				out = append(out, string(m.Values[0]))
			case *pgproto3.ErrorResponse:
				t.Fatalf("%s: %s %s", what, m.Code, m.Message)
			case *pgproto3.ReadyForQuery:
				return out
			}
		}
	}
	send(&pgproto3.Parse{Name: "twice", Query: "SELECT $1::int * 2"}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "1Z" {
		t.Fatalf("Parse, Sync: %q", got)
	}
	// runOn runs the statement and reports the backend it ran on (one batch: one server
	// connection)
	runOn := func(arg string) string {
		send(&pgproto3.Bind{PreparedStatement: "twice", Parameters: [][]byte{[]byte(arg)}}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: "SELECT pg_backend_pid()"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		got := rows("Bind/Execute of the named statement")
		want, _ := strconv.Atoi(arg)
		if len(got) != 2 || got[0] != strconv.Itoa(2*want) {
			t.Fatalf("rows %v, want [%d pid]", got, 2*want)
		}
		return got[1]
	}
	first := runOn("21")
	// take the server connection it ran on with another client's open transaction, so the
	// next run lands on the other one
	holders := []*pgconn.PgConn{loopConn(t, s, "holder1"), loopConn(t, s, "holder2")}
	var held []*pgconn.PgConn
	for _, h := range holders {
		if _, err := one(ctx, h, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		p := mustOne(t, ctx, h, "SELECT pg_backend_pid()")
		held = append(held, h)
		if p == first {
			break
		}
	}
	if len(held) == 2 {
		// both held: let go of the one the statement did not run on
		mustOne(t, ctx, held[0], "COMMIT")
	}
	second := runOn("50")
	if second == first {
		t.Fatalf("the statement ran on backend %s both times; the test needs the other server connection", first)
	}
	for _, h := range held {
		if _, err := one(ctx, h, "COMMIT"); err != nil {
			t.Fatal(err)
		}
	}
	// a repeated Parse under another name, with the server connections busy elsewhere, is
	// answered by the pool
	h1, h2 := holders[0], holders[1]
	mustOne(t, ctx, h1, "BEGIN")
	mustOne(t, ctx, h1, "SELECT 1")
	mustOne(t, ctx, h2, "BEGIN")
	mustOne(t, ctx, h2, "SELECT 1")
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	send(&pgproto3.Parse{Name: "again", Query: "SELECT $1::int * 2"}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); got != "1Z" {
		t.Fatalf("repeated Parse with every server connection busy: %q", got)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	mustOne(t, ctx, h1, "COMMIT")
	mustOne(t, ctx, h2, "COMMIT")
	send(&pgproto3.Bind{PreparedStatement: "again", Parameters: [][]byte{[]byte("4")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := rows("Bind of the locally parsed statement"); len(got) != 1 || got[0] != "8" {
		t.Fatalf("rows %v, want [8]", got)
	}

	// pgx (statement cache: Parse, Describe statement, Bind, Execute) and pgbench -M
	// prepared, more clients than server connections
	c := connect(t, s, "postgres", "postgres")
	for i := 0; i < 20; i++ {
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pgbench_branches WHERE bid > $1", i-20).Scan(&n); err != nil || n != 1 {
			t.Fatalf("pgx prepared query %d: %v %d", i, err, n)
		}
	}
	for _, args := range [][]string{{"-S"}, {}} {
		out := pgbench(t, s, "postgres", append([]string{"-n", "-M", "prepared", "-c", "8", "-j", "2", "-t", "50"}, args...)...)
		if !strings.Contains(out, "number of transactions actually processed: 400/400") {
			t.Fatalf("pgbench -M prepared %v, 8 clients over 2 server connections:\n%s", args, out)
		}
	}
	if n := s.handovers.Load(); n != 0 {
		t.Fatalf("%d sessions were handed from the event loop to goroutines, want none", n)
	}
	for _, r := range adminQuery(t, s, "SHOW CLIENTS") {
		if r[0] == "C" && r[9] != "epoll" {
			t.Fatalf("client %v runs on %q, want epoll", r, r[9])
		}
	}
	// the metric says so too
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "pgharbor_pool_loop_handovers_total" {
			found = true
			if v := mf.GetMetric()[0].GetCounter().GetValue(); v != 0 {
				t.Fatalf("pgharbor_pool_loop_handovers_total = %v", v)
			}
		}
	}
	if !found {
		t.Fatal("no pgharbor_pool_loop_handovers_total metric")
	}
	// and an extended-protocol message the loop does not run (SHOW POOL_NODES) still
	// moves the session, counted
	send(&pgproto3.Parse{Query: "SHOW POOL_NODES"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := until(t, fe, 'Z'); !strings.HasSuffix(got, "CZ") || strings.Contains(got, "E") {
		t.Fatalf("SHOW POOL_NODES over the extended protocol: %q", got)
	}
	if n := s.handovers.Load(); n != 1 {
		t.Fatalf("handovers after SHOW POOL_NODES: %d, want 1", n)
	}
}
