package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Role is what a node reports itself to be.
type Role string

// Roles.
const (
	RolePrimary Role = "primary"
	RoleStandby Role = "standby"
	RoleUnknown Role = "unknown"
)

// Status says whether a node gets new traffic.
type Status string

// Statuses.
const (
	StatusUp      Status = "up"
	StatusDown    Status = "down"
	StatusUnknown Status = "unknown"
)

// Defaults applied by New.
const (
	DefaultHealthCheckPeriod     = 2 * time.Second
	DefaultHealthCheckTimeout    = 2 * time.Second
	DefaultHealthCheckDatabase   = "postgres"
	DefaultHealthCheckUser       = "postgres"
	DefaultHealthCheckMaxRetries = 1
	DefaultHealthCheckRetryDelay = time.Second
	DefaultHealthCheckSSLMode    = "prefer"
	DefaultPort                  = 5432
)

// NodeConfig is one PostgreSQL server of the cluster.
type NodeConfig struct {
	Host string `yaml:"host"`
	Port int    `yaml:"port"` // DefaultPort when 0
	// Weight is the node's share of load-balanced reads (pgpool's backend_weight); 0 takes the
	// node out of load balancing. When no node sets a weight, every node weighs 1.
	Weight float64 `yaml:"weight"`
	Name   string  `yaml:"name"` // for logs and metrics; "host:port" when empty
}

// Config lists the nodes and how to check them.
type Config struct {
	Nodes               []NodeConfig  `yaml:"nodes"`
	HealthCheckPeriod   time.Duration `yaml:"health_check_period"`   // DefaultHealthCheckPeriod when 0
	HealthCheckTimeout  time.Duration `yaml:"health_check_timeout"`  // per attempt; DefaultHealthCheckTimeout when 0
	HealthCheckUser     string        `yaml:"health_check_user"`     // DefaultHealthCheckUser when empty
	HealthCheckPassword string        `yaml:"health_check_password"` // empty: libpq rules (PGPASSWORD, .pgpass)
	HealthCheckDatabase string        `yaml:"health_check_database"` // DefaultHealthCheckDatabase when empty
	MaxLagBytes         int64         `yaml:"max_lag_bytes"`         // standbys further behind get no reads; 0 = no limit
	MaxLagTime          time.Duration `yaml:"max_lag_time"`          // likewise in time; 0 = no limit

	// HealthCheckMaxRetries is how many times a failed check is retried within one round
	// before the node goes down (pgpool's health_check_max_retries). 0 means the default
	// (DefaultHealthCheckMaxRetries); a negative value means no retries.
	HealthCheckMaxRetries int `yaml:"health_check_max_retries"`
	// HealthCheckRetryDelay is the pause between retries; DefaultHealthCheckRetryDelay when 0.
	HealthCheckRetryDelay time.Duration `yaml:"health_check_retry_delay"`
	// HealthCheckSSLMode is libpq's sslmode for health-check connections; "prefer" when empty.
	HealthCheckSSLMode string `yaml:"health_check_sslmode"`
}

// NodeState is a snapshot of one node, as SHOW POOL_NODES shows it.
type NodeState struct {
	ID               int
	Host             string
	Port             int
	Weight           float64
	Status           Status
	Role             Role
	SelectCount      int64
	LagBytes         int64
	LagTime          time.Duration
	LastStatusChange time.Time

	Name string
	// Detached is set by MarkDown: the node stays down until MarkUp.
	Detached bool
	// Fenced is set on the old primary by SetPrimary: it stays down until MarkUp.
	Fenced bool
	// Reason says why the node is down ("" when up).
	Reason string
	// LastCheck is when the node was last checked (successfully or not); zero before.
	LastCheck time.Time
	// ChecksOK and ChecksFailed count health-check rounds by outcome (for metrics).
	ChecksOK, ChecksFailed uint64
}

