package failover

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgharbor/pgharbor/replica"
	"github.com/pgharbor/pgharbor/restore"
)

// localDataDir returns n's data directory when it is a PostgreSQL data directory on this
// host, else an error saying what to configure.
func localDataDir(n Node) (string, error) {
	d := n.Opts.DataDir
	if d == "" {
		return "", fmt.Errorf("node %s has no data_dir under failover.nodes: it can be stopped or rebuilt only on its own host", n.Name)
	}
	if _, err := os.Stat(filepath.Join(d, "global", "pg_control")); err != nil {
		return "", fmt.Errorf("node %s: %s is not a data directory on this host (%w)", n.Name, d, err)
	}
	return d, nil
}

// stopLocal stops the postmaster on n's local data directory (fast: sessions are ended,
// a shutdown checkpoint is written and streamed to the standbys).
func (m *Monitor) stopLocal(ctx context.Context, n Node) error {
	dir, err := localDataDir(n)
	if err != nil {
		return err
	}
	if replica.PostmasterPID(dir) == 0 {
		return nil
	}
	owner, err := restore.OwnerFor(dir)
	if err != nil {
		return err
	}
	// pg_ctl -w looks for the end every 100 ms; a switchover holds transactions meanwhile,
	// so pg_ctl only signals and the postmaster.pid is watched more often here.
	cmd := exec.CommandContext(ctx, filepath.Join(m.cfg.BinDir, "pg_ctl"), "-D", dir, "-m", "fast", "-W", "stop")
	cmd.Dir = "/"
	if owner != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: owner}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop %s: %w: %s", dir, err, strings.TrimSpace(string(out)))
	}
	deadline := time.Now().Add(m.cfg.CommandTimeout)
	for replica.PostmasterPID(dir) != 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: the postmaster on %s did not stop within command_timeout %v", n.Name, dir, m.cfg.CommandTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// startLocal starts the postmaster on n's local data directory as it was configured (used
// to undo a switchover that could not finish).
func (m *Monitor) startLocal(ctx context.Context, n Node) error {
	dir, err := localDataDir(n)
	if err != nil {
		return err
	}
	owner, err := restore.OwnerFor(dir)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(m.cfg.BinDir, "pg_ctl"), "-D", dir, "-l", filepath.Join(dir, "pgharbor-start.log"), "-w", "-t", "120", "start")
	cmd.Dir = "/"
	if owner != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: owner}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl start %s: %w: %s", dir, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// rejoin makes node id a standby of prim and attaches it once it streams the primary's
// timeline. The node's data directory must be on this host; a running postmaster there is
// stopped first. After a clean stop that the primary replayed (switchover), or when no
// Rebuilder is set and the node did not diverge, only the standby configuration is written;
// otherwise the Rebuilder rewinds or restores it. It returns the method used.
func (m *Monitor) rejoin(ctx context.Context, id, prim int, cleanStop bool) (string, error) {
	n, p := m.nodes[id], m.nodes[prim]
	dir, err := localDataDir(n)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	if m.rejoining[id] {
		m.mu.Unlock()
		return "", fmt.Errorf("node %d (%s) is being rebuilt already", id, n.Name)
	}
	m.rejoining[id] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.rejoining, id)
		m.mu.Unlock()
	}()
	if m.pool != nil {
		m.pool.MarkDown(id, "being rebuilt as a standby")
	}
	if err := m.stopLocal(ctx, n); err != nil {
		return "", fmt.Errorf("stop node %s before the rebuild: %w", n.Name, err)
	}
	conninfo := m.PrimaryConninfo(n, p)
	method := "standby-config"
	useRebuild := m.rebuild != nil && !cleanStop
	if !useRebuild {
		ctl, err := replica.ReadControl(ctx, m.cfg.BinDir, dir)
		if err != nil {
			return "", err
		}
		pr, err := replica.Probe(ctx, conninfo)
		if err != nil {
			return "", fmt.Errorf("node %s: the new primary %s: %w", n.Name, p.Name, err)
		}
		tli, lsn := ctl.Position()
		diverged := replica.Diverged(tli, lsn, pr.Timeline, pr.History)
		// After a switchover the node stopped cleanly at a checkpoint the new primary
		// replayed before its promotion: nothing of it lies beyond the switch point, and
		// pg_waldump need not look (it can trip over a zero-filled preallocated segment).
		if sw, ok := pr.History.SwitchPoint(tli); ok && !diverged && !cleanStop {
			if diverged, err = replica.WALAfter(ctx, m.cfg.BinDir, dir, tli, sw); err != nil {
				return "", err
			}
		}
		if diverged {
			return "", fmt.Errorf("node %s diverged from the primary's history (it stopped at %s on timeline %d); it needs pg_rewind or a restore: configure the repository so that the pool can rebuild it, or run `pgharbor replica rebuild --pgdata %s` on its host",
				n.Name, lsn, tli, dir)
		}
		owner, err := restore.OwnerFor(dir)
		if err != nil {
			return "", err
		}
		if err := replica.WriteAutoConf(dir, replica.Settings{PrimaryConnInfo: conninfo, RestoreCommand: m.cfg.RestoreCommand, Standby: true}, owner); err != nil {
			return "", err
		}
		os.Remove(filepath.Join(dir, "postmaster.pid")) // left by a crash; pg_ctl would refuse
		err = replica.StartAndWaitStreaming(ctx, replica.StartOptions{PGData: dir, BinDir: m.cfg.BinDir, Cred: owner, Wait: m.cfg.RejoinWait,
			PrimaryConnInfo: conninfo, AppName: n.appName(), Logger: m.log})
		if err != nil {
			return "", fmt.Errorf("node %s as a standby of %s: %w", n.Name, p.Name, err)
		}
	} else {
		m.log.Warn("rebuilding node as a standby of the primary", "node", n.Name, "primary", p.Name, "data_dir", dir)
		method, err = m.rebuild(ctx, RebuildRequest{Node: n.Name, DataDir: dir, PrimaryConnInfo: conninfo, AppName: n.appName(), Wait: m.cfg.RejoinWait})
		if err != nil {
			return "", fmt.Errorf("rebuild of node %s: %w", n.Name, err)
		}
	}
	// The standby streams; wait until it streams the primary's timeline before routing to it.
	deadline := time.Now().Add(m.cfg.RejoinWait)
	for {
		err := m.attachable(ctx, id, prim)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return method, fmt.Errorf("node %s was rebuilt by %s but is not attached: %w", n.Name, method, err)
		}
		select {
		case <-ctx.Done():
			return method, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	m.attach(id)
	m.log.Warn("node rejoined as a standby", "node_id", id, "node", n.Name, "primary", p.Name, "method", method)
	return method, nil
}

