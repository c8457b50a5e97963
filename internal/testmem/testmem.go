// Package testmem measures the memory a piece of code holds, for benchmarks.
package testmem

import (
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// LivePeak samples the live heap (as of the last collection) until stop is called and
// returns the largest value seen, in bytes above the live heap when it started.
func LivePeak() (stop func() uint64) {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	base := sample[0].Value.Uint64()
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	return func() uint64 {
		runtime.GC()
		close(done)
		if p := peak.Load(); p > base {
			return p - base
		}
		return 0
	}
}

// Live returns the live heap after a collection.
func Live() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
