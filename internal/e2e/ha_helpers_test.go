package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// haCluster is a primary and two streaming standbys named n0, s1, s2 (their
// application_name too), behind `pgharbor pool` with the failover monitor.
type haCluster struct {
	t      *testing.T
	nodes  []*pgtest.Cluster
	names  []string
	port   int    // the pool's
	config string // config file path
	log    string // the pool's log file
	stop   func() // SIGTERM to the pool and wait for it (also run at cleanup)
}

// startHANodes starts n0 and two standbys streaming from it under their names.
func startHANodes(t *testing.T, o pgtest.Options) []*pgtest.Cluster {
	t.Helper()
	primary := pgtest.Start(t, o)
	all := []*pgtest.Cluster{primary, primary.StartStandby(t), primary.StartStandby(t)}
	for i, s := range all[1:] {
		s.Exec(t, fmt.Sprintf("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=%s'", primary.Port, []string{"s1", "s2"}[i]))
		s.Exec(t, "SELECT pg_reload_conf()")
	}
	waitUntil(t, "both standbys streaming", 60*time.Second, func() bool {
		return queryOK(primary, "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming' AND application_name IN ('s1', 's2')") == "2"
	})
	return all
}

// startHAPool writes a config for nodes (ports[i] overrides the port the pool and monitor
// use for node i when non-zero) and starts `pgharbor pool`; extraFailover is appended to
// the failover: section (its drain_timeout replaces the default 10s); the nodes in noDataDir
// get no data_dir (as if on another host). With e, the env's config (repository, keys) comes first and the
// file lives in the env's directory, readable by the postgres OS user (restore_command).
func startHAPool(t *testing.T, nodes []*pgtest.Cluster, ports []int, e *env, extraFailover string, noDataDir ...int) *haCluster {
	t.Helper()
	h := &haCluster{t: t, nodes: nodes, names: []string{"n0", "s1", "s2"}, port: pgtest.FreePort(t)}
	var ns, opts strings.Builder
	for i, c := range nodes {
		port := c.Port
		if ports != nil && ports[i] != 0 {
			port = ports[i]
		}
		fmt.Fprintf(&ns, "      - {name: %s, host: 127.0.0.1, port: %d}\n", h.names[i], port)
		dd := c.DataDir
		for _, id := range noDataDir {
			if id == i {
				dd = ""
			}
		}
		fmt.Fprintf(&opts, "    %s: {data_dir: %q}\n", h.names[i], dd)
	}
	head, dir := "", t.TempDir()
	if e != nil {
		b, err := os.ReadFile(e.config)
		if err != nil {
			t.Fatal(err)
		}
		head, dir = string(b)+"\n", e.dir
	}
	drain := "  drain_timeout: 10s\n"
	if strings.Contains(extraFailover, "drain_timeout:") {
		drain = ""
	}
	cfg := fmt.Sprintf(`%spool:
  listen: 127.0.0.1:%d
  pool_mode: transaction
  auth_type: trust
  admin_users: [postgres]
  query_wait_timeout: 30s
  server_connect_timeout: 2s
  cluster:
    health_check_period: 1s
    health_check_timeout: 1s
    nodes:
%sfailover:
  enabled: true
  health_check_period: 500ms
  connect_timeout: 2s
  query_timeout: 2s
  retries: 2
  retry_delay: 200ms
  sslmode: disable
%s  replay_timeout: 30s
  rejoin_wait: 2m
%s  nodes:
%s`, head, h.port, ns.String(), drain, extraFailover, opts.String())
	h.config = filepath.Join(dir, "pool.yaml")
	if err := os.WriteFile(h.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.log = filepath.Join(dir, "pool.log")
	logF, err := os.Create(h.log)
	if err != nil {
		t.Fatal(err)
	}
	pool := exec.Command(binary, "--config", h.config, "pool")
	pool.Stdout, pool.Stderr = logF, logF
	if err := pool.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { pool.Wait(); logF.Close(); close(done) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			pool.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				pool.Process.Kill()
				<-done
			}
		})
	}
	t.Cleanup(func() {
		h.stop()
		if t.Failed() || os.Getenv("PGHARBOR_E2E_SHOW_LOG") != "" {
			b, _ := os.ReadFile(h.log)
			t.Logf("pool log:\n%s", b)
		}
	})
	waitUntil(t, "pool up with n0 as primary", 30*time.Second, func() bool {
		rows := h.poolNodes()
		return roleOf(rows, 0) == "up/primary" && roleOf(rows, 1) == "up/standby" && roleOf(rows, 2) == "up/standby"
	})
	return h
}