// probeResult is what one successful health check learned about a node.
type probeResult struct {
	inRecovery bool
	currentLSN uint64 // primary only: pg_current_wal_lsn()
	hasCurrent bool
	replayLSN  uint64 // standby only: pg_last_wal_replay_lsn()
	hasReplay  bool
	lagTime    time.Duration
	timeline   uint32 // primary only: the timeline it writes on (0: unknown)
}

// prober checks one node; tests replace it.
type prober func(ctx context.Context, n NodeConfig) (probeResult, error)

type node struct {
	id  int
	cfg NodeConfig

	status     Status
	role       Role
	detached   bool
	fenced     bool
	reason     string
	lagBytes   int64
	lagTime    time.Duration
	lastChange time.Time
	lastCheck  time.Time
	lastOK     *probeResult // result of the last check, nil when it failed
	selects    atomic.Int64
	checksOK   atomic.Uint64
	checksFail atomic.Uint64
}

// Cluster tracks the nodes' health and roles. All methods are safe for concurrent use.
type Cluster struct {
	cfg    Config
	log    *slog.Logger
	probe  prober // nil for a static cluster (NewStatic): checks do nothing
	now    func() time.Time
	roundM sync.Mutex // serialises check rounds so results are applied in order
	kick   chan struct{}

	// snap is an immutable copy of the node states published after every change under mu, so
	// the per-transaction readers (Primary, PickReader) take no lock.
	snap atomic.Pointer[snapshot]

	mu        sync.Mutex
	nodes     []*node
	primaryID int  // -1: none known
	pinned    bool // primaryID was chosen by SetPrimary; no other node may become primary
	ambiguous bool // the last round found several claimants and chose none (logged once)
	// epoch counts SetPrimary calls: a round of checks that began before the latest one
	// saw the nodes before the failover (the new primary still in recovery) and is dropped.
	epoch uint64
	subs  []chan struct{}
	// checked is set once a round of checks was applied: Run does not repeat the one its
	// caller made before it.
	checked bool
}

type snapshot struct {
	nodes   []NodeState // SelectCount, ChecksOK, ChecksFailed are filled in by readers
	primary int         // -1: none up
	readers []NodeState // up standbys and the up primary: PickReader's candidates
}

// publishLocked rebuilds the snapshot; callers hold mu.
func (c *Cluster) publishLocked() {
	sn := &snapshot{nodes: make([]NodeState, len(c.nodes)), primary: -1}
	for i, n := range c.nodes {
		st := c.state(n)
		sn.nodes[i] = st
		if st.Status != StatusUp {
			continue
		}
		if st.Role == RolePrimary {
			if i != c.primaryID {
				continue
			}
			sn.primary = i
		}
		sn.readers = append(sn.readers, st)
	}
	c.snap.Store(sn)
}

// New validates cfg, fills in defaults and returns a Cluster whose nodes are all unknown
// until the first check (Run or CheckNow). A nil logger discards logs.
func New(cfg Config, logger *slog.Logger) (*Cluster, error) {
	cfg, err := normalize(cfg)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{cfg: cfg, log: logger, now: time.Now, kick: make(chan struct{}, 1), primaryID: -1}
	c.probe = c.pgProbe
	for i, nc := range cfg.Nodes {
		c.nodes = append(c.nodes, &node{id: i, cfg: nc, status: StatusUnknown, role: RoleUnknown})
	}
	c.publishLocked()
	return c, nil
}

