package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The event loop runs the common transaction-mode session, a client on a plain TCP or unix
// socket, on one thread: simple queries, and the extended protocol with named prepared
// statements (rewritten as the goroutine engine does them, prepared.go). One epoll set
// holds every such client socket and the server connections they use, and one goroutine
// reads, forwards and writes with raw system calls. A session
// goroutine per client (session.run) costs a goroutine wake-up per message and a scheduler
// hand-off around the blocking ones, which made pgharbor use much more CPU per short
// transaction than PgBouncer's single-threaded libevent loop (figures: docs/pool.md,
// "Design measurements").
//
// With an io_uring (evbatch.go), the batch's reads are made together before its events are
// handled, and its writes together after: servers first, then clients. Without one, each
// read and write is its own system call, and an answer inside a transaction is written at
// once (the transaction may hold row locks until its client's next statement, and
// deferring it behind the batch's other system calls cost TPC-B throughput). Either way an
// answer that ends a transaction is written to its client after every event of the batch
// is handled (and the server connection it freed went to the next waiting client), so that
// the writes that wake clients (and get the loop preempted by them) come last and clients
// find several answers ready at once; an answer over loopOutHigh/4 is written as it comes
// (or at the batch's end).
//
// Anything else a session sends (SHOW POOL_NODES, DEALLOCATE, DISCARD, the extended
// protocol under statement-level load balancing, a message over loopMaxMsg) moves the
// session to a goroutine for good, at a point where no answer is outstanding (demote,
// counted in pgharbor_pool_loop_handovers_total); a server connection moves between the loop and the
// goroutines when a session of the other kind acquires it (enterLoop, leaveLoop). Waiting
// for a server connection, opening one and rolling back after a client left happen off the
// loop thread or in the pool's wait queue, never blocking the loop.
const (
	loopReadSize = 64 << 10  // one read from a socket
	aheadSize    = 16 << 10  // one read of readAhead's
	aheadMax     = 64        // reads in one readAhead
	loopMaxMsg   = 256 << 10 // a client message the loop handles whole
	loopOutHigh  = 256 << 10 // output held for a peer above which the loop stops reading the other side
	loopTick     = 100 * time.Millisecond
	// loopYield bounds the time between the loop goroutine's passes through the Go
	// scheduler (see run). Below the runtime's 10 ms preemption threshold with room for a
	// pass of the loop; each pass wakes another thread and puts one to sleep (futex calls
	// and context switches), so passing less often costs less CPU per transaction.
	loopYield = 8 * time.Millisecond
)

// epoll flags: edge-triggered, for reading and writing (as Go's own poller registers sockets).
const (
	epollET    = 1 << 31
	sockEvents = epEPOLLIN | epEPOLLRDHUP | epollET
	outEvents  = sockEvents | epEPOLLOUT
)

type loopMsgKind int

const (
	msgAdd     loopMsgKind = iota // a new session: fd, and bytes already read in data
	msgGrant                      // a server connection for a waiting session (nil: try again; or err)
	msgKill                       // send data (a FATAL error) and end the session
	msgCluster                    // the cluster changed: sessions parked for a primary look again
	msgQuit                       // stop the loop
)

type loopMsg struct {
	kind loopMsgKind
	sess *session
	sc   *serverConn
	fd   int
	data []byte
	err  error
}

