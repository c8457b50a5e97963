// Command pgharbor is PostgreSQL backup, WAL archiving, point-in-time recovery and a
// connection pooler in one binary. This package is the composition root: it loads
// configuration, picks storage drivers and keys, and is the only place that exits.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"syscall"
)

// exitError carries a specific process exit code (PostgreSQL's archive and restore
// commands care about them).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// PGHARBOR_CPUPROFILE=FILE writes a CPU profile of the whole command (for benchmarks).
	if p := os.Getenv("PGHARBOR_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	// PGHARBOR_TRACE=FILE writes an execution trace (go tool trace) of the whole command.
	if p := os.Getenv("PGHARBOR_TRACE"); p != "" {
		if f, err := os.Create(p); err == nil {
			if trace.Start(f) == nil {
				defer trace.Stop()
			}
		}
	}
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	// PGHARBOR_MEMPROFILE=FILE writes a heap profile (what is live, and where it was
	// allocated) when the command ends, before its memory is let go.
	if p := os.Getenv("PGHARBOR_MEMPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
	pprof.StopCPUProfile()
	trace.Stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgharbor:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}
