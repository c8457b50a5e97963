package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"time"
)

// progressBar draws "label  42% 1.2 GB / 2.4 GB  310 MB/s" on a terminal, at most 5 times a
// second; on a non-terminal it draws nothing (the summary line is printed either way).
type progressBar struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	start time.Time
	last  time.Time
	on    bool
}

func (a *app) newProgress(label string) *progressBar {
	return &progressBar{w: a.stderr, label: label, start: time.Now(), on: a.isTerminal()}
}

func (p *progressBar) update(done, total int64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	rate := float64(done) / time.Since(p.start).Seconds()
	pct := ""
	if total > 0 {
		pct = fmt.Sprintf("%3.0f%% ", 100*float64(min(done, total))/float64(total))
	}
	fmt.Fprintf(p.w, "\r%s %s%s / %s  %s/s   ", p.label, pct, humanBytes(done), humanBytes(total), humanBytes(int64(rate)))
}

func (p *progressBar) finish() {
	if p.on && !p.last.IsZero() {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// collectBackupGarbageSooner has the garbage collector of a process that runs one backup
// start a cycle when the heap has grown by a quarter of what is live, not by all of it
// (GOGC=25 instead of 100). A backup's live heap is mostly its bounded buffers, which it
// reuses and which hold no pointers, so it makes little garbage and a cycle costs little;
// the default let the heap take as much again on top of the buffers. Unlike a lower memory
// limit, this keeps scaling with the manifest, which grows with the cluster. Not for the
// server, whose other work makes garbage of its own. GOGC in the environment wins.
func collectBackupGarbageSooner() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
}