// evLoop is the event loop. Only post, stop and epfd are used from other goroutines.
type evLoop struct {
	srv  *Server
	ctx  context.Context
	epfd int
	efd  int // eventfd that wakes a sleeping loop

	mu     sync.Mutex
	inbox  []loopMsg
	asleep atomic.Bool
	done   chan struct{}

	// loop thread only:
	fds       []loopEntry // by descriptor (a slice: looked up on every event)
	sessions  map[*session]struct{}
	waiting   map[*session]struct{}
	parked    map[*session]struct{} // waiting for a reachable primary (failwait.go)
	flushList []*session
	buf       []byte
	events    []epollEvent
	now       time.Time
	nextTick  time.Time
	lastIdle  time.Time
	work      []loopMsg
	later     []*session // sessions with work left after their fair share
	lastYield time.Time
	noPark    bool // Go's poller cannot watch the epoll fd: wait only in epoll_wait
	noBatch   bool // SCHED_BATCH cannot be set: not tried again
	// holdP: the short waits keep the thread's P (epollWaitRaw). Not with a single P, which
	// every other goroutine (logins, goroutine sessions, timers) would wait for meanwhile.
	holdP bool
	// ring makes a batch's reads (readAhead) and its writes (flushQueued) in one system
	// call each; nil: one per socket.
	ring     *sockRing
	ahead    []ringOp
	aheadEv  []int // the event each read of ahead is for
	aheadBuf []byte
	lostBufs [][]byte // buffers of writes the ring lost (never reused)
	// batching: writes wait in srvQ and cliQ for the batch's end (flushQueued), where
	// they are made through the ring together
	batching bool
	srvQ     []*loopServer
	cliQ     []*session
	wops     []ringOp
	wto      []queuedWrite
}

type loopEntry struct {
	sess *session
	srv  *loopServer
}

// setEntry records what descriptor fd is; a zero entry forgets it.
func (l *evLoop) setEntry(fd int, e loopEntry) {
	if fd >= len(l.fds) {
		l.fds = append(l.fds, make([]loopEntry, fd+1-len(l.fds))...)
	}
	l.fds[fd] = e
}

// loopSess is a session's state in the loop (session.ev); loop thread only.
type loopSess struct {
	fd        int
	in        []byte // client bytes not handled yet
	out       []byte // answers not written to the client yet
	crem      int    // bytes of a client message still to forward as they come (COPY data)
	rdReady   bool   // the client socket may have data
	wrBlocked bool   // the last write to the client returned EAGAIN
	deferred  bool   // out waits for the end of the batch (the session is in flushList)
	queued    bool   // out is written at the end of the batch (the session is in cliQ)
	copyIn    bool   // the server waits for COPY data
	stalled   bool   // input held until no answer is outstanding (a busy read-only attachment)
	demote    bool   // hand the session to a goroutine once no answer is outstanding
	closed    bool   // the client socket is closed; the session may still wait for an answer
	ended     bool   // forgotten
	lastIn    time.Time
	want      attachReq   // what the waiting acquisition is for
	waitPool  *serverPool // the pool the session waits on (queued or a login under way)
	waitStart time.Time
	// Waiting for a reachable primary during a failover: parked holds the session's input
	// until the cluster changes or parkRetry; parkUntil is failover.client_wait's deadline
	// for the transaction (zero when it is not waiting).
	parked    bool
	parkRetry time.Time
	parkUntil time.Time
	// fresh: the attachment (failover on) has had no answer yet; retryQ holds the Query it
	// began with, sent again on another connection when the first answer says the server
	// closed the connection before reading it (retryableFirst).
	fresh  bool
	retryQ []byte
}

type attachReq struct {
	p        *serverPool
	node     int
	reader   bool
	readOnly bool
	retried  bool
}

// loopServer is a server connection's state while the loop owns its socket (serverConn.ev).
// Its fields are touched by the loop thread while a loop session holds the connection; an
// idle one belongs to its pool like any server connection.
type loopServer struct {
	loop      *evLoop
	sc        *serverConn
	fd        int
	ls        *session // the loop session holding it; loop thread only
	part      []byte   // the start of a message not complete yet
	rem       int      // bytes of a message still to pass to the client
	out       []byte   // bytes for the server not written yet
	rdReady   bool
	wrBlocked bool
	swallow   int // answers to the pool's own SET queries still to drop
	// ahead: part ends with bytes readAhead read that readServer has not handled yet;
	// aheadErr: the error readAhead's read returned, for readServer's next read.
	ahead    bool
	aheadErr syscall.Errno
	queued   bool // out is written at the end of the batch (in srvQ)
	// hup is set by the loop when the server closed the connection while it was idle.
	hup atomic.Bool
}

