package restore

import (
	"fmt"
	"sync"
	"time"
)

// flushEvery is how many bytes a restore writes between two background flushes.
const flushEvery = 256 << 20

// flusher makes a restore's writes durable while it runs, instead of all at the end.
//
// Every flushEvery bytes written it calls syncfs on the restore's file systems from its own
// goroutine, so the disk works while the workers decrypt and decompress, and the final
// syncfs waits only for the last stretch. Measured on the 2.4 GB benchmark restore: final
// sync 0.03-0.2 s instead of 0.7-1.2 s; whole restore 3.5 s against 4.0 s (medians of 6
// alternating runs). The sync_file_range hint after each piece alone (startWriteback) left
// the final wait at about a second.
//
// A flush that fails fails the restore: syncfs reports a write-back error only to a caller
// that opened the file system before the error, so a later syncfs might not see it.
type flusher struct {
	roots []string
	log   func(msg string, args ...any)

	mu      sync.Mutex
	written int64 // bytes written since the last flush began
	err     error // the first failed flush

	wake chan struct{}
	done chan struct{}
}

func startFlusher(roots []string, log func(string, ...any)) *flusher {
	f := &flusher{roots: roots, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go f.run()
	return f
}

// wrote records that n more bytes were written.
func (f *flusher) wrote(n int64) {
	f.mu.Lock()
	f.written += n
	due := f.written >= flushEvery
	f.mu.Unlock()
	if due {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

func (f *flusher) run() {
	defer close(f.done)
	for range f.wake {
		f.mu.Lock()
		n := f.written
		f.written = 0
		f.mu.Unlock()
		t := time.Now()
		for _, root := range f.roots {
			if err := syncFS(root); err != nil {
				f.mu.Lock()
				if f.err == nil {
					f.err = fmt.Errorf("sync %s: %w", root, err)
				}
				f.mu.Unlock()
				return
			}
		}
		f.log("restore flushed", "bytes", n, "took", time.Since(t))
	}
}

// stop ends the flusher and returns the first flush error.
func (f *flusher) stop() error {
	close(f.wake)
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}
