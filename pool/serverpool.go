package pool

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// poolKey names one server pool: a node, a server database and a server user.
type poolKey struct {
	nodeID int
	host   string
	port   int
	db     string
	user   string
	// clientDB is the database name clients use (the pool's name in SHOW POOLS).
	clientDB string
}

// serverPool holds the server connections of one poolKey. Safe for concurrent use.
type serverPool struct {
	srv *Server
	key poolKey

	mu      sync.Mutex
	idle    []*serverConn // LIFO: the most recently used first (warm caches)
	all     map[*serverConn]struct{}
	opening int
	waiters waitQueue // a nil handed over means "capacity freed, try again"
	size    int
	minSize int

	stats poolStats
}

// poolStats are cumulative counters for SHOW STATS and /metrics.
type poolStats struct {
	xacts, queries        atomic.Int64
	xactTime, queryTime   atomic.Int64 // nanoseconds
	waits, waitTime       atomic.Int64 // acquisitions that waited, and how long in total
	loginErrors, timeouts atomic.Int64
}

var errPoolClosed = errors.New("pool is shutting down")

// tryIdle returns an idle connection without waiting, or nil; now is the current time (the
// event loop passes the time of its batch rather than read the clock again).
func (p *serverPool) tryIdle(now time.Time) *serverConn {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 || p.size < 0 {
			p.mu.Unlock()
			return nil
		}
		sc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		sc.active = true
		p.mu.Unlock()
		if !p.reusable(sc, now) {
			p.drop(sc)
			continue
		}
		return sc
	}
}

// reusable says whether an idle connection just taken may be used: not closed by the server
// while idle (pg_terminate_backend, idle_session_timeout, a restart), so that no client
// gets an error for a failure that happened before it came. The event loop sees a closed
// socket of its own as it happens (hup); any other connection is probed without waiting
// (a non-blocking peek), and one the loop owns also when it sat idle past
// server_check_delay.
func (p *serverPool) reusable(sc *serverConn, now time.Time) bool {
	if sc.ev != nil {
		if sc.ev.hup.Load() {
			return false
		}
		d := p.srv.config().ServerCheckDelay
		return d <= 0 || now.Sub(sc.lastUsed) <= d || sc.alive()
	}
	return sc.alive()
}

// acquire returns a server connection, opening one when the pool is below its size, or
// waiting (FIFO) for one to be released until ctx is done.
func (p *serverPool) acquire(ctx context.Context) (*serverConn, error) {
	return p.acquireWait(ctx, nil, 0)
}

// waitSlot is what a session reuses for every wait on a pool: the channel a released
// connection is handed over on and the query_wait_timeout timer, so that waiting (most
// transactions when clients outnumber server connections) makes no context, channel or
// timer. The channel is always empty when acquireWait returns.
type waitSlot struct {
	ch    chan *serverConn
	timer *time.Timer
}

// acquireWait is acquire with the waiting bounded by timeout (none when 0) instead of a
// deadline in ctx, using w's channel and timer (fresh ones when w is nil).
func (p *serverPool) acquireWait(ctx context.Context, w *waitSlot, timeout time.Duration) (*serverConn, error) {
	var expired <-chan time.Time
	armed := false
	defer func() {
		if armed {
			w.timer.Stop()
		}
	}()
	waited := false
	start := time.Now()
	defer func() {
		if waited {
			p.stats.waits.Add(1)
			p.stats.waitTime.Add(int64(time.Since(start)))
		}
	}()
	for {
		p.mu.Lock()
		if p.size < 0 {
			p.mu.Unlock()
			return nil, errPoolClosed
		}
		if n := len(p.idle); n > 0 {
			sc := p.idle[n-1]
			p.idle = p.idle[:n-1]
			sc.active = true
			p.mu.Unlock()
			if !p.reusable(sc, time.Now()) {
				p.drop(sc)
				continue
			}
			return sc, nil
		}
		if len(p.all)+p.opening < p.size {
			p.opening++
			creds := p.srv.credsFor(p.key.user)
			p.mu.Unlock()
			octx, cancel := ctx, context.CancelFunc(nil)
			if timeout > 0 { // the login counts against query_wait_timeout too
				octx, cancel = context.WithDeadline(ctx, start.Add(timeout))
			}
			sc, err := p.open(octx, creds)
			if cancel != nil {
				cancel()
			}
			p.mu.Lock()
			p.opening--
			if err != nil {
				p.wakeOneLocked()
				p.mu.Unlock()
				p.stats.loginErrors.Add(1)
				return nil, err
			}
			sc.active = true
			p.all[sc] = struct{}{}
			p.mu.Unlock()
			return sc, nil
		}
		var ch chan *serverConn
		if w != nil {
			ch = w.ch
		} else {
			ch = make(chan *serverConn, 1)
		}
		p.waiters.push(waiter{ch: ch})
		p.mu.Unlock()
		waited = true
		if timeout > 0 && !armed {
			if w == nil {
				w = &waitSlot{}
			}
			if w.timer == nil {
				w.timer = time.NewTimer(timeout)
			} else {
				w.timer.Reset(timeout)
			}
			armed, expired = true, w.timer.C
		}
		var timedOut bool
		select {
		case sc := <-ch:
			if sc == nil {
				continue
			}
			return sc, nil
		case <-ctx.Done():
		case <-expired:
			timedOut = true
		}
		{
			p.mu.Lock()
			found := p.waiters.remove(func(w waiter) bool { return w.ch == ch })
			p.mu.Unlock()
			if !found { // a connection (or a wake-up) is on its way: pass it on
				if sc := <-ch; sc != nil {
					p.release(sc)
				} else {
					p.mu.Lock()
					p.wakeOneLocked()
					p.mu.Unlock()
				}
			}
			p.stats.timeouts.Add(1)
			if timedOut {
				armed = false // fired: nothing to stop
				return nil, context.DeadlineExceeded
			}
			return nil, ctx.Err()
		}
	}
}

