package replica

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/restore"
	"github.com/pgharbor/pgharbor/wal"
)

// Rebuild methods.
const (
	MethodAuto    = "auto"    // pg_rewind when the node diverged and it can apply, else restore
	MethodRewind  = "rewind"  // pg_rewind against the primary
	MethodRestore = "restore" // delta restore from the repository
)

// Options configure create and rebuild.
type Options struct {
	PGData string
	BinDir string // pg_ctl, pg_controldata, pg_rewind, psql
	// Primary is the libpq connection string of the server to stream from.
	Primary string
	// AppName is the standby's application_name (default: the slot name, else "pgharbor").
	AppName    string
	Slot       string
	CreateSlot bool
	Label      string // backup to restore (default: the newest usable)
	// RestoreCommand fetches archived WAL (pgharbor wal fetch); the standby falls back to it
	// whenever streaming cannot serve a segment.
	RestoreCommand string
	Workers        int
	NoSync         bool
	// Port and SocketDir, when set, are written into postgresql.auto.conf so that the
	// standby keeps them across restarts.
	Port      int
	SocketDir string
	Start     bool
	Wait      time.Duration
	Method    string // rebuild only
	Logger    *slog.Logger
	Progress  func(done, total int64)
}

// Report says what create or rebuild did.
type Report struct {
	PGData      string          `json:"pgdata"`
	Method      string          `json:"method"` // restore, delta-restore or rewind
	Backup      string          `json:"backup,omitempty"`
	Diverged    bool            `json:"diverged"`
	Restore     *restore.Result `json:"restore,omitempty"`
	Slot        string          `json:"slot,omitempty"`
	SlotCreated bool            `json:"slot_created"`
	AppName     string          `json:"application_name"`
	Streaming   bool            `json:"streaming"`
	// WALStaged counts the archived segments written into pg_wal before the start (see
	// stageWAL).
	WALStaged int     `json:"wal_staged"`
	Seconds   float64 `json:"seconds"`
	// Phases says where the time went: seconds from the command's start at which each step
	// ended.
	Phases Phases `json:"phases"`
}

// Phases are the seconds, counted from the start of create or rebuild, at which each step
// ended (0: the step did not run).
type Phases struct {
	Preflight float64 `json:"preflight_s"`
	Copy      float64 `json:"copy_s"`            // restore, delta restore or pg_rewind
	Stage     float64 `json:"stage_s,omitempty"` // archived WAL written into pg_wal
	Config    float64 `json:"config_s"`
	StartTimes
}

// Source is the repository side: the repository, its complete backups (oldest first) and
// its WAL archive.
type Source struct {
	Repo    *repo.Repo
	Backups []backup.Summary
	Archive wal.Archive
}

