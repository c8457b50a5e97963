package failover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/pgharbor/pgharbor/replica"
	"github.com/pgharbor/pgharbor/wal"
)

// SwitchoverOptions say which node becomes the primary.
type SwitchoverOptions struct {
	To int
	// NoRejoin leaves the old primary stopped instead of starting it as a standby of the new one.
	NoRejoin bool
}

// SwitchoverReport says what a switchover did.
type SwitchoverReport struct {
	OldPrimaryID int     `json:"old_primary_id"`
	OldPrimary   string  `json:"old_primary"`
	NewPrimaryID int     `json:"new_primary_id"`
	NewPrimary   string  `json:"new_primary"`
	StopLSN      string  `json:"stop_lsn"` // the old primary's shutdown checkpoint (or its last position) that the target replayed
	HeldSeconds  float64 `json:"held_seconds"`
	// Where the held time went: waiting for running transactions, stopping the old
	// primary, waiting for the target's replay, promoting.
	DrainSeconds   float64  `json:"drain_seconds"`
	StopSeconds    float64  `json:"stop_seconds"`
	ReplaySeconds  float64  `json:"replay_seconds"`
	PromoteSeconds float64  `json:"promote_seconds"`
	Followed       []string `json:"followed"`
	Rejoined       bool     `json:"rejoined"`
	RejoinMethod   string   `json:"rejoin_method,omitempty"`
	RejoinError    string   `json:"rejoin_error,omitempty"`
	Seconds        float64  `json:"seconds"`
}

// ErrSwitchoverAbandoned wraps the reason a switchover stopped before the promotion; the
// old primary is the primary again (or, when it could not be restarted here, the error
// says so).
var ErrSwitchoverAbandoned = errors.New("switchover abandoned")

