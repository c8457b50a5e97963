package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
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

// TestFailoverPrimaryKilledUnderWrites is the HA journey: a primary with two synchronous
// (quorum) standbys behind `pgharbor pool` with the failover monitor inside; a client
// writes one row per transaction through the pool; the primary's postmaster is SIGKILLed.
// A standby must be promoted, the other must stream from it, writes through the pool must
// resume, no acknowledged row may be missing, the hooks must get the placeholders' values
// and SHOW POOL_NODES must show the new roles.
func TestFailoverPrimaryKilledUnderWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	primary := pgtest.Start(t, pgtest.Options{})
	primary.Exec(t, "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	standbys := []*pgtest.Cluster{primary.StartStandby(t), primary.StartStandby(t)}
	names := []string{"n0", "s1", "s2"}
	all := []*pgtest.Cluster{primary, standbys[0], standbys[1]}
	for i, s := range standbys {
		s.Exec(t, fmt.Sprintf("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=%s'", primary.Port, names[i+1]))
		s.Exec(t, "SELECT pg_reload_conf()")
	}
	primary.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (s1, s2)'")
	primary.Exec(t, "SELECT pg_reload_conf()")
	waitUntil(t, "both standbys streaming as quorum standbys", 60*time.Second, func() bool {
		return primary.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum'") == "2"
	})

	// PGHARBOR_E2E_FAILOVER_RETRIES sets failover.retries (default 1; -1 = none) to measure
	// other settings.
	retries := 1
	if v := os.Getenv("PGHARBOR_E2E_FAILOVER_RETRIES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("PGHARBOR_E2E_FAILOVER_RETRIES=%q: %v", v, err)
		}
		retries = n
	}
	dir := t.TempDir()
	hookFile, followFile, roleFile := filepath.Join(dir, "failover.out"), filepath.Join(dir, "follow.out"), filepath.Join(dir, "role.out")
	poolPort := pgtest.FreePort(t)
	var nodes, opts strings.Builder
	for i, c := range all {
		fmt.Fprintf(&nodes, "      - {name: %s, host: 127.0.0.1, port: %d}\n", names[i], c.Port)
		fmt.Fprintf(&opts, "    %s: {data_dir: %q}\n", names[i], c.DataDir)
	}
	cfg := fmt.Sprintf(`pool:
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
  health_check_period: 1s
  connect_timeout: 1s
  query_timeout: 1s
  retries: %d
  retry_delay: 200ms
  failover_command: 'echo "%%d %%h %%p %%D %%m %%H %%r %%R %%M %%P %%N %%S %%%%" > %s'
  follow_primary_command: 'echo "%%d %%m" >> %s'
  on_role_change: 'echo "$PGHARBOR_NODE $PGHARBOR_ROLE" >> %s'
  nodes:
%s`, poolPort, nodes.String(), retries, hookFile, followFile, roleFile, opts.String())
	cfgPath := filepath.Join(dir, "pgharbor.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "pool.log")
	logF, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logF.Close()
	pool := exec.Command(binary, "--config", cfgPath, "pool")
	pool.Stdout, pool.Stderr = logF, logF
	if err := pool.Start(); err != nil {
		t.Fatal(err)
	}
	poolDone := make(chan struct{})
	go func() { pool.Wait(); close(poolDone) }()
	defer func() {
		pool.Process.Signal(syscall.SIGTERM)
		select {
		case <-poolDone:
		case <-time.After(10 * time.Second):
			pool.Process.Kill()
			<-poolDone
		}
		if t.Failed() || os.Getenv("PGHARBOR_E2E_SHOW_LOG") != "" {
			b, _ := os.ReadFile(logPath)
			t.Logf("pool log:\n%s", b)
		}
	}()
	poolConn := func(db string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable connect_timeout=5", poolPort, db)
	}
	nodesRows := func() [][]string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgconn.Connect(ctx, poolConn("pgharbor"))
		if err != nil {
			return nil
		}
		defer c.Close(context.Background())
		res, err := c.Exec(ctx, "SHOW POOL_NODES").ReadAll()
		if err != nil || len(res) != 1 {
			return nil
		}
		var rows [][]string
		for _, r := range res[0].Rows {
			var row []string
			for _, v := range r {
				row = append(row, string(v))
			}
			rows = append(rows, row)
		}
		return rows
	}
	// columns: node_id hostname port status lb_weight role …
	roleOf := func(rows [][]string, id int) string {
		for _, r := range rows {
			if r[0] == strconv.Itoa(id) {
				return r[3] + "/" + r[5]
			}
		}
		return ""
	}
	waitUntil(t, "pool up with n0 as primary", 30*time.Second, func() bool {
		rows := nodesRows()
		return roleOf(rows, 0) == "up/primary" && roleOf(rows, 1) == "up/standby" && roleOf(rows, 2) == "up/standby"
	})
	t.Logf("SHOW POOL_NODES before:\n%s", formatRows(nodesRows()))

	w := &writer{connStr: poolConn("postgres"), errs: map[string]int{}, firstErr: map[string]string{}}
	wctx, stopWriter := context.WithCancel(context.Background())
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); w.run(wctx) }()
	defer func() { stopWriter(); <-writerDone }()
	waitUntil(t, "writes through the pool", 30*time.Second, func() bool { return w.ackedCount() >= 50 })
	time.Sleep(2 * time.Second) // a few monitor rounds that see the synchronous standbys

	pid := postmasterPID(t, primary)
	crash := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	w.markCrash(crash)
	t.Logf("SIGKILL to the primary's postmaster (pid %d) at %s after %d acknowledged writes", pid, crash.UTC().Format("15:04:05.000"), w.ackedCount())

	var promoted, other int
	waitUntil(t, "a standby promoted", 60*time.Second, func() bool {
		for i, s := range standbys {
			if queryOK(s, "SELECT (NOT pg_is_in_recovery())::text") == "true" {
				promoted, other = i+1, 2-i
				return true
			}
		}
		return false
	})
	newP, otherC := all[promoted], all[other]
	t.Logf("promoted %s (node %d) %.2fs after the crash", names[promoted], promoted, time.Since(crash).Seconds())
	waitUntil(t, "writes through the pool resume", 60*time.Second, func() bool { return w.firstAfterCrash() > 0 })
	rto := w.firstAfterCrash()
	waitUntil(t, "more writes on the new primary", 30*time.Second, func() bool { return w.ackedSinceCrash() >= 50 })
	stopWriter()
	<-writerDone
	acked := w.ackedIDs()
	last := acked[len(acked)-1]

	waitUntil(t, names[other]+" streams from the new primary", 60*time.Second, func() bool {
		return queryOK(otherC, "SELECT sender_port::text FROM pg_stat_wal_receiver WHERE status = 'streaming'") == strconv.Itoa(newP.Port)
	})
	waitUntil(t, names[other]+" has the last row written after the failover", 60*time.Second, func() bool {
		return queryOK(otherC, fmt.Sprintf("SELECT count(*)::text FROM acked WHERE id = %d", last)) == "1"
	})

	// No acknowledged row is missing on the new primary.
	conn := newP.Connect(t, "postgres")
	rows, err := conn.Query(context.Background(), "SELECT id FROM acked")
	if err != nil {
		t.Fatal(err)
	}
	have := map[int]bool{}
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		have[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var missing []int
	for _, id := range acked {
		if !have[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d acknowledged rows missing on the new primary: %v", len(missing), len(acked), missing)
	}

	// Hooks: failover_command once with the placeholders, follow_primary_command for the
	// other standby, on_role_change for both changed nodes.
	want := fmt.Sprintf("0 127.0.0.1 %d %s %d 127.0.0.1 %d %s 0 0 127.0.0.1 %d %%",
		primary.Port, primary.DataDir, promoted, newP.Port, newP.DataDir, primary.Port)
	waitUntil(t, "hooks ran", 30*time.Second, func() bool {
		b, _ := os.ReadFile(roleFile)
		return strings.Count(string(b), "\n") >= 2
	})
	if b, _ := os.ReadFile(hookFile); strings.TrimSpace(string(b)) != want {
		t.Errorf("failover_command wrote %q, want %q", strings.TrimSpace(string(b)), want)
	}
	if b, _ := os.ReadFile(followFile); strings.TrimSpace(string(b)) != fmt.Sprintf("%d %d", other, promoted) {
		t.Errorf("follow_primary_command wrote %q, want %q", strings.TrimSpace(string(b)), fmt.Sprintf("%d %d", other, promoted))
	}
	roles, _ := os.ReadFile(roleFile)
	for _, line := range []string{names[promoted] + " primary", "n0 failed"} {
		if !strings.Contains(string(roles), line+"\n") {
			t.Errorf("on_role_change output %q lacks %q", roles, line)
		}
	}

	var after [][]string
	waitUntil(t, "SHOW POOL_NODES shows the new roles", 30*time.Second, func() bool {
		after = nodesRows()
		return roleOf(after, promoted) == "up/primary" && roleOf(after, other) == "up/standby" && strings.HasPrefix(roleOf(after, 0), "down/")
	})
	t.Logf("SHOW POOL_NODES after:\n%s", formatRows(after))
	t.Logf("retries %d: RTO (crash -> first successful write through the pool after the outage): %.3fs; acknowledged writes: %d (%d after the crash), missing: %d",
		retries, rto.Seconds(), len(acked), w.ackedSinceCrash(), len(missing))
	t.Logf("client errors by kind: %s", w.errorSummary())
}

// writer inserts one row per transaction through the pool, reconnecting after errors, and
// records which ids were acknowledged and which errors it saw.
type writer struct {
	connStr string

	mu         sync.Mutex
	acked      []int
	crash      time.Time
	firstAfter time.Duration
	afterCrash int
	outage     bool // an error was seen after the crash
	errs       map[string]int
	firstErr   map[string]string
}

func (w *writer) run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for id := 1; ctx.Err() == nil; id++ {
		if conn == nil || conn.IsClosed() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			cfg, err := pgx.ParseConfig(w.connStr)
			if err == nil {
				cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
				conn, err = pgx.ConnectConfig(cctx, cfg)
			}
			cancel()
			if err != nil {
				conn = nil
				w.fail("connect", time.Now(), err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
		}
		began := time.Now()
		qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := conn.Exec(qctx, "INSERT INTO acked (id) VALUES ($1)", id)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.fail("write", began, err)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		w.ack(id, began)
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *writer) markCrash(at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.crash = at
}

// ack records id as acknowledged. The outage ends with the first write acknowledged after
// the first error that followed the crash: for a few milliseconds after SIGKILL of the
// postmaster its backends and WAL senders still run, and a write may still commit there.
func (w *writer) ack(id int, began time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.acked = append(w.acked, id)
	if !w.crash.IsZero() && began.After(w.crash) {
		w.afterCrash++
		if w.firstAfter == 0 && w.outage {
			w.firstAfter = time.Since(w.crash)
		}
	}
}

func (w *writer) fail(stage string, began time.Time, err error) {
	kind := stage + ": "
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		kind += "SQLSTATE " + pe.Code
	case errors.Is(err, context.DeadlineExceeded):
		kind += "timeout"
	default:
		kind += "connection"
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.crash.IsZero() {
		w.outage = true
	}
	switch {
	case !w.crash.IsZero() && began.After(w.crash):
		kind += " (began after the crash)"
	case !w.crash.IsZero():
		kind += " (in flight at the crash)"
	}
	w.errs[kind]++
	if _, ok := w.firstErr[kind]; !ok {
		w.firstErr[kind] = err.Error()
	}
}

func (w *writer) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *writer) ackedSinceCrash() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.afterCrash
}

func (w *writer) firstAfterCrash() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.firstAfter
}

func (w *writer) ackedIDs() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.acked...)
}

func (w *writer) errorSummary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) == 0 {
		return "none"
	}
	var parts []string
	for k, n := range w.errs {
		parts = append(parts, fmt.Sprintf("%s: %d (first: %s)", k, n, w.firstErr[k]))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func waitUntil(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// queryOK runs a one-value query on c; "" when it fails or returns no row.
func queryOK(c *pgtest.Cluster, sql string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return ""
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		return ""
	}
	return s
}

func postmasterPID(t *testing.T, c *pgtest.Cluster) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

func formatRows(rows [][]string) string {
	var b strings.Builder
	b.WriteString("node_id | hostname | port | status | lb_weight | role\n")
	for _, r := range rows {
		if len(r) >= 6 {
			fmt.Fprintf(&b, "%s | %s | %s | %s | %s | %s\n", r[0], r[1], r[2], r[3], r[4], r[5])
		}
	}
	return b.String()
}
