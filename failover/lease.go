package failover

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// LeaseKey is the key of the promotion lease: a session-level advisory lock
// (pg_try_advisory_lock(LeaseKey)) that a monitor holds on the candidate and on the other
// reachable standbys while it promotes and re-points. Advisory locks work on a standby in
// recovery, need no table (a standby cannot write one) and vanish with the monitor's
// session, so a crashed monitor leaves no stale lease behind. The value spells "pgharbor".
const LeaseKey int64 = 0x7067686172626f72

// leaseAppName is the application_name of a lease connection, so that the holder can be
// named in pg_stat_activity.
const leaseAppName = "pgharbor failover lease"

// ErrLeaseHeld means another monitor (or anyone holding LeaseKey) holds the promotion lease
// on a node: this monitor does not promote.
var ErrLeaseHeld = errors.New("the promotion lease is held by another monitor")

// lease is the set of connections holding the advisory lock; closing them releases it.
type lease struct {
	conns []*pgconn.PgConn
}

func (l *lease) release() {
	if l == nil {
		return
	}
	for _, c := range l.conns {
		ctx, cancel := context.WithTimeout(context.Background(), m2s)
		_, _ = c.Exec(ctx, fmt.Sprintf("SELECT pg_advisory_unlock(%d)", LeaseKey)).ReadAll()
		cancel()
		closeConn(c)
	}
	l.conns = nil
}

// acquireLease takes the promotion lease on the candidate (required) and on each other
// standby in others that answers. A node where it is held refuses the lease as a whole; a
// node that does not answer is skipped (it cannot be promoted by anyone either).
func (m *Monitor) acquireLease(ctx context.Context, candidate int, others []int) (*lease, error) {
	l := &lease{}
	for i, id := range append([]int{candidate}, others...) {
		n := m.nodes[id]
		conn, err := m.connectApp(ctx, n, leaseAppName)
		if err != nil {
			if i == 0 {
				l.release()
				return nil, fmt.Errorf("promotion lease on %s: %w", n.Name, err)
			}
			continue
		}
		qctx, cancel := context.WithTimeout(ctx, m.cfg.QueryTimeout)
		res, err := conn.Exec(qctx, fmt.Sprintf("SELECT pg_try_advisory_lock(%d)", LeaseKey)).ReadAll()
		cancel()
		if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
			closeConn(conn)
			if i == 0 {
				l.release()
				return nil, fmt.Errorf("promotion lease on %s: %w", n.Name, err)
			}
			continue
		}
		if string(res[0].Rows[0][0]) != "t" {
			holder := m.leaseHolder(ctx, conn)
			closeConn(conn)
			l.release()
			return nil, fmt.Errorf("%w on %s (%s)", ErrLeaseHeld, n.Name, holder)
		}
		l.conns = append(l.conns, conn)
	}
	return l, nil
}

// leaseHolder describes who holds LeaseKey on the node of conn, for the error message.
func (m *Monitor) leaseHolder(ctx context.Context, conn *pgconn.PgConn) string {
	qctx, cancel := context.WithTimeout(ctx, m.cfg.QueryTimeout)
	defer cancel()
	q := fmt.Sprintf(`SELECT coalesce(string_agg(format('pid %%s, application_name %%L, client %%s', a.pid, a.application_name, coalesce(a.client_addr::text, 'local')), '; '), 'unknown')
  FROM pg_locks l JOIN pg_stat_activity a USING (pid)
  WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %d AND l.objid = %d AND l.objsubid = 1`,
		uint64(LeaseKey)>>32, uint64(LeaseKey)&0xffffffff)
	res, err := conn.Exec(qctx, q).ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		return "holder unknown"
	}
	return "held by " + strings.TrimSpace(string(res[0].Rows[0][0]))
}