// Switchover moves the primary to node o.To without losing a committed transaction: the
// pool holds new transactions and waits for running ones (drain_timeout), the old primary is
// stopped (stop_command, or pg_ctl stop -m fast on its local data_dir), the target is
// waited for until it replayed everything the old primary wrote (its shutdown checkpoint),
// then promoted; the pool routes writes to it and lets the held transactions run; the other
// standbys are re-pointed and the old primary is started as a standby of the new one
// (unless o.NoRejoin or its data directory is not on this host).
func (m *Monitor) Switchover(ctx context.Context, o SwitchoverOptions) (*SwitchoverReport, error) {
	t0 := time.Now()
	to := o.To
	if to < 0 || to >= len(m.nodes) {
		return nil, fmt.Errorf("no node %d", to)
	}
	if m.pauser == nil {
		return nil, errors.New("a switchover needs the pool: run it through the admin console of the pool that runs the monitor (pgharbor switchover)")
	}
	if err := m.lockOp(ctx); err != nil {
		return nil, err
	}
	locked := true
	unlock := func() {
		if locked {
			locked = false
			m.opMu.Unlock()
		}
	}
	defer unlock()
	prim, err := m.findPrimary(ctx)
	if err != nil {
		return nil, err
	}
	old, tgt := m.nodes[prim], m.nodes[to]
	if prim == to {
		return nil, fmt.Errorf("node %d (%s) is the primary already", to, tgt.Name)
	}
	if m.isDetached(to) {
		return nil, fmt.Errorf("node %d (%s) is detached: attach it first", to, tgt.Name)
	}
	if m.cfg.StopCommand == "" {
		if _, err := localDataDir(old); err != nil {
			return nil, fmt.Errorf("cannot stop the primary: %w; set failover.stop_command", err)
		}
	}
	if err := m.attachable(ctx, to, prim); err != nil {
		return nil, fmt.Errorf("node %d (%s) cannot take over: %w", to, tgt.Name, err)
	}
	var others []int
	for i := range m.nodes {
		if i != prim && i != to && !m.isDetached(i) {
			others = append(others, i)
		}
	}
	ls, err := m.acquireLease(ctx, to, others)
	if err != nil {
		return nil, err
	}
	defer ls.release()
	m.setMaint(true)
	defer m.setMaint(false)
	// A checkpoint now, while transactions still run, leaves the shutdown checkpoint little
	// to write: the stop, which holds transactions, gets shorter.
	m.checkpoint(ctx, old)
	rep := &SwitchoverReport{OldPrimaryID: prim, OldPrimary: old.Name, NewPrimaryID: to, NewPrimary: tgt.Name}
	m.log.Warn("switchover: holding new transactions", "from", old.Name, "to", tgt.Name, "drain_timeout", m.cfg.DrainTimeout)

	held := time.Now()
	pctx, cancel := context.WithTimeout(ctx, m.cfg.DrainTimeout)
	err = m.pauser.Pause(pctx)
	cancel()
	rep.DrainSeconds = time.Since(held).Seconds()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			m.pauser.Resume()
			rep.HeldSeconds = time.Since(held).Seconds()
		}
	}
	defer resume()
	if err != nil {
		return nil, fmt.Errorf("%w: running transactions did not end within drain_timeout %v (%v); nothing changed", ErrSwitchoverAbandoned, m.cfg.DrainTimeout, err)
	}
	od := m.detail(ctx, old)
	if od.err != nil || od.inRecovery {
		return nil, fmt.Errorf("%w: the primary %s does not answer as a primary before the stop (%v); nothing changed", ErrSwitchoverAbandoned, old.Name, od.err)
	}
	// Idle server connections to the old primary are closed by the pool now, not broken by
	// the stop.
	if m.pool != nil {
		m.pool.MarkDown(prim, "switchover to "+tgt.Name)
	}
	undo := func(why error) error {
		err := fmt.Errorf("%w: %v", ErrSwitchoverAbandoned, why)
		if m.detail(ctx, old).err != nil {
			if _, lerr := localDataDir(old); lerr != nil {
				return fmt.Errorf("%w; the old primary %s is stopped and not on this host: start it again, or promote a standby", err, old.Name)
			}
			if serr := m.startLocal(ctx, old); serr != nil {
				return fmt.Errorf("%w; starting the old primary %s again failed too: %v", err, old.Name, serr)
			}
		}
		if np, ok := m.pool.(nodePool); ok {
			np.MarkUp(prim)
		}
		return fmt.Errorf("%w; the old primary %s runs again", err, old.Name)
	}
	if err := m.confirmLeader(ctx); err != nil {
		return nil, undo(err)
	}
	phase := time.Now()
	if err := m.stopPrimary(ctx, old, tgt); err != nil {
		if m.detail(ctx, old).err == nil {
			return nil, undo(fmt.Errorf("stopping %s: %w", old.Name, err))
		}
		m.log.Warn("the stop of the old primary reported an error, but it is down; going on", "node", old.Name, "err", err)
	}
	rep.StopSeconds = time.Since(phase).Seconds()
	phase = time.Now()
	stopLSN, err := m.waitReplayed(ctx, old, tgt, od.currentLSN)
	if err != nil {
		return nil, undo(err)
	}
	rep.StopLSN = stopLSN.String()
	rep.ReplaySeconds = time.Since(phase).Seconds()
	phase = time.Now()
	if err := m.confirmLeader(ctx); err != nil {
		return nil, undo(err)
	}
	if err := m.promote(ctx, tgt); err != nil {
		if d := m.detail(ctx, tgt); d.err == nil && d.inRecovery {
			return nil, undo(err)
		}
		return nil, fmt.Errorf("switchover: promotion of %s failed and its state is unclear: %w; the pool holds no transactions; check SHOW POOL_NODES", tgt.Name, err)
	}
	rep.PromoteSeconds = time.Since(phase).Seconds()
	if m.pool != nil {
		m.pool.SetPrimary(to)
	}
	m.mu.Lock()
	m.primary, m.health = to, Health{}
	m.lastLSN, m.syncNames, m.inSync = 0, false, nil
	m.mu.Unlock()
	resume()
	m.log.Warn("switchover: new primary; transactions resumed", "node", tgt.Name, "old_primary", old.Name,
		"stop_lsn", stopLSN, "held", time.Since(held))

	var wg sync.WaitGroup
	var fmu sync.Mutex
	for _, id := range others {
		n := m.nodes[id]
		if d := m.detail(ctx, n); d.err != nil || !d.inRecovery {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.repoint(ctx, n, tgt); err != nil {
				m.log.Error("could not re-point standby to the new primary", "node", n.Name, "new_primary", tgt.Name, "err", err)
				return
			}
			fmu.Lock()
			rep.Followed = append(rep.Followed, n.Name)
			fmu.Unlock()
		}()
	}
	wg.Wait()
	ls.release()
	m.setMaint(false)
	unlock()

	ph := Placeholders{Failed: old.info(), NewPrimary: tgt.info(), OldPrimary: old.info()}
	env := []string{"PGHARBOR_OLD_PRIMARY=" + old.Name, "PGHARBOR_NEW_PRIMARY=" + tgt.Name, "PGHARBOR_EVENT=switchover"}
	if m.cfg.FollowPrimaryCommand != "" {
		for _, name := range rep.Followed {
			id, _ := m.NodeID(name)
			fp := ph
			fp.Failed = m.nodes[id].info()
			runHook(ctx, m.log, "follow_primary_command", fp.Expand(m.cfg.FollowPrimaryCommand), m.cfg.CommandTimeout,
				append(env, "PGHARBOR_NODE="+name))
		}
	}
	m.roleHook(ctx, ph, env, tgt, "primary")

	// An old primary that does not rejoin is watched as a former primary: started again as a
	// primary it is a split-brain risk (and auto_rejoin's business).
	formerPrimary := func() {
		m.mu.Lock()
		m.failed[prim] = true
		m.mu.Unlock()
	}
	if o.NoRejoin {
		formerPrimary()
		m.roleHook(ctx, ph, env, old, "stopped")
	} else if method, err := m.rejoin(ctx, prim, to, true); err != nil {
		formerPrimary()
		rep.RejoinError = err.Error()
		m.log.Error("switchover done, but the old primary did not rejoin as a standby", "node", old.Name, "err", err)
		m.roleHook(ctx, ph, env, old, "stopped")
	} else {
		rep.Rejoined, rep.RejoinMethod = true, method
		m.roleHook(ctx, ph, env, old, "standby")
	}
	rep.Seconds = time.Since(t0).Seconds()
	return rep, nil
}

