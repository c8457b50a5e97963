package pool

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// loopbackPair returns the dialled and the accepted end of a loopback TCP connection.
func loopbackPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ln.Accept()
	if err != nil {
		c1.Close()
		t.Fatal(err)
	}
	return c1, c2
}

// socketFDs returns the two ends of a loopback TCP connection as non-blocking descriptors
// of their own (closed with the test).
func socketFDs(t *testing.T) (int, int) {
	t.Helper()
	c1, c2 := loopbackPair(t)
	fds := make([]int, 2)
	for i, c := range []net.Conn{c1, c2} {
		fd, err := dupSocket(c)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		fds[i] = fd
		t.Cleanup(func() { _ = syscall.Close(fd) })
	}
	return fds[0], fds[1]
}

// The loop's socket calls (recvfrom/sendto): data both ways, EAGAIN on an empty socket
// instead of blocking, end of stream when the peer closed, and a write to a reset connection
// fails with an error rather than a signal.
func TestRawSocketCallsOfTheEventLoop(t *testing.T) {
	a, b := socketFDs(t)
	buf := make([]byte, 64)
	if _, errno := rawRead(b, buf); errno != syscall.EAGAIN {
		t.Fatalf("read of an empty socket: errno %v, want EAGAIN", errno)
	}
	msg := []byte("Q\x00\x00\x00\x0dSELECT 1\x00")
	if n, errno := rawWrite(a, msg); errno != 0 || n != len(msg) {
		t.Fatalf("write: %d, %v", n, errno)
	}
	deadline := time.Now().Add(5 * time.Second)
	var got []byte
	for len(got) < len(msg) && time.Now().Before(deadline) {
		n, errno := rawRead(b, buf)
		if errno == syscall.EAGAIN {
			time.Sleep(time.Millisecond)
			continue
		}
		if errno != 0 {
			t.Fatalf("read: %v", errno)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != string(msg) {
		t.Fatalf("read %q, want %q", got, msg)
	}

	// rawSocket (the goroutine engine's reads and writes) over the same calls
	cc, sc := loopbackPair(t)
	defer cc.Close()
	defer sc.Close()
	rw, ok := socketIO(cc).(*rawSocket)
	if !ok {
		t.Fatalf("socketIO of a TCP connection is %T, want *rawSocket", socketIO(cc))
	}
	if _, err := rw.Write(msg); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(msg))
	if _, err := io.ReadFull(sc, got); err != nil || string(got) != string(msg) {
		t.Fatalf("peer read %q, %v", got, err)
	}
	if _, err := sc.Write([]byte("Z\x00\x00\x00\x05I")); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 6)
	if _, err := io.ReadFull(rw, got); err != nil || string(got) != "Z\x00\x00\x00\x05I" {
		t.Fatalf("rawSocket read %q, %v", got, err)
	}
	_ = sc.Close()
	if _, err := rw.Read(got); !errors.Is(err, io.EOF) {
		t.Fatalf("read after the peer closed: %v, want EOF", err)
	}

	// the peer resets the connection (SO_LINGER 0): reads and writes get errors
	if err := syscall.SetsockoptLinger(b, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0}); err != nil {
		t.Fatal(err)
	}
	_ = syscall.Close(b)
	var errno syscall.Errno
	for i := 0; i < 100 && errno == 0; i++ {
		_, errno = rawWrite(a, msg)
		time.Sleep(time.Millisecond)
	}
	if errno != syscall.EPIPE && errno != syscall.ECONNRESET {
		t.Fatalf("write to a reset connection: errno %v, want EPIPE or ECONNRESET", errno)
	}
}

// newWaitLoop is an evLoop with only what wait needs: an epoll set and the event array.
func newWaitLoop(t *testing.T) *evLoop {
	t.Helper()
	epfd, err := epollCreate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(epfd) })
	return &evLoop{srv: &Server{log: slog.New(slog.DiscardHandler)}, epfd: epfd, events: make([]epollEvent, 8)}
}

// The loop's wait ends no later than its next pass through Go's scheduler is due (it then
// waits again), and returns at once when an event is ready; with its short waits holding the
// P (raw epoll_pwait) and without (GOMAXPROCS=1).
func TestLoopWaitEndsWhenTheSchedulerPassIsDue(t *testing.T) {
	for _, holdP := range []bool{true, false} {
		t.Run(map[bool]string{true: "HoldingTheP", false: "ThroughTheScheduler"}[holdP], func(t *testing.T) {
			l := newWaitLoop(t)
			l.holdP = holdP
			testLoopWait(t, l)
		})
	}
}

// waitPastSignals is l.wait, again while a signal interrupts it (the Go runtime preempts
// with SIGURG; the loop itself treats EINTR as an empty wait), within a pass's time.
func (l *evLoop) waitPastSignals(timeout int, start time.Time) (int, error) {
	n, err := l.wait(timeout)
	for errors.Is(err, syscall.EINTR) && time.Since(start) < loopYield {
		n, err = l.wait(timeout)
	}
	return n, err
}

func testLoopWait(t *testing.T, l *evLoop) {
	// the pass is due in 2 ms: a wait of up to 100 ms must return by then, empty
	l.lastYield = time.Now().Add(-loopYield + 2*time.Millisecond)
	start := time.Now()
	n, err := l.waitPastSignals(100, start)
	if took := time.Since(start); err != nil || n != 0 || took > loopYield {
		t.Fatalf("wait with the pass due in 2 ms: %d events, err %v, took %v (want 0, nil, < %v)", n, err, took, loopYield)
	}
	// the pass is overdue: no blocking at all
	l.lastYield = time.Now().Add(-2 * loopYield)
	start = time.Now()
	if n, err := l.waitPastSignals(100, start); err != nil || n != 0 || time.Since(start) > loopYield/2 {
		t.Fatalf("wait with the pass overdue: %d events, err %v, took %v", n, err, time.Since(start))
	}

	a, b := socketFDs(t)
	ev := epollEvent{Events: sockEvents, Fd: int32(b)}
	if err := epollCtl(l.epfd, epEPOLL_CTL_ADD, b, &ev); err != nil {
		t.Fatal(err)
	}
	if _, errno := rawWrite(a, []byte("x")); errno != 0 {
		t.Fatal(errno)
	}
	l.lastYield = time.Now()
	start = time.Now()
	n, err = l.wait(100)
	if err != nil || n != 1 || l.events[0].Fd != int32(b) || time.Since(start) > loopYield {
		t.Fatalf("wait with data ready: %d events (fd %d), err %v, took %v; want fd %d at once", n, l.events[0].Fd, err, time.Since(start), b)
	}
}

// batchThread puts the calling thread under SCHED_BATCH, and calling it again on such a
// thread changes nothing.
func TestBatchThreadSetsTheCallingThreadsPolicy(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread, now SCHED_BATCH, ends with the goroutine
		l := &evLoop{srv: &Server{log: slog.New(slog.DiscardHandler)}}
		for i := 0; i < 2; i++ {
			l.batchThread()
			if l.noBatch {
				done <- errors.New("SCHED_BATCH could not be set")
				return
			}
			p, _, errno := syscall.RawSyscall(syscall.SYS_SCHED_GETSCHEDULER, 0, 0, 0)
			if errno != 0 || p != schedBatch {
				done <- errors.New("the thread's policy is not SCHED_BATCH")
				return
			}
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