func newLoop(ctx context.Context, srv *Server) (*evLoop, error) {
	epfd, err := epollCreate()
	if err != nil {
		return nil, fmt.Errorf("event loop: epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil { // for Go's poller (wait)
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("event loop: %w", err)
	}
	efd, err := eventFD()
	if err != nil {
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("event loop: eventfd2: %w", err)
	}
	l := &evLoop{srv: srv, ctx: ctx, epfd: epfd, efd: int(efd), done: make(chan struct{}),
		sessions: map[*session]struct{}{}, waiting: map[*session]struct{}{},
		parked: map[*session]struct{}{}, buf: make([]byte, loopReadSize), events: make([]epollEvent, 128),
		holdP: runtime.GOMAXPROCS(0) > 1}
	ev := epollEvent{Events: epEPOLLIN | epollET, Fd: int32(efd)}
	if err := epollCtl(epfd, epEPOLL_CTL_ADD, int(efd), &ev); err != nil {
		_ = syscall.Close(epfd)
		_ = syscall.Close(int(efd))
		return nil, fmt.Errorf("event loop: epoll_ctl: %w", err)
	}
	if srv.config().IOUring != "off" {
		if r, err := newSockRing(aheadMax); err != nil {
			srv.log.Info("event loop: one system call per socket read and write (no io_uring)", "err", err)
		} else {
			l.ring, l.aheadBuf = r, make([]byte, aheadMax*aheadSize)
			srv.log.Info("event loop: a batch's socket reads and writes through io_uring")
		}
	}
	go l.run()
	return l, nil
}

// post hands m to the loop; it never blocks.
func (l *evLoop) post(m loopMsg) {
	l.mu.Lock()
	l.inbox = append(l.inbox, m)
	l.mu.Unlock()
	if l.asleep.Load() {
		one := uint64(1)
		_, _, _ = syscall.RawSyscall(syscall.SYS_WRITE, uintptr(l.efd), uintptr(unsafe.Pointer(&one)), 8)
	}
}

// stop ends the loop: sessions still in it are closed.
func (l *evLoop) stop() {
	l.post(loopMsg{kind: msgQuit})
	<-l.done
}

// adopt takes a freshly logged-in client into the loop; false when its socket cannot be
// (the caller then runs the session on its goroutine).
func (l *evLoop) adopt(s *session, conn net.Conn, buffered []byte) bool {
	fd, err := dupSocket(conn)
	if err != nil {
		return false
	}
	_ = conn.Close()
	s.inLoop.Store(true)
	l.post(loopMsg{kind: msgAdd, sess: s, fd: fd, data: buffered})
	return true
}

func (l *evLoop) run() {
	l.batchThread()
	defer close(l.done)
	timeout := 0
	for {
		n, err := l.wait(timeout)
		l.asleep.Store(false)
		if err != nil && !errors.Is(err, syscall.EINTR) {
			l.srv.log.Error("event loop: epoll_wait", "err", err)
			n = 0
		}
		l.now = time.Now()
		l.batching = l.ring != nil
		l.readAhead(n)
		for i := 0; i < n; i++ {
			l.event(l.events[i])
		}
		if len(l.later) > 0 {
			later := l.later
			l.later = nil
			for _, s := range later {
				if ls := s.ev; ls != nil && !ls.ended {
					l.pump(s)
				}
			}
		}
		if l.drain() {
			l.quit()
			return
		}
		for _, s := range l.flushList {
			if ls := s.ev; ls != nil && ls.deferred {
				ls.deferred = false
				if !ls.closed && !ls.wrBlocked && !ls.queued {
					l.writeClientSoon(s)
				}
			}
		}
		clear(l.flushList)
		l.flushList = l.flushList[:0]
		l.flushQueued()
		if !l.now.Before(l.nextTick) {
			l.tick()
			l.nextTick = l.now.Add(loopTick)
		}
		timeout = int(loopTick / time.Millisecond)
		if len(l.later) > 0 {
			timeout = 0
		}
		if timeout > 0 && l.now.Sub(l.lastYield) >= loopYield {
			// The goroutine never blocks in Go, so without this the runtime's monitor
			// (sysmon) would find it on the same scheduling tick for 10 ms, preempt it
			// with a signal, and, while it is in a system call, take its P away on every
			// pass of its own until the preemption lands, which costs more CPU than the
			// pass through the scheduler done here now and then, when the loop is about to
			// wait for events (the scheduler wakes another thread, which often takes the
			// goroutine over, a hundred times a second). A pass is not free on a busy CPU,
			// where the other thread has to be scheduled first; see docs/pool.md, "Design
			// measurements".
			runtime.Gosched()
			l.lastYield = l.now
			l.batchThread()
		}
		l.asleep.Store(true)
		l.mu.Lock()
		if len(l.inbox) > 0 {
			timeout = 0
		}
		l.mu.Unlock()
	}
}

// batchThread puts the thread the loop runs on under SCHED_BATCH: woken by an event, it
// does not preempt the task on the CPU (a backend, a client) but runs once that task yields
// or its slice ends, with the events that came meanwhile. On a busy machine it then handles
// more events per epoll_wait, sleeps and is preempted less, and wakes the others less
// often; it never waits longer than the scheduler's slice. Both the loop's CPU per
// transaction and the tps went the right way with it (docs/pool.md, "Design
// measurements"). The policy belongs to a thread, and the goroutine is not locked to one
// (a locked goroutine's every pass through the scheduler hands the P to another thread and
// back), so it is checked after every such pass; the few threads of the process that run
// the loop keep the policy.
func (l *evLoop) batchThread() {
	if l.noBatch {
		return
	}
	if err := setSchedBatch(); err != nil {
		l.srv.log.Debug("event loop: SCHED_BATCH not set", "err", err)
		l.noBatch = true
	}
}

// wait waits up to timeout ms for events. A wait that may block starts in epoll_wait for at
// most loopYield, and no later than the next pass through the scheduler is due (run); when
// nothing came in a whole loopYield, the goroutine parks in Go's poller, watching a
// duplicate of the epoll fd, until an event or the next tick (none while no session is in
// the loop). The short wait is a raw system call: the thread keeps its P, so Go's monitor
// (sysmon) does not hand the P to another thread when other goroutines keep the second P
// busy, and no other thread is woken to take it back when the wait ends (with a single P,
// GOMAXPROCS=1, the wait goes through the scheduler as any system call: holdP). Blocked there, the
// thread holds its P, so an idle pool would keep the monitor polling: an idle pool used CPU
// and woke hundreds of times a second, where an idle PgBouncer hardly wakes. Parked, the P
// is free and an idle pool is quiet. The duplicate is in Go's poller only while parked:
// kept there, every event would also wake the poller's thread. Under load the loop rarely
// waits loopYield, so the cost of a park (a few system calls and a goroutine wake-up)
// stays rare.
func (l *evLoop) wait(timeout int) (int, error) {
	short := min(timeout, int(loopYield/time.Millisecond))
	bounded := false
	if short > 0 {
		// rounded up: a wait of 0 ms until the pass is due would spin
		left := int((loopYield - time.Since(l.lastYield) + time.Millisecond - 1) / time.Millisecond)
		if left < short {
			short, bounded = max(left, 0), true
		}
	}
	var n int
	var err error
	if l.holdP {
		n, err = epollWaitRaw(l.epfd, l.events, short)
	} else {
		n, err = epollWait(l.epfd, l.events, short)
	}
	if n != 0 || timeout == short || bounded || l.noPark || (err != nil && !errors.Is(err, syscall.EINTR)) {
		// bounded: run passes through the scheduler and waits again
		return n, err
	}
	rest := timeout - short
	fd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(l.epfd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return epollWait(l.epfd, l.events, rest)
	}
	f := os.NewFile(fd, "pgharbor-event-loop")
	defer f.Close()
	var deadline time.Time
	if len(l.sessions) > 0 {
		deadline = time.Now().Add(time.Duration(rest) * time.Millisecond)
	}
	rc, err := f.SyscallConn()
	if err == nil {
		err = f.SetReadDeadline(deadline)
	}
	if err != nil { // not pollable (os.ErrNoDeadline)
		l.srv.log.Debug("event loop: waiting in epoll_wait only", "err", err)
		l.noPark = true
		return epollWait(l.epfd, l.events, rest)
	}
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		n, werr = epollWaitRaw(int(fd), l.events, 0)
		return n != 0 || (werr != nil && !errors.Is(werr, syscall.EINTR))
	})
	l.lastYield = time.Now() // parking passed through the scheduler
	l.batchThread()
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		l.srv.log.Debug("event loop: waiting in epoll_wait only", "err", err)
		l.noPark = true
	}
	return n, werr
}