// NewStatic returns a Cluster with the given node states and no health checks (CheckNow and
// Run only wait): for tests of code that routes through a Cluster without PostgreSQL.
// states[i] describes cfg.Nodes[i] (ID, Host, Port, Name and Weight come from cfg); the first
// up node with role primary becomes the primary. MarkDown, MarkUp and SetPrimary work as usual.
func NewStatic(cfg Config, states []NodeState, logger *slog.Logger) (*Cluster, error) {
	c, err := New(cfg, logger)
	if err != nil {
		return nil, err
	}
	if len(states) != len(c.nodes) {
		return nil, fmt.Errorf("cluster: %d states for %d nodes", len(states), len(c.nodes))
	}
	c.probe = nil
	for i, s := range states {
		n := c.nodes[i]
		n.status, n.role = s.Status, s.Role
		if n.status == "" {
			n.status = StatusUnknown
		}
		if n.role == "" {
			n.role = RoleUnknown
		}
		n.lagBytes, n.lagTime, n.lastChange = s.LagBytes, s.LagTime, s.LastStatusChange
		n.detached, n.fenced, n.reason = s.Detached, s.Fenced, s.Reason
		n.selects.Store(s.SelectCount)
		if c.primaryID < 0 && n.status == StatusUp && n.role == RolePrimary {
			c.primaryID = i
		}
	}
	c.publishLocked()
	return c, nil
}

func normalize(cfg Config) (Config, error) {
	if len(cfg.Nodes) == 0 {
		return cfg, errors.New("cluster: no nodes configured: list the primary and standbys under nodes")
	}
	nodes := make([]NodeConfig, len(cfg.Nodes))
	copy(nodes, cfg.Nodes)
	cfg.Nodes = nodes
	anyWeight := false
	seen := map[string]int{}
	for i := range cfg.Nodes {
		n := &cfg.Nodes[i]
		if n.Host == "" {
			return cfg, fmt.Errorf("cluster: node %d: host is empty", i)
		}
		if n.Port == 0 {
			n.Port = DefaultPort
		}
		if n.Port < 0 || n.Port > 65535 {
			return cfg, fmt.Errorf("cluster: node %d (%s): port %d out of range", i, n.Host, n.Port)
		}
		if math.IsNaN(n.Weight) || math.IsInf(n.Weight, 0) || n.Weight < 0 {
			return cfg, fmt.Errorf("cluster: node %d (%s:%d): weight %v must be a finite number >= 0", i, n.Host, n.Port, n.Weight)
		}
		if n.Weight > 0 {
			anyWeight = true
		}
		addr := fmt.Sprintf("%s:%d", n.Host, n.Port)
		if j, ok := seen[addr]; ok {
			return cfg, fmt.Errorf("cluster: nodes %d and %d are both %s", j, i, addr)
		}
		seen[addr] = i
		if n.Name == "" {
			n.Name = addr
		}
	}
	if !anyWeight {
		for i := range cfg.Nodes {
			cfg.Nodes[i].Weight = 1
		}
	}
	if cfg.HealthCheckPeriod < 0 || cfg.HealthCheckTimeout < 0 || cfg.HealthCheckRetryDelay < 0 {
		return cfg, errors.New("cluster: health check period, timeout and retry delay must not be negative")
	}
	if cfg.MaxLagBytes < 0 || cfg.MaxLagTime < 0 {
		return cfg, errors.New("cluster: max_lag_bytes and max_lag_time must not be negative (0 = no limit)")
	}
	if cfg.HealthCheckPeriod == 0 {
		cfg.HealthCheckPeriod = DefaultHealthCheckPeriod
	}
	if cfg.HealthCheckTimeout == 0 {
		cfg.HealthCheckTimeout = DefaultHealthCheckTimeout
	}
	if cfg.HealthCheckDatabase == "" {
		cfg.HealthCheckDatabase = DefaultHealthCheckDatabase
	}
	if cfg.HealthCheckUser == "" {
		cfg.HealthCheckUser = DefaultHealthCheckUser
	}
	if cfg.HealthCheckMaxRetries == 0 {
		cfg.HealthCheckMaxRetries = DefaultHealthCheckMaxRetries
	}
	if cfg.HealthCheckMaxRetries < 0 {
		cfg.HealthCheckMaxRetries = 0
	}
	if cfg.HealthCheckRetryDelay == 0 {
		cfg.HealthCheckRetryDelay = DefaultHealthCheckRetryDelay
	}
	if cfg.HealthCheckSSLMode == "" {
		cfg.HealthCheckSSLMode = DefaultHealthCheckSSLMode
	}
	return cfg, nil
}

