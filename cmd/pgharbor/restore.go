package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/restore"
	"github.com/pgharbor/pgharbor/wal"
)

type restoreFlags struct {
	pgdata, targetTime, targetLSN, targetXID, targetName, target, timeline, action, label string
	tsMap, dbInclude                                                                      []string
	delta, start, exclusive, noSync                                                       bool
	workers, port, flushAfterMB                                                           int
	socketDir, archiveMode                                                                string
	startTimeout                                                                          time.Duration
}

func newRestoreCmd(a *app) *cobra.Command {
	var f restoreFlags
	cmd := &cobra.Command{
		Use:   "restore --pgdata DIR [target]",
		Short: "Restore a backup into a data directory, for point-in-time recovery",
		Long: `restore writes the backup chosen for the target into --pgdata (in parallel), then configures
recovery: recovery.signal, and restore_command = 'pgharbor wal fetch %f %p' with the target
settings in postgresql.auto.conf. With no target it recovers to the end of the archived WAL.
A target outside the recoverable window is refused before anything is written.

Targets (one of): --target-time, --target-lsn, --target-xid, --target-name,
--target immediate|latest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return a.runRestore(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.pgdata, "pgdata", "", "data directory to restore into (empty or missing, or any with --delta)")
	fl.StringVar(&f.targetTime, "target-time", "", "recover to this time (RFC 3339 or '2006-01-02 15:04:05+00')")
	fl.StringVar(&f.targetLSN, "target-lsn", "", "recover to this WAL location (e.g. 0/3000060)")
	fl.StringVar(&f.targetXID, "target-xid", "", "recover to the commit of this transaction id")
	fl.StringVar(&f.targetName, "target-name", "", "recover to this named restore point (pg_create_restore_point)")
	fl.StringVar(&f.target, "target", "", "immediate (end of the backup) or latest (end of the archived WAL, the default)")
	fl.StringVar(&f.timeline, "target-timeline", "", "recovery_target_timeline: current, latest or a number")
	fl.StringVar(&f.action, "target-action", "", "promote, pause (PostgreSQL's default) or shutdown when the target is reached")
	fl.BoolVar(&f.exclusive, "target-exclusive", false, "stop just before the target instead of just after it")
	fl.StringVar(&f.label, "backup", "", "restore this backup (default: the newest one that can reach the target)")
	fl.StringArrayVar(&f.tsMap, "tablespace-map", nil, "OLD=NEW: restore the tablespace at OLD (location or OID) into NEW (repeatable)")
	fl.StringArrayVar(&f.dbInclude, "db-include", nil, "restore only this user database (name or OID; repeatable): the others' relation files become sparse zeroed files, so recovery runs; drop those databases afterwards (template0, template1 and postgres are always restored)")
	fl.BoolVar(&f.delta, "delta", false, "reuse a non-empty data directory (server stopped): keep files whose content (SHA-256 per piece) matches the backup, write only the pieces that differ, always rewrite pg_control (last) and the other files PostgreSQL reads specially")
	fl.IntVar(&f.workers, "workers", 4, "bundles downloaded and written in parallel")
	fl.BoolVar(&f.noSync, "no-sync", false, "do not wait for the restored files to reach the disk (faster; for throwaway copies such as test databases: a crash soon after can damage the copy)")
	fl.IntVar(&f.flushAfterMB, "flush-after", restore.DefaultFlushAfter>>20, "MiB written between two background flushes to disk (each then leaves the page cache); 0: flush only at the end")
	fl.BoolVar(&f.start, "start", false, "start PostgreSQL afterwards and wait until recovery reached the target")
	fl.IntVar(&f.port, "port", 5432, "with --start: the port to start PostgreSQL on")
	fl.StringVar(&f.socketDir, "socket-dir", "", "with --start: unix socket directory (default: the restored setting)")
	fl.StringVar(&f.archiveMode, "archive-mode", "preserve", "off: the restored cluster does not archive WAL (a refreshed copy must not push into this repository); preserve keeps the backed-up setting")
	fl.DurationVar(&f.startTimeout, "start-timeout", 30*time.Minute, "with --start: how long recovery may take")
	return cmd
}

func parseTarget(f restoreFlags) (restore.Target, error) {
	t := restore.Target{Kind: restore.TargetLatest, Timeline: f.timeline, Action: f.action, Exclusive: f.exclusive}
	n := 0
	for _, v := range []string{f.targetTime, f.targetLSN, f.targetXID, f.targetName, f.target} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return t, errors.New("give one target: --target-time, --target-lsn, --target-xid, --target-name or --target")
	}
	switch {
	case f.targetTime != "":
		tm, err := parseTime(f.targetTime)
		if err != nil {
			return t, err
		}
		t.Kind, t.Time = restore.TargetTime, tm
	case f.targetLSN != "":
		l, err := wal.ParseLSN(f.targetLSN)
		if err != nil {
			return t, fmt.Errorf("--target-lsn: %w", err)
		}
		t.Kind, t.LSN = restore.TargetLSN, l
	case f.targetXID != "":
		x, err := strconv.ParseUint(f.targetXID, 10, 64)
		if err != nil {
			return t, fmt.Errorf("--target-xid %q: not a transaction id", f.targetXID)
		}
		t.Kind, t.XID = restore.TargetXID, x
	case f.targetName != "":
		t.Kind, t.Name = restore.TargetName, f.targetName
	case f.target == "immediate":
		t.Kind = restore.TargetImmediate
	case f.target == "latest", f.target == "":
		t.Kind = restore.TargetLatest
	default:
		return t, fmt.Errorf("--target %q: want immediate or latest", f.target)
	}
	return t, t.Validate()
}

func parseTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999-07", "2006-01-02 15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("--target-time %q: use RFC 3339 (2026-11-22T10:00:00Z) or '2026-11-22 10:00:00+00' (no zone means UTC)", s)
}

func (a *app) runRestore(cmd *cobra.Command, f restoreFlags) error {
	ctx := cmd.Context()
	if f.pgdata == "" {
		return errors.New("--pgdata DIR is required")
	}
	pgdata, err := filepath.Abs(f.pgdata)
	if err != nil {
		return err
	}
	if f.archiveMode != "off" && f.archiveMode != "preserve" {
		return fmt.Errorf("--archive-mode %q: want off or preserve", f.archiveMode)
	}
	if f.flushAfterMB < 0 {
		return fmt.Errorf("--flush-after %d: want MiB ≥ 0 (0: flush only at the end)", f.flushAfterMB)
	}
	t, err := parseTarget(f)
	if err != nil {
		return err
	}
	tsMap := map[string]string{}
	for _, m := range f.tsMap {
		old, nw, ok := strings.Cut(m, "=")
		if !ok || old == "" || !filepath.IsAbs(nw) {
			return fmt.Errorf("--tablespace-map %q: want OLD=NEW with an absolute NEW path", m)
		}
		tsMap[old] = nw
	}
	r, cat, err := a.openCatalog(ctx, true)
	if err != nil {
		return err
	}
	defer r.Backend().Close()
	for _, rf := range cat.Refused {
		if rf.Label == f.label {
			return fmt.Errorf("backup %s is refused: %s", rf.Label, rf.Reason)
		}
		a.logger.Warn("backup left out: it failed authentication", "label", rf.Label, "reason", rf.Reason)
	}
	arch, err := wal.ListArchive(ctx, r)
	if err != nil {
		return err
	}
	plan, err := restore.MakePlan(cat.Backups, arch, t, f.label)
	if err != nil {
		return err
	}
	restoreCmd, err := a.restoreCommand()
	if err != nil {
		return err
	}
	a.logger.Info("restore planned", "backup", plan.Backup.Label, "target", t.Kind, "window", plan.Window.String(), "pgdata", pgdata)
	if err := wal.ClearPrefetched(a.cfg.WAL.SpoolDir, a.spoolID()); err != nil {
		a.logger.Warn("could not empty the prefetch spool; its segments are still checked before use", "err", err)
	}
	boundMemory(ctx)
	bar := a.newProgress("restore")
	start := time.Now()
	res, err := restore.Execute(ctx, r, plan, restore.Options{
		PGData: pgdata, TablespaceMap: tsMap, Delta: f.delta, Workers: f.workers,
		RestoreCommand: restoreCmd, ArchiveOff: f.archiveMode == "off", NoSync: f.noSync, FlushAfter: flushAfter(f.flushAfterMB), Logger: a.logger, Progress: bar.update,
		DBInclude: f.dbInclude,
	})
	bar.finish()
	if err != nil {
		return fmt.Errorf("restore of backup %s into %s: %w", plan.Backup.Label, pgdata, err)
	}
	secs := time.Since(start).Seconds()
	a.logger.Info("restore written", "backup", plan.Backup.Label, "bytes", res.Bytes, "files_written", res.FilesWritten, "files_kept", res.FilesKept, "files_patched", res.FilesPatched, "seconds", fmt.Sprintf("%.1f", secs))
	if f.start {
		bin := a.pgBinDir(plan.Backup.PGVersion)
		cred, err := restore.OwnerFor(pgdata)
		if err != nil {
			return err
		}
		if err := restore.StartAndWait(ctx, plan, restore.StartOptions{PGData: pgdata, BinDir: bin, Port: f.port, SocketDir: f.socketDir, Timeout: f.startTimeout, Cred: cred}); err != nil {
			return err
		}
	}
	out := map[string]any{"backup": plan.Backup.Label, "pgdata": pgdata, "target": t.Kind, "settings": plan.Settings, "result": res, "seconds": secs, "started": f.start}
	return a.print(out, func() {
		fmt.Fprintf(a.stdout, "restored backup %s into %s: %s written in %d files (%s%d kept, %d removed), %.1f s, %s/s\n",
			plan.Backup.Label, pgdata, humanBytes(res.Bytes), res.FilesWritten, patchedNote(res), res.FilesKept, res.FilesRemoved, secs, humanBytes(int64(float64(res.Bytes)/max(secs, 0.001))))
		if len(res.Excluded) > 0 {
			fmt.Fprintf(a.stdout, "left out (%d files zeroed, unusable until dropped): %s\n", res.FilesZeroed, excludedNames(res.Excluded))
		}
		if f.start {
			fmt.Fprintf(a.stdout, "PostgreSQL is running on port %d and reached the target (%s)\n", f.port, t.Kind)
		} else {
			fmt.Fprintf(a.stdout, "start PostgreSQL on %s to recover to the target (%s)\n", pgdata, t.Kind)
		}
	})
}

// restoreCommand is the restore_command written into the restored cluster: this binary with
// the repository settings that are not secrets; secrets come from the config file, which the
// server's OS user must be able to read.
func (a *app) restoreCommand() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	parts := []string{shellQuote(exe)}
	if a.configPath != "" {
		abs, err := filepath.Abs(a.configPath)
		if err != nil {
			return "", err
		}
		parts = append(parts, "--config", shellQuote(abs))
		if a.clusterSelected != "" {
			// The file lists clusters: wal fetch must read this one's settings.
			parts = append(parts, "--cluster-name", shellQuote(a.clusterSelected))
		}
	}
	parts = append(parts, "--repo", shellQuote(a.cfg.Repo.URL), "--cluster", shellQuote(a.cfg.Repo.Cluster), "--encryption", shellQuote(a.cfg.Encryption.Mode))
	if id := a.cfg.Encryption.IdentityFile; id != "" {
		abs, err := filepath.Abs(id)
		if err != nil {
			return "", err
		}
		parts = append(parts, "--identity", shellQuote(abs))
	}
	// Verify keys are public; PostgreSQL's fetches must refuse what this restore refuses.
	for _, k := range a.cfg.Repo.VerifyKeys {
		parts = append(parts, "--verify-key", shellQuote(strings.TrimSpace(k)))
	}
	parts = append(parts, "wal", "fetch", "%f", "%p")
	return strings.Join(parts, " "), nil
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-:=,+@", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// flushAfter turns --flush-after (MiB, 0 = only at the end) into restore.Options.FlushAfter.
func flushAfter(mb int) int64 {
	if mb == 0 {
		return -1
	}
	return int64(mb) << 20
}

// pgBinDir is where pg_ctl and the other PostgreSQL programs are: postgres.bin_dir, else
// Debian's directory for the major version of version (server_version_num; 15 when unknown).
func (a *app) pgBinDir(version int) string {
	if a.cfg.Postgres.BinDir != "" {
		return a.cfg.Postgres.BinDir
	}
	return fmt.Sprintf("/usr/lib/postgresql/%d/bin", max(version/10000, 15))
}

// patchedNote says how many of the files written a delta restore only patched.
func patchedNote(res *restore.Result) string {
	if res.FilesPatched == 0 {
		return ""
	}
	return fmt.Sprintf("%d only in their changed pieces, ", res.FilesPatched)
}

// excludedNames lists the databases a --db-include restore left out, for people.
func excludedNames(dbs []backup.Database) string {
	var parts []string
	for _, d := range dbs {
		if d.Name == "" {
			parts = append(parts, fmt.Sprintf("OID %d", d.OID))
		} else {
			parts = append(parts, fmt.Sprintf("%s (OID %d)", d.Name, d.OID))
		}
	}
	return strings.Join(parts, ", ") + `: run DROP DATABASE for each`
}