// drain handles the inbox until it is empty; true on msgQuit.
func (l *evLoop) drain() bool {
	for {
		l.mu.Lock()
		l.work, l.inbox = l.inbox, l.work[:0]
		l.mu.Unlock()
		if len(l.work) == 0 {
			return false
		}
		for i, m := range l.work {
			switch m.kind {
			case msgQuit:
				return true
			case msgAdd:
				l.add(m.sess, m.fd, m.data)
			case msgGrant:
				l.grant(m.sess, m.sc, m.err)
			case msgCluster:
				l.unparkAll()
			case msgKill:
				if ls := m.sess.ev; ls != nil && !ls.closed {
					ls.out = append(ls.out, m.data...)
					l.writeClient(m.sess)
					l.clientGone(m.sess)
				}
			}
			l.work[i] = loopMsg{}
		}
	}
}

func (l *evLoop) add(s *session, fd int, buffered []byte) {
	ls := &loopSess{fd: fd, in: buffered, rdReady: true, lastIn: l.now}
	ev := epollEvent{Events: sockEvents, Fd: int32(fd)}
	if err := epollCtl(l.epfd, epEPOLL_CTL_ADD, fd, &ev); err != nil {
		_ = syscall.Close(fd)
		s.inLoop.Store(false)
		s.srv.forget(s)
		return
	}
	s.ev = ls
	l.setEntry(fd, loopEntry{sess: s})
	l.sessions[s] = struct{}{}
	l.pump(s)
}

