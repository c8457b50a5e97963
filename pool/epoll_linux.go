package pool

import (
	"syscall"
	"unsafe"
)

// The event loop's system interface. Linux has epoll and eventfd; elsewhere (epoll_other.go)
// the loop cannot start and the pool runs every session on a goroutine.

type epollEvent = syscall.EpollEvent

const (
	epEPOLLIN       = syscall.EPOLLIN
	epEPOLLOUT      = syscall.EPOLLOUT
	epEPOLLRDHUP    = syscall.EPOLLRDHUP
	epEPOLLHUP      = syscall.EPOLLHUP
	epEPOLLERR      = syscall.EPOLLERR
	epEPOLL_CTL_ADD = syscall.EPOLL_CTL_ADD
	epEPOLL_CTL_DEL = syscall.EPOLL_CTL_DEL
	epEPOLL_CTL_MOD = syscall.EPOLL_CTL_MOD
)

// haveEventLoop says whether io_engine epoll can run here.
const haveEventLoop = true

func epollCreate() (int, error) { return syscall.EpollCreate1(syscall.EPOLL_CLOEXEC) }

func epollCtl(epfd, op, fd int, ev *epollEvent) error { return syscall.EpollCtl(epfd, op, fd, ev) }

func epollWait(epfd int, events []epollEvent, msec int) (int, error) {
	return syscall.EpollWait(epfd, events, msec)
}

// epollWaitRaw is epoll_wait (as epoll_pwait, which every Linux architecture has) without
// telling Go's scheduler: the thread keeps its P while it blocks, so the runtime's monitor
// neither hands the P to another thread nor wakes one to run it. Only for short waits: a
// goroutine blocked here holds a P, and stopping the world interrupts it with a signal.
func epollWaitRaw(epfd int, events []epollEvent, msec int) (int, error) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), uintptr(msec), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func eventFD() (int, error) {
	fd, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(fd), nil
}

// schedBatch is SCHED_BATCH (sched(7)), which package syscall does not name.
const schedBatch = 3

// setSchedBatch puts the calling thread under SCHED_BATCH unless it is already.
func setSchedBatch() error {
	if p, _, errno := syscall.RawSyscall(syscall.SYS_SCHED_GETSCHEDULER, 0, 0, 0); errno == 0 && p == schedBatch {
		return nil
	}
	param := int32(0)
	if _, _, errno := syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, 0, schedBatch, uintptr(unsafe.Pointer(&param))); errno != 0 {
		return errno
	}
	return nil
}

// recv and send are recvfrom(2) and sendto(2) rather than read and write: on a socket they
// skip the file layer's checks and notifications (vfs_read, vfs_write) that a profile of
// the event loop showed as a few percent of its CPU, as PgBouncer does. MSG_DONTWAIT keeps
// a call from blocking whatever the descriptor's mode; MSG_NOSIGNAL makes a write to a
// closed connection return EPIPE without raising SIGPIPE.
func recv(fd uintptr, p []byte) (uintptr, syscall.Errno) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		syscall.MSG_DONTWAIT, 0, 0)
	return n, errno
}

func send(fd uintptr, p []byte) (uintptr, syscall.Errno) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
	return n, errno
}