func (m *Monitor) setMaint(v bool) {
	m.mu.Lock()
	m.maint = v
	m.mu.Unlock()
}

// roleHook runs on_role_change for node n, now in role.
func (m *Monitor) roleHook(ctx context.Context, ph Placeholders, env []string, n Node, role string) {
	if m.cfg.OnRoleChange == "" {
		return
	}
	runHook(ctx, m.log, "on_role_change", ph.Expand(m.cfg.OnRoleChange), m.cfg.CommandTimeout,
		append(env, "PGHARBOR_NODE="+n.Name, "PGHARBOR_NODE_ID="+strconv.Itoa(n.ID),
			"PGHARBOR_NODE_HOST="+n.Host, "PGHARBOR_NODE_PORT="+strconv.Itoa(n.Port), "PGHARBOR_ROLE="+role))
}

// stopPrimary stops old for a switchover: stop_command (its %d %h %p %D are the node to stop,
// %m %H %r %R the target) or pg_ctl stop -m fast on its local data directory.
func (m *Monitor) stopPrimary(ctx context.Context, old, tgt Node) error {
	if m.cfg.StopCommand == "" {
		return m.stopLocal(ctx, old)
	}
	ph := Placeholders{Failed: old.info(), NewPrimary: tgt.info(), OldPrimary: old.info()}
	res := runHook(ctx, m.log, "stop_command", ph.Expand(m.cfg.StopCommand), m.cfg.CommandTimeout,
		[]string{"PGHARBOR_NODE=" + old.Name, "PGHARBOR_EVENT=switchover"})
	if res.Err != nil {
		return fmt.Errorf("stop_command exit %d: %w: %s", res.ExitCode, res.Err, res.Output)
	}
	return nil
}

