package pool

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// An io_uring used only to make several socket reads or writes in one system call. The event
// loop's reads and writes are each a system call, and on machines where a system call's
// entry and exit cost far more than the copy it does (kernel page-table isolation on a
// virtual machine) those crossings were a large part of the pool's CPU per transaction.
// After epoll reports a batch of readable sockets, the loop reads them all with one
// io_uring_enter (readAhead), and it makes the batch's writes with another (flushQueued).
// Every operation is submitted with MSG_DONTWAIT, so the kernel does it during the submission
// and never queues it: when io_uring_enter returns, every one has completed and no buffer is
// left in the kernel's hands. A kernel without io_uring, or one that refuses it
// (io_uring_disabled, a seccomp filter), leaves the loop making one system call per socket.

const (
	sysIOUringSetup = 425 // the same number on every architecture (since Linux 5.1)
	sysIOUringEnter = 426

	uringOffSQRing = 0
	uringOffCQRing = 0x8000000
	uringOffSQEs   = 0x10000000

	uringFeatSingleMmap = 1 << 0
	uringOpSend         = 26
	uringOpRecv         = 27
)

type uringSQOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type uringCQOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  uringSQOffsets
	cqOff                                                                  uringCQOffsets
}

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad         uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// sockRing is an io_uring for batches of non-blocking socket reads and writes (loop thread
// only).
type sockRing struct {
	fd      int
	entries uint32
	ringMem []byte
	sqeMem  []byte
	cqMem   []byte // nil when the CQ ring shares ringMem

	sqTail  *uint32
	sqMask  uint32
	sqArray []uint32
	sqes    []uringSQE
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    []uringCQE
}

// ringOp is one read (recv) or write (send) of a batch: the descriptor, the bytes to read
// into or write, and what it returned (a count, or -errno).
type ringOp struct {
	send bool
	fd   int
	buf  []byte
	res  int32
	done bool // res is set
	lost bool // submitted and not done: the kernel may still use buf
}

func newSockRing(entries uint32) (*sockRing, error) {
	var p uringParams
	fd, _, errno := syscall.RawSyscall(sysIOUringSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &sockRing{fd: int(fd), entries: p.sqEntries} // the kernel opens it close-on-exec
	fail := func(err error) (*sockRing, error) {
		r.close()
		return nil, err
	}
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	single := p.features&uringFeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	if r.ringMem, err = syscall.Mmap(r.fd, uringOffSQRing, sqSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE); err != nil {
		return fail(fmt.Errorf("io_uring: mmap: %w", err))
	}
	cqMem := r.ringMem
	if !single {
		if r.cqMem, err = syscall.Mmap(r.fd, uringOffCQRing, cqSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE); err != nil {
			return fail(fmt.Errorf("io_uring: mmap: %w", err))
		}
		cqMem = r.cqMem
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(uringSQE{}))
	if r.sqeMem, err = syscall.Mmap(r.fd, uringOffSQEs, sqeSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE); err != nil {
		return fail(fmt.Errorf("io_uring: mmap: %w", err))
	}
	r.sqTail = (*uint32)(unsafe.Pointer(&r.ringMem[p.sqOff.tail]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&r.ringMem[p.sqOff.ringMask]))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&r.ringMem[p.sqOff.array])), p.sqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&cqMem[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&cqMem[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&cqMem[p.cqOff.ringMask]))
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&cqMem[p.cqOff.cqes])), p.cqEntries)
	if err := r.selfTest(); err != nil {
		return fail(err)
	}
	return r, nil
}

// selfTest reads an empty socket and one with data, and writes to one, through the ring:
// each must complete during the submission (the first with EAGAIN), or the ring is not used.
func (r *sockRing) selfTest() error {
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("io_uring self-test: %w", err)
	}
	defer syscall.Close(pair[0])
	defer syscall.Close(pair[1])
	if _, err := syscall.Write(pair[1], []byte("ring")); err != nil {
		return fmt.Errorf("io_uring self-test: %w", err)
	}
	var a, b [8]byte
	ops := []ringOp{{fd: pair[1], buf: a[:]}, {fd: pair[0], buf: b[:]}, {send: true, fd: pair[0], buf: []byte("back")}}
	if err := r.do(ops); err != nil {
		return err
	}
	if ops[0].res != -int32(syscall.EAGAIN) || ops[1].res != 4 || string(b[:4]) != "ring" || ops[2].res != 4 {
		return fmt.Errorf("io_uring self-test: operations returned %d, %d and %d", ops[0].res, ops[1].res, ops[2].res)
	}
	if n, err := syscall.Read(pair[1], a[:]); err != nil || string(a[:n]) != "back" {
		return fmt.Errorf("io_uring self-test: the write through the ring read back as %q (%v)", a[:max(n, 0)], err)
	}
	return nil
}

// do makes every operation of ops in io_uring_enter calls of at most the ring's entries
// each, and sets each one's res and done. On an error, an operation not done was either
// never submitted (its socket untouched) or is lost: queued in the kernel, where it may
// still read into or write from its buffer. The ring must then not be used again (close
// cancels what it queued) and the buffers of lost operations must never be reused.
func (r *sockRing) do(ops []ringOp) error {
	for i := range ops {
		ops[i].done, ops[i].lost = false, false
	}
	for len(ops) > 0 {
		k := min(len(ops), int(r.entries))
		if err := r.submit(ops[:k]); err != nil {
			return err
		}
		ops = ops[k:]
	}
	return nil
}

func (r *sockRing) submit(ops []ringOp) error {
	tail := *r.sqTail
	for i := range ops {
		op := &ops[i]
		idx := tail & r.sqMask
		sqe := uringSQE{opcode: uringOpRecv, fd: int32(op.fd), addr: uint64(uintptr(unsafe.Pointer(&op.buf[0]))),
			len: uint32(len(op.buf)), opFlags: syscall.MSG_DONTWAIT, userData: uint64(i)}
		if op.send {
			sqe.opcode, sqe.opFlags = uringOpSend, syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL
		}
		r.sqes[idx] = sqe
		r.sqArray[idx] = idx
		tail++
	}
	atomic.StoreUint32(r.sqTail, tail)
	want := len(ops)
	var err error
	submitted := 0
	for submitted < want {
		n, _, errno := syscall.RawSyscall6(sysIOUringEnter, uintptr(r.fd), uintptr(want-submitted), 0, 0, 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 || n == 0 {
			err = fmt.Errorf("io_uring_enter: %d of %d operations submitted: %w", submitted, want, errno)
			break
		}
		submitted += int(n)
	}
	head := *r.cqHead
	got := 0
	for ctail := atomic.LoadUint32(r.cqTail); head != ctail; head++ {
		c := r.cqes[head&r.cqMask]
		if c.userData < uint64(len(ops)) && !ops[c.userData].done {
			ops[c.userData].res, ops[c.userData].done = c.res, true
			got++
		}
	}
	atomic.StoreUint32(r.cqHead, head)
	if got != submitted {
		for i := range ops[:submitted] {
			ops[i].lost = !ops[i].done
		}
		if err == nil {
			err = errRingLost
		}
	}
	return err
}

func (r *sockRing) close() {
	for _, m := range [][]byte{r.sqeMem, r.cqMem, r.ringMem} {
		if m != nil {
			_ = syscall.Munmap(m)
		}
	}
	_ = syscall.Close(r.fd)
}
