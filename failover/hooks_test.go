package failover

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRunHookReportsExitStatusAndOutput(t *testing.T) {
	r := runHook(context.Background(), slog.New(slog.DiscardHandler), "test", `echo out; echo err >&2; echo "$X"; exit 3`, 5*time.Second, []string{"X=from-env"})
	if r.ExitCode != 3 || r.Err == nil {
		t.Fatalf("exit code %d err %v, want 3 and an error", r.ExitCode, r.Err)
	}
	for _, s := range []string{"out", "err", "from-env"} {
		if !strings.Contains(r.Output, s) {
			t.Errorf("output %q lacks %q", r.Output, s)
		}
	}
}

func TestRunHookTimeoutKillsTheProcessGroup(t *testing.T) {
	start := time.Now()
	// The background sleep keeps the output pipe open: without killing the whole group,
	// the run would last as long as it.
	r := runHook(context.Background(), slog.New(slog.DiscardHandler), "test", `sleep 30 & sleep 30`, 300*time.Millisecond, nil)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("hook ran %v despite a 300ms timeout", d)
	}
	if r.ExitCode != -1 || r.Err == nil {
		t.Fatalf("exit code %d err %v, want -1 and a timeout error", r.ExitCode, r.Err)
	}
}
