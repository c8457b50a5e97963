package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgharbor/pgharbor/pool/cluster"
)

// Waiting for the new primary during a failover, shared by both engines.
//
// Between a primary's crash and the monitor's SetPrimary the cluster may still call the
// dead node the primary, so a new write transaction's login to it fails (connection
// refused, reset, "the database system is shutting down"). With a failover monitor acting
// on the pool (SetFailover) such a transaction does not fail: it waits, bounded by
// failover.client_wait, until the cluster's primary changes or the node answers again,
// and then runs on the primary. Only a transaction already sent to the dead primary fails
// (its outcome is unknown), with an error that says so.

// DefaultFailoverClientWait is FailoverOptions.ClientWait when 0.
const DefaultFailoverClientWait = 30 * time.Second

// failoverRetry is how soon a session that found the primary unreachable tries it again
// when no change of the cluster came meanwhile (a restart without a failover, or a monitor
// that does not fail over).
const failoverRetry = 100 * time.Millisecond

// FailoverOptions say that a failover monitor acts on the pool's cluster (failover.enabled).
type FailoverOptions struct {
	// ClientWait bounds how long a new transaction waits for a reachable primary
	// (failover.client_wait); DefaultFailoverClientWait when 0.
	ClientWait time.Duration
	// CheckPrimary, when set, is called when a login to the primary (node id) failed as if
	// the node were down: the monitor may check it at once instead of at its next period.
	// It must not block. It is a hint: the monitor decides with its own checks and retries.
	CheckPrimary func(nodeID int)
}

// SetFailover turns waiting for the new primary on (nil: off, the default). Safe to call
// while the pool runs.
func (s *Server) SetFailover(o *FailoverOptions) {
	if o == nil {
		s.fo.Store(nil)
		return
	}
	c := *o
	if c.ClientWait <= 0 {
		c.ClientWait = DefaultFailoverClientWait
	}
	s.fo.Store(&c)
}

// failoverOpts returns the options of SetFailover, nil when off.
func (s *Server) failoverOpts() *FailoverOptions { return s.fo.Load() }

// primaryDown remembers the last node a login found unreachable, so that the sessions that
// come after it wait without dialing the dead node again (each would get the same refusal)
// until failoverRetry passed or the cluster changed. It is a hint read on every attachment
// with failover on, so it takes no lock: fields written apart at worst cost one extra dial.
type primaryDown struct {
	node atomic.Int64 // -1: none
	at   atomic.Int64 // unix nanoseconds
	gen  atomic.Uint64
}

// serverUnreachable says whether err, from opening a server connection, means the node is
// down or not accepting connections now (as opposed to a refused login, a missing database
// or the pool's own query_wait_timeout, which waiting for a failover would not cure).
func serverUnreachable(err error) bool {
	if err == nil || err == context.DeadlineExceeded || err == context.Canceled || errors.Is(err, errPoolClosed) {
		return false
	}
	var pe *pgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "57P01", "57P02", "57P03": // admin or crash shutdown, cannot connect now (starting, stopping, recovering)
			return true
		}
		return false
	}
	var ne net.Error // refused, reset, unreachable, server_connect_timeout
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// notePrimaryUnreachable records that a login to node failed with err (serverUnreachable)
// and asks the monitor for an early check.
func (s *Server) notePrimaryUnreachable(node int, err error) {
	fo := s.failoverOpts()
	now := time.Now()
	fresh := s.down.node.Load() != int64(node) || now.Sub(time.Unix(0, s.down.at.Load())) > time.Second
	s.down.gen.Store(s.clusterGen.Load())
	s.down.at.Store(now.UnixNano())
	s.down.node.Store(int64(node))
	if fo == nil {
		return
	}
	if fresh {
		s.log.Warn("primary unreachable: new transactions wait for it or for a new primary", "node", node, "err", err,
			"client_wait", fo.ClientWait)
	}
	if fo.CheckPrimary != nil {
		fo.CheckPrimary(node)
	}
}

// recentlyDown says whether node was found unreachable less than failoverRetry ago with no
// change of the cluster since: a session then waits instead of dialing it.
func (s *Server) recentlyDown(node int) bool {
	return s.down.node.Load() == int64(node) && s.down.gen.Load() == s.clusterGen.Load() &&
		time.Since(time.Unix(0, s.down.at.Load())) < failoverRetry
}

