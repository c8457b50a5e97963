package pool

import (
	"syscall"
)

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
		l.ahead = append(l.ahead, ringRead{fd: int(ev.Fd), buf: l.aheadBuf[k*aheadSize : (k+1)*aheadSize]})
		l.aheadEv = append(l.aheadEv, i)
	}
	if len(l.ahead) < 2 {
		return
	}
	l.srv.ringReads.Add(int64(len(l.ahead)))
	if err := l.ring.read(l.ahead); err != nil {
		// A read submitted and not done may still be queued in the kernel: closing the
		// ring cancels it, its buffer (aheadBuf, still referenced by l) is never used
		// again, and its socket's session ends below, its data perhaps lost.
		l.srv.log.Warn("event loop: reading through io_uring stopped; reading socket by socket", "err", err)
		l.ring.close()
		l.ring = nil
	}
	for k := range l.ahead {
		l.took(l.aheadEv[k], &l.ahead[k])
		l.ahead[k] = ringRead{}
	}
}

// took applies read rd, made for event i, to its socket's state.
func (l *evLoop) took(i int, rd *ringRead) {
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
