package failover

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// NodeInfo is what a hook learns about one node.
type NodeInfo struct {
	ID      int // -1: none
	Name    string
	Host    string
	Port    int
	DataDir string
}

// Placeholders holds the values of pgpool-II's failover_command placeholders.
type Placeholders struct {
	Failed     NodeInfo // %d %h %p %D
	NewPrimary NodeInfo // %m %H %r %R
	OldPrimary NodeInfo // %M %P %N %S
}

// Expand replaces the placeholders in cmd:
//
//	%d failed node id     %h failed host       %p failed port      %D failed data directory
//	%m new primary id     %H new primary host  %r new primary port %R new primary data directory
//	%M old primary id     %P old primary id    %N old primary host %S old primary port
//	%% a literal %
//
// An unknown value (no data_dir configured, no node) becomes "" (two double quotes), so
// that a shell still sees one argument in its place; an unknown letter is kept as is.
func (p Placeholders) Expand(cmd string) string {
	id := func(n NodeInfo) string {
		if n.ID < 0 {
			return `""`
		}
		return strconv.Itoa(n.ID)
	}
	str := func(s string) string {
		if s == "" {
			return `""`
		}
		return s
	}
	port := func(n NodeInfo) string {
		if n.Port == 0 {
			return `""`
		}
		return strconv.Itoa(n.Port)
	}
	var b strings.Builder
	for i := 0; i < len(cmd); i++ {
		c := cmd[i]
		if c != '%' || i+1 >= len(cmd) {
			b.WriteByte(c)
			continue
		}
		i++
		switch cmd[i] {
		case 'd':
			b.WriteString(id(p.Failed))
		case 'h':
			b.WriteString(str(p.Failed.Host))
		case 'p':
			b.WriteString(port(p.Failed))
		case 'D':
			b.WriteString(str(p.Failed.DataDir))
		case 'm':
			b.WriteString(id(p.NewPrimary))
		case 'H':
			b.WriteString(str(p.NewPrimary.Host))
		case 'r':
			b.WriteString(port(p.NewPrimary))
		case 'R':
			b.WriteString(str(p.NewPrimary.DataDir))
		case 'M', 'P':
			b.WriteString(id(p.OldPrimary))
		case 'N':
			b.WriteString(str(p.OldPrimary.Host))
		case 'S':
			b.WriteString(port(p.OldPrimary))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(cmd[i])
		}
	}
	return b.String()
}

// HookResult is what running a hook gave.
type HookResult struct {
	Command  string // after expansion
	ExitCode int    // -1 when it did not exit (timeout, could not start)
	Output   string // stdout and stderr, combined, cut to maxHookOutput
	Duration time.Duration
	Err      error
}

const maxHookOutput = 64 << 10

// runHook runs command (already expanded) with sh -c, bounded by timeout (the whole process
// group is killed when it expires), with env added to the environment, and logs the exit
// status and output.
func runHook(ctx context.Context, log *slog.Logger, name, command string, timeout time.Duration, env []string) HookResult {
	res := HookResult{Command: command, ExitCode: -1}
	if command == "" {
		return res
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	res.Err = cmd.Run()
	res.Duration = time.Since(start)
	o := out.Bytes()
	if len(o) > maxHookOutput {
		o = o[:maxHookOutput]
	}
	res.Output = string(o)
	var ee *exec.ExitError
	switch {
	case res.Err == nil:
		res.ExitCode = 0
	case ctx.Err() != nil:
		res.Err = errors.Join(res.Err, ctx.Err())
	case errors.As(res.Err, &ee):
		res.ExitCode = ee.ExitCode()
	}
	lvl := slog.LevelInfo
	if res.Err != nil {
		lvl = slog.LevelError
	}
	log.Log(ctx, lvl, "hook finished", "hook", name, "command", command, "exit_code", res.ExitCode,
		"duration", res.Duration, "output", strings.TrimSpace(res.Output), "err", res.Err)
	return res
}