func (o *Options) defaults() error {
	if o.PGData == "" {
		return errors.New("--pgdata DIR is required")
	}
	if o.Primary == "" {
		return errors.New("--primary CONNINFO is required (or postgres.conn in the config)")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.AppName == "" {
		o.AppName = o.Slot
	}
	if o.AppName == "" {
		o.AppName = "pgharbor"
	}
	if o.Slot != "" && !validSlotName(o.Slot) {
		return fmt.Errorf("--slot %q: a slot name has only lower-case letters, digits and underscores (at most 63)", o.Slot)
	}
	if o.CreateSlot && o.Slot == "" {
		return errors.New("--create-slot needs --slot NAME")
	}
	return nil
}

func validSlotName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// checked is what the checks before any write found.
type checked struct {
	conninfo string
	appName  string // as the primary will see it
	primary  Primary
	slot     Slot
	identity repo.Identity
}

// preflight checks the primary and the slot; it writes nothing.
func preflight(ctx context.Context, src Source, o Options) (checked, error) {
	var c checked
	var err error
	if c.conninfo, c.appName, err = WithApplicationName(o.Primary, o.AppName); err != nil {
		return c, err
	}
	if c.identity, err = src.Repo.ReadIdentity(ctx); err != nil {
		return c, err
	}
	if c.primary, err = Probe(ctx, c.conninfo); err != nil {
		return c, err
	}
	if c.identity.SystemIdentifier != "" && c.primary.SystemIdentifier != c.identity.SystemIdentifier {
		return c, &PrimaryError{ReasonForeignPrimary, fmt.Sprintf("the primary's system identifier is %s, the repository's (cluster %s) is %s", c.primary.SystemIdentifier, src.Repo.Cluster(), c.identity.SystemIdentifier)}
	}
	if o.Slot != "" {
		if c.slot, err = SlotState(ctx, c.conninfo, o.Slot); err != nil {
			return c, err
		}
		switch {
		case c.slot.Exists && !c.slot.Physical:
			return c, fmt.Errorf("slot %q on the primary is a logical slot; a standby needs a physical one", o.Slot)
		case c.slot.Active:
			return c, &PrimaryError{ReasonSlotInUse, fmt.Sprintf("slot %q is active on the primary (walsender PID %d)", o.Slot, c.slot.ActivePID)}
		case !c.slot.Exists && !o.CreateSlot:
			return c, &PrimaryError{ReasonSlotMissing, fmt.Sprintf("slot %q does not exist on the primary", o.Slot)}
		}
	}
	return c, nil
}

// plan chooses the backup a standby starts from; it must lie on the primary's history.
func plan(src Source, o Options, p Primary) (*restore.Plan, error) {
	pl, err := restore.MakePlan(src.Backups, src.Archive, restore.Target{Kind: restore.TargetLatest, Timeline: "latest"}, o.Label)
	if err != nil {
		return nil, err
	}
	stop, err := wal.ParseLSN(pl.Backup.StopLSN)
	if err == nil && !p.History.Contains(wal.TimelineID(pl.Backup.Timeline), stop) {
		return nil, &PrimaryError{ReasonTimeline, fmt.Sprintf("backup %s ends at %s on timeline %d, which is not on the primary's history (timeline %d)", pl.Backup.Label, pl.Backup.StopLSN, pl.Backup.Timeline, p.Timeline)}
	}
	return pl, nil
}

// Create seeds a new standby in an empty (or missing) o.PGData from the repository.
func Create(ctx context.Context, src Source, o Options) (*Report, error) {
	t0 := time.Now()
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if ents, err := os.ReadDir(o.PGData); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("%s is not empty: replica create seeds an empty or missing directory; use `pgharbor replica rebuild` for an existing node", o.PGData)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	c, err := preflight(ctx, src, o)
	if err != nil {
		return nil, err
	}
	tPre := since(t0)
	pl, err := plan(src, o, c.primary)
	if err != nil {
		return nil, err
	}
	o.Logger.Info("replica create", "backup", pl.Backup.Label, "pgdata", o.PGData, "primary_timeline", c.primary.Timeline)
	res, err := restore.Execute(ctx, src.Repo, pl, restore.Options{
		PGData: o.PGData, StandbyMode: true, RestoreCommand: o.RestoreCommand, Workers: o.Workers,
		NoSync: o.NoSync, Logger: o.Logger, Progress: o.Progress,
	})
	if err != nil {
		return nil, fmt.Errorf("restore of backup %s into %s: %w", pl.Backup.Label, o.PGData, err)
	}
	rep := &Report{PGData: o.PGData, Method: "restore", Backup: pl.Backup.Label, Restore: res, Slot: o.Slot, AppName: c.appName}
	rep.Phases.Preflight, rep.Phases.Copy = tPre, since(t0)
	return rep, finishStandby(ctx, src, pl, o, c, rep, t0)
}

// finishStandby creates the slot when asked, writes the standby configuration and starts
// the standby when asked. pl is the backup just restored (nil after pg_rewind).
func finishStandby(ctx context.Context, src Source, pl *restore.Plan, o Options, c checked, rep *Report, t0 time.Time) error {
	defer func() { rep.Seconds = time.Since(t0).Seconds() }()
	owner, err := restore.OwnerFor(o.PGData)
	if err != nil {
		return err
	}
	if o.Slot != "" && !c.slot.Exists {
		if err := CreateSlot(ctx, c.conninfo, o.Slot); err != nil {
			return err
		}
		rep.SlotCreated = true
		o.Logger.Info("slot created on the primary", "slot", o.Slot)
	}
	extra := map[string]string{}
	if o.Port != 0 {
		extra["port"] = strconv.Itoa(o.Port)
	}
	if o.SocketDir != "" {
		extra["unix_socket_directories"] = o.SocketDir
	}
	final := Settings{PrimaryConnInfo: c.conninfo, SlotName: o.Slot, RestoreCommand: o.RestoreCommand, Standby: true, Extra: extra}
	first := final
	var afterStart func() error
	if o.Start && o.RestoreCommand != "" && pl != nil {
		if n := stageWAL(ctx, src, pl, o, c, owner); n > 0 {
			rep.WALStaged = n
			rep.Phases.Stage = since(t0)
			// The server starts without restore_command and gets it once it streams (or
			// cannot): see StartOptions.AfterStart.
			first.RestoreCommand = ""
			afterStart = func() error {
				if err := WriteAutoConf(o.PGData, final, owner); err != nil {
					return fmt.Errorf("%w; the standby runs without restore_command until it is set", err)
				}
				if pid := PostmasterPID(o.PGData); pid != 0 {
					if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
						return fmt.Errorf("reload the standby (PID %d) for its restore_command: %w; run pg_ctl reload -D %s", pid, err, o.PGData)
					}
				}
				o.Logger.Debug("restore_command set", "pgdata", o.PGData)
				return nil
			}
		}
	}
	if err := WriteAutoConf(o.PGData, first, owner); err != nil {
		return err
	}
	rep.Phases.Config = since(t0)
	if !o.Start {
		return nil
	}
	err = StartAndWaitStreaming(ctx, StartOptions{PGData: o.PGData, BinDir: o.BinDir, Cred: owner, Wait: o.Wait, SyncFS: true,
		PrimaryConnInfo: c.conninfo, Slot: o.Slot, AppName: c.appName, Logger: o.Logger, Times: &rep.Phases.StartTimes, Since: t0,
		AfterStart: afterStart})
	o.Logger.Debug("replica phases", "pgdata", o.PGData, "phases", rep.Phases)
	if err != nil {
		return err
	}
	rep.Streaming = true
	return nil
}

