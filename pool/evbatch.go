package pool

import (
	"errors"
	"syscall"
)

var errRingLost = errors.New("io_uring: a socket operation did not complete during its submission")

// readAhead reads, in one system call through the loop's io_uring, every socket among the
// batch's first n events whose handling would begin with a read: a client whose input the
// loop takes now, a server connection a session holds whose client is not behind. The bytes
// go where the socket's own read would have put them (a client's in, a server connection's
// part for readServer), a read that emptied the socket clears its readiness, and an error
// is kept for the socket's next read, so the events are then handled as if each read had
// been made on its own: in the same order, with the same data. Without a ring, or with fewer
// than two such sockets, the reads stay one system call each.
func (l *evLoop) readAhead(n int) {
	if l.ring == nil || n < 2 {
		return
	}
	l.ahead, l.aheadEv = l.ahead[:0], l.aheadEv[:0]
	for i := 0; i < n && len(l.ahead) < aheadMax; i++ {
		ev := l.events[i]
		if ev.Events&epEPOLLIN == 0 || ev.Fd < 0 || int(ev.Fd) >= len(l.fds) || ev.Fd == int32(l.efd) {
			continue
		}
		switch e := l.fds[ev.Fd]; {
		case e.sess != nil:
			ls := e.sess.ev
			if ls == nil || ls.closed || ls.ended || ls.fd != int(ev.Fd) || !l.takesInput(e.sess) {
				continue
			}
		case e.srv != nil:
			es := e.srv
			if es.ls == nil || es.ahead || es.aheadErr != 0 || es.ls.ev == nil || len(es.ls.ev.out) >= loopOutHigh {
				continue
			}
		default:
			continue
		}
		k := len(l.ahead)
		l.ahead = append(l.ahead, ringOp{fd: int(ev.Fd), buf: l.aheadBuf[k*aheadSize : (k+1)*aheadSize]})
		l.aheadEv = append(l.aheadEv, i)
	}
	if len(l.ahead) < 2 {
		return
	}
	l.srv.ringRecvs.Add(int64(len(l.ahead)))
	if err := l.ring.do(l.ahead); err != nil {
		// A read submitted and not done may still be queued in the kernel: closing the
		// ring cancels it, its buffer (aheadBuf, still referenced by l) is never used
		// again, and its socket's session ends below, its data perhaps lost.
		l.srv.log.Warn("event loop: reading through io_uring stopped; reading socket by socket", "err", err)
		l.ring.close()
		l.ring = nil
	}
	for k := range l.ahead {
		l.took(l.aheadEv[k], &l.ahead[k])
		l.ahead[k] = ringOp{}
	}
}

// took applies read rd, made for event i, to its socket's state.
func (l *evLoop) took(i int, rd *ringOp) {
	ev := &l.events[i]
	e := l.fds[ev.Fd]
	// (a lost read's session ending may have ended another's: check the owner is still there)
	s := e.sess
	if s != nil && (s.ev == nil || s.ev.closed || s.ev.fd != rd.fd) {
		return
	}
	es := e.srv
	if s == nil && (es == nil || es.ls == nil) {
		return
	}
	if !rd.done {
		switch {
		case !rd.lost: // not submitted: the socket's own read makes it
		case s != nil:
			l.clientGone(s)
		default:
			l.serverLost(es.ls, errRingLost)
		}
		return
	}
	// a read that emptied the socket: the event asks for no other (unless the peer closed
	// or failed, which the socket's own read then reports)
	drained := rd.res == -int32(syscall.EAGAIN) || (rd.res > 0 && int(rd.res) < len(rd.buf))
	if drained && ev.Events&(epEPOLLHUP|epEPOLLERR|epEPOLLRDHUP) == 0 {
		ev.Events &^= epEPOLLIN
	}
	if s != nil {
		ls := s.ev
		if rd.res > 0 {
			ls.in = append(ls.in, rd.buf[:rd.res]...)
			ls.lastIn = l.now
		}
		if drained {
			ls.rdReady = false
		}
		return // the end or an error: the client's own read sees it again
	}
	switch {
	case rd.res > 0:
		es.part = append(es.part, rd.buf[:rd.res]...)
		es.ahead = true
	case rd.res < 0 && rd.res != -int32(syscall.EAGAIN):
		es.aheadErr = syscall.Errno(-rd.res)
	}
	if drained {
		es.rdReady = false
	}
}