func (h *haCluster) connString(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable connect_timeout=5", h.port, db)
}

// admin runs one admin console command; it returns the rows or the error.
func (h *haCluster) admin(q string) ([][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := pgconn.Connect(ctx, h.connString("pgharbor"))
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, q).ReadAll()
	if err != nil {
		return nil, err
	}
	var rows [][]string
	for _, r := range res[0].Rows {
		var row []string
		for _, v := range r {
			row = append(row, string(v))
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func (h *haCluster) poolNodes() [][]string {
	rows, _ := h.admin("SHOW POOL_NODES")
	return rows
}

// cli runs the pgharbor binary with the pool's config; it returns stdout, stderr and the
// exit code.
func (h *haCluster) cli(args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"--config", h.config}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatal(err)
	}
	return so.String(), se.String(), code
}

// mustCLI is cli that fails the test on a non-zero exit.
func (h *haCluster) mustCLI(args ...string) string {
	h.t.Helper()
	so, se, code := h.cli(args...)
	if code != 0 {
		h.t.Fatalf("pgharbor %s: exit %d\n%s%s", strings.Join(args, " "), code, so, se)
	}
	return so
}

func (h *haCluster) poolLog() string {
	b, _ := os.ReadFile(h.log)
	return string(b)
}

// roleOf is "status/role" of node id in SHOW POOL_NODES rows.
func roleOf(rows [][]string, id int) string {
	for _, r := range rows {
		if len(r) > 5 && r[0] == strconv.Itoa(id) {
			return r[3] + "/" + r[5]
		}
	}
	return ""
}

// streamsFrom reports whether standby c streams from the server on port.
func streamsFrom(c *pgtest.Cluster, port int) bool {
	return queryOK(c, "SELECT sender_port::text FROM pg_stat_wal_receiver WHERE status = 'streaming'") == strconv.Itoa(port)
}

// ledger is a load of clients writing through the pool: each transaction inserts a row
// (client, seq) and bumps the client's counter in two statements, so that a transaction
// holds its server connection across round trips. Acknowledged commits and errors are
// recorded.
type ledger struct {
	connStr string
	mu      sync.Mutex
	acked   map[[2]int]bool
	errs    []string
	wg      sync.WaitGroup
}

func newLedger(t *testing.T, c *pgtest.Cluster, connStr string) *ledger {
	return newLedgerIn(t, c, "postgres", connStr)
}

// newLedgerIn creates the ledger's tables in database db of c.
func newLedgerIn(t *testing.T, c *pgtest.Cluster, db, connStr string) *ledger {
	t.Helper()
	conn := c.Connect(t, db)
	if _, err := conn.Exec(context.Background(), "CREATE TABLE ledger (client int, seq int, PRIMARY KEY (client, seq)); CREATE TABLE counters (client int PRIMARY KEY, n int NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	return &ledger{connStr: connStr, acked: map[[2]int]bool{}}
}

func (l *ledger) start(ctx context.Context, clients int) {
	for c := 0; c < clients; c++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.run(ctx, c)
		}()
	}
}

