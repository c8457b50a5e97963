package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgharbor/pgharbor/pool/cluster"
	"github.com/pgharbor/pgharbor/wal"
)

// Pool is what the monitor tells about a failover: *cluster.Cluster (the pool's view of
// the nodes) implements it. MarkDown stops routing to the failed primary at once (new
// write transactions wait for a primary instead of failing against a dead server);
// SetPrimary routes writes to the promoted node and fences the old primary.
type Pool interface {
	MarkDown(id int, reason string)
	SetPrimary(id int)
}

var _ Pool = (*cluster.Cluster)(nil)

// Node is one configured node with its failover options.
type Node struct {
	ID   int
	Name string
	Host string
	Port int
	Opts NodeOptions
}

func (n Node) info() NodeInfo {
	return NodeInfo{ID: n.ID, Name: n.Name, Host: n.Host, Port: n.Port, DataDir: n.Opts.DataDir}
}

func (n Node) appName() string {
	if n.Opts.ApplicationName != "" {
		return n.Opts.ApplicationName
	}
	return n.Name
}

// Event is one failover, as the monitor performed it.
type Event struct {
	OldPrimary, NewPrimary int
	DetectedAt             time.Time // the primary was declared failed
	PromotedAt             time.Time // pg_promote returned and the pool was told
	Followed               []int     // standbys re-pointed to the new primary
	Passed                 map[string]string
}

// Monitor watches the primary of a set of nodes and fails over when it fails. Run it in
// exactly one place per cluster.
type Monitor struct {
	cfg   Config
	nodes []Node
	pool  Pool // may be nil (standalone monitor without a pool in the same process)
	log   *slog.Logger

	mu      sync.Mutex
	primary int // -1: none known
	health  Health
	failed  map[int]bool // old primaries: never candidates again in this process
	events  []Event
	// From the primary's last successful check:
	lastLSN     wal.LSN
	syncNames   bool            // synchronous_standby_names was set
	inSync      map[string]bool // application names streaming as sync or quorum standbys
	afterFailed func(Event)     // test hook: called after each failover

	// opMu is held by whoever acts on the cluster: a failover round, a switchover, a node
	// command. The loop skips a round rather than wait for it.
	opMu sync.Mutex
	// maint: a switchover is under way; the loop checks nothing (the primary it stops on
	// purpose is not a failure).
	maint bool
	// detached: taken out by an operator (DETACH NODE): never a candidate until attached.
	detached map[int]bool
	// rejoining: a rebuild of the node runs (RECOVER NODE or auto_rejoin).
	rejoining map[int]bool
	// formerSeen: a former primary was seen up and still claiming primary (logged once).
	formerSeen map[int]bool
	// rejoinAt: after a failed auto_rejoin, when to try again.
	rejoinAt map[int]time.Time
	pauser   Pauser
	rebuild  Rebuilder
	// running: Run watches; otherwise primary may be stale and node commands look again.
	running atomic.Bool
	// kick asks Run for a check of the primary now (CheckSoon).
	kick chan struct{}
	// elector: with failover.etcd, only its leader acts (see etcd.go); nil: always act.
	elector *Elector
}

// New checks cfg against the nodes (the pool's cluster.nodes, whose order gives the node
// ids) and returns a monitor. pool may be nil.
func New(cfg Config, nodes []cluster.NodeConfig, pool Pool, log *slog.Logger) (*Monitor, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(nodes) < 2 {
		return nil, errors.New("failover: needs at least two nodes (a primary and a standby) in pool.cluster.nodes")
	}
	var ns []Node
	var names []string
	for i, nc := range nodes {
		n := Node{ID: i, Name: nc.Name, Host: nc.Host, Port: nc.Port}
		if n.Port == 0 {
			n.Port = cluster.DefaultPort
		}
		if n.Name == "" {
			n.Name = fmt.Sprintf("%s:%d", n.Host, n.Port)
		}
		ns = append(ns, n)
		names = append(names, n.Name)
	}
	cfg, err := cfg.withDefaults(names)
	if err != nil {
		return nil, err
	}
	for i := range ns {
		ns[i].Opts = cfg.Nodes[ns[i].Name]
	}
	return &Monitor{cfg: cfg, nodes: ns, pool: pool, log: log.With("component", "failover"), primary: -1, failed: map[int]bool{},
		detached: map[int]bool{}, rejoining: map[int]bool{}, formerSeen: map[int]bool{}, rejoinAt: map[int]time.Time{}, kick: make(chan struct{}, 1)}, nil
}