func (p *serverPool) open(ctx context.Context, creds serverCreds) (*serverConn, error) {
	cfg := p.srv.config()
	ctx, cancel := context.WithTimeout(ctx, cfg.ServerConnectTimeout)
	defer cancel()
	sc, err := dialServer(ctx, cfg, p.key.host, p.key.port, p.key.db, creds)
	if err != nil {
		return nil, err
	}
	sc.pool = p
	sc.id = p.srv.nextID.Add(1)
	sc.lastUsed = time.Now()
	return sc, nil
}

// waiter is one entry of a pool's wait queue: a goroutine session's channel, or a session
// of the event loop, which gets the connection (or the wake-up) through the loop's inbox.
type waiter struct {
	ch   chan *serverConn
	sess *session
}

// waitQueue is a pool's wait queue, first in first out. It reuses its slice: under a steady
// queue (more clients than server connections) taking from the front and adding at the back
// allocate nothing, where reslicing a plain slice from the front would reallocate it again
// and again.
type waitQueue struct {
	buf  []waiter
	head int // buf[:head] were taken
}

func (q *waitQueue) len() int { return len(q.buf) - q.head }

func (q *waitQueue) push(w waiter) {
	if q.head > 0 && len(q.buf) == cap(q.buf) {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, w)
}

// pop takes the first waiter.
func (q *waitQueue) pop() (waiter, bool) {
	if q.head == len(q.buf) {
		return waiter{}, false
	}
	w := q.buf[q.head]
	q.buf[q.head] = waiter{} // the session or channel is no longer held here
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
	return w, true
}

// remove takes out the first waiter match accepts; false when there is none.
func (q *waitQueue) remove(match func(waiter) bool) bool {
	for i := q.head; i < len(q.buf); i++ {
		if match(q.buf[i]) {
			copy(q.buf[i:], q.buf[i+1:])
			q.buf[len(q.buf)-1] = waiter{}
			q.buf = q.buf[:len(q.buf)-1]
			if q.head == len(q.buf) {
				q.buf, q.head = q.buf[:0], 0
			}
			return true
		}
	}
	return false
}

// drain takes every waiter, in order.
func (q *waitQueue) drain() []waiter {
	out := slices.Clone(q.buf[q.head:])
	*q = waitQueue{}
	return out
}

// hand gives w a released connection, or nil for "capacity freed, try again". Neither way
// blocks: a waiter's channel has room for one, and the loop's inbox is a slice.
func (w waiter) hand(sc *serverConn) {
	if w.sess != nil {
		w.sess.srv.loop.post(loopMsg{kind: msgGrant, sess: w.sess, sc: sc})
		return
	}
	w.ch <- sc
}

// wakeOneLocked tells the first waiter that capacity was freed.
func (p *serverPool) wakeOneLocked() {
	if w, ok := p.waiters.pop(); ok {
		w.hand(nil)
	}
}

// unwait removes the event-loop session sess from the wait queue; false when it was not
// there (a connection or a wake-up is on its way to it through the loop's inbox).
func (p *serverPool) unwait(sess *session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiters.remove(func(w waiter) bool { return w.sess == sess })
}

// release returns a clean (ReadyForQuery idle) connection: to the first waiter, or idle.
func (p *serverPool) release(sc *serverConn) {
	p.releaseAt(sc, time.Now())
}

// releaseAt is release with the current time given (the event loop's batch time).
func (p *serverPool) releaseAt(sc *serverConn, now time.Time) {
	if sc.needsReset() {
		// every path resets such a connection first (serverConn.cleanUp): this one did
		// not, and the connection must not reach another client as it is
		p.srv.log.Warn("closing a server connection that was not reset", "pool", p.name())
		p.drop(sc)
		return
	}
	cfg := p.srv.config()
	if lt := positive(cfg.ServerLifetime); lt > 0 && now.Sub(sc.created) > lt {
		p.drop(sc)
		return
	}
	usable := p.srv.nodeUsable(p.key.nodeID)
	p.mu.Lock()
	sc.client = nil
	sc.nPrepared = len(sc.prepared)
	if p.size < 0 || !usable {
		p.mu.Unlock()
		p.drop(sc)
		return
	}
	if w, ok := p.waiters.pop(); ok {
		p.mu.Unlock()
		w.hand(sc)
		return
	}
	sc.active = false
	sc.lastUsed = now
	p.idle = append(p.idle, sc)
	p.mu.Unlock()
}