// Config returns the configuration with defaults filled in.
func (c *Cluster) Config() Config { return c.cfg }

func (c *Cluster) state(n *node) NodeState {
	return NodeState{
		ID: n.id, Host: n.cfg.Host, Port: n.cfg.Port, Weight: n.cfg.Weight, Name: n.cfg.Name,
		Status: n.status, Role: n.role, SelectCount: n.selects.Load(),
		LagBytes: n.lagBytes, LagTime: n.lagTime, LastStatusChange: n.lastChange,
		Detached: n.detached, Fenced: n.fenced, Reason: n.reason, LastCheck: n.lastCheck,
		ChecksOK: n.checksOK.Load(), ChecksFailed: n.checksFail.Load(),
	}
}

// Nodes returns a snapshot of all nodes, ordered by id.
func (c *Cluster) Nodes() []NodeState {
	sn := c.snap.Load()
	out := make([]NodeState, len(sn.nodes))
	for i := range sn.nodes {
		out[i] = c.fill(sn.nodes[i])
	}
	return out
}

// fill adds the counters that change without a state change.
func (c *Cluster) fill(s NodeState) NodeState {
	n := c.nodes[s.ID]
	s.SelectCount, s.ChecksOK, s.ChecksFailed = n.selects.Load(), n.checksOK.Load(), n.checksFail.Load()
	return s
}

// Node returns a snapshot of one node.
func (c *Cluster) Node(id int) (NodeState, bool) {
	sn := c.snap.Load()
	if id < 0 || id >= len(sn.nodes) {
		return NodeState{}, false
	}
	return c.fill(sn.nodes[id]), true
}

// Primary returns the primary when it is up. It takes no lock (safe on the hot path).
func (c *Cluster) Primary() (NodeState, bool) {
	sn := c.snap.Load()
	if sn.primary < 0 {
		return NodeState{}, false
	}
	return c.fill(sn.nodes[sn.primary]), true
}

// PickReader chooses where a read-only session or statement goes: among the up standbys
// within the lag limits and the up primary, by weight. The same key gets the same node while
// the set of candidates does not change, and when a node leaves only the keys that were on it
// move (weighted rendezvous hashing). It reports false when no node qualifies (the caller
// then uses Primary). It does not count the select: call CountSelect when the read is sent.
// It takes no lock (safe on the hot path).
func (c *Cluster) PickReader(key uint64) (NodeState, bool) {
	n, ok := pickReader(c.snap.Load().readers, key, c.cfg.MaxLagBytes, c.cfg.MaxLagTime)
	if !ok {
		return n, false
	}
	return c.fill(n), true
}

// CountSelect counts one read sent to node id (select_cnt in SHOW POOL_NODES).
func (c *Cluster) CountSelect(id int) {
	if id < 0 || id >= len(c.nodes) {
		return
	}
	c.nodes[id].selects.Add(1)
}

// MarkDown takes node id out of service at once (a failover monitor's or admin's decision):
// it gets no new traffic and health checks do not bring it back; MarkUp does.
func (c *Cluster) MarkDown(id int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.publishLocked()
	if id < 0 || id >= len(c.nodes) {
		c.log.Error("mark down: no such node", "node_id", id)
		return
	}
	n := c.nodes[id]
	n.detached = true
	if reason == "" {
		reason = "detached"
	}
	if id == c.primaryID && !c.pinned {
		c.primaryID = -1
	}
	if c.setStatus(n, StatusDown, n.role, "detached: "+reason) {
		c.log.Warn("node detached", "node_id", id, "node", n.cfg.Name, "reason", reason)
		c.notifyLocked()
	}
}

