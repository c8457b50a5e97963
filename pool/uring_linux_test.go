package pool

import (
	"bytes"
	"fmt"
	"syscall"
	"testing"
)

func socketPairs(t testing.TB, n int) [][2]int {
	t.Helper()
	pairs := make([][2]int, n)
	for i := range pairs {
		p, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		pairs[i] = [2]int{p[0], p[1]}
		t.Cleanup(func() { syscall.Close(p[0]); syscall.Close(p[1]) })
	}
	return pairs
}

func TestReadRingReadsABatch(t *testing.T) {
	r, err := newSockRing(64)
	if err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	defer r.close()
	pairs := socketPairs(t, 40)
	for round := 0; round < 50; round++ {
		var reads []ringOp
		want := map[int][]byte{}
		for i, p := range pairs {
			if (i+round)%3 == 0 {
				reads = append(reads, ringOp{fd: p[0], buf: make([]byte, 16)}) // empty: EAGAIN
				want[len(reads)-1] = nil
				continue
			}
			msg := []byte(fmt.Sprintf("round %d socket %d and more", round, i))
			if _, err := syscall.Write(p[1], msg); err != nil {
				t.Fatal(err)
			}
			reads = append(reads, ringOp{fd: p[0], buf: make([]byte, 16)})
			want[len(reads)-1] = msg
		}
		if err := r.do(reads); err != nil {
			t.Fatal(err)
		}
		for i, rd := range reads {
			msg := want[i]
			if msg == nil {
				if rd.res != -int32(syscall.EAGAIN) {
					t.Fatalf("round %d read %d: res %d, want EAGAIN", round, i, rd.res)
				}
				continue
			}
			if rd.res != 16 || !bytes.Equal(rd.buf, msg[:16]) {
				t.Fatalf("round %d read %d: %d %q, want %q", round, i, rd.res, rd.buf[:max(rd.res, 0)], msg[:16])
			}
			// the rest is still in the socket, in order
			rest := make([]byte, 64)
			n, err := syscall.Read(reads[i].fd, rest)
			if err != nil || !bytes.Equal(rest[:n], msg[16:]) {
				t.Fatalf("round %d read %d: rest %q %v, want %q", round, i, rest[:max(n, 0)], err, msg[16:])
			}
		}
	}
	// a closed peer reads as the end (0), a reset as ECONNRESET-free EOF here
	p := pairs[0]
	syscall.Close(p[1])
	reads := []ringOp{{fd: p[0], buf: make([]byte, 8)}, {fd: pairs[1][0], buf: make([]byte, 8)}}
	if err := r.do(reads); err != nil {
		t.Fatal(err)
	}
	if reads[0].res != 0 || reads[1].res != -int32(syscall.EAGAIN) {
		t.Fatalf("closed peer: %d, empty: %d", reads[0].res, reads[1].res)
	}
}

// BenchmarkSocketReads reads 14 sockets holding a short message each, the batch an epoll
// wait of the loop typically returns under TPC-B: one recvfrom each, or one io_uring_enter.
func BenchmarkSocketReads(b *testing.B) {
	const batch = 14
	pairs := socketPairs(b, batch)
	msg := make([]byte, 120)
	fill := func() {
		for _, p := range pairs {
			if _, err := syscall.Write(p[1], msg); err != nil {
				b.Fatal(err)
			}
		}
	}
	buf := make([]byte, batch*4096)
	b.Run("recvfrom", func(b *testing.B) {
		for b.Loop() {
			fill()
			for i, p := range pairs {
				if n, errno := rawRead(p[0], buf[i*4096:(i+1)*4096]); errno != 0 || n != len(msg) {
					b.Fatal(n, errno)
				}
			}
		}
	})
	b.Run("ring", func(b *testing.B) {
		r, err := newSockRing(64)
		if err != nil {
			b.Skip(err)
		}
		defer r.close()
		reads := make([]ringOp, batch)
		for b.Loop() {
			fill()
			for i, p := range pairs {
				reads[i] = ringOp{fd: p[0], buf: buf[i*4096 : (i+1)*4096]}
			}
			if err := r.do(reads); err != nil {
				b.Fatal(err)
			}
			for _, rd := range reads {
				if rd.res != int32(len(msg)) {
					b.Fatal(rd.res)
				}
			}
		}
	})
}