// noteReachable forgets that node was unreachable.
func (s *Server) noteReachable(node int) {
	s.down.node.CompareAndSwap(int64(node), -1)
}

// waitForPrimary is the goroutine engine's wait: it returns when the cluster changed, when
// failoverRetry passed, or with an error when deadline passed or ctx ended.
func (s *Server) waitForPrimary(ctx context.Context, sub <-chan struct{}, deadline time.Time) error {
	d := time.Until(deadline)
	if d <= 0 {
		return context.DeadlineExceeded
	}
	t := time.NewTimer(min(d, failoverRetry))
	defer t.Stop()
	select {
	case <-sub:
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	if !time.Now().Before(deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// retryableFirst says whether body, the ErrorResponse that is the first answer on a server
// connection just taken for a transaction, shows that the server ended the connection
// without running the transaction's first Query: a FATAL shutdown error (57P01 "unexpected
// postmaster exit" from a backend that was waiting for input, 57P02, 57P03) that came
// before any other answer. A backend that ran the Query would have answered it first, and
// one that committed and was then told to end sends a WARNING before its FATAL. The Query
// can then go to another connection: it has not run.
func retryableFirst(body []byte) bool {
	pe := decodeServerError(body)
	if pe.Severity != "FATAL" {
		return false
	}
	switch pe.Code {
	case "57P01", "57P02", "57P03":
		return true
	}
	return false
}

// errClosedUnread is why a node is taken for down after a retryableFirst answer.
var errClosedUnread = errors.New("the server closed a pooled connection before reading the query sent on it")

// resetBeforeRead says whether err, reading the first answer on a server connection just
// taken for a transaction, shows that the server closed the connection without reading the
// transaction's first Query: a connection reset soon after the Query was sent. A socket closed
// with unread data in it is reset instead of closed in order (and the reset discards what the
// server wrote before, such as its FATAL); a backend that read the Query and then ended (for
// example while it waited for a synchronous standby when its postmaster died) closes in
// order, which is an EOF here, and is never retried. The bound on the delay keeps out a reset
// from a host that rebooted long after it answered nothing.
func resetBeforeRead(err error, sinceSent time.Duration) bool {
	return err != nil && errors.Is(err, syscall.ECONNRESET) && sinceSent < time.Second
}

// unsentReset says whether err, writing a transaction's first query to a server connection
// just taken, shows that the server had closed it: then none of the query reached it.
func unsentReset(err error) bool {
	return err != nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE))
}

// errnoErr is errno as an error, nil for 0.
func errnoErr(errno syscall.Errno) error {
	if errno == 0 {
		return nil
	}
	return errno
}

// clientWaitError is what a transaction gets when no primary became reachable within
// failover.client_wait.
func (s *Server) clientWaitError(wait time.Duration) *pgError {
	return &pgError{Severity: "ERROR", Code: sqlstateCannotConnect,
		Message: fmt.Sprintf("no primary node became available within failover.client_wait (%s)", wait),
		Hint:    "see SHOW POOL_NODES and the failover monitor's log"}
}

// lostError is what a client gets when its server connection to node failed under it.
// With failover on and node the primary, it says that a failover is under way and that the
// transaction's outcome is unknown.
func (s *Server) lostError(node int, reader bool) *pgError {
	if s.failoverOpts() == nil || reader {
		return fatal(sqlstateConnFailure, "server connection lost")
	}
	name := fmt.Sprintf("node %d", node)
	if n, ok := s.cl.Node(node); ok {
		if n.Role != cluster.RolePrimary {
			return fatal(sqlstateConnFailure, "server connection lost")
		}
		name = fmt.Sprintf("node %d (%s)", node, n.Name)
	}
	return &pgError{Severity: "FATAL", Code: sqlstateConnFailure,
		Message: fmt.Sprintf("server connection lost: the primary, %s, went away; failover under way", name),
		Detail:  "The transaction that was running may or may not have committed.",
		Hint:    "Reconnect and retry: new transactions through the pool wait for the new primary (failover.client_wait)."}
}
