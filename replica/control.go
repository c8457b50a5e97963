package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pgharbor/pgharbor/wal"
)

// Control is what a data directory's global/pg_control says, as pg_controldata prints it.
type Control struct {
	SystemIdentifier string
	State            string // "shut down", "in production", "shut down in recovery", "in archive recovery" …
	Checkpoint       wal.LSN
	CheckpointTLI    wal.TimelineID
	MinRecoveryEnd   wal.LSN
	MinRecoveryTLI   wal.TimelineID
	WALLogHints      bool
	DataChecksums    bool
	WALSegmentSize   int64
}

// Position is the newest WAL position the directory is known to hold, and its timeline:
// the later of the last checkpoint and the minimum recovery point (a standby's restart
// point can lag what it replayed).
func (c Control) Position() (wal.TimelineID, wal.LSN) {
	if c.MinRecoveryTLI != 0 && c.MinRecoveryEnd > c.Checkpoint {
		return c.MinRecoveryTLI, c.MinRecoveryEnd
	}
	return c.CheckpointTLI, c.Checkpoint
}

// Rewindable reports whether pg_rewind can work on this directory: it needs hint bits
// WAL-logged (wal_log_hints) or data checksums.
func (c Control) Rewindable() bool { return c.WALLogHints || c.DataChecksums }

// ErrNoCluster means a directory holds no PostgreSQL data directory.
var ErrNoCluster = errors.New("not a PostgreSQL data directory")

// ReadControl runs binDir/pg_controldata on pgdata.
func ReadControl(ctx context.Context, binDir, pgdata string) (Control, error) {
	if _, err := os.Stat(filepath.Join(pgdata, "global", "pg_control")); err != nil {
		return Control{}, fmt.Errorf("%s: %w (no global/pg_control)", pgdata, ErrNoCluster)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_controldata"), "-D", pgdata)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return Control{}, fmt.Errorf("pg_controldata %s: %w: %s", pgdata, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return Control{}, fmt.Errorf("pg_controldata %s: %w", pgdata, err)
	}
	return ParseControlData(string(out))
}

// ParseControlData reads pg_controldata's output (C locale).
func ParseControlData(out string) (Control, error) {
	var c Control
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		var err error
		switch key {
		case "Database system identifier":
			c.SystemIdentifier = val
		case "Database cluster state":
			c.State = val
		case "Latest checkpoint location":
			c.Checkpoint, err = wal.ParseLSN(val)
		case "Latest checkpoint's TimeLineID":
			c.CheckpointTLI, err = parseTLI(val)
		case "Minimum recovery ending location":
			c.MinRecoveryEnd, err = wal.ParseLSN(val)
		case "Min recovery ending loc's timeline":
			c.MinRecoveryTLI, err = parseTLI(val)
		case "wal_log_hints setting":
			c.WALLogHints = val == "on"
		case "Data page checksum version":
			c.DataChecksums = val != "0"
		case "Bytes per WAL segment":
			c.WALSegmentSize, err = strconv.ParseInt(val, 10, 64)
		}
		if err != nil {
			return c, fmt.Errorf("pg_controldata %q: %w", key, err)
		}
	}
	if c.SystemIdentifier == "" || c.CheckpointTLI == 0 {
		return c, errors.New("pg_controldata: no system identifier or timeline in its output")
	}
	return c, nil
}

func parseTLI(s string) (wal.TimelineID, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	return wal.TimelineID(n), err
}

// Diverged reports whether a node that stopped at position (tli, lsn) cannot follow a
// primary on timeline primaryTLI with history h (the primary's path from timeline 1): the
// node's timeline is not on that path, or the path left it before the node's position.
func Diverged(tli wal.TimelineID, lsn wal.LSN, primaryTLI wal.TimelineID, h wal.History) bool {
	if tli == primaryTLI {
		return false
	}
	if tli > primaryTLI {
		return true
	}
	sw, ok := h.SwitchPoint(tli)
	if !ok {
		return true
	}
	return lsn >= sw
}

// PostmasterPID returns the pid of a live postmaster on pgdata, 0 when none runs (no
// postmaster.pid, or a stale one whose process is gone).
func PostmasterPID(pgdata string) int {
	data, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0
	}
	if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
		return pid
	}
	return 0
}

// Endpoint reads the port and first socket directory a running postmaster wrote
// into postmaster.pid (lines 4 and 5).
func Endpoint(pgdata string) (port int, socketDir string, ok bool) {
	data, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return 0, "", false
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 5 {
		return 0, "", false
	}
	port, err = strconv.Atoi(strings.TrimSpace(lines[3]))
	if err != nil {
		return 0, "", false
	}
	socketDir = strings.TrimSpace(lines[4])
	if socketDir == "" {
		socketDir = "127.0.0.1"
	}
	return port, socketDir, true
}

// WALAfter reports whether pg_wal of pgdata holds a valid WAL record of timeline tli at or
// after from: a node that crashed keeps WAL past its last checkpoint, and that WAL, not the
// checkpoint, says whether it went past the point where the primary's history left tli.
// pg_waldump validates each page's address, so recycled segments with old content do not
// count.
//
// The segment holding from is named to pg_waldump: without it, pg_waldump learns the
// segment size from whichever file of pg_wal it opens first, and a preallocated segment
// that is still all zeros makes it fail.
func WALAfter(ctx context.Context, binDir, pgdata string, tli wal.TimelineID, from wal.LSN) (bool, error) {
	ctl, err := ReadControl(ctx, binDir, pgdata)
	if err != nil {
		return false, err
	}
	if err := wal.CheckSegmentSize(ctl.WALSegmentSize); err != nil {
		return false, fmt.Errorf("%s: pg_control: %w", pgdata, err)
	}
	seg, err := wal.SegmentOf(from, tli, ctl.WALSegmentSize).SegmentName(ctl.WALSegmentSize)
	if err != nil {
		return false, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_waldump"), "-p", filepath.Join(pgdata, "pg_wal"),
		"-t", strconv.FormatUint(uint64(tli), 10), "-s", from.String(), "-n", "1", seg)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	out, err := cmd.CombinedOutput()
	if err == nil {
		return len(strings.TrimSpace(string(out))) > 0, nil
	}
	msg := string(out)
	if strings.Contains(msg, "could not find a valid record") || strings.Contains(msg, "could not find file") ||
		strings.Contains(msg, "could not locate WAL file") ||
		strings.Contains(msg, "No such file") {
		return false, nil
	}
	return false, fmt.Errorf("pg_waldump %s from %s: %w: %s", pgdata, from, err, strings.TrimSpace(msg))
}
