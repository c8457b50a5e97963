package failover

import (
	"context"
	"fmt"
)

// SetElector makes the monitor act only while e's leader: Run through RunElected, and
// promotions, switchovers and node commands confirm the leadership in etcd first. Call it
// before Run and before the monitor serves node commands.
func (m *Monitor) SetElector(e *Elector) { m.elector = e }

// Elector returns the elector set with SetElector (nil: a single monitor).
func (m *Monitor) Elector() *Elector { return m.elector }

// confirmLeader is nil without an elector; with one it proves the leadership in etcd.
func (m *Monitor) confirmLeader(ctx context.Context) error {
	e := m.elector
	if e == nil {
		return nil
	}
	if err := e.Confirm(ctx); err != nil {
		if h := e.Status().Holder; h != "" && h != e.Name() {
			return fmt.Errorf("%w (the leader is %s: run it there)", err, h)
		}
		return err
	}
	return nil
}

// RunElected runs the monitor under the elector set with SetElector: it watches only while
// this monitor is the leader, and forgets what it learned as leader when it loses the
// leadership (another monitor may fail over meanwhile). Without an elector it is Run.
func (m *Monitor) RunElected(ctx context.Context) error {
	if m.elector == nil {
		return m.Run(ctx)
	}
	m.elector.Run(ctx, func(tctx context.Context) {
		m.mu.Lock()
		m.primary, m.health = -1, Health{}
		m.failed = map[int]bool{}
		m.formerSeen = map[int]bool{}
		m.lastLSN, m.syncNames, m.inSync = 0, false, nil
		m.mu.Unlock()
		_ = m.Run(tctx)
	})
	return nil
}
