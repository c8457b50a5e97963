package failover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pgharbor/pgharbor/pool/cluster"
	"github.com/pgharbor/pgharbor/wal"
)

// Pauser holds new transactions and waits for running ones (*pool.Server implements it).
// A switchover pauses the pool around the stop of the old primary and the promotion.
type Pauser interface {
	// Pause holds new transactions and returns once none runs, or with ctx's error (the
	// pool then stays paused until Resume).
	Pause(ctx context.Context) error
	Resume()
}

// nodePool is the part of the pool's cluster that node commands need besides Pool.
type nodePool interface {
	Pool
	MarkUp(id int)
}

// RebuildRequest asks for a node on this host to be rebuilt as a standby.
type RebuildRequest struct {
	Node            string
	DataDir         string
	PrimaryConnInfo string // primary_conninfo, application_name included
	AppName         string
	Wait            time.Duration // for the rebuilt standby to stream
}

// Rebuilder rebuilds a stopped node as a streaming standby (pg_rewind or a delta restore from
// the repository: replica.Rebuild, wired by the command that knows the repository) and
// returns the method it used.
type Rebuilder func(ctx context.Context, r RebuildRequest) (method string, err error)

// SetPauser gives the monitor the pool to pause during a switchover. Call before Run.
func (m *Monitor) SetPauser(p Pauser) { m.pauser = p }

// SetRebuilder gives the monitor the repository-backed rebuild for RECOVER NODE and
// auto_rejoin. Call before Run. Without one, only a node that did not diverge from the
// primary's history can rejoin (its standby configuration is written, nothing is restored).
func (m *Monitor) SetRebuilder(r Rebuilder) { m.rebuild = r }

// NodeID resolves a node given by id or by name.
func (m *Monitor) NodeID(s string) (int, error) {
	if id, err := strconv.Atoi(s); err == nil {
		if id < 0 || id >= len(m.nodes) {
			return 0, fmt.Errorf("no node %d: node ids are 0 to %d", id, len(m.nodes)-1)
		}
		return id, nil
	}
	var names []string
	for _, n := range m.nodes {
		if n.Name == s {
			return n.ID, nil
		}
		names = append(names, n.Name)
	}
	return 0, fmt.Errorf("no node named %q (nodes: %s)", s, strings.Join(names, ", "))
}