// maxStaged bounds the archived segments written into pg_wal before a standby starts: past
// it the standby starts with restore_command as usual, and fetches them one call at a time.
const maxStaged = 64

// stageWAL writes into the restored data directory's pg_wal the archived segments the
// standby replays before it can stream: from the backup's start to the newest archived
// segment, when they are all there (at most maxStaged) and the primary is still on the
// backup's timeline. It returns how many it wrote, 0 when the standby should start with
// restore_command instead.
//
// Why: PostgreSQL in standby mode asks restore_command first for every file it reads (the
// next timeline's history file, each segment, the segment after the archive's end, twice),
// one process each, before it turns to streaming; those calls were most of a rebuild's
// start. A standby whose pg_wal already holds the archived WAL, and that has no
// restore_command yet, reads pg_wal and then streams, with no process started. The segments
// are checked as a fetch checks them (decoded whole, header naming the position and the
// system in the restored pg_control) before they appear in pg_wal.
func stageWAL(ctx context.Context, src Source, pl *restore.Plan, o Options, c checked, owner *syscall.Credential) int {
	b := pl.Backup
	tli := wal.TimelineID(b.Timeline)
	if tli != c.primary.Timeline || (b.StopTimeline != 0 && wal.TimelineID(b.StopTimeline) != tli) {
		return 0 // a timeline switch to follow: restore_command brings the history files
	}
	start, err := wal.ParseLSN(b.StartLSN)
	if err != nil {
		return 0
	}
	names, complete := wal.StageRange(src.Archive, tli, start, maxStaged)
	if !complete || len(names) == 0 {
		o.Logger.Debug("archived WAL not staged", "segments", len(names), "complete", complete)
		return 0
	}
	walDir := filepath.Join(o.PGData, "pg_wal")
	err = wal.StageSegments(ctx, src.Repo, o.PGData, names, 2)
	for _, n := range names {
		// Marked archived, as PostgreSQL marks a segment restore_command gave it: a standby
		// promoted later must not archive them again.
		done := filepath.Join(walDir, "archive_status", n+".done")
		if err == nil {
			err = os.WriteFile(done, nil, 0o600)
		}
		for _, p := range []string{filepath.Join(walDir, n), done} {
			if err == nil && owner != nil {
				err = os.Chown(p, int(owner.Uid), int(owner.Gid))
			}
		}
	}
	if err != nil {
		// Nothing half-staged stays behind (possibly owned by another user than the server's).
		for _, n := range names {
			os.Remove(filepath.Join(walDir, n))
			os.Remove(filepath.Join(walDir, "archive_status", n+".done"))
		}
		o.Logger.Warn("archived WAL not staged; the standby fetches it through restore_command", "err", err)
		return 0
	}
	o.Logger.Debug("archived WAL staged in pg_wal", "first", names[0], "last", names[len(names)-1], "segments", len(names))
	return len(names)
}