// drop closes a connection that must not be reused and frees its slot.
func (p *serverPool) drop(sc *serverConn) {
	p.mu.Lock()
	delete(p.all, sc)
	for i, c := range p.idle {
		if c == sc {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			break
		}
	}
	p.wakeOneLocked()
	p.mu.Unlock()
	sc.close()
}

// maintain closes idle connections past server_idle_timeout (above min_pool_size) or
// server_lifetime, and opens connections up to min_pool_size.
func (p *serverPool) maintain(ctx context.Context) {
	cfg := p.srv.config()
	idleTO, life := positive(cfg.ServerIdleTimeout), positive(cfg.ServerLifetime)
	now := time.Now()
	var victims []*serverConn
	usable := p.srv.nodeUsable(p.key.nodeID)
	p.mu.Lock()
	keep := p.idle[:0]
	total := len(p.all)
	for _, sc := range p.idle { // oldest-used first
		expired := (idleTO > 0 && now.Sub(sc.lastUsed) > idleTO && total > p.minSize) || (life > 0 && now.Sub(sc.created) > life) ||
			(sc.ev != nil && sc.ev.hup.Load())
		if expired || !usable {
			victims = append(victims, sc)
			delete(p.all, sc)
			total--
			continue
		}
		keep = append(keep, sc)
	}
	p.idle = keep
	missing := 0
	if usable && p.size > 0 {
		missing = p.minSize - (len(p.all) + p.opening)
	}
	p.opening += max(missing, 0)
	p.mu.Unlock()
	creds := p.srv.credsFor(p.key.user)
	for _, sc := range victims {
		sc.close()
	}
	for i := 0; i < missing; i++ {
		sc, err := p.open(ctx, creds)
		p.mu.Lock()
		p.opening--
		if err == nil {
			p.all[sc] = struct{}{}
			sc.lastUsed = time.Now()
			p.idle = append([]*serverConn{sc}, p.idle...)
			p.wakeOneLocked()
		}
		p.mu.Unlock()
		if err != nil {
			p.srv.log.Warn("min_pool_size: open server connection", "pool", p.name(), "err", err)
		}
	}
}

// closeAll closes every idle connection and marks the pool closed; active ones are
// dropped when released.
func (p *serverPool) closeAll() {
	p.mu.Lock()
	p.size = -1
	idle := p.idle
	p.idle = nil
	for _, sc := range idle {
		delete(p.all, sc)
	}
	waiters := p.waiters.drain()
	p.mu.Unlock()
	for _, w := range waiters {
		w.hand(nil)
	}
	for _, sc := range idle {
		sc.close()
	}
}

func (p *serverPool) name() string {
	return fmt.Sprintf("%s/%s@%s:%d", p.key.clientDB, p.key.user, p.key.host, p.key.port)
}

// counts returns (active, idle, opening, waiting).
func (p *serverPool) counts() (int, int, int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.all) - len(p.idle), len(p.idle), p.opening, p.waiters.len()
}

// Results of acquireLoop.
const (
	acqGot     = iota // a connection, returned
	acqPending        // queued, or a login started: the loop's inbox gets the outcome
	acqClosed         // the pool is shutting down
)

// acquireLoop is acquire for a session of the event loop, which must not block: it returns
// an idle connection, or starts opening one on a goroutine, or queues the session. The
// outcome of the last two reaches the session through the loop's inbox (msgGrant).
func (p *serverPool) acquireLoop(sess *session, now time.Time) (*serverConn, int) {
	if sc := p.tryIdle(now); sc != nil {
		return sc, acqGot
	}
	p.mu.Lock()
	if p.size < 0 {
		p.mu.Unlock()
		return nil, acqClosed
	}
	if len(p.idle) > 0 { // released since tryIdle looked
		p.mu.Unlock()
		return p.acquireLoop(sess, now)
	}
	if len(p.all)+p.opening < p.size {
		p.opening++
		creds := p.srv.credsFor(p.key.user)
		p.mu.Unlock()
		go func() {
			sc, err := p.open(context.Background(), creds)
			p.mu.Lock()
			p.opening--
			if err != nil {
				p.wakeOneLocked()
			} else {
				sc.active = true
				p.all[sc] = struct{}{}
			}
			p.mu.Unlock()
			p.srv.loop.post(loopMsg{kind: msgGrant, sess: sess, sc: sc, err: err})
		}()
		return nil, acqPending
	}
	p.waiters.push(waiter{sess: sess})
	p.mu.Unlock()
	return nil, acqPending
}
