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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// TestFailoverPrimaryKilledUnderWrites is the HA journey: a primary with two standbys behind
// `pgharbor pool` with the failover monitor inside; several clients write one row per
// transaction through the pool (some keep their connection, some open a new one for every
// transaction); the primary's postmaster is SIGKILLed. A standby must be promoted, the other
// must stream from it, writes through the pool must resume, no acknowledged row may be
// missing (with synchronous standbys), no transaction begun after the crash may fail (they
// wait for the new primary), the hooks must get the placeholders' values and SHOW POOL_NODES
// must show the new roles. It runs once per io_engine.
//
// The environment picks other settings, for bench/failover (every run prints a
// FAILOVER-RESULT line):
//
//	PGHARBOR_E2E_FAILOVER_RUNS      crashes per engine (default 1), each on fresh clusters
//	PGHARBOR_E2E_IO_ENGINE          epoll or goroutines (default: both)
//	PGHARBOR_E2E_FAILOVER_RETRIES   failover.retries (default 1; -1 = none)
//	PGHARBOR_E2E_FAILOVER_DEFAULTS  1: leave every health-check and retry setting (the pool's
//	                                and the monitor's) at its default
//	PGHARBOR_E2E_FAILOVER_SYNC      0: no synchronous standbys (default: ANY 1 of both)
func TestFailoverPrimaryKilledUnderWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	st := failoverSettings{retries: 1, sync: true}
	if v := os.Getenv("PGHARBOR_E2E_FAILOVER_RETRIES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("PGHARBOR_E2E_FAILOVER_RETRIES=%q: %v", v, err)
		}
		st.retries = n
	}
	st.defaults = os.Getenv("PGHARBOR_E2E_FAILOVER_DEFAULTS") == "1"
	st.sync = os.Getenv("PGHARBOR_E2E_FAILOVER_SYNC") != "0"
	runs := 1
	if v := os.Getenv("PGHARBOR_E2E_FAILOVER_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("PGHARBOR_E2E_FAILOVER_RUNS=%q: want a number >= 1", v)
		}
		runs = n
	}
	engines := []string{"epoll", "goroutines"}
	if v := os.Getenv("PGHARBOR_E2E_IO_ENGINE"); v != "" {
		engines = []string{v}
	}
	for _, engine := range engines {
		var rtos []time.Duration
		lost, before, after := 0, 0, 0
		for i := 1; i <= runs; i++ {
			t.Run(fmt.Sprintf("%s/%d", engine, i), func(t *testing.T) {
				r := failoverOnce(t, st, engine)
				rtos = append(rtos, r.rto)
				lost += r.lost
				before += r.errsBefore
				after += r.errsAfter
				t.Logf("FAILOVER-RESULT engine=%s settings=%q run=%d rto_ms=%d promoted_ms=%d lost=%d acked=%d errors_in_flight=%d errors_in_flight_begun_after_kill=%d errors_begun_after=%d kinds=%q",
					engine, st, i, r.rto.Milliseconds(), r.promoted.Milliseconds(), r.lost, r.acked, r.errsBefore, r.errsLate, r.errsAfter, r.short)
			})
		}
		if len(rtos) == runs {
			sort.Slice(rtos, func(i, j int) bool { return rtos[i] < rtos[j] })
			t.Logf("FAILOVER-SUMMARY engine=%s settings=%q runs=%d rto_median_ms=%d rto_worst_ms=%d lost=%d errors_in_flight=%d errors_begun_after=%d",
				engine, st, runs, rtos[len(rtos)/2].Milliseconds(), rtos[len(rtos)-1].Milliseconds(), lost, before, after)
		}
	}
}

// failoverSettings are the knobs of one failover run.
type failoverSettings struct {
	retries  int
	defaults bool // every health-check and retry setting at its default
	sync     bool // synchronous_standby_names = 'ANY 1 (s1, s2)'
}

func (s failoverSettings) String() string {
	out := fmt.Sprintf("health_check_period=1s retries=%d retry_delay=200ms", s.retries)
	if s.defaults {
		out = "defaults"
	}
	if s.sync {
		return out + " sync=ANY1"
	}
	return out + " sync=off"
}

// failoverResult is what one run measured.
type failoverResult struct {
	rto          time.Duration // SIGKILL → first write acknowledged by the new primary
	promoted     time.Duration // SIGKILL → the test saw the standby out of recovery
	acked, lost  int
	errsBefore   int    // client errors of transactions in flight on the old primary
	errsLate     int    // … of which begun after the SIGKILL by the client's clock
	errsAfter    int    // client errors of transactions begun after the SIGKILL that never reached the old primary
	kinds, short string // by kind with the first message; without
}