// configFiles are the node's own configuration, kept across a rebuild: pg_rewind copies the
// primary's and a restore brings the backup's, but the node keeps its port, paths and
// access rules.
var configFiles = []string{"postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf"}

// Rebuild brings a stopped standby or former primary in o.PGData back as a standby of
// o.Primary: pg_rewind or a delta restore (o.Method), then the standby configuration.
func Rebuild(ctx context.Context, src Source, o Options) (*Report, error) {
	t0 := time.Now()
	if err := o.defaults(); err != nil {
		return nil, err
	}
	switch o.Method {
	case "":
		o.Method = MethodAuto
	case MethodAuto, MethodRewind, MethodRestore:
	default:
		return nil, fmt.Errorf("--method %q: want auto, rewind or restore", o.Method)
	}
	if pid := PostmasterPID(o.PGData); pid != 0 {
		return nil, fmt.Errorf("a postmaster (PID %d) is running on %s: stop it first (pg_ctl stop -D %s -m fast); nothing was changed", pid, o.PGData, o.PGData)
	}
	ctl, err := ReadControl(ctx, o.BinDir, o.PGData)
	if err != nil {
		return nil, fmt.Errorf("replica rebuild needs an existing data directory (use `pgharbor replica create` for an empty one): %w", err)
	}
	c, err := preflight(ctx, src, o)
	if err != nil {
		return nil, err
	}
	tPre := since(t0)
	if c.identity.SystemIdentifier != "" && ctl.SystemIdentifier != c.identity.SystemIdentifier {
		return nil, fmt.Errorf("%s belongs to another cluster: its system identifier is %s, the repository's (cluster %s) is %s; refusing to overwrite it, nothing was changed", o.PGData, ctl.SystemIdentifier, src.Repo.Cluster(), c.identity.SystemIdentifier)
	}
	tli, lsn := ctl.Position()
	diverged := Diverged(tli, lsn, c.primary.Timeline, c.primary.History)
	if sw, ok := c.primary.History.SwitchPoint(tli); ok && !diverged {
		if diverged, err = WALAfter(ctx, o.BinDir, o.PGData, tli, sw); err != nil {
			return nil, err
		}
	}
	method := o.Method
	if method == MethodRewind && !ctl.Rewindable() {
		return nil, fmt.Errorf("pg_rewind cannot work on %s: it has neither wal_log_hints = on nor data checksums; use --method restore; nothing was changed", o.PGData)
	}
	if method == MethodAuto {
		method = MethodRestore
		if diverged && ctl.Rewindable() {
			method = MethodRewind
		}
	}
	var pl *restore.Plan
	switch {
	case method == MethodRestore:
		if pl, err = plan(src, o, c.primary); err != nil {
			return nil, err
		}
	case o.Method == MethodAuto:
		// The fallback of a failed pg_rewind; without a usable backup there is none, which
		// does not stop the rewind itself.
		if pl, err = plan(src, o, c.primary); err != nil {
			o.Logger.Warn("no backup to fall back on should pg_rewind fail", "err", err)
		}
	}
	o.Logger.Info("replica rebuild", "pgdata", o.PGData, "method", method, "diverged", diverged,
		"node_timeline", tli, "node_lsn", lsn, "primary_timeline", c.primary.Timeline)
	saved := map[string][]byte{}
	for _, name := range configFiles {
		if b, err := os.ReadFile(filepath.Join(o.PGData, name)); err == nil {
			saved[name] = b
		}
	}
	// A postmaster.pid whose process is gone is left by a crash; the restore refuses it.
	os.Remove(filepath.Join(o.PGData, "postmaster.pid"))
	owner, err := restore.OwnerFor(o.PGData)
	if err != nil {
		return nil, err
	}
	rep := &Report{PGData: o.PGData, Diverged: diverged, Slot: o.Slot, AppName: c.appName}
	rep.Phases.Preflight = tPre
	if method == MethodRewind {
		err := rewind(ctx, o, c, owner)
		if err == nil {
			rep.Method = "rewind"
		} else if o.Method == MethodAuto && pl != nil {
			o.Logger.Warn("pg_rewind failed; rebuilding with a delta restore instead", "err", err)
			method = MethodRestore
		} else {
			return nil, err
		}
	}
	if method == MethodRestore {
		res, err := restore.Execute(ctx, src.Repo, pl, restore.Options{
			PGData: o.PGData, Delta: true, StandbyMode: true, RestoreCommand: o.RestoreCommand, Workers: o.Workers,
			NoSync: o.NoSync, Logger: o.Logger, Progress: o.Progress,
		})
		if err != nil {
			return nil, fmt.Errorf("delta restore of backup %s into %s: %w", pl.Backup.Label, o.PGData, err)
		}
		rep.Method, rep.Backup, rep.Restore = "delta-restore", pl.Backup.Label, res
	}
	rep.Phases.Copy = since(t0)
	for name, b := range saved {
		if err := writeFileAtomic(filepath.Join(o.PGData, name), b, owner); err != nil {
			return nil, err
		}
	}
	if rep.Method == "rewind" {
		pl = nil // no backup was restored: nothing to stage WAL from
	}
	return rep, finishStandby(ctx, src, pl, o, c, rep, t0)
}