// MarkUp lifts MarkDown and the fence of SetPrimary from node id. The node comes up at once
// when its last health check succeeded and its role does not conflict with the primary;
// otherwise the next check (triggered now when Run is active) decides.
func (c *Cluster) MarkUp(id int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.publishLocked()
	if id < 0 || id >= len(c.nodes) {
		c.log.Error("mark up: no such node", "node_id", id)
		return
	}
	n := c.nodes[id]
	n.detached, n.fenced = false, false
	changed := false
	switch {
	case n.lastOK == nil:
		changed = c.setStatus(n, StatusUnknown, n.role, "")
	case n.lastOK.inRecovery:
		changed = c.setStatus(n, StatusUp, RoleStandby, "")
	case c.primaryID == id || (c.primaryID < 0 && !c.pinned):
		c.primaryID = id
		changed = c.setStatus(n, StatusUp, RolePrimary, "")
	default:
		changed = c.setStatus(n, StatusDown, RolePrimary, fmt.Sprintf("split brain: reports primary while node %d is primary", c.primaryID))
	}
	c.log.Info("node attached", "node_id", id, "node", n.cfg.Name, "status", n.status, "role", n.role)
	if changed {
		c.notifyLocked()
	}
	c.kickLocked()
}

// SetPrimary makes node id the primary (after a failover or switchover), lifting MarkDown or
// a fence on it, and brings it up at once as primary (the next check confirms). Every other node
// that is or claims to be primary is fenced at once: it is down, and health checks never
// bring it back, even if it returns reporting pg_is_in_recovery() = false, until MarkUp.
// From now on only node id can be the primary; another node claiming it is marked down.
func (c *Cluster) SetPrimary(id int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.publishLocked()
	if id < 0 || id >= len(c.nodes) {
		c.log.Error("set primary: no such node", "node_id", id)
		return
	}
	old := c.primaryID
	c.primaryID, c.pinned = id, true
	c.epoch++
	changed := false
	for _, n := range c.nodes {
		if n.id == id {
			continue
		}
		if n.id == old || n.role == RolePrimary {
			n.fenced = true
			if c.setStatus(n, StatusDown, n.role, fmt.Sprintf("fenced: node %d is the new primary", id)) {
				changed = true
			}
			c.log.Warn("old primary fenced", "node_id", n.id, "node", n.cfg.Name, "new_primary", id)
		}
	}
	n := c.nodes[id]
	n.detached, n.fenced = false, false
	n.lagBytes, n.lagTime = 0, 0
	if c.setStatus(n, StatusUp, RolePrimary, "") {
		changed = true
	}
	c.log.Info("primary set", "node_id", id, "node", n.cfg.Name, "old_primary", old)
	if changed || old != id {
		c.notifyLocked()
	}
	c.kickLocked()
}

// Subscribe returns a channel that receives a value after any change of a node's status or
// role or of the primary. Signals are coalesced (capacity 1, never blocking the cluster):
// on a signal, read the current state with Nodes or Primary. Unsubscribe stops it.
func (c *Cluster) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	c.subs = append(c.subs, ch)
	c.mu.Unlock()
	return ch
}

// Unsubscribe stops signals to ch (from Subscribe). The channel is not closed.
func (c *Cluster) Unsubscribe(ch <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.subs {
		if s == ch {
			c.subs = append(c.subs[:i], c.subs[i+1:]...)
			return
		}
	}
}

// notifyLocked publishes the new state, then signals subscribers, so a subscriber woken by
// the signal reads the new state.
func (c *Cluster) notifyLocked() {
	c.publishLocked()
	for _, s := range c.subs {
		select {
		case s <- struct{}{}:
		default:
		}
	}
}

