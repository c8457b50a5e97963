//go:build !linux

package pool

import (
	"errors"
	"runtime"
	"syscall"
	"unsafe"
)

// Without epoll the event loop cannot start: the pool runs every session on its goroutine
// (io_engine goroutines), which is what operators running the pool elsewhere than Linux get.

type epollEvent struct {
	Events uint32
	Fd     int32
	Pad    int32
}

const (
	epEPOLLIN       = 0x1
	epEPOLLOUT      = 0x4
	epEPOLLRDHUP    = 0x2000
	epEPOLLHUP      = 0x10
	epEPOLLERR      = 0x8
	epEPOLL_CTL_ADD = 1
	epEPOLL_CTL_DEL = 2
	epEPOLL_CTL_MOD = 3
)

// haveEventLoop says whether io_engine epoll can run here.
const haveEventLoop = false

var errNoEpoll = errors.New("the event loop needs Linux's epoll (" + runtime.GOOS + " has none): the pool uses io_engine goroutines")

func epollCreate() (int, error)                     { return -1, errNoEpoll }
func epollCtl(int, int, int, *epollEvent) error     { return errNoEpoll }
func epollWait(int, []epollEvent, int) (int, error) { return 0, errNoEpoll }
func eventFD() (int, error)                         { return -1, errNoEpoll }
func setSchedBatch() error                          { return errNoEpoll }

func epollWaitRaw(int, []epollEvent, int) (int, error) { return 0, errNoEpoll }

func recv(fd uintptr, p []byte) (uintptr, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return n, errno
}

func send(fd uintptr, p []byte) (uintptr, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return n, errno
}

// Without io_uring the loop makes one system call per socket.
type sockRing struct{}

type ringOp struct {
	send bool
	fd   int
	buf  []byte
	res  int32
	done bool
	lost bool
}

var errNoRing = errors.New("io_uring needs Linux")

func newSockRing(uint32) (*sockRing, error) { return nil, errNoRing }
func (*sockRing) do([]ringOp) error         { return errNoRing }
func (*sockRing) close()                    {}
