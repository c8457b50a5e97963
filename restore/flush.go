package restore

import (
	"fmt"
	"os"
	"sort"
	"sync"
	"time"
)

// DefaultFlushAfter is how many bytes a restore writes between two background flushes.
const DefaultFlushAfter = 256 << 20

// flusher makes a restore's writes durable while it runs, instead of all at the end, and
// keeps the page cache the restore uses small.
//
// Every Options.FlushAfter bytes written (DefaultFlushAfter) it calls syncfs on the
// restore's file systems from its own goroutine, so the disk works while the workers
// decrypt and decompress, and the final syncfs waits only for the last stretch. The
// sync_file_range hint after each piece (startWriteback) alone leaves a long final wait.
//
// After each flush it drops what was written before it from the page cache (clean by then).
// A restore reads none of it back, so caching it only pushes out what the host had cached,
// and the dropped pages are the ones the next writes reuse. On a virtual machine whose
// memory the host backs lazily (a new VM; one that handed free memory back), every page the
// cache grows into costs a fault in the host, which multiplies a restore's system time.
// bench/backup/README.md ("Restore: flushing and the page cache") has the measurements.
//
// A flush that fails fails the restore: syncfs reports a write-back error only to a caller
// that opened the file system before the error, so a later syncfs might not see it.
type flusher struct {
	roots []string
	every int64 // flush after this many bytes; <= 0: never in the background
	log   func(msg string, args ...any)

	mu      sync.Mutex
	pending []writtenRange // written since the last flush began
	written int64          // bytes in pending
	err     error          // the first failed flush

	wake chan struct{}
	done chan struct{}
}

func startFlusher(roots []string, every int64, log func(string, ...any)) *flusher {
	f := &flusher{roots: roots, every: every, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go f.run()
	return f
}

// writtenRange is n bytes written at off of the file at path.
type writtenRange struct {
	path   string
	off, n int64
}

// wrote records that n bytes were written at off of the file at path.
func (f *flusher) wrote(path string, off, n int64) {
	if f.every <= 0 {
		return // flushes only at the end (the caller's syncfs); nothing to drop
	}
	f.mu.Lock()
	f.pending = append(f.pending, writtenRange{path, off, n})
	f.written += n
	due := f.written >= f.every
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
		batch, n := f.pending, f.written
		f.pending, f.written = nil, 0
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
		dropCached(batch)
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

// dropCached removes written (and since flushed, so clean) ranges from the page cache. Only
// a hint: errors are ignored.
func dropCached(rs []writtenRange) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].path != rs[j].path {
			return rs[i].path < rs[j].path
		}
		return rs[i].off < rs[j].off
	})
	var fh *os.File
	open := ""
	for _, r := range rs {
		if r.path != open {
			if fh != nil {
				fh.Close()
			}
			open = r.path
			var err error
			if fh, err = os.Open(r.path); err != nil {
				fh = nil
			}
		}
		if fh != nil {
			adviseDontNeed(fh, r.off, r.n)
		}
	}
	if fh != nil {
		fh.Close()
	}
}