// waitReplayed waits until tgt replayed everything old wrote and returns that position.
// With old's data directory on this host it is exact: old must have shut down cleanly, and
// tgt must have replayed past its shutdown checkpoint. Otherwise old must be gone, tgt must
// have received WAL past before (old's position once the pool was paused: the shutdown
// checkpoint comes after it) and replayed all it received.
func (m *Monitor) waitReplayed(ctx context.Context, old, tgt Node, before wal.LSN) (wal.LSN, error) {
	local := false
	var want wal.LSN
	if dir, err := localDataDir(old); err == nil {
		ctl, err := replica.ReadControl(ctx, m.cfg.BinDir, dir)
		if err != nil {
			return 0, err
		}
		if ctl.State != "shut down" {
			return 0, fmt.Errorf("the old primary %s did not shut down cleanly (pg_control says %q)", old.Name, ctl.State)
		}
		local, want = true, ctl.Checkpoint
	}
	deadline := time.Now().Add(m.cfg.ReplayTimeout)
	var d nodeDetail
	for {
		d = m.detail(ctx, tgt)
		if d.err == nil && d.inRecovery {
			if local && d.replayLSN > want {
				return want, nil
			}
			if !local && d.receiver != "streaming" && d.receiveLSN > before && d.replayLSN >= d.receiveLSN &&
				m.detail(ctx, old).err != nil {
				return d.receiveLSN, nil
			}
		}
		if time.Now().After(deadline) {
			if local {
				return 0, fmt.Errorf("%s did not replay the old primary's shutdown checkpoint at %s within replay_timeout %v (replayed %s, err %v)", tgt.Name, want, m.cfg.ReplayTimeout, d.replayLSN, d.err)
			}
			return 0, fmt.Errorf("%s did not receive and replay the old primary's last WAL (past %s) within replay_timeout %v (received %s, replayed %s, wal receiver %q, err %v)",
				tgt.Name, before, m.cfg.ReplayTimeout, d.receiveLSN, d.replayLSN, d.receiver, d.err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// promote promotes n without pg_promote's own wait (it looks for the end of recovery every
// 100 ms) and watches pg_is_in_recovery() more often: writes wait for it, in a failover as
// in a switchover.
func (m *Monitor) promote(ctx context.Context, n Node) error {
	conn, err := m.connect(ctx, n)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	pctx, cancel := context.WithTimeout(ctx, m.cfg.PromoteTimeout+m.cfg.QueryTimeout)
	defer cancel()
	res, err := conn.Exec(pctx, "SELECT pg_promote(false)").ReadAll()
	if err != nil {
		return fmt.Errorf("pg_promote on %s: %w", n.Name, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "t" {
		return fmt.Errorf("pg_promote on %s: the promotion could not be signalled", n.Name)
	}
	for {
		res, err := conn.Exec(pctx, "SELECT pg_is_in_recovery()").ReadAll()
		if err != nil {
			return fmt.Errorf("promotion of %s: %w", n.Name, err)
		}
		if len(res) == 1 && len(res[0].Rows) == 1 && string(res[0].Rows[0][0]) == "f" {
			return nil
		}
		select {
		case <-pctx.Done():
			return fmt.Errorf("promotion of %s: not finished within promote_timeout %v", n.Name, m.cfg.PromoteTimeout)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// checkpoint runs CHECKPOINT on n, bounded by replay_timeout; a failure only costs time
// later and is logged.
func (m *Monitor) checkpoint(ctx context.Context, n Node) {
	conn, err := m.connect(ctx, n)
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, m.cfg.ReplayTimeout)
		_, err = conn.Exec(cctx, "CHECKPOINT").ReadAll()
		cancel()
		closeConn(conn)
	}
	if err != nil {
		m.log.Warn("CHECKPOINT before the switchover failed; the shutdown checkpoint will take longer", "node", n.Name, "err", err)
	}
}