// lockOp refuses unless this monitor is the etcd leader (with failover.etcd), and takes
// opMu, waiting for a failover round or another command to end, or fails when ctx ends
// first.
func (m *Monitor) lockOp(ctx context.Context) error {
	if err := m.confirmLeader(ctx); err != nil {
		return err
	}
	for !m.opMu.TryLock() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("another failover, switchover or node command is under way: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// nodeDetail is what attach and switchover need to know about a node.
type nodeDetail struct {
	err        error
	inRecovery bool
	timeline   wal.TimelineID // a primary's current timeline
	receiver   string         // a standby's pg_stat_wal_receiver.status ("" when none)
	recvTLI    wal.TimelineID // the timeline it streams
	currentLSN wal.LSN        // primary
	receiveLSN wal.LSN        // standby
	replayLSN  wal.LSN        // standby
}

const detailSQL = `SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
  (SELECT status FROM pg_stat_wal_receiver),
  (SELECT received_tli::text FROM pg_stat_wal_receiver),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
  pg_last_wal_receive_lsn()::text,
  pg_last_wal_replay_lsn()::text`

// walFileTimeline reads the timeline from a WAL file name (its first 8 hex digits).
func walFileTimeline(name string) (wal.TimelineID, error) {
	if len(name) < 8 {
		return 0, fmt.Errorf("WAL file name %q", name)
	}
	return wal.ParseTimelineID(name[:8])
}

func (m *Monitor) detail(ctx context.Context, n Node) nodeDetail {
	conn, err := m.connect(ctx, n)
	if err != nil {
		return nodeDetail{err: err}
	}
	defer closeConn(conn)
	qctx, cancel := context.WithTimeout(ctx, m.cfg.QueryTimeout)
	defer cancel()
	res, err := conn.Exec(qctx, detailSQL).ReadAll()
	if err != nil {
		return nodeDetail{err: fmt.Errorf("query %s: %w", n.Name, err)}
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 7 {
		return nodeDetail{err: fmt.Errorf("query %s: unexpected result shape", n.Name)}
	}
	row := res[0].Rows[0]
	d := nodeDetail{inRecovery: string(row[0]) == "t", receiver: string(row[2])}
	if row[1] != nil {
		t, err := walFileTimeline(string(row[1]))
		if err != nil {
			return nodeDetail{err: fmt.Errorf("query %s: %w", n.Name, err)}
		}
		d.timeline = t
	}
	if row[3] != nil {
		t, err := strconv.ParseUint(string(row[3]), 10, 32)
		if err != nil {
			return nodeDetail{err: fmt.Errorf("query %s: received_tli %q: %w", n.Name, row[3], err)}
		}
		d.recvTLI = wal.TimelineID(t)
	}
	for i, dst := range []*wal.LSN{&d.currentLSN, &d.receiveLSN, &d.replayLSN} {
		if row[i+4] == nil {
			continue
		}
		v, err := wal.ParseLSN(string(row[i+4]))
		if err != nil {
			return nodeDetail{err: fmt.Errorf("query %s: %w", n.Name, err)}
		}
		*dst = v
	}
	return d
}

// findPrimary returns the primary the monitor watches or, when it watches none (the loop
// does not run, or runs discovery), the one node that answers and is not in recovery,
// leaving out former primaries and detached nodes. Without the loop the answer is
// remembered as the primary.
func (m *Monitor) findPrimary(ctx context.Context) (int, error) {
	if p := m.Primary(); p >= 0 && m.running.Load() {
		return p, nil
	}
	sts := m.probe(ctx, func(i int) bool { return !m.isFailed(i) && !m.isDetached(i) })
	var prims []int
	for i, st := range sts {
		if st.err == nil && !st.inRecovery {
			prims = append(prims, i)
		}
	}
	if len(prims) == 0 {
		return -1, errors.New("no node answers as primary")
	}
	id := cluster.ChoosePrimary(prims, -1, func(i int) uint32 { return uint32(sts[i].timeline) })
	if id < 0 {
		return -1, fmt.Errorf("several nodes answer as primary on the same timeline (%s): split brain; not acting", m.claimants(prims, sts))
	}
	if !m.running.Load() {
		m.mu.Lock()
		m.primary = id
		m.mu.Unlock()
	}
	return id, nil
}

// attachable says why node id may not get traffic now (nil: it may). A primary other than
// prim, a standby that does not stream, and a standby on another timeline than the
// primary's are refused.
func (m *Monitor) attachable(ctx context.Context, id, prim int) error {
	n := m.nodes[id]
	d := m.detail(ctx, n)
	if d.err != nil {
		return fmt.Errorf("node %d (%s) does not answer: %w", id, n.Name, d.err)
	}
	if !d.inRecovery {
		if id == prim {
			return nil
		}
		return fmt.Errorf("node %d (%s) reports to be a primary (timeline %d) while node %d (%s) is the primary: attaching it would be a split brain; rebuild it as a standby with RECOVER NODE %d",
			id, n.Name, d.timeline, prim, m.nodes[prim].Name, id)
	}
	if prim < 0 {
		return fmt.Errorf("node %d (%s) is a standby but no primary is known", id, n.Name)
	}
	pd := m.detail(ctx, m.nodes[prim])
	if pd.err != nil {
		return fmt.Errorf("the primary, node %d (%s), does not answer: %w", prim, m.nodes[prim].Name, pd.err)
	}
	if pd.inRecovery {
		return fmt.Errorf("node %d (%s), taken for the primary, is in recovery", prim, m.nodes[prim].Name)
	}
	if d.receiver != "streaming" {
		st := d.receiver
		if st == "" {
			st = "no WAL receiver"
		}
		return fmt.Errorf("node %d (%s) does not stream from the primary (%s): check its primary_conninfo and log, or rebuild it with RECOVER NODE %d", id, n.Name, st, id)
	}
	if d.recvTLI != pd.timeline {
		return fmt.Errorf("node %d (%s) streams timeline %d, the primary is on timeline %d: it does not follow the primary; rebuild it with RECOVER NODE %d",
			id, n.Name, d.recvTLI, pd.timeline, id)
	}
	return nil
}

// Attach puts node id back into routing and among the failover candidates, after checking
// that it is the primary or a standby streaming the primary's timeline.
func (m *Monitor) Attach(ctx context.Context, id int) (string, error) {
	if id < 0 || id >= len(m.nodes) {
		return "", fmt.Errorf("no node %d", id)
	}
	if err := m.lockOp(ctx); err != nil {
		return "", err
	}
	defer m.opMu.Unlock()
	prim, err := m.findPrimary(ctx)
	if err != nil {
		return "", err
	}
	if err := m.attachable(ctx, id, prim); err != nil {
		return "", err
	}
	m.attach(id)
	return fmt.Sprintf("node %d (%s) attached", id, m.nodes[id].Name), nil
}

// attach clears what kept node id out and tells the pool.
func (m *Monitor) attach(id int) {
	m.mu.Lock()
	delete(m.detached, id)
	delete(m.failed, id)
	delete(m.formerSeen, id)
	m.mu.Unlock()
	if np, ok := m.pool.(nodePool); ok {
		np.MarkUp(id)
	}
	m.log.Info("node attached", "node_id", id, "node", m.nodes[id].Name)
}

// Detach takes node id out of routing and out of the failover candidates until Attach. The
// primary cannot be detached: move it away with a switchover first.
func (m *Monitor) Detach(ctx context.Context, id int) (string, error) {
	if id < 0 || id >= len(m.nodes) {
		return "", fmt.Errorf("no node %d", id)
	}
	if err := m.lockOp(ctx); err != nil {
		return "", err
	}
	defer m.opMu.Unlock()
	if prim, err := m.findPrimary(ctx); err == nil && prim == id {
		return "", fmt.Errorf("node %d (%s) is the primary: detaching it would stop all writes; move the primary first (SWITCHOVER)", id, m.nodes[id].Name)
	}
	m.mu.Lock()
	m.detached[id] = true
	m.mu.Unlock()
	if m.pool != nil {
		m.pool.MarkDown(id, "detached by an operator")
	}
	m.log.Warn("node detached", "node_id", id, "node", m.nodes[id].Name)
	return fmt.Sprintf("node %d (%s) detached", id, m.nodes[id].Name), nil
}

// Recover rebuilds node id as a standby of the current primary (online recovery, like
// pgpool's pcp_recovery_node) and attaches it once it streams. The node's data_dir must be
// on this host.
func (m *Monitor) Recover(ctx context.Context, id int) (string, error) {
	if id < 0 || id >= len(m.nodes) {
		return "", fmt.Errorf("no node %d", id)
	}
	if err := m.lockOp(ctx); err != nil {
		return "", err
	}
	prim, err := m.findPrimary(ctx)
	m.opMu.Unlock()
	if err != nil {
		return "", err
	}
	if prim == id {
		return "", fmt.Errorf("node %d (%s) is the primary: nothing to recover", id, m.nodes[id].Name)
	}
	method, err := m.rejoin(ctx, id, prim, false)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("node %d (%s) rebuilt by %s as a standby of node %d (%s) and attached", id, m.nodes[id].Name, method, prim, m.nodes[prim].Name), nil
}