func (l *ledger) run(ctx context.Context, client int) {
	cfg, err := pgx.ParseConfig(l.connStr)
	if err != nil {
		l.fail(err)
		return
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	registered := false
	for seq := 1; ctx.Err() == nil; {
		if conn == nil || conn.IsClosed() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			conn, err = pgx.ConnectConfig(cctx, cfg)
			cancel()
			if err != nil {
				conn = nil
				if ctx.Err() == nil {
					l.fail(fmt.Errorf("client %d connect: %w", client, err))
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
		}
		if !registered {
			if _, err := conn.Exec(ctx, "INSERT INTO counters VALUES ($1, 0) ON CONFLICT DO NOTHING", client); err != nil {
				l.fail(err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			registered = true
		}
		err := pgx.BeginFunc(context.Background(), conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(context.Background(), "INSERT INTO ledger VALUES ($1, $2)", client, seq); err != nil {
				return err
			}
			_, err := tx.Exec(context.Background(), "UPDATE counters SET n = n + 1 WHERE client = $1", client)
			return err
		})
		if err != nil {
			// The outcome of a failed COMMIT is unknown: the next try uses another seq so
			// that an unacknowledged commit never collides.
			l.fail(fmt.Errorf("client %d seq %d: %w", client, seq, err))
			seq++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		l.mu.Lock()
		l.acked[[2]int{client, seq}] = true
		l.mu.Unlock()
		seq++
		time.Sleep(2 * time.Millisecond)
	}
}

func (l *ledger) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err.Error())
}

func (l *ledger) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// missingOn returns the acknowledged rows that c lacks.
func (l *ledger) missingOn(t *testing.T, c *pgtest.Cluster) []string {
	t.Helper()
	return l.missingOnDB(t, c, "postgres")
}

// missingOnDB is missingOn for the ledger in database db.
func (l *ledger) missingOnDB(t *testing.T, c *pgtest.Cluster, db string) []string {
	t.Helper()
	conn := c.Connect(t, db)
	rows, err := conn.Query(context.Background(), "SELECT client, seq FROM ledger")
	if err != nil {
		t.Fatal(err)
	}
	have := map[[2]int]bool{}
	for rows.Next() {
		var k [2]int
		if err := rows.Scan(&k[0], &k[1]); err != nil {
			t.Fatal(err)
		}
		have[k] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var missing []string
	for k := range l.acked {
		if !have[k] {
			missing = append(missing, fmt.Sprint(k))
		}
	}
	return missing
}

// decodeJSON decodes s into v or fails the test.
func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(strings.TrimSpace(s)), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

// ledgerSame waits until standby replayed everything primary wrote, then compares the
// ledger, the counters and (when present) the pgbench tables.
func ledgerSame(t *testing.T, primary, standby *pgtest.Cluster) {
	t.Helper()
	primary.WaitReplay(t, standby)
	bench := primary.QueryString(t, "postgres", "SELECT (to_regclass('pgbench_accounts') IS NOT NULL)::text") == "true"
	sum := func(c *pgtest.Cluster) string {
		q := `SELECT md5(
		  (SELECT coalesce(string_agg(client::text || ':' || seq::text, ',' ORDER BY client, seq), '') FROM ledger) || '|' ||
		  (SELECT coalesce(string_agg(client::text || ':' || n::text, ',' ORDER BY client), '') FROM counters))`
		if bench {
			q += ` || (SELECT coalesce(sum(abalance), 0)::text FROM pgbench_accounts) || ':' || (SELECT count(*)::text FROM pgbench_history)`
		}
		return c.QueryString(t, "postgres", q)
	}
	if got, want := sum(standby), sum(primary); got != want {
		t.Fatalf("standby on port %d differs from the primary on port %d", standby.Port, primary.Port)
	}
}

// connectSimple opens a pgx connection that uses the simple protocol (as through a pool in
// transaction mode without prepared statements).
func connectSimple(connStr string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(connStr)
	if err != nil {
		return nil, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}