func failoverOnce(t *testing.T, st failoverSettings, engine string) failoverResult {
	primary := pgtest.Start(t, pgtest.Options{})
	primary.Exec(t, "CREATE TABLE acked (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	standbys := []*pgtest.Cluster{primary.StartStandby(t), primary.StartStandby(t)}
	names := []string{"n0", "s1", "s2"}
	all := []*pgtest.Cluster{primary, standbys[0], standbys[1]}
	for i, s := range standbys {
		s.Exec(t, fmt.Sprintf("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=%s'", primary.Port, names[i+1]))
		s.Exec(t, "SELECT pg_reload_conf()")
	}
	if st.sync {
		primary.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (s1, s2)'")
		primary.Exec(t, "SELECT pg_reload_conf()")
		waitUntil(t, "both standbys streaming as quorum standbys", 60*time.Second, func() bool {
			return primary.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum'") == "2"
		})
	} else {
		waitUntil(t, "both standbys streaming", 60*time.Second, func() bool {
			return primary.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming'") == "2"
		})
	}

	dir := t.TempDir()
	hookFile, followFile, roleFile := filepath.Join(dir, "failover.out"), filepath.Join(dir, "follow.out"), filepath.Join(dir, "role.out")
	poolPort := pgtest.FreePort(t)
	var nodes, opts strings.Builder
	for i, c := range all {
		fmt.Fprintf(&nodes, "      - {name: %s, host: 127.0.0.1, port: %d}\n", names[i], c.Port)
		fmt.Fprintf(&opts, "    %s: {data_dir: %q}\n", names[i], c.DataDir)
	}
	poolChecks := "    health_check_period: 1s\n    health_check_timeout: 1s\n"
	monChecks := fmt.Sprintf("  health_check_period: 1s\n  connect_timeout: 1s\n  query_timeout: 1s\n  retries: %d\n  retry_delay: 200ms\n", st.retries)
	if st.defaults {
		poolChecks, monChecks = "", ""
	}
	cfg := fmt.Sprintf(`pool:
  listen: 127.0.0.1:%d
  pool_mode: transaction
  io_engine: %s
  auth_type: trust
  admin_users: [postgres]
  query_wait_timeout: 30s
  server_connect_timeout: 2s
  cluster:
%s    nodes:
%sfailover:
  enabled: true
%s  failover_command: 'echo "%%d %%h %%p %%D %%m %%H %%r %%R %%M %%P %%N %%S %%%%" > %s'
  follow_primary_command: 'echo "%%d %%m" >> %s'
  on_role_change: 'echo "$PGHARBOR_NODE $PGHARBOR_ROLE" >> %s'
  nodes:
%s`, poolPort, engine, poolChecks, nodes.String(), monChecks, hookFile, followFile, roleFile, opts.String())
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

	// four clients: two keep their connection, two open a new one for every transaction
	w := &writer{connStr: poolConn("postgres"), errs: map[string]int{}, firstErr: map[string]string{}}
	wctx, stopWriter := context.WithCancel(context.Background())
	var wwg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wwg.Add(1)
		go func() { defer wwg.Done(); w.run(wctx, i >= 2) }()
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopWriter()
			wwg.Wait()
		}
	}
	defer stop()
	waitUntil(t, "writes through the pool", 30*time.Second, func() bool { return w.ackedCount() >= 100 })
	time.Sleep(2 * time.Second) // a few monitor rounds that see the synchronous standbys

	pid := postmasterPID(t, primary)
	crash := time.Now()
	w.markCrash(crash)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
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
	promotedAt := time.Since(crash)
	t.Logf("promoted %s (node %d) %.2fs after the crash", names[promoted], promoted, time.Since(crash).Seconds())
	waitUntil(t, "writes through the pool reach the new primary", 60*time.Second, func() bool { return w.firstOn(newP.Port) > 0 })
	rto := w.firstOn(newP.Port)
	waitUntil(t, "more writes on the new primary", 30*time.Second, func() bool { return w.ackedOn(newP.Port) >= 100 })
	stop()
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
		msg := fmt.Sprintf("%d of %d acknowledged rows missing on the new primary: %v", len(missing), len(acked), missing)
		if st.sync {
			t.Error(msg)
		} else {
			t.Log(msg + " (asynchronous standbys)")
		}
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
	res := failoverResult{rto: rto, promoted: promotedAt, acked: len(acked), lost: len(missing)}
	res.errsBefore, res.errsLate, res.errsAfter, res.kinds, res.short = w.errorCounts()
	t.Logf("%s, io_engine %s: RTO (crash -> first write acknowledged by the new primary): %.3fs; acknowledged writes: %d (%d on the new primary), missing: %d",
		st, engine, rto.Seconds(), len(acked), w.ackedOn(newP.Port), len(missing))
	t.Logf("client errors by kind: %s", res.kinds)
	if res.errsAfter > 0 {
		t.Errorf("%d client errors for transactions begun after the crash (they should have waited for the new primary): %s", res.errsAfter, res.kinds)
	}
	return res
}