// watchFormer looks at the former primaries (nodes fenced by a failover) in the background:
// one that is up and still says it is a primary is a split-brain risk, logged once; with
// auto_rejoin it is rebuilt as a standby of prim. A former primary found streaming the
// primary's timeline (rebuilt by hand) is attached with auto_rejoin.
func (m *Monitor) watchFormer(ctx context.Context, prim int) {
	m.mu.Lock()
	var ids []int
	for id := range m.failed {
		if !m.rejoining[id] && id != prim && !time.Now().Before(m.rejoinAt[id]) {
			ids = append(ids, id)
		}
	}
	m.mu.Unlock()
	for _, id := range ids {
		m.mu.Lock()
		m.rejoining[id] = true // also keeps a second check of it from starting
		m.mu.Unlock()
		go func() {
			defer func() {
				m.mu.Lock()
				delete(m.rejoining, id)
				m.mu.Unlock()
			}()
			m.checkFormer(ctx, id, prim)
		}()
	}
}

// rejoinRetry is the pause after a failed auto_rejoin: a rebuild is heavy, and what made it
// fail (a missing backup, pg_hba) rarely heals within seconds.
const rejoinRetry = time.Minute

func (m *Monitor) checkFormer(ctx context.Context, id, prim int) {
	n := m.nodes[id]
	d := m.detail(ctx, n)
	if d.err != nil {
		return // still down
	}
	if d.inRecovery {
		if m.cfg.AutoRejoin && m.attachable(ctx, id, prim) == nil {
			m.attach(id)
		}
		return
	}
	m.mu.Lock()
	first := !m.formerSeen[id]
	m.formerSeen[id] = true
	m.mu.Unlock()
	if first {
		m.log.Error("split-brain risk: a former primary is up and reports to be a primary; it gets no traffic",
			"node_id", id, "node", n.Name, "its_timeline", d.timeline, "its_lsn", d.currentLSN, "primary", m.nodes[prim].Name,
			"auto_rejoin", m.cfg.AutoRejoin)
	}
	if !m.cfg.AutoRejoin {
		return
	}
	m.mu.Lock()
	delete(m.rejoining, id) // rejoin takes the mark itself
	m.mu.Unlock()
	method, err := m.rejoin(ctx, id, prim, false)
	if err != nil && !errors.Is(err, context.Canceled) {
		m.log.Error("auto_rejoin failed; trying again later", "node", n.Name, "err", err, "retry_in", rejoinRetry)
		m.mu.Lock()
		m.rejoinAt[id] = time.Now().Add(rejoinRetry)
		m.mu.Unlock()
		return
	}
	if err == nil {
		m.log.Warn("auto_rejoin: former primary rebuilt and attached", "node", n.Name, "method", method)
	}
}
