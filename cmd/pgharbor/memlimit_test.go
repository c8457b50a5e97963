package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestRaisedLimit(t *testing.T) {
	for _, c := range []struct{ limit, live, want int64 }{
		{80, 10, 80},
		{80, 40, 80},
		{80, 41, 123},
		{123, 200, 600},
	} {
		if got := raisedLimit(c.limit, c.live); got != c.want {
			t.Errorf("raisedLimit(%d, %d) = %d, want %d", c.limit, c.live, got, c.want)
		}
	}
}

// A live heap that outgrows the starting limit (a large cluster's manifest) raises the limit
// above it instead of leaving the collector running without pause.
func TestFollowLiveHeapRaisesTheLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	const floor = 4 << 20
	debug.SetMemoryLimit(floor)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); followLiveHeap(ctx, floor, 5*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	live := make([][]byte, 0, 64)
	for range 64 {
		live = append(live, make([]byte, 256<<10)) // 16 MiB kept live
	}
	deadline := time.Now().Add(10 * time.Second)
	for debug.SetMemoryLimit(-1) < 2*16<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("limit %d with 16 MiB live", debug.SetMemoryLimit(-1))
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	runtime.KeepAlive(live)
}