// Config returns the configuration with defaults filled in.
func (m *Monitor) Config() Config { return m.cfg }

// Primary returns the id of the node the monitor takes for the primary (-1: none).
func (m *Monitor) Primary() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.primary
}

// Events returns the failovers performed so far.
func (m *Monitor) Events() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Event(nil), m.events...)
}

// Run watches until ctx is done and then returns nil. It never gives up because of a node:
// unreachable nodes are logged and retried.
func (m *Monitor) Run(ctx context.Context) error {
	m.running.Store(true)
	defer m.running.Store(false)
	m.log.Info("failover monitor started", "nodes", len(m.nodes), "period", m.cfg.HealthCheckPeriod,
		"retries", m.cfg.Retries, "retry_delay", m.cfg.RetryDelay)
	// A watch connection to the primary wakes the loop as soon as the server closes it, so
	// that a crash is checked at once instead of at the next period.
	wake := make(chan struct{}, 1)
	watching, watchDone := -1, (chan struct{})(nil)
	stopWatch := context.CancelFunc(func() {})
	defer func() { stopWatch() }()
	for {
		wait := m.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		prim := m.Primary()
		ended := false
		if watchDone != nil {
			select {
			case <-watchDone:
				ended = true
			default:
			}
		}
		if prim != watching || ended {
			stopWatch()
			watching, watchDone = prim, nil
			if prim >= 0 {
				wctx, cancel := context.WithCancel(ctx)
				stopWatch = cancel
				done := make(chan struct{})
				watchDone = done
				go func() {
					defer close(done)
					m.watch(wctx, m.nodes[prim], wake)
				}()
			}
		}
		if !m.sleep(ctx, wait, wake) {
			return nil
		}
	}
}

// sleep waits until the next round: wait passed, the watch connection closed (wake), or
// CheckSoon asked while the primary is healthy (a kick that came during a check is dropped
// once the check made it suspect: retry_delay holds). False when ctx ended.
func (m *Monitor) sleep(ctx context.Context, wait time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-wake:
			return true
		case <-m.kick:
			m.mu.Lock()
			healthy := m.primary >= 0 && m.health.State == Healthy
			m.mu.Unlock()
			if healthy {
				return true
			}
		}
	}
}