func (l *evLoop) event(ev epollEvent) {
	if ev.Fd == int32(l.efd) {
		var b [8]byte
		_, _, _ = syscall.RawSyscall(syscall.SYS_READ, uintptr(l.efd), uintptr(unsafe.Pointer(&b[0])), 8)
		return
	}
	if ev.Fd < 0 || int(ev.Fd) >= len(l.fds) {
		return
	}
	e := l.fds[ev.Fd]
	in := ev.Events&(epEPOLLIN|epEPOLLHUP|epEPOLLERR|epEPOLLRDHUP) != 0
	out := ev.Events&(epEPOLLOUT|epEPOLLHUP|epEPOLLERR) != 0
	if s := e.sess; s != nil {
		ls := s.ev
		if ls == nil || ls.closed || ls.fd != int(ev.Fd) {
			return
		}
		ls.rdReady = ls.rdReady || in
		ls.wrBlocked = ls.wrBlocked && !out
		l.pump(s)
		return
	}
	es := e.srv
	if es == nil {
		return
	}
	if es.ls == nil {
		// idle: what it has is read by the next session that takes it; a server that
		// closed the connection (idle_session_timeout, pg_terminate_backend, a restart)
		// is noted so that no session gets it
		if ev.Events&(epEPOLLRDHUP|epEPOLLHUP|epEPOLLERR) != 0 {
			es.hup.Store(true)
		}
		return
	}
	es.rdReady = es.rdReady || in
	es.wrBlocked = es.wrBlocked && !out
	l.pump(es.ls)
}

