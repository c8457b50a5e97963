package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// StartOptions say how to start a standby and what to wait for.
type StartOptions struct {
	PGData string
	BinDir string // pg_ctl, psql
	// Cred runs pg_ctl and psql as the data directory's owner (PostgreSQL refuses root, and
	// local peer authentication knows the server's OS user).
	Cred *syscall.Credential
	// DBUser is the role psql uses on the standby (default postgres).
	DBUser string
	// LogFile receives the server's log (pg_ctl -l); default PGDATA/pgharbor-start.log.
	LogFile string
	// Wait bounds the whole start: past it the standby is left running and the reason it
	// does not stream is returned.
	Wait            time.Duration
	PrimaryConnInfo string
	Slot            string
	AppName         string
	Logger          *slog.Logger
	// Times, when set, receives when each step of the start ended, in seconds from Since
	// (default: the call).
	Times *StartTimes
	Since time.Time
	// SyncFS starts the server with recovery_init_sync_method = syncfs (Linux), for a data
	// directory that was just made durable as a whole (a restore ends with syncfs): the
	// server's own sync at the start of crash recovery is then one call on the file system
	// instead of an open and fsync of every file.
	SyncFS bool
	// AfterStart, when set, runs once after pg_ctl start: as soon as the standby says it
	// streams, or the log shows why it does not, or afterStartBy has passed, and in any case
	// before StartAndWaitStreaming returns. Its error is returned. It gives a standby
	// started without restore_command (its WAL staged in pg_wal) its restore_command.
	AfterStart func() error
}

// StartTimes are the seconds at which each step of StartAndWaitStreaming ended.
type StartTimes struct {
	PgCtl           float64 `json:"pg_ctl_s"`                // pg_ctl start returned
	StandbyAnswered float64 `json:"standby_answered_s"`      // the standby first answered a query
	StandbyStreams  float64 `json:"standby_streaming_s"`     // its WAL receiver said streaming
	Confirmed       float64 `json:"confirmed_s"`             // the primary saw it stream
	PrimaryAsked    int     `json:"primary_asked"`           // connections made to the primary
	AfterStart      float64 `json:"after_start_s,omitempty"` // StartOptions.AfterStart ran
}

// hasReason says whether the server's log shows a reason it does not stream.
func hasReason(log string) bool {
	_, ok := Classify(log)
	return ok
}

// afterStartBy is how long after pg_ctl start StartOptions.AfterStart runs at the latest.
const afterStartBy = 10 * time.Second

// decisive reasons do not heal by waiting: once the log shows one for a while, the wait ends.
var decisive = map[Reason]bool{
	ReasonAuth: true, ReasonHBA: true, ReasonNotReplication: true, ReasonSlotMissing: true,
	ReasonTimeline: true, ReasonMissingWAL: true, ReasonForeignPrimary: true,
}

// decisiveAfter is how long a decisive reason must have had to show up before the wait
// gives up on it (the walreceiver retries every few seconds; a reload on the primary can
// fix pg_hba meanwhile).
const decisiveAfter = 15 * time.Second