// queuedWrite is a write of flushQueued's: to server connection es, held by session s, or
// (es nil) to s's client; before is how many bytes there were to write.
type queuedWrite struct {
	es     *loopServer
	s      *session
	before int
}

// flushQueued makes the writes the batch queued (writeServer, writeClientSoon) in one
// io_uring_enter: the servers' first, so that backends start on their queries before the
// clients are woken by their answers. A write that stopped short waits for EPOLLOUT as
// flush's do; a failed one ends its session as flush's callers do, once every write's
// bytes have been taken from its buffer. A session that has work left which no event will
// announce (input held while its server's buffer was full, a large answer read up to the
// limit) is pumped again right after the next, non-blocking, wait.
func (l *evLoop) flushQueued() {
	l.batching = false
	if len(l.srvQ) == 0 && len(l.cliQ) == 0 {
		return
	}
	ops, to := l.wops[:0], l.wto[:0]
	for _, es := range l.srvQ {
		if !es.queued {
			continue
		}
		es.queued = false
		s := es.ls
		if s == nil || s.ev == nil || s.ev.ended || len(es.out) == 0 || es.wrBlocked {
			continue // no longer the loop's to write (its next holder writes it), or nothing to write
		}
		ops = append(ops, ringOp{send: true, fd: es.fd, buf: es.out})
		to = append(to, queuedWrite{es: es, s: s, before: len(es.out)})
	}
	for _, s := range l.cliQ {
		ls := s.ev
		if ls == nil || !ls.queued {
			continue
		}
		ls.queued = false
		if ls.closed || ls.ended || len(ls.out) == 0 || ls.wrBlocked {
			continue
		}
		ops = append(ops, ringOp{send: true, fd: ls.fd, buf: ls.out})
		to = append(to, queuedWrite{s: s, before: len(ls.out)})
	}
	clear(l.srvQ)
	clear(l.cliQ)
	l.srvQ, l.cliQ = l.srvQ[:0], l.cliQ[:0]
	if len(ops) > 1 && l.ring != nil {
		l.srv.ringSends.Add(int64(len(ops)))
		if err := l.ring.do(ops); err != nil {
			l.srv.log.Warn("event loop: writing through io_uring stopped; writing socket by socket", "err", err)
			l.ring.close()
			l.ring = nil
		}
	}
	for k := range ops {
		op, q := &ops[k], &to[k]
		if op.lost {
			l.lostBufs = append(l.lostBufs, op.buf)
			continue
		}
		var n int
		var errno syscall.Errno
		switch {
		case !op.done: // not through the ring
			n, errno = rawWrite(op.fd, op.buf)
		case op.res >= 0:
			n = int(op.res)
		default:
			errno = syscall.Errno(-op.res)
		}
		if q.es != nil {
			errno = l.wrote(op.fd, &q.es.out, &q.es.wrBlocked, n, errno)
		} else {
			ls := q.s.ev
			errno = l.wrote(op.fd, &ls.out, &ls.wrBlocked, n, errno)
		}
		op.res = -int32(errno)
	}
	for k := range ops {
		op, q := &ops[k], &to[k]
		if q.es != nil {
			switch {
			case q.es.ls != q.s: // an earlier failure ended the session
			case op.lost:
				l.serverLost(q.s, errRingLost)
			case op.res != 0:
				l.wroteServer(q.s, q.es, q.before, syscall.Errno(-op.res))
			default:
				l.more(q.s)
			}
			continue
		}
		switch ls := q.s.ev; {
		case ls == nil || ls.closed || ls.ended:
		case op.lost || op.res != 0:
			l.clientGone(q.s)
		default:
			l.more(q.s)
		}
	}
	clear(ops)
	clear(to)
	l.wops, l.wto = ops[:0], to[:0]
}

// more puts s in later when it has work that no event will announce.
func (l *evLoop) more(s *session) {
	ls := s.ev
	if ls == nil || ls.ended || ls.closed {
		return
	}
	es := l.server(s)
	if (es != nil && es.readable() && len(ls.out) < loopOutHigh) ||
		(l.takesInput(s) && (ls.rdReady || len(ls.in) > 0)) ||
		(es != nil && len(es.out) > 0 && !es.wrBlocked) ||
		(len(ls.out) > 0 && !ls.wrBlocked && !ls.deferred) {
		l.later = append(l.later, s)
	}
}