// pump makes every step of progress s can make now.
func (l *evLoop) pump(s *session) {
	ls := s.ev
	for i := 0; i < 64; i++ {
		if ls.ended || s.ev != ls {
			return
		}
		progress := false
		if es := l.server(s); es != nil && es.readable() && len(ls.out) < loopOutHigh {
			l.readServer(s, es)
			progress = true
			continue
		}
		if !ls.closed && l.takesInput(s) && (ls.rdReady || len(ls.in) > 0) {
			progress = l.readClient(s)
		}
		if es := l.server(s); es != nil && len(es.out) > 0 && !es.wrBlocked && !es.queued {
			l.writeServer(s, es)
			progress = true
		}
		if !ls.closed && len(ls.out) > 0 && !ls.wrBlocked && !ls.queued && (!ls.deferred || len(ls.out) >= loopOutHigh/4) {
			before := len(ls.out)
			l.writeClientSoon(s)
			// the server may have been left unread while this was too much
			progress = progress || len(ls.out) < before
		}
		if ls.demote && !ls.closed && !ls.ended && l.quiet(s) {
			l.demoteSession(s)
			return
		}
		if !progress {
			return
		}
	}
	// more work than a fair share: come back after this batch's other events
	l.later = append(l.later, s)
}

// server returns the loop state of s's server connection, or nil.
func (l *evLoop) server(s *session) *loopServer {
	if s.sc == nil {
		return nil
	}
	return s.sc.ev
}

// quiet says whether no answer is outstanding and no message is half forwarded.
func (l *evLoop) quiet(s *session) bool {
	ls := s.ev
	return ls.waitPool == nil && ls.crem == 0 && !ls.copyIn && (s.sc == nil || s.pending == 0)
}

// takesInput says whether the loop may handle the next client message now.
func (l *evLoop) takesInput(s *session) bool {
	ls := s.ev
	if ls.stalled || ls.demote || ls.waitPool != nil || ls.parked {
		return false
	}
	es := l.server(s)
	return es == nil || len(es.out) < loopOutHigh
}

// writeServer writes es.out, at the batch's end when the loop batches writes.
func (l *evLoop) writeServer(s *session, es *loopServer) {
	if l.batching {
		es.queued = true
		l.srvQ = append(l.srvQ, es)
		return
	}
	before := len(es.out)
	l.wroteServer(s, es, before, l.flush(es.fd, &es.out, &es.wrBlocked))
}

// wroteServer handles the error of a write to s's server connection that began with
// before bytes to write.
func (l *evLoop) wroteServer(s *session, es *loopServer, before int, errno syscall.Errno) {
	if errno != 0 {
		if ls := s.ev; ls.fresh && len(es.out) == before && unsentReset(errno) {
			// the server closed the connection before the transaction's first query
			// reached it: nothing of it was written
			ls.fresh = false
			l.retryFirst(s)
			return
		}
		l.serverLost(s, os.NewSyscallError("write", errno))
	}
}

// writeClient writes ls.out now.
func (l *evLoop) writeClient(s *session) {
	ls := s.ev
	if errno := l.flush(ls.fd, &ls.out, &ls.wrBlocked); errno != 0 {
		l.clientGone(s)
	}
}

// writeClientSoon writes ls.out, at the batch's end when the loop batches writes.
func (l *evLoop) writeClientSoon(s *session) {
	if !l.batching {
		l.writeClient(s)
		return
	}
	s.ev.queued = true
	l.cliQ = append(l.cliQ, s)
}

