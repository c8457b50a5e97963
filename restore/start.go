package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgharbor/pgharbor/wal"
)

// StartOptions say how to start the restored cluster.
type StartOptions struct {
	PGData    string
	BinDir    string // holds pg_ctl
	Port      int
	SocketDir string // unix_socket_directories; empty keeps the restored setting
	Timeout   time.Duration
	// Cred runs pg_ctl as another OS user (PostgreSQL refuses root); nil runs as is.
	Cred *syscall.Credential
}

// LogFile is where the started server's log goes.
func (s StartOptions) LogFile() string { return filepath.Join(s.PGData, "pgharbor-start.log") }

// StartAndWait starts PostgreSQL on the restored directory and waits until recovery reached
// the target: promoted (target action promote, or recovery to the latest WAL), paused, or
// shut down, as the plan says.
func StartAndWait(ctx context.Context, plan *Plan, s StartOptions) error {
	if s.Timeout <= 0 {
		s.Timeout = 30 * time.Minute
	}
	opts := fmt.Sprintf("-p %d", s.Port)
	if s.SocketDir != "" {
		opts += fmt.Sprintf(" -k %s", s.SocketDir)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(s.BinDir, "pg_ctl"), "-D", s.PGData, "-l", s.LogFile(), "-o", opts, "-w", "-t", "3600", "start")
	if s.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.Cred}
	}
	out, err := cmd.CombinedOutput()
	action := plan.Target.Action
	if action == "" && plan.Target.Kind != TargetLatest {
		action = "pause" // PostgreSQL's default
	}
	if err != nil {
		if action == "shutdown" && !running(s.PGData) {
			return checkShutdownReachedTarget(s)
		}
		logText, _ := os.ReadFile(s.LogFile())
		return fmt.Errorf("pg_ctl start: %v: %s\n--- server log %s ---\n%s", err, out, s.LogFile(), tail(logText, 4000))
	}
	host := s.SocketDir
	if host == "" {
		host = "127.0.0.1"
	}
	connStr := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=5", host, s.Port)
	deadline := time.Now().Add(s.Timeout)
	for {
		if action == "shutdown" {
			if !running(s.PGData) {
				return checkShutdownReachedTarget(s)
			}
		} else if done, err := reached(ctx, connStr, action); err == nil && done {
			if action == "pause" || plan.EndAtLeast == 0 {
				return nil
			}
			if err := checkRecoveryEnd(ctx, connStr, plan.EndAtLeast); err != nil {
				return s.failStopped(ctx, err)
			}
			return nil
		} else if err != nil && refusing(err) && running(s.PGData) {
			// The server is up but turns connections away for a reason other than still
			// being in startup or recovery: waiting cannot help.
			return s.failStopped(ctx, fmt.Errorf("the server refuses connections after recovery: %w", err))
		}
		if !running(s.PGData) && action != "shutdown" {
			logText, _ := os.ReadFile(s.LogFile())
			return fmt.Errorf("the server stopped during recovery\n--- server log %s ---\n%s", s.LogFile(), tail(logText, 4000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("recovery did not reach the target within %s; see %s", s.Timeout, s.LogFile())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// refusing reports whether a connection attempt failed with an error from the server that
// is not one of the answers a starting or recovering server gives (cannot_connect_now,
// too_many_connections).
func refusing(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "57P03", "53300":
		return false
	}
	return true
}

// checkRecoveryEnd checks that a server which finished recovery to the latest WAL got at
// least to atLeast: PostgreSQL ends recovery, promotes and reports nothing unusual at the
// first record it cannot read or apply (a segment of another system, a damaged one), and
// everything after it would be silently lost. The end of recovery is where the new
// timeline begins, in its history file.
func checkRecoveryEnd(ctx context.Context, connStr string, atLeast wal.LSN) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, connStr)
	if err != nil {
		return fmt.Errorf("check where recovery ended: %w", err)
	}
	defer conn.Close(context.Background())
	var walFile string
	if err := conn.QueryRow(cctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&walFile); err != nil {
		return fmt.Errorf("check where recovery ended: %w", err)
	}
	tli, err := wal.ParseTimelineID(walFile[:8])
	if err != nil || tli < 2 {
		return fmt.Errorf("check where recovery ended: the server runs on timeline %s, but recovery to the latest WAL always starts a new one", walFile[:8])
	}
	var hist string
	if err := conn.QueryRow(cctx, "SELECT pg_read_file('pg_wal/' || $1::text)", wal.HistoryFileName(tli)).Scan(&hist); err != nil {
		return fmt.Errorf("check where recovery ended: read %s: %w", wal.HistoryFileName(tli), err)
	}
	entries, err := wal.ParseHistory(tli, []byte(hist))
	if err != nil || len(entries) == 0 {
		return fmt.Errorf("check where recovery ended: %s: %v", wal.HistoryFileName(tli), err)
	}
	end := entries[len(entries)-1]
	if end.Switch < atLeast {
		return fmt.Errorf("recovery ended early: at %s on timeline %d, but the archive holds WAL of that timeline up to the segment starting at %s. PostgreSQL could not read or apply the WAL after %s (the server log says why) and promoted there; what was committed after it is not in this copy. Run `pgharbor verify`",
			end.Switch, end.TLI, atLeast, end.Switch)
	}
	return nil
}

// failStopped stops the started server (a copy that silently lacks data must not be taken
// into use) and returns err with the end of the server's log.
func (s StartOptions) failStopped(ctx context.Context, err error) error {
	cmd := exec.CommandContext(ctx, filepath.Join(s.BinDir, "pg_ctl"), "-D", s.PGData, "-m", "fast", "-w", "-t", "60", "stop")
	if s.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.Cred}
	}
	stopped := "the server was stopped"
	if out, serr := cmd.CombinedOutput(); serr != nil {
		stopped = fmt.Sprintf("stopping the server failed too: %v: %s", serr, strings.TrimSpace(string(out)))
	}
	logText, _ := os.ReadFile(s.LogFile())
	return fmt.Errorf("%w\n(%s)\n--- server log %s ---\n%s", err, stopped, s.LogFile(), tail(logText, 4000))
}

func reached(ctx context.Context, connStr, action string) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, connStr)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	var pause string
	if err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END").Scan(&inRecovery, &pause); err != nil {
		return false, err
	}
	if action == "pause" {
		return inRecovery && pause == "paused", nil
	}
	return !inRecovery, nil
}

func running(pgdata string) bool {
	data, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return false
	}
	var pid int
	for i, c := range data {
		if c == '\n' {
			pid, _ = strconv.Atoi(string(data[:i]))
			break
		}
	}
	if pid <= 0 {
		return false
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// checkShutdownReachedTarget reads the log of a server that shut down by itself.
func checkShutdownReachedTarget(s StartOptions) error {
	logText, _ := os.ReadFile(s.LogFile())
	if containsAny(string(logText), "recovery stopping", "shutdown at recovery target") {
		return nil
	}
	return fmt.Errorf("the server stopped without reaching the recovery target\n--- server log %s ---\n%s", s.LogFile(), tail(logText, 4000))
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