func (c *Cluster) kickLocked() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// setStatus changes a node's status, role and reason; it reports whether status or role changed.
func (c *Cluster) setStatus(n *node, s Status, r Role, reason string) bool {
	n.reason = reason
	if n.status == s && n.role == r {
		return false
	}
	if n.status != s {
		n.lastChange = c.now()
	}
	n.status, n.role = s, r
	return true
}

// Run checks all nodes at once (unless a round of checks was already made, as a caller
// that needs the roles before it starts makes one with CheckNow) and then every
// HealthCheckPeriod (and right after MarkUp or SetPrimary) until ctx is done; it then
// returns nil. Unreachable nodes are marked down and the cluster runs degraded; Run never
// fails because of a node.
func (c *Cluster) Run(ctx context.Context) error {
	c.mu.Lock()
	checked := c.checked
	c.mu.Unlock()
	if !checked {
		c.CheckNow(ctx)
	}
	var down []string
	for _, n := range c.Nodes() {
		if n.Status != StatusUp {
			down = append(down, fmt.Sprintf("%d (%s): %s", n.ID, n.Name, n.Reason))
		}
	}
	if len(down) > 0 {
		c.log.Warn("cluster starts degraded", "down", down)
	}
	t := time.NewTicker(c.cfg.HealthCheckPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-c.kick:
		}
		c.CheckNow(ctx)
	}
}

// CheckNow runs one round of health checks of all nodes concurrently (each with retries as
// configured) and applies the results together.
func (c *Cluster) CheckNow(ctx context.Context) {
	if c.probe == nil {
		return
	}
	c.roundM.Lock()
	defer c.roundM.Unlock()
	c.mu.Lock()
	epoch := c.epoch
	c.mu.Unlock()
	outs := make([]outcome, len(c.nodes))
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i].res, outs[i].err = c.checkNode(ctx, n.cfg)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // a cancelled round says nothing about the nodes
	}
	c.apply(outs, epoch)
}

type outcome struct {
	res probeResult
	err error
}

func (c *Cluster) checkNode(ctx context.Context, nc NodeConfig) (probeResult, error) {
	var err error
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, c.cfg.HealthCheckTimeout)
		var r probeResult
		r, err = c.probe(actx, nc)
		cancel()
		if err == nil {
			return r, nil
		}
		if attempt >= c.cfg.HealthCheckMaxRetries || ctx.Err() != nil {
			return probeResult{}, err
		}
		select {
		case <-ctx.Done():
			return probeResult{}, err
		case <-time.After(c.cfg.HealthCheckRetryDelay):
		}
	}
}

// ChoosePrimary picks the primary among the nodes that claim it (their ids; timeline gives the
// timeline each writes on, 0 when unknown). A node promoted later writes on a newer timeline,
// so the newest timeline wins: an old primary that comes back after a
// failover (its fence lost with a restart of the pool, or a failover made by another tool)
// writes on an older timeline than the node promoted in its place and never gets the writes.
// Between claimants on the same newest timeline nothing tells which one the standbys follow:
// the current primary keeps the role if it is one of them, otherwise none is chosen (-1).
func ChoosePrimary(claimants []int, current int, timeline func(id int) uint32) int {
	if len(claimants) == 0 {
		return -1
	}
	if len(claimants) == 1 {
		return claimants[0]
	}
	var newest uint32
	for _, id := range claimants {
		newest = max(newest, timeline(id))
	}
	var top []int
	for _, id := range claimants {
		if timeline(id) == newest {
			top = append(top, id)
		}
	}
	if len(top) == 1 {
		return top[0]
	}
	if slices.Contains(top, current) {
		return current
	}
	return -1
}