// rewind runs pg_rewind against the primary as the data directory's owner (pg_rewind
// refuses root). -c lets it fetch WAL the node no longer has through restore_command, which
// is written first for that reason.
func rewind(ctx context.Context, o Options, c checked, owner *syscall.Credential) error {
	if err := checkpointAfterPromotion(ctx, c.conninfo, c.primary.Timeline, o.Logger); err != nil {
		return err
	}
	args := []string{"-D", o.PGData, "--source-server", c.conninfo}
	if o.RestoreCommand != "" {
		if err := WriteAutoConf(o.PGData, Settings{RestoreCommand: o.RestoreCommand}, owner); err != nil {
			return err
		}
		args = append(args, "--restore-target-wal")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(o.BinDir, "pg_rewind"), args...)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if owner != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: owner}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_rewind: %w\n%s", err, strings.TrimSpace(string(out)))
	}
	o.Logger.Info("pg_rewind done", "output", strings.TrimSpace(string(out)))
	return nil
}

// checkpointAfterPromotion makes a freshly promoted primary write a checkpoint: until it
// does, its pg_control still names the old timeline, and pg_rewind, which reads the
// timeline there, answers "no rewind required" for a node that did diverge.
func checkpointAfterPromotion(ctx context.Context, conninfo string, tli wal.TimelineID, log *slog.Logger) error {
	conn, err := sqlConn(ctx, conninfo)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var ctlTLI uint32
	if err := conn.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&ctlTLI); err != nil {
		return fmt.Errorf("read the primary's checkpoint timeline: %w", err)
	}
	if wal.TimelineID(ctlTLI) >= tli {
		return nil
	}
	log.Info("the primary has not checkpointed since its promotion; asking for a checkpoint before pg_rewind", "control_timeline", ctlTLI, "timeline", tli)
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("the primary has not checkpointed since its promotion (its pg_control still says timeline %d), and CHECKPOINT failed: %w; run CHECKPOINT on it (superuser or pg_checkpoint) and rebuild again", ctlTLI, err)
	}
	return nil
}

// since is the seconds from t0, to the millisecond.
func since(t0 time.Time) float64 { return math.Round(time.Since(t0).Seconds()*1000) / 1000 }
