package pool

import (
	"io"
	"net"
	"os"
	"syscall"
)

// socketIO returns what the pool's buffered readers and writers use for conn: for a plain
// TCP or unix socket, a rawSocket; otherwise (TLS) conn itself.
func socketIO(conn net.Conn) io.ReadWriter {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return conn
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return conn
	}
	return &rawSocket{rc: rc}
}

// rawSocket reads and writes a socket with raw system calls inside the runtime's poller
// (RawConn), instead of through net.Conn's Read and Write. The socket is non-blocking, so a
// call never waits: it returns data, or EAGAIN and the poller parks the goroutine until the
// socket is ready, as net.Conn does. What it skips is the scheduler's bookkeeping around a
// system call: a loopback write that wakes the peer can take longer than the interval after
// which the runtime's monitor thread hands the goroutine's processor to another thread, and
// that hand-off, with the monitor polling often because it keeps finding such calls, cost
// more CPU than the writes themselves under load (docs/pool.md, "Design measurements").
// Deadlines and Close work as for the net.Conn (same poller descriptor).
type rawSocket struct {
	rc syscall.RawConn
}

func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n uintptr
	var errno syscall.Errno
	err := s.rc.Read(func(fd uintptr) bool {
		for {
			n, errno = recv(fd, p)
			switch errno {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			return true
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return int(n), nil
}

func (s *rawSocket) Write(p []byte) (int, error) {
	done := 0
	var errno syscall.Errno
	err := s.rc.Write(func(fd uintptr) bool {
		for done < len(p) {
			n, e := send(fd, p[done:])
			switch e {
			case 0:
				done += int(n)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err == nil && errno != 0 {
		err = os.NewSyscallError("write", errno)
	}
	return done, err
}

func rawRead(fd int, p []byte) (int, syscall.Errno) {
	for {
		n, errno := recv(uintptr(fd), p)
		if errno == syscall.EINTR {
			continue
		}
		return int(n), errno
	}
}

// rawWrite writes all of p unless the socket is full (EAGAIN, with the count written).
func rawWrite(fd int, p []byte) (int, syscall.Errno) {
	done := 0
	for done < len(p) {
		n, errno := send(uintptr(fd), p[done:])
		switch errno {
		case 0:
			done += int(n)
		case syscall.EINTR:
		default:
			return done, errno
		}
	}
	return done, 0
}
