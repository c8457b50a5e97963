package pool

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// The wait queue hands waiters out in the order they came, whatever mix of arrivals,
// departures from the front and removals from the middle it sees, as a plain slice does.
func TestWaitQueueKeepsOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	sessions := make([]*session, 64)
	for i := range sessions {
		sessions[i] = &session{}
	}
	var q waitQueue
	var model []*session
	for step := range 20000 {
		switch op := rng.IntN(10); {
		case op < 4 && len(model) < len(sessions):
			var s *session
			for s == nil || slices.Contains(model, s) {
				s = sessions[rng.IntN(len(sessions))]
			}
			q.push(waiter{sess: s})
			model = append(model, s)
		case op < 8:
			w, ok := q.pop()
			if ok != (len(model) > 0) || ok && w.sess != model[0] {
				t.Fatalf("step %d: pop gave %p %v, want the first of %d", step, w.sess, ok, len(model))
			}
			if ok {
				model = model[1:]
			}
		default:
			s := sessions[rng.IntN(len(sessions))]
			i := slices.Index(model, s)
			if got := q.remove(func(w waiter) bool { return w.sess == s }); got != (i >= 0) {
				t.Fatalf("step %d: remove said %v, the session was at %d", step, got, i)
			}
			if i >= 0 {
				model = slices.Delete(model, i, i+1)
			}
		}
		if q.len() != len(model) {
			t.Fatalf("step %d: %d waiting, want %d", step, q.len(), len(model))
		}
		for i := range q.head {
			if q.buf[i] != (waiter{}) {
				t.Fatalf("step %d: a waiter taken out is still held at %d", step, i)
			}
		}
	}
	rest := q.drain()
	if len(rest) != len(model) || q.len() != 0 {
		t.Fatalf("drain gave %d, want %d", len(rest), len(model))
	}
	for i, w := range rest {
		if w.sess != model[i] {
			t.Fatalf("drain: waiter %d out of order", i)
		}
	}
}

// A steady queue (as many arrivals as departures, more clients than server connections)
// allocates nothing once it has grown to its length, and does not grow.
func TestWaitQueueSteadyAllocatesNothing(t *testing.T) {
	var q waitQueue
	s := &session{}
	for range 30 {
		q.push(waiter{sess: s})
	}
	const n = 100000
	if allocs := testing.AllocsPerRun(1, func() {
		for range n {
			q.pop()
			q.push(waiter{sess: s})
		}
	}); allocs != 0 {
		t.Errorf("%v allocations in %d waits", allocs, n)
	}
	if cap(q.buf) > 64 {
		t.Errorf("a queue of 30 holds room for %d", cap(q.buf))
	}
}
