package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/storage"
)

func newBackupCmd(a *app) *cobra.Command {
	var fast, noArchiveCheck, checksumAll, fromStandby bool
	var conn, method, typ, primary, maxRate string
	var annotations []string
	var archiveTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Take a base backup: full, differential or incremental",
		Long: `backup takes a base backup into the repository: compressed, encrypted, small files
bundled, large files split, with bounded memory. --type full stores every file; --type incr
stores only the 128 KiB chunks that changed since the newest backup of any type, --type diff
those that changed since the newest full backup. Either way the backup's manifest lists every
file, and a restore of it reads each chunk from the backup that stored it, in one pass. Without
a backup to compare with, diff and incr take a full backup and say so. When pgharbor runs on the database host and can
read the data directory, it reads the files itself between pg_backup_start and pg_backup_stop
(--method local, the fastest); elsewhere it streams BASE_BACKUP over a replication connection
(--method stream). The default, auto, picks local when it can prove the data directory it sees
is the server's (postmaster.pid, process parentage, system identifier).
The pgharbor manifest is written last; a backup without it does not exist for any command.
The server must archive its WAL with archive_command = 'pgharbor wal push %p': the backup is
complete only once the WAL that makes it consistent is in the repository.

With --from-standby (backup.from: standby) postgres.conn is a streaming standby: the backup
runs pg_backup_start/pg_backup_stop (or BASE_BACKUP) there and reads the standby's files, so
the primary reads none. The WAL still comes from the primary's archive_command (or a WAL
receiver); a standby cannot switch WAL segments, so the backup waits, within
--archive-timeout, for the primary to archive the segment holding its stop position. Give
--primary CONNINFO (backup.primary) and pgharbor asks the primary to pg_switch_wal() instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("conn") {
				a.cfg.Postgres.Conn = conn
			}
			req := a.backupRequestFromConfig()
			if cmd.Flags().Changed("fast-checkpoint") {
				req.fastCheckpoint = fast
			}
			if cmd.Flags().Changed("method") {
				req.method = method
			}
			if cmd.Flags().Changed("type") {
				req.typ = typ
			}
			if cmd.Flags().Changed("checksum-all") {
				req.checksumAll = checksumAll
			}
			if cmd.Flags().Changed("from-standby") {
				req.fromStandby = fromStandby
			}
			if cmd.Flags().Changed("primary") {
				req.primary = primary
			}
			if cmd.Flags().Changed("max-rate") {
				req.maxRate = maxRate
			}
			for _, kv := range annotations {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--annotation %q: want KEY=VALUE", kv)
				}
				if req.annotations == nil {
					req.annotations = map[string]string{}
				}
				req.annotations[k] = v
			}
			req.archiveCheck, req.archiveTimeout = !noArchiveCheck, archiveTimeout
			bar := a.newProgress("backup")
			req.progress = bar.update
			collectBackupGarbageSooner()
			sum, err := a.runBackup(cmd.Context(), req)
			bar.finish()
			if err != nil {
				return err
			}
			return a.print(sum, func() {
				kind := sum.Type
				if sum.Parent != "" {
					kind += " (parent " + sum.Parent + ", " + humanBytes(sum.Reused) + " unchanged)"
				}
				fmt.Fprintf(a.stdout, "backup %s complete: %s, %s in %d files, stored %s (%.0f%%) in %d bundles, %.1f s, %s/s, WAL %s..%s timeline %d%s\n",
					sum.Label, kind, humanBytes(sum.Size), sum.Files, humanBytes(sum.StoredSize), 100*float64(sum.StoredSize)/float64(max(sum.Size, 1)),
					sum.Bundles, sum.Duration, humanBytes(int64(float64(sum.Size)/max(sum.Duration, 0.001))), sum.StartLSN, sum.StopLSN, sum.Timeline, fromNote(sum.From))
				if sum.ChecksumFailures > 0 {
					fmt.Fprintf(a.stdout, "warning: %d data pages failed checksum verification; they are in the backup as read (the log names the files and blocks)\n", sum.ChecksumFailures)
				}
			})
		},
	}
	cmd.Flags().BoolVar(&fast, "fast-checkpoint", true, "ask the server for an immediate checkpoint (backup.fast_checkpoint)")
	cmd.Flags().StringVar(&conn, "conn", "", "connection string of the server (postgres.conn)")
	cmd.Flags().StringVar(&method, "method", backup.MethodAuto, "how to read the cluster: local (read the data directory on this host, between pg_backup_start and pg_backup_stop), stream (BASE_BACKUP over a replication connection), auto (local when the server's data directory is on this host and readable, else stream) (backup.method)")
	cmd.Flags().StringVar(&typ, "type", backup.TypeFull, "full (every file), incr (the chunks changed since the newest backup) or diff (the chunks changed since the newest full backup) (backup.type)")
	cmd.Flags().BoolVar(&checksumAll, "checksum-all", false, "with --method local, read and hash every file in a diff or incr backup, instead of taking files whose size and modification time are unchanged from the parent (backup.checksum_all)")
	cmd.Flags().BoolVar(&fromStandby, "from-standby", false, "the server (--conn) is a standby: back it up there, the primary reads no data file (backup.from: standby)")
	cmd.Flags().StringVar(&primary, "primary", "", "with --from-standby: connection string of the standby's primary, asked to pg_switch_wal() so the backup need not wait for its last segment (backup.primary)")
	cmd.Flags().BoolVar(&noArchiveCheck, "no-archive-check", false, "do not wait for the backup's WAL to be in the repository (the backup then needs WAL from elsewhere)")
	cmd.Flags().DurationVar(&archiveTimeout, "archive-timeout", defaultArchiveTimeout, "how long to wait for the backup's WAL to reach the repository")
	cmd.Flags().StringArrayVar(&annotations, "annotation", nil, "KEY=VALUE note stored with the backup and shown by info (repeatable), e.g. --annotation reason=before-upgrade")
	cmd.Flags().StringVar(&maxRate, "max-rate", "", "cap on the bytes read per second from the cluster, with an optional k, M or G suffix (e.g. 100M), so a backup leaves a busy server disk bandwidth (backup.max_rate)")
	cmd.AddCommand(newBackupCleanupCmd(a), newBackupPinCmd(a, true), newBackupPinCmd(a, false))
	return cmd
}

// backupRequest is what one backup is asked to do beyond the configuration.
type backupRequest struct {
	fastCheckpoint bool
	method         string
	typ            string
	checksumAll    bool
	fromStandby    bool
	primary        string
	archiveCheck   bool
	archiveTimeout time.Duration
	maxRate        string
	annotations    map[string]string
	progress       func(done, total int64)
}

// defaultArchiveTimeout is how long a backup waits for its WAL to be archived.
const defaultArchiveTimeout = 60 * time.Second

// backupRequestFromConfig is the request the configuration alone makes, with the same
// defaults as the command's flags: the server's scheduled backups are exactly this.
func (a *app) backupRequestFromConfig() backupRequest {
	req := backupRequest{fastCheckpoint: true, method: backup.MethodAuto, typ: backup.TypeFull, archiveCheck: true, archiveTimeout: defaultArchiveTimeout,
		checksumAll: a.cfg.Backup.ChecksumAll, maxRate: a.cfg.Backup.MaxRate}
	if t := a.cfg.Backup.Type; t != "" {
		req.typ = t
	}
	if fc := a.cfg.Backup.FastCheckpoint; fc != nil {
		req.fastCheckpoint = *fc
	}
	if m := a.cfg.Backup.Method; m != "" {
		req.method = m
	}
	req.fromStandby = a.cfg.Backup.From == backup.FromStandby
	req.primary = a.cfg.Backup.Primary
	return req
}

// runBackup takes a backup of the configured cluster: `pgharbor backup` and the server's
// backup job both run it.
func (a *app) runBackup(ctx context.Context, req backupRequest) (*backup.Summary, error) {
	if a.clusterErr != nil {
		return nil, a.clusterErr
	}
	if a.cfg.Postgres.Conn == "" {
		return nil, errors.New("no server to back up: set --conn, postgres.conn or PGHARBOR_POSTGRES_CONN")
	}
	if f := a.cfg.Backup.From; f != "" && f != backup.FromPrimary && f != backup.FromStandby {
		return nil, fmt.Errorf("backup.from %q: want primary or standby", f)
	}
	maxRate, err := backup.ParseRate(req.maxRate)
	if err != nil {
		return nil, fmt.Errorf("backup.max_rate / --max-rate: %w", err)
	}
	r, err := a.openRepo(ctx, false)
	if err != nil {
		return nil, err
	}
	defer r.Backend().Close()
	boundMemory(ctx)
	bc := a.cfg.Backup
	o := backup.Options{
		ConnString: a.cfg.Postgres.Conn, FastCheckpoint: req.fastCheckpoint, Method: req.method, DataDir: a.cfg.Postgres.DataDir,
		Workers: bc.Workers, Uploads: bc.Uploads, BundleSize: bc.BundleSizeMB << 20, LockStale: bc.LockTimeout,
		Progress: req.progress, Logger: a.logger, Type: req.typ, ChecksumAll: req.checksumAll, FullAfter: bc.FullAfter,
		FromStandby: req.fromStandby, PrimaryConnString: req.primary, MaxRate: maxRate, Annotations: req.annotations,
		SpillInMemory: backupTestSpill(),
	}
	if req.archiveCheck {
		o.ArchiveCheck = a.archiveCheck(r, req.archiveTimeout)
	}
	return backup.Run(ctx, r, o)
}

func newBackupCleanupCmd(a *app) *cobra.Command {
	tempAge := time.Hour
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove what killed backups and writes left behind: unfinished backups (no manifest, not running) and stale temporary files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if tempAge < 0 {
				// A cutoff in the future would take files still being written.
				return fmt.Errorf("--temp-age %s: must not be negative", tempAge)
			}
			ctx := cmd.Context()
			r, err := a.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			removed, err := backup.Cleanup(ctx, r)
			if err != nil {
				return err
			}
			if removed == nil {
				removed = []string{}
			}
			temp, err := storage.RemoveTemp(ctx, r.Backend(), time.Now().Add(-tempAge))
			if err != nil {
				return fmt.Errorf("remove temporary files: %w", err)
			}
			return a.print(struct {
				Removed   []string            `json:"removed"`
				TempFiles storage.TempRemoved `json:"temp_files"`
			}{removed, temp}, func() {
				if len(removed) == 0 {
					fmt.Fprintln(a.stdout, "no incomplete backups to remove")
				}
				for _, l := range removed {
					fmt.Fprintf(a.stdout, "removed incomplete backup %s\n", l)
				}
				if temp.Count > 0 {
					fmt.Fprintf(a.stdout, "removed %d temporary files of interrupted writes (%s)\n", temp.Count, humanBytes(temp.Bytes))
				}
			})
		},
	}
	cmd.Flags().DurationVar(&tempAge, "temp-age", tempAge,
		"remove temporary files of writes killed before they finished (file://) not written to for this long, and S3 multipart uploads started longer ago")
	return cmd
}

// fromNote says, in the one-line report, that a backup was read from a standby.
func fromNote(from string) string {
	if from == backup.FromStandby {
		return ", from a standby"
	}
	return ""
}