// StartAndWaitStreaming starts PostgreSQL on a configured standby and returns once it
// streams: pg_stat_wal_receiver says streaming on the standby and the primary sees it (its
// slot active, or a walsender for its application_name). Otherwise a *StreamError.
func StartAndWaitStreaming(ctx context.Context, o StartOptions) (err error) {
	after := o.AfterStart
	runAfter := func() error {
		if after == nil {
			return nil
		}
		f := after
		after = nil
		ferr := f()
		if o.Times != nil {
			o.Times.AfterStart = since(o.Since)
		}
		return ferr
	}
	defer func() {
		if ferr := runAfter(); ferr != nil {
			err = errors.Join(err, ferr)
		}
	}()
	if o.Wait <= 0 {
		o.Wait = 10 * time.Minute
	}
	if o.DBUser == "" {
		o.DBUser = "postgres"
	}
	if o.LogFile == "" {
		o.LogFile = filepath.Join(o.PGData, "pgharbor-start.log")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var logFrom int64
	if st, err := os.Stat(o.LogFile); err == nil {
		logFrom = st.Size()
	}
	readLog := func() string {
		f, err := os.Open(o.LogFile)
		if err != nil {
			return ""
		}
		defer f.Close()
		if _, err := f.Seek(logFrom, io.SeekStart); err != nil {
			return ""
		}
		b, _ := io.ReadAll(io.LimitReader(f, 4<<20))
		return tail(b, 4000)
	}
	start := time.Now()
	if o.Since.IsZero() {
		o.Since = start
	}
	times := o.Times
	if times == nil {
		times = &StartTimes{}
	}
	at := func() float64 { return since(o.Since) }
	args := []string{"-D", o.PGData, "-l", o.LogFile, "-W"}
	if o.SyncFS && runtime.GOOS == "linux" {
		args = append(args, "-o", "-c recovery_init_sync_method=syncfs")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(o.BinDir, "pg_ctl"), append(args, "start")...)
	cmd.Dir = "/"
	if o.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.Cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return &StreamError{Reason: ReasonServerStopped, Detail: fmt.Sprintf("pg_ctl start: %v: %s", err, strings.TrimSpace(string(out))), LogFile: o.LogFile, LogTail: readLog()}
	}
	times.PgCtl = at()
	deadline := start.Add(o.Wait)
	seenRunning := false
	status := ""
	// The primary is asked about a standby that cannot be asked only after primaryAskEvery:
	// a standby that can be asked usually answers before.
	askedPrimary, askedStandby := start.Add(-confirmEvery), time.Time{}
	answered := false // the standby answered the last question
	asker := &standbyAsker{o: o}
	defer asker.close()
	lookedAtLog := start // AfterStart pending: when the log was last looked at
	for {
		pid := PostmasterPID(o.PGData)
		if pid != 0 {
			seenRunning = true
		}
		if pid == 0 && (seenRunning || time.Since(start) > 10*time.Second) {
			log := readLog()
			e := &StreamError{Reason: ReasonServerStopped, Detail: "the standby's server exited", LogFile: o.LogFile, LogTail: log}
			if r, ok := Classify(log); ok {
				e.Reason, e.Detail = r, "the standby's server exited: "+lastMatch(log, r)
			}
			return e
		}
		// The standby is asked only once postmaster.pid says it accepts connections (what
		// pg_ctl -w waits for): before that every question is a failed connection, a backend
		// forked for nothing while the startup process replays.
		fresh := false
		if pid != 0 && acceptsConnections(o.PGData) && (asker.conn != nil || time.Since(askedStandby) >= standbyAskEvery) {
			askedStandby, fresh = time.Now(), true
			status, answered = asker.status(ctx)
			if answered && times.StandbyAnswered == 0 {
				times.StandbyAnswered = at()
			}
			if status == "streaming" && times.StandbyStreams == 0 {
				times.StandbyStreams = at()
			}
		}
		if after != nil && pid != 0 && (status == "streaming" || time.Since(start) > afterStartBy || time.Since(lookedAtLog) > time.Second && hasReason(readLog())) {
			if err := runAfter(); err != nil {
				return err
			}
			// What the log said before restore_command was set (e.g. the primary no longer
			// has a segment) is healed by it: only what comes after counts.
			if st, err := os.Stat(o.LogFile); err == nil {
				logFrom = st.Size()
			}
		}
		if after != nil && time.Since(lookedAtLog) > time.Second {
			lookedAtLog = time.Now()
		}
		// A standby that cannot be asked (hot_standby = off, an authentication that refuses
		// this OS user, or not yet accepting connections) is judged by the primary alone,
		// asked every few seconds only: each question is a new connection to the primary,
		// whose load seeding is meant to spare.
		// Once the standby streams, the primary may still show its walsender catching up:
		// it is asked again, but not at every tick.
		if pid != 0 && (fresh && status == "streaming" && time.Since(askedPrimary) >= confirmEvery || !answered && time.Since(askedPrimary) >= primaryAskEvery) {
			askedPrimary = time.Now()
			times.PrimaryAsked++
			ok, err := streamingOnPrimary(ctx, o.PrimaryConnInfo, o.Slot, o.AppName)
			if err == nil && ok {
				times.Confirmed = at()
				o.Logger.Info("standby streams", "pgdata", o.PGData, "seconds", fmt.Sprintf("%.1f", time.Since(start).Seconds()))
				return nil
			}
		}
		if pid != 0 {
			if time.Since(start) > decisiveAfter {
				log := readLog()
				if r, ok := Classify(log); ok && decisive[r] {
					return &StreamError{Reason: r, Detail: lastMatch(log, r), LogFile: o.LogFile, LogTail: log}
				}
			}
		}
		if time.Now().After(deadline) {
			return o.explain(ctx, readLog(), status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// pollEvery is how often the start loop looks at postmaster.pid and the log (cheap: file
// reads) and queries the standby over its open connection; standbyAskEvery how often at
// most it connects anew or runs psql.
const (
	pollEvery       = 50 * time.Millisecond
	standbyAskEvery = 150 * time.Millisecond
)

// acceptsConnections reads the postmaster's status line of postmaster.pid (line 8): "ready"
// or "standby" once it accepts connections, "starting" before. A file without the line
// (not written yet, or another version) counts as accepting, so that psql decides.
func acceptsConnections(pgdata string) bool {
	data, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return false
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 8 {
		return true
	}
	switch strings.TrimSpace(lines[7]) {
	case "starting", "stopping":
		return false
	}
	return true
}

// primaryAskEvery spaces the questions to the primary about a standby that cannot be asked.
const primaryAskEvery = 2 * time.Second

// confirmEvery spaces the questions to the primary once the standby says it streams.
const confirmEvery = 250 * time.Millisecond

// explain builds the error for a standby that did not stream within the wait.
func (o StartOptions) explain(ctx context.Context, log, status string) error {
	e := &StreamError{LogFile: o.LogFile, LogTail: log}
	if r, ok := Classify(log); ok {
		e.Reason, e.Detail = r, lastMatch(log, r)
		return e
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*probeTimeout)
	defer cancel()
	if _, err := Probe(pctx, o.PrimaryConnInfo); err != nil {
		var pe *PrimaryError
		if errors.As(err, &pe) {
			e.Reason, e.Detail = pe.Reason, pe.Detail
			return e
		}
		e.Reason, e.Detail = ReasonUnreachable, err.Error()
		return e
	}
	if o.Slot != "" {
		if s, err := SlotState(pctx, o.PrimaryConnInfo, o.Slot); err == nil && s.Active && s.ActiveApp != o.AppName {
			e.Reason, e.Detail = ReasonSlotInUse, fmt.Sprintf("slot %q is used by walsender PID %d (application_name %q), not by this standby (%q)", o.Slot, s.ActivePID, s.ActiveApp, o.AppName)
			return e
		}
	}
	if status == "" {
		status = "no WAL receiver"
	}
	e.Reason, e.Detail = ReasonStillCatchingUp, fmt.Sprintf("after %s the standby's WAL receiver says %q", o.Wait, status)
	return e
}

// standbyAsker asks a starting standby for pg_stat_wal_receiver's status ("" when it has no
// WAL receiver): over one connection this process keeps open when the standby lets it in
// (each question is then a query, not a process and a backend), else with psql run as the
// server's OS user, whom peer authentication knows when it does not know this process's.
type standbyAsker struct {
	o       StartOptions
	conn    *pgx.Conn
	usePsql bool
}

const receiverQuery = "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), '')"

// status returns the receiver's status; asked is false when the standby did not answer.
func (a *standbyAsker) status(ctx context.Context) (status string, asked bool) {
	port, sock, ok := Endpoint(a.o.PGData)
	if !ok {
		return "", false
	}
	if !a.usePsql && a.conn == nil {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=%s dbname=postgres connect_timeout=5", quoteConnValue(sock), port, quoteConnValue(a.o.DBUser)))
		if err != nil {
			a.usePsql = true
		} else {
			cfg.RuntimeParams["application_name"] = "pgharbor start"
			c, err := pgx.ConnectConfig(ctx, cfg)
			var pe *pgconn.PgError
			switch {
			case err == nil:
				a.conn = c
			case errors.As(err, &pe) && strings.HasPrefix(pe.Code, "28"):
				a.usePsql = true // refused this process: psql as the server's OS user
			default:
				return "", false // not accepting connections yet
			}
		}
	}
	if a.conn != nil {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := a.conn.QueryRow(qctx, receiverQuery).Scan(&status); err != nil {
			a.close()
			return "", false
		}
		return status, true
	}
	out, err := a.o.psql(ctx, sock, port, receiverQuery)
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(out), true
}

func (a *standbyAsker) close() {
	if a.conn != nil {
		a.conn.Close(context.Background())
		a.conn = nil
	}
}

func (o StartOptions) psql(ctx context.Context, host string, port int, sql string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, filepath.Join(o.BinDir, "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
		"-h", host, "-p", strconv.Itoa(port), "-U", o.DBUser, "-d", "postgres", "-c", sql)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5", "LC_ALL=C")
	cmd.Dir = "/"
	if o.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.Cred}
	}
	out, err := cmd.Output()
	return string(out), err
}

// Stop stops the server on pgdata with pg_ctl (mode fast, smart or immediate) as cred.
func Stop(ctx context.Context, binDir, pgdata, mode string, cred *syscall.Credential) error {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pg_ctl"), "-D", pgdata, "-m", mode, "-w", "-t", "300", "stop")
	cmd.Dir = "/"
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop %s: %w: %s", pgdata, err, strings.TrimSpace(string(out)))
	}
	return nil
}