// writer runs clients that insert one row per transaction through the pool and records
// which ids were acknowledged, by which server (port), and which errors they saw.
type writer struct {
	connStr string
	nextID  atomic.Int64

	mu        sync.Mutex
	acked     []int
	ackAt     map[int][]time.Duration // by server port: acknowledgement times after the crash
	crash     time.Time
	errs      map[string]int
	firstErr  map[string]string
	before    int // errors of transactions in flight on the old primary
	beganLate int // … of which begun after the SIGKILL by the client's clock
	after     int // errors of transactions begun after the crash that never reached the old primary
}

// run is one client until ctx ends; perTxn opens a new connection for every transaction.
func (w *writer) run(ctx context.Context, perTxn bool) {
	var conn *pgx.Conn
	closeConn := func() {
		if conn != nil {
			conn.Close(context.Background())
			conn = nil
		}
	}
	defer closeConn()
	for ctx.Err() == nil {
		began := time.Now()
		if conn == nil || conn.IsClosed() {
			cctx, cancel := context.WithTimeout(ctx, 40*time.Second)
			cfg, err := pgx.ParseConfig(w.connStr)
			if err == nil {
				cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
				conn, err = pgx.ConnectConfig(cctx, cfg)
			}
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				conn = nil
				w.fail("connect", began, err)
				time.Sleep(20 * time.Millisecond)
				continue
			}
		}
		id := int(w.nextID.Add(1))
		qctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		var port int
		err := conn.QueryRow(qctx, "INSERT INTO acked (id) VALUES ($1) RETURNING inet_server_port()", id).Scan(&port)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.fail("write", began, err)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		w.ack(id, port)
		if perTxn {
			closeConn()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *writer) markCrash(at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.crash = at
	w.ackAt = map[int][]time.Duration{}
}

// ack records id as acknowledged by the server on port.
func (w *writer) ack(id, port int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.acked = append(w.acked, id)
	if !w.crash.IsZero() {
		w.ackAt[port] = append(w.ackAt[port], time.Since(w.crash))
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
	// The pool's 08006 "went away; failover under way" (and the server's own 57P01) come
	// only for a query that a backend of the old primary received: PostgreSQL's backends
	// outlive a SIGKILLed postmaster by a few milliseconds and still take queries, so such a
	// transaction can begin after the SIGKILL by the client's clock and still run on the
	// old primary, where its commit is in doubt. It counts as in flight on the old primary;
	// every other error of a transaction begun after the crash is one the pool should have
	// prevented.
	onOld := pe != nil && ((pe.Code == "08006" && strings.Contains(pe.Message, "failover under way")) || pe.Code == "57P01")
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !w.crash.IsZero() && began.After(w.crash) && onOld:
		kind += " (in flight on the old primary, begun after the SIGKILL)"
		w.before++
		w.beganLate++
	case !w.crash.IsZero() && began.After(w.crash):
		kind += " (began after the crash)"
		w.after++
	case !w.crash.IsZero():
		kind += " (in flight at the crash)"
		w.before++
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

// firstOn is the time from the crash to the first write acknowledged by the server on port.
func (w *writer) firstOn(port int) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.ackAt[port]) == 0 {
		return 0
	}
	return w.ackAt[port][0]
}

func (w *writer) ackedOn(port int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ackAt[port])
}

func (w *writer) ackedIDs() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := append([]int(nil), w.acked...)
	sort.Ints(out)
	return out
}

// errorCounts returns the errors of transactions begun before and after the crash and a
// summary by kind.
func (w *writer) errorCounts() (before, late, after int, kinds, short string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.errs) == 0 {
		return w.before, w.beganLate, w.after, "none", "none"
	}
	var parts, shorts []string
	for k, n := range w.errs {
		parts = append(parts, fmt.Sprintf("%s: %d (first: %s)", k, n, w.firstErr[k]))
		shorts = append(shorts, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(parts)
	sort.Strings(shorts)
	return w.before, w.beganLate, w.after, strings.Join(parts, "; "), strings.Join(shorts, "; ")
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