// flush writes *out to fd and keeps what did not fit; a full socket sets *blocked and gets
// EPOLLOUT registered. It returns the error of a failed write.
func (l *evLoop) flush(fd int, out *[]byte, blocked *bool) syscall.Errno {
	n, errno := rawWrite(fd, *out)
	return l.wrote(fd, out, blocked, n, errno)
}

// wrote takes the n bytes a write to fd took from the start of *out; a write that stopped
// short (a full socket) sets *blocked and gets EPOLLOUT registered. It returns the error of
// a failed write.
func (l *evLoop) wrote(fd int, out *[]byte, blocked *bool, n int, errno syscall.Errno) syscall.Errno {
	b := *out
	b = b[:copy(b, b[n:])]
	switch {
	case errno == syscall.EAGAIN || (errno == 0 && len(b) > 0):
		*blocked = true
		l.wantOut(fd)
		errno = 0
	case len(b) == 0 && cap(b) > loopOutHigh:
		b = nil // a big answer passed: do not keep its buffer
	}
	*out = b
	return errno
}

// wantOut asks epoll to report fd writable too. Sockets are registered for input only: with
// EPOLLOUT, epoll would also report every ACK that frees send space. A socket that filled up
// once keeps EPOLLOUT (edge-triggered, it reports only changes).
func (l *evLoop) wantOut(fd int) {
	ev := epollEvent{Events: outEvents, Fd: int32(fd)}
	_ = epollCtl(l.epfd, epEPOLL_CTL_MOD, fd, &ev)
}

// tick runs the timeouts: query_wait_timeout for waiting sessions, client_idle_timeout.
func (l *evLoop) tick() {
	cfg := l.srv.config()
	if to := positive(cfg.QueryWaitTimeout); to > 0 {
		for s := range l.waiting {
			ls := s.ev
			if l.now.Sub(ls.waitStart) < to || !ls.waitPool.unwait(s) {
				continue
			}
			p := ls.waitPool
			p.stats.timeouts.Add(1)
			l.endWait(s)
			l.failQuery(s, &pgError{Severity: "ERROR", Code: sqlstateCannotConnect, Message: "query_wait_timeout: no server connection became free in time"})
			l.pump(s)
		}
	}
	for _, s := range l.parkedList() {
		ls := s.ev
		if !ls.parked {
			continue
		}
		switch {
		case !l.now.Before(ls.parkUntil):
			l.unpark(s)
			ls.parkUntil = time.Time{}
			l.failQuery(s, s.srv.clientWaitError(max(cfgWait(s.srv), 0)))
			l.pump(s)
		case !l.now.Before(ls.parkRetry):
			l.unpark(s)
			l.pump(s)
		}
	}
	// idle clients are looked for every quarter of the timeout (at most every second)
	if to := positive(cfg.ClientIdleTimeout); to > 0 && l.now.Sub(l.lastIdle) >= min(time.Second, to/4) {
		l.lastIdle = l.now
		for s := range l.sessions {
			ls := s.ev
			if !ls.closed && s.sc == nil && ls.waitPool == nil && len(ls.in) == 0 && l.now.Sub(ls.lastIn) > to {
				l.kill(s, &pgError{Severity: "FATAL", Code: sqlstateAdminShutdown, Message: "client_idle_timeout: closing idle connection"})
			}
		}
	}
}

// quit closes what is left at shutdown.
func (l *evLoop) quit() {
	for s := range l.sessions {
		ls := s.ev
		if !ls.closed {
			ls.closed = true
			_ = syscall.Close(ls.fd)
		}
		if sc := l.detach(s); sc != nil {
			sc.pool.drop(sc)
		}
		l.forget(s)
	}
	_ = syscall.Close(l.epfd)
	_ = syscall.Close(l.efd)
	if l.ring != nil {
		l.ring.close()
	}
}