// CheckSoon asks for a check of the primary now, instead of at the next period: the pool
// calls it when its own login to the primary (node id) failed as if the node were down. It
// never blocks. The check counts like any other, so one refused login by itself never fails
// the primary when retries > 0; and while the primary is already suspect the next check
// keeps to retry_delay, so that many refused logins do not use up the retries at once.
func (m *Monitor) CheckSoon(id int) {
	m.mu.Lock()
	act := id == m.primary && m.health.State == Healthy
	m.mu.Unlock()
	if !act {
		return
	}
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// watch holds one idle connection to n until ctx is done, and signals wake when the server
// closes it or sends anything: PostgreSQL ends idle backends at once when its postmaster
// dies. The signal only triggers a health check; it does not count as a failed one.
func (m *Monitor) watch(ctx context.Context, n Node, wake chan<- struct{}) {
	conn, err := m.connect(ctx, n)
	if err != nil {
		return // the periodic check deals with it
	}
	hj, err := conn.Hijack()
	if err != nil {
		closeConn(conn)
		return
	}
	nc := hj.Conn
	stop := context.AfterFunc(ctx, func() {
		nc.SetWriteDeadline(time.Now().Add(time.Second))
		nc.Write([]byte{'X', 0, 0, 0, 4}) // Terminate: a clean goodbye in the server's log
		nc.Close()
	})
	defer stop()
	var b [1]byte
	nc.Read(b[:])
	nc.Close()
	if ctx.Err() != nil {
		return
	}
	m.log.Info("watch connection to the primary closed; checking it now", "node", n.Name)
	select {
	case wake <- struct{}{}:
	default:
	}
}

// step does one round: find the primary when none is known, else check it (and fail over
// when it is declared failed). It returns how long to wait before the next round.
func (m *Monitor) step(ctx context.Context) time.Duration {
	if !m.opMu.TryLock() {
		return m.cfg.RetryDelay // a switchover or node command acts; check after it
	}
	defer m.opMu.Unlock()
	m.mu.Lock()
	prim, h, maint := m.primary, m.health, m.maint
	m.mu.Unlock()
	if maint {
		return m.cfg.RetryDelay
	}
	if prim < 0 {
		m.discover(ctx)
		return m.cfg.HealthCheckPeriod
	}
	if h.State == Failed {
		m.failover(ctx, prim)
		return m.cfg.HealthCheckPeriod
	}
	st, o, err := m.checkPrimary(ctx, m.nodes[prim])
	if ctx.Err() != nil {
		return 0
	}
	if o == CheckOK && st.inRecovery {
		m.log.Warn("the primary is in recovery now (demoted outside the monitor); looking for the primary again", "node", m.nodes[prim].Name)
		m.mu.Lock()
		m.primary, m.health = -1, Health{}
		m.mu.Unlock()
		return 0
	}
	next := Step(h, o, m.cfg.Retries)
	m.mu.Lock()
	m.health = next
	if o == CheckOK {
		m.lastLSN, m.syncNames = st.currentLSN, st.syncNames
		// A check that finds synchronous_standby_names set but no standby in sync keeps the
		// last set: with none in sync the primary acknowledges no commit, so that set still
		// holds every acknowledged one. Such a check is what a crash looks like when the
		// status query ran on a backend that outlived its postmaster by a few milliseconds,
		// after the WAL senders had ended; taking it would leave no standby electable.
		if !st.syncNames || len(st.inSync) > 0 {
			m.inSync = st.inSync
		}
	}
	m.mu.Unlock()
	if next.State != h.State {
		m.log.Warn("primary health changed", "node", m.nodes[prim].Name, "from", h.State, "to", next.State,
			"failures", next.Failures, "outcome", o, "err", err)
	}
	switch next.State {
	case Failed:
		m.failover(ctx, prim)
		return m.cfg.HealthCheckPeriod
	case Suspect:
		return m.cfg.RetryDelay
	}
	m.watchFormer(ctx, prim)
	return m.cfg.HealthCheckPeriod
}

// discover finds the primary: the node not in recovery or, when several claim it (an old
// primary back after a failover this process no longer remembers), the one on the newest
// timeline; the others are taken for former primaries (fenced, and rebuilt with auto_rejoin).
// With none, or several on the same newest timeline, it waits.
func (m *Monitor) discover(ctx context.Context) {
	sts := m.probe(ctx, func(int) bool { return true })
	var prims []int
	for i, st := range sts {
		if st.err == nil && !st.inRecovery && !m.isFailed(i) {
			prims = append(prims, i)
		}
	}
	id := cluster.ChoosePrimary(prims, -1, func(i int) uint32 { return uint32(sts[i].timeline) })
	if id < 0 {
		if len(prims) == 0 {
			m.log.Warn("no primary found; checking again", "period", m.cfg.HealthCheckPeriod)
			return
		}
		m.log.Error("several nodes report to be primary on the same timeline (split brain); not acting until one remains", "nodes", m.claimants(prims, sts))
		return
	}
	m.mu.Lock()
	m.primary, m.health = id, Health{}
	for _, o := range prims {
		if o != id {
			m.failed[o] = true
		}
	}
	m.mu.Unlock()
	if len(prims) > 1 {
		m.log.Error("several nodes report to be primary; the one on the newest timeline is the primary, the others are former primaries and get no traffic",
			"primary", m.nodes[id].Name, "nodes", m.claimants(prims, sts), "auto_rejoin", m.cfg.AutoRejoin)
	}
	m.log.Info("watching primary", "node_id", id, "node", m.nodes[id].Name, "timeline", sts[id].timeline)
}

func (m *Monitor) claimants(ids []int, sts []nodeStatus) string {
	var names []string
	for _, i := range ids {
		names = append(names, fmt.Sprintf("%s (timeline %d)", m.nodes[i].Name, sts[i].timeline))
	}
	return strings.Join(names, ", ")
}

func (m *Monitor) isDetached(id int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.detached[id]
}

func (m *Monitor) isFailed(id int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failed[id]
}

// failover handles a failed primary: stop routing to it, elect, promote, tell the pool,
// re-point the other standbys and run the hooks. When no standby qualifies or the
// promotion fails, it returns and is called again on the next round.
func (m *Monitor) failover(ctx context.Context, old int) {
	detected := time.Now()
	oldN := m.nodes[old]
	m.mu.Lock()
	first := !m.failed[old]
	m.failed[old] = true
	lastLSN, requireSync, inSync := m.lastLSN, m.syncNames, m.inSync
	m.mu.Unlock()
	if first && m.pool != nil {
		m.pool.MarkDown(old, "failed primary: failover under way")
	}
	sts := m.probe(ctx, func(i int) bool { return i != old && !m.isFailed(i) })
	var cands []Candidate
	for i, n := range m.nodes {
		if i == old || m.isFailed(i) || m.isDetached(i) {
			continue
		}
		st := sts[i]
		cands = append(cands, Candidate{ID: i, Name: n.Name, Up: st.err == nil && st.inRecovery,
			NoFailover: n.Opts.NoFailover, Priority: n.Opts.Priority,
			ReceiveLSN: st.receiveLSN, ReplayLSN: st.replayLSN, WasSync: inSync[n.appName()]})
	}
	win, passed, err := Elect(cands, ElectOptions{MaxLagBytes: m.cfg.MaxLagBytes, PrimaryLSN: lastLSN, RequireSync: requireSync})
	if err != nil {
		m.log.Error("cannot fail over: no standby to promote; trying again", "old_primary", oldN.Name, "err", err)
		return
	}
	var others []int
	for _, c := range cands {
		if c.Up && c.ID != win.ID {
			others = append(others, c.ID)
		}
	}
	ls, err := m.acquireLease(ctx, win.ID, others)
	if err != nil {
		m.log.Error("not promoting: the promotion lease is not ours; trying again", "node", win.Name, "err", err)
		return
	}
	defer ls.release()
	if err := m.confirmLeader(ctx); err != nil {
		m.log.Error("not promoting: this monitor is not the leader", "node", win.Name, "err", err)
		return
	}
	m.log.Warn("promoting standby", "node_id", win.ID, "node", win.Name, "old_primary", oldN.Name,
		"position", win.Position(), "passed_over", passed)
	if err := m.promote(ctx, m.nodes[win.ID]); err != nil {
		m.log.Error("promotion failed; electing again on the next round", "node", win.Name, "err", err)
		return
	}
	promoted := time.Now()
	if m.pool != nil {
		m.pool.SetPrimary(win.ID)
	}
	newN := m.nodes[win.ID]
	m.mu.Lock()
	m.primary, m.health = win.ID, Health{}
	m.lastLSN, m.syncNames, m.inSync = 0, false, nil
	m.mu.Unlock()
	m.log.Warn("failover: new primary", "node_id", win.ID, "node", newN.Name, "old_primary", oldN.Name,
		"detect_to_promoted", promoted.Sub(detected))

	ev := Event{OldPrimary: old, NewPrimary: win.ID, DetectedAt: detected, PromotedAt: promoted, Passed: passed}
	var wg sync.WaitGroup
	var fmu sync.Mutex
	for i, n := range m.nodes {
		if i == old || i == win.ID || sts[i].err != nil || !sts[i].inRecovery {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.repoint(ctx, n, newN); err != nil {
				m.log.Error("could not re-point standby to the new primary", "node", n.Name, "new_primary", newN.Name, "err", err)
				return
			}
			fmu.Lock()
			ev.Followed = append(ev.Followed, n.ID)
			fmu.Unlock()
		}()
	}
	wg.Wait()

	ph := Placeholders{Failed: oldN.info(), NewPrimary: newN.info(), OldPrimary: oldN.info()}
	env := []string{"PGHARBOR_OLD_PRIMARY=" + oldN.Name, "PGHARBOR_NEW_PRIMARY=" + newN.Name}
	if m.cfg.FailoverCommand != "" {
		runHook(ctx, m.log, "failover_command", ph.Expand(m.cfg.FailoverCommand), m.cfg.CommandTimeout, env)
	}
	if m.cfg.FollowPrimaryCommand != "" {
		for _, id := range ev.Followed {
			fp := ph
			fp.Failed = m.nodes[id].info()
			runHook(ctx, m.log, "follow_primary_command", fp.Expand(m.cfg.FollowPrimaryCommand), m.cfg.CommandTimeout,
				append(env, "PGHARBOR_NODE="+m.nodes[id].Name))
		}
	}
	if m.cfg.OnRoleChange != "" {
		for _, rc := range []struct {
			n    Node
			role string
		}{{newN, "primary"}, {oldN, "failed"}} {
			runHook(ctx, m.log, "on_role_change", ph.Expand(m.cfg.OnRoleChange), m.cfg.CommandTimeout,
				append(env, "PGHARBOR_NODE="+rc.n.Name, "PGHARBOR_NODE_ID="+strconv.Itoa(rc.n.ID),
					"PGHARBOR_NODE_HOST="+rc.n.Host, "PGHARBOR_NODE_PORT="+strconv.Itoa(rc.n.Port), "PGHARBOR_ROLE="+rc.role))
		}
	}
	m.mu.Lock()
	m.events = append(m.events, ev)
	hook := m.afterFailed
	m.mu.Unlock()
	if hook != nil {
		hook(ev)
	}
}

// nodeStatus is what one query to a node learned.
type nodeStatus struct {
	err        error
	inRecovery bool
	currentLSN wal.LSN // primary
	receiveLSN wal.LSN // standby
	replayLSN  wal.LSN // standby
	syncNames  bool
	inSync     map[string]bool
	timeline   wal.TimelineID // primary: the timeline it writes on
}

// statusSQL reads a node's role and position and, on a primary, its synchronous standbys,
// in one round trip.
const statusSQL = `SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
  pg_last_wal_receive_lsn()::text,
  pg_last_wal_replay_lsn()::text,
  current_setting('synchronous_standby_names'),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE
    (SELECT string_agg(application_name, E'\n') FROM pg_stat_replication
      WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum')) END,
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END`

func (m *Monitor) connString(n Node, timeout time.Duration, app string) string {
	kv := [][2]string{
		{"host", n.Host}, {"port", strconv.Itoa(n.Port)}, {"user", m.cfg.User},
		{"dbname", m.cfg.Database}, {"sslmode", m.cfg.SSLMode},
		{"application_name", app},
		{"connect_timeout", strconv.Itoa(max(1, int((timeout+time.Second-1)/time.Second)))},
	}
	if m.cfg.Password != "" {
		kv = append(kv, [2]string{"password", m.cfg.Password})
	}
	return conninfo(kv)
}

// conninfo renders libpq keyword/value pairs, quoting every value.
func conninfo(kv [][2]string) string {
	var b strings.Builder
	for i, p := range kv {
		if i > 0 {
			b.WriteByte(' ')
		}
		v := strings.ReplaceAll(strings.ReplaceAll(p[1], `\`, `\\`), `'`, `\'`)
		fmt.Fprintf(&b, "%s='%s'", p[0], v)
	}
	return b.String()
}

// connect logs in to n within the connect timeout.
func (m *Monitor) connect(ctx context.Context, n Node) (*pgconn.PgConn, error) {
	return m.connectApp(ctx, n, "pgharbor failover monitor")
}

// connectApp is connect with another application_name.
func (m *Monitor) connectApp(ctx context.Context, n Node, app string) (*pgconn.PgConn, error) {
	pc, err := pgconn.ParseConfig(m.connString(n, m.cfg.ConnectTimeout, app))
	if err != nil {
		return nil, fmt.Errorf("connection settings for %s: %w", n.Name, err)
	}
	pc.ConnectTimeout = m.cfg.ConnectTimeout
	cctx, cancel := context.WithTimeout(ctx, m.cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", n.Name, err)
	}
	return conn, nil
}

// m2s bounds the goodbyes: closing a connection, releasing a lock.
const m2s = 2 * time.Second

func closeConn(conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), m2s)
	defer cancel()
	conn.Close(ctx)
}

// status connects to n and runs statusSQL, each step within its timeout.
func (m *Monitor) status(ctx context.Context, n Node) nodeStatus {
	conn, err := m.connect(ctx, n)
	if err != nil {
		return nodeStatus{err: err}
	}
	defer closeConn(conn)
	qctx, cancel := context.WithTimeout(ctx, m.cfg.QueryTimeout)
	defer cancel()
	res, err := conn.Exec(qctx, statusSQL).ReadAll()
	if err != nil {
		return nodeStatus{err: fmt.Errorf("status query on %s: %w", n.Name, err)}
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 7 {
		return nodeStatus{err: fmt.Errorf("status query on %s: unexpected result shape", n.Name)}
	}
	row := res[0].Rows[0]
	st := nodeStatus{inRecovery: string(row[0]) == "t"}
	for i, dst := range []*wal.LSN{&st.currentLSN, &st.receiveLSN, &st.replayLSN} {
		if row[i+1] == nil {
			continue
		}
		v, err := wal.ParseLSN(string(row[i+1]))
		if err != nil {
			return nodeStatus{err: fmt.Errorf("status query on %s: %w", n.Name, err)}
		}
		*dst = v
	}
	st.syncNames = strings.TrimSpace(string(row[4])) != ""
	if row[5] != nil {
		st.inSync = map[string]bool{}
		for _, a := range strings.Split(string(row[5]), "\n") {
			st.inSync[a] = true
		}
	}
	if row[6] != nil {
		t, err := walFileTimeline(string(row[6]))
		if err != nil {
			return nodeStatus{err: fmt.Errorf("status query on %s: %w", n.Name, err)}
		}
		st.timeline = t
	}
	return st
}

// checkPrimary is one health check of the primary, classified for Step.
func (m *Monitor) checkPrimary(ctx context.Context, n Node) (nodeStatus, Outcome, error) {
	st := m.status(ctx, n)
	if st.err == nil {
		return st, CheckOK, nil
	}
	if isTimeout(st.err) {
		return st, CheckTimeout, st.err
	}
	return st, CheckError, st.err
}

var errNotProbed = errors.New("not checked")

func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
}

// probe queries the nodes that want(id) concurrently; the others get errNotProbed.
func (m *Monitor) probe(ctx context.Context, want func(id int) bool) []nodeStatus {
	out := make([]nodeStatus, len(m.nodes))
	var wg sync.WaitGroup
	for i, n := range m.nodes {
		if !want(i) {
			out[i].err = errNotProbed
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = m.status(ctx, n)
		}()
	}
	wg.Wait()
	return out
}

// PrimaryConninfo is the primary_conninfo a standby n gets to stream from primary.
func (m *Monitor) PrimaryConninfo(n, primary Node) string {
	kv := [][2]string{{"host", primary.Host}, {"port", strconv.Itoa(primary.Port)},
		{"user", m.cfg.ReplicationUser}, {"application_name", n.appName()}}
	if m.cfg.ReplicationPassword != "" {
		kv = append(kv, [2]string{"password", m.cfg.ReplicationPassword})
	}
	return conninfo(kv)
}

// repoint makes standby n stream from primary: primary_conninfo through ALTER SYSTEM and a
// reload (PostgreSQL restarts its WAL receiver on the change and, with
// recovery_target_timeline = latest, follows the new timeline).
func (m *Monitor) repoint(ctx context.Context, n, primary Node) error {
	conn, err := m.connect(ctx, n)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	qctx, cancel := context.WithTimeout(ctx, m.cfg.QueryTimeout)
	defer cancel()
	lit := "'" + strings.ReplaceAll(m.PrimaryConninfo(n, primary), "'", "''") + "'"
	// Two round trips: ALTER SYSTEM refuses to run in the implicit transaction of a
	// multi-statement query.
	for _, q := range []string{"ALTER SYSTEM SET primary_conninfo = " + lit, "SELECT pg_reload_conf()"} {
		if _, err := conn.Exec(qctx, q).ReadAll(); err != nil {
			return fmt.Errorf("re-point %s: %w", n.Name, err)
		}
	}
	m.log.Info("standby re-pointed to the new primary", "node", n.Name, "new_primary", primary.Name)
	return nil
}