// apply is the one place where health-check results change node states.
func (c *Cluster) apply(outs []outcome, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return // began before a SetPrimary: stale (the next round is already asked for)
	}
	c.checked = true
	defer c.publishLocked()
	now := c.now()
	changed := false
	oldPrimary := c.primaryID

	// Who may be the primary after this round.
	var claimants []int
	for i, o := range outs {
		n := c.nodes[i]
		if o.err == nil && !o.res.inRecovery && !n.detached && !n.fenced {
			claimants = append(claimants, i)
		}
	}
	if !c.pinned {
		tl := func(id int) uint32 { return outs[id].res.timeline }
		c.primaryID = ChoosePrimary(claimants, c.primaryID, tl)
		if len(claimants) > 1 && c.primaryID < 0 && (oldPrimary >= 0 || !c.ambiguous) {
			var who []string
			for _, id := range claimants {
				who = append(who, fmt.Sprintf("%s (timeline %d)", c.nodes[id].cfg.Name, tl(id)))
			}
			c.log.Error("several nodes claim to be primary on the same newest timeline; routing writes to none of them until one remains", "nodes", strings.Join(who, ", "))
		}
		c.ambiguous = len(claimants) > 1 && c.primaryID < 0
	}
	var primaryLSN uint64
	havePrimaryLSN := false
	if c.primaryID >= 0 && outs[c.primaryID].err == nil && outs[c.primaryID].res.hasCurrent {
		primaryLSN, havePrimaryLSN = outs[c.primaryID].res.currentLSN, true
	}

	for i, o := range outs {
		n := c.nodes[i]
		n.lastCheck = now
		if o.err != nil {
			n.checksFail.Add(1)
			n.lastOK = nil
			reason := "health check failed: " + o.err.Error()
			if n.detached || n.fenced {
				reason = n.reason // keep why it was taken out
			}
			if c.setStatus(n, StatusDown, n.role, reason) {
				changed = true
				c.log.Warn("node down", "node_id", i, "node", n.cfg.Name, "err", o.err)
			}
			continue
		}
		n.checksOK.Add(1)
		r := o.res
		n.lastOK = &r
		role := RoleStandby
		if !r.inRecovery {
			role = RolePrimary
		}
		switch {
		case n.detached || n.fenced:
			if c.setStatus(n, StatusDown, role, n.reason) {
				changed = true
			}
			if n.fenced && role == RolePrimary {
				c.log.Error("fenced old primary is reachable and still reports primary; not routing to it", "node_id", i, "node", n.cfg.Name, "primary", c.primaryID)
			}
		case role == RolePrimary && i != c.primaryID:
			reason := fmt.Sprintf("split brain: reports primary while node %d is primary", c.primaryID)
			switch {
			case c.primaryID >= 0 && !c.pinned && r.timeline < outs[c.primaryID].res.timeline:
				reason = fmt.Sprintf("stale primary: writes on timeline %d while node %d writes on timeline %d",
					r.timeline, c.primaryID, outs[c.primaryID].res.timeline)
			case c.primaryID < 0 && c.pinned:
				reason = "reports primary but is not the primary chosen by SetPrimary"
			case c.primaryID < 0:
				reason = "split brain: several nodes claim to be primary on the same timeline"
			}
			if c.setStatus(n, StatusDown, role, reason) {
				changed = true
				c.log.Error("two nodes claim to be primary; marking the other down", "node_id", i, "node", n.cfg.Name, "primary", c.primaryID)
			}
		default:
			if c.setStatus(n, StatusUp, role, "") {
				changed = true
				c.log.Info("node up", "node_id", i, "node", n.cfg.Name, "role", role)
			}
		}
		if role == RolePrimary {
			n.lagBytes, n.lagTime = 0, 0
			continue
		}
		n.lagTime = r.lagTime
		if havePrimaryLSN && r.hasReplay {
			n.lagBytes = 0
			if primaryLSN > r.replayLSN {
				n.lagBytes = int64(primaryLSN - r.replayLSN)
			}
		}
	}
	if c.primaryID != oldPrimary {
		changed = true
		c.log.Info("primary changed", "node_id", c.primaryID, "old", oldPrimary)
	}
	if changed {
		c.notifyLocked()
	}
}
