package main

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// memoryFloor is the soft memory limit the data-moving commands start with.
const memoryFloor = 80 << 20

// boundMemory sets a soft memory limit for the data-moving commands (backup, restore, the
// WAL receiver) unless GOMEMLIMIT says otherwise: their buffers are bounded, and the limit
// keeps the garbage collector from letting the heap double on top of them. The manifest is
// not bounded: it holds an entry per chunk and grows with the cluster. Under a fixed limit a
// large cluster's live heap would reach it, and the collector would then run without pause
// (on up to half the CPU) and free nothing. So, until ctx ends, the limit follows the live
// heap and stays above twice it.
func boundMemory(ctx context.Context) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(memoryFloor)
	go followLiveHeap(ctx, memoryFloor, time.Second)
}

// followLiveHeap raises the soft memory limit, never lowers it, each time the live heap
// (what the last collection kept) passes half of it.
func followLiveHeap(ctx context.Context, limit int64, every time.Duration) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(s)
		if s[0].Value.Kind() != metrics.KindUint64 {
			return // not reported by this runtime: keep the limit
		}
		if next := raisedLimit(limit, int64(s[0].Value.Uint64())); next != limit {
			limit = next
			debug.SetMemoryLimit(limit)
		}
	}
}

// raisedLimit is the limit for a live heap of live bytes: unchanged while the live heap
// stays under half of it, else three times the live heap, so that it is not raised again
// at every small growth.
func raisedLimit(limit, live int64) int64 {
	if 2*live <= limit {
		return limit
	}
	return 3 * live
}
