package pool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Hand-over between the engines: a session the event loop cannot run moves to a goroutine
// (demoteSession), and a server connection's socket moves between the loop's epoll set and
// Go's poller when a session of the other kind takes it (enterLoop, leaveLoop).

// demoteSession moves s to a goroutine (session.run) with what the loop has buffered,
// keeping its server connection when it holds one (a transaction is open).
func (l *evLoop) demoteSession(s *session) {
	ls := s.ev
	s.srv.handovers.Add(1)
	if len(ls.in) > 0 {
		s.srv.log.Debug("event loop: session moves to a goroutine", "client", s.addr, "message", string(ls.in[:1]), "buffered", len(ls.in))
	}
	_ = epollCtl(l.epfd, epEPOLL_CTL_DEL, ls.fd, nil)
	l.setEntry(ls.fd, loopEntry{})
	delete(l.sessions, s)
	f := os.NewFile(uintptr(ls.fd), "pgharbor-client")
	conn, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		s.srv.log.Warn("event loop: moving a session to a goroutine", "client", s.addr, "err", err)
		ls.closed = true
		if sc := l.detach(s); sc != nil {
			l.rollback(sc, s.txStatus)
		}
		l.forget(s)
		return
	}
	if sc := s.sc; sc != nil {
		sc.ev.ls = nil
		if err := sc.leaveLoop(); err != nil {
			l.detach(s)
			sc.pool.drop(sc)
		} else {
			s.mu.Lock()
			s.detached = make(chan struct{})
			s.mu.Unlock()
		}
	}
	in := append([]byte(nil), ls.in...)
	out := append([]byte(nil), ls.out...)
	ls.ended = true
	s.ev = nil
	s.mu.Lock()
	s.reader = false
	s.mu.Unlock()
	s.conn = conn
	s.mr = msgReader{r: bufio.NewReaderSize(io.MultiReader(bytes.NewReader(in), socketIO(conn)), bufSize)}
	s.cw = bufio.NewWriterSize(socketIO(conn), bufSize)
	s.inLoop.Store(false)
	ctx := l.ctx
	go func() {
		if len(out) > 0 {
			s.writeClient(out, true)
		}
		s.run(ctx)
	}()
}

var errNotSocket = errors.New("not a plain socket")

// enterLoop moves sc's socket from Go's poller to the loop's epoll set (loop thread, sc held).
func (l *evLoop) enterLoop(sc *serverConn) error {
	if sc.w.Buffered() > 0 {
		if err := sc.w.Flush(); err != nil {
			return err
		}
	}
	fd, err := dupSocket(sc.conn)
	if err != nil {
		return err
	}
	var part []byte
	if n := sc.mr.r.Buffered(); n > 0 {
		b, _ := sc.mr.r.Peek(n)
		part = append([]byte(nil), b...)
	}
	_ = sc.conn.Close()
	es := &loopServer{loop: l, sc: sc, fd: fd, part: part, rdReady: true}
	ev := epollEvent{Events: sockEvents, Fd: int32(fd)}
	if err := epollCtl(l.epfd, epEPOLL_CTL_ADD, fd, &ev); err != nil {
		_ = syscall.Close(fd)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	l.setEntry(fd, loopEntry{srv: es})
	sc.ev = es
	return nil
}

// leaveLoop gives sc's socket back to Go's poller (by whoever holds sc).
func (sc *serverConn) leaveLoop() error {
	es := sc.ev
	if es == nil {
		return nil
	}
	sc.ev = nil
	_ = epollCtl(es.loop.epfd, epEPOLL_CTL_DEL, es.fd, nil)
	f := os.NewFile(uintptr(es.fd), "pgharbor-server")
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return err
	}
	var r io.Reader = socketIO(c)
	if len(es.part) > 0 {
		r = io.MultiReader(bytes.NewReader(append([]byte(nil), es.part...)), r)
	}
	sc.conn = c
	sc.mr = msgReader{r: bufio.NewReaderSize(r, bufSize)}
	sc.w = bufio.NewWriterSize(socketIO(c), bufSize)
	if len(es.out) > 0 {
		_, _ = sc.w.Write(es.out)
	}
	return nil
}

// closeLoop closes a server connection the loop owns (sc.close): a Terminate, then the fd.
func (sc *serverConn) closeLoop() {
	es := sc.ev
	_, _ = rawWrite(es.fd, []byte{'X', 0, 0, 0, 4})
	_ = syscall.Close(es.fd) // its only reference: this also takes it out of the epoll set
}

// aliveLoop is alive for a connection the loop owns.
func (sc *serverConn) aliveLoop() bool {
	es := sc.ev
	if len(es.part) > 0 || es.rem > 0 {
		return false
	}
	return aliveFD(es.fd)
}

// aliveFD says whether a socket neither has data nor is closed, without waiting.
func aliveFD(fd int) bool {
	var b [1]byte
	_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno == syscall.EAGAIN
}

// dupSocket returns a close-on-exec duplicate of a plain socket's descriptor (the socket
// stays non-blocking); errNotSocket for TLS and other wrapped connections.
func dupSocket(conn net.Conn) (int, error) {
	scn, ok := conn.(syscall.Conn)
	if !ok {
		return -1, errNotSocket
	}
	rc, err := scn.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_DUPFD_CLOEXEC, 0)
		nfd, errno = int(r), e
	}); err != nil {
		return -1, err
	}
	if errno != 0 {
		return -1, os.NewSyscallError("fcntl", errno)
	}
	return nfd, nil
}
