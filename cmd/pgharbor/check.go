package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/wal"
)

// Check outcomes.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "fail"
	checkSkip = "skip"
)

// checkItem is one line of `pgharbor check`.
type checkItem struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok, warn, fail or skip
	Detail string `json:"detail"`
}

// checkReport is `pgharbor check --output json`.
type checkReport struct {
	OK     bool        `json:"ok"` // no check failed (warnings allowed)
	Checks []checkItem `json:"checks"`
}

func (r *checkReport) add(name, status, format string, args ...any) {
	r.Checks = append(r.Checks, checkItem{Name: name, Status: status, Detail: fmt.Sprintf(format, args...)})
}

func newCheckCmd(a *app) *cobra.Command {
	var timeout time.Duration
	var noSwitch bool
	var conn string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the setup end to end: repository, keys, server settings, and a WAL segment archived and read back",
		Long: `Check that this host's configuration works before the first backup is needed, as
pgBackRest's check and Barman's check do. Each line is ok, warn, fail or skip:

  repository      the cluster's identity (pgharbor.json) is readable
  encryption      the configured encryption and recipients match the repository's
  server          postgres.conn answers; version, primary or standby
  system          the server's system identifier is the repository's
  wal_level       replica or logical
  archiving       archive_mode and archive_command (pgharbor wal push %p), or a WAL receiver
  archiver        pg_stat_archiver: failures and the backlog of segments not yet archived
  archive         on a primary: a restore point and pg_switch_wal(), then the switched
                  segment must reach the repository within --archive-timeout
  read back       with an identity on this host: that segment decrypts and is the server's

Exit status 1 when any check fails. --no-switch skips the WAL switch (e.g. on a quiet
primary whose archive you do not want to grow by a segment).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("conn") {
				a.cfg.Postgres.Conn = conn
			}
			rep := a.runCheck(cmd.Context(), timeout, noSwitch)
			err := a.print(rep, func() {
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				for _, c := range rep.Checks {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, c.Status, c.Detail)
				}
				tw.Flush()
			})
			if err != nil {
				return err
			}
			if !rep.OK {
				var failed []string
				for _, c := range rep.Checks {
					if c.Status == checkFail {
						failed = append(failed, c.Name)
					}
				}
				return fmt.Errorf("check failed: %s", strings.Join(failed, ", "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&conn, "conn", "", "connection string of the server (postgres.conn)")
	cmd.Flags().DurationVar(&timeout, "archive-timeout", defaultArchiveTimeout, "how long the switched WAL segment may take to reach the repository")
	cmd.Flags().BoolVar(&noSwitch, "no-switch", false, "do not switch WAL on the primary (skips the archive round trip)")
	return cmd
}

// serverFacts is what check asks the server.
type serverFacts struct {
	version        int
	standby        bool
	sysid          string
	walLevel       string
	archiveMode    string
	archiveCommand string
}

// runCheck runs every check it can; a failed check stops only the ones that need it.
func (a *app) runCheck(ctx context.Context, timeout time.Duration, noSwitch bool) *checkReport {
	rep := &checkReport{}
	defer func() {
		rep.OK = true
		for _, c := range rep.Checks {
			if c.Status == checkFail {
				rep.OK = false
			}
		}
	}()
	haveIdentity := a.cfg.Encryption.IdentityFile != "" || a.cfg.Encryption.Mode == "none" || a.cfg.Encryption.Mode == "passphrase"
	r, err := a.openRepo(ctx, false)
	if err != nil {
		rep.add("repository", checkFail, "%v", err)
		return rep
	}
	defer r.Backend().Close()
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		rep.add("repository", checkFail, "%v", err)
		return rep
	}
	rep.add("repository", checkOK, "%s: cluster %q, encryption %s, created %s", r.Location(r.Cluster()), id.Cluster, id.Encryption, id.Created.Format(time.RFC3339))
	if err := id.Check(repo.Identity{Encryption: repo.EncryptionMode(r.Codec()), Recipients: r.Codec().Fingerprints()}); err != nil {
		rep.add("encryption", checkFail, "%v", err)
	} else {
		how := "objects are sealed to the repository's keys"
		if !haveIdentity {
			how += "; no identity_file on this host (a write-only host: it cannot read back)"
		}
		rep.add("encryption", checkOK, "%s: %s", id.Encryption, how)
	}

	if a.cfg.Postgres.Conn == "" {
		rep.add("server", checkSkip, "no postgres.conn (--conn, PGHARBOR_POSTGRES_CONN): repository checks only")
		return rep
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, a.cfg.Postgres.Conn)
	cancel()
	if err != nil {
		rep.add("server", checkFail, "connect: %v", err)
		return rep
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var f serverFacts
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
		(SELECT system_identifier::text FROM pg_control_system()), current_setting('wal_level'),
		current_setting('archive_mode'), current_setting('archive_command')`).Scan(&f.version, &f.standby, &f.sysid, &f.walLevel, &f.archiveMode, &f.archiveCommand)
	if err != nil {
		rep.add("server", checkFail, "query the server's settings: %v", err)
		return rep
	}
	role := "primary"
	if f.standby {
		role = "standby"
	}
	rep.add("server", checkOK, "PostgreSQL %d.%d, %s", f.version/10000, f.version%10000, role)
	if err := id.Check(repo.Identity{SystemIdentifier: f.sysid, PGVersion: f.version}); err != nil {
		rep.add("system", checkFail, "%v", err)
		return rep
	}
	if id.SystemIdentifier == "" {
		rep.add("system", checkWarn, "the repository has no system identifier yet (recorded by the first backup or wal push); the server's is %s", f.sysid)
	} else {
		rep.add("system", checkOK, "%s, the repository's", f.sysid)
	}
	if f.walLevel == "minimal" {
		rep.add("wal_level", checkFail, "wal_level = minimal: backups and archiving need replica or logical (ALTER SYSTEM SET wal_level = replica; restart)")
	} else {
		rep.add("wal_level", checkOK, "%s", f.walLevel)
	}
	a.checkArchiving(rep, f)
	if err := a.checkArchiver(ctx, rep, conn); err != nil {
		rep.add("archiver", checkWarn, "pg_stat_archiver not readable: %v", err)
	}

	switch {
	case f.standby:
		rep.add("archive", checkSkip, "a standby cannot switch WAL: run check against the primary for the archive round trip")
		return rep
	case noSwitch:
		rep.add("archive", checkSkip, "--no-switch")
		return rep
	}
	seg, took, err := a.checkRoundTrip(ctx, r, conn, timeout)
	if err != nil {
		rep.add("archive", checkFail, "%v", err)
		return rep
	}
	rep.add("archive", checkOK, "segment %s switched and in the repository after %s", seg, took.Round(time.Millisecond))
	if !haveIdentity {
		rep.add("read back", checkSkip, "no identity_file on this host: restores must run where the identity is")
		return rep
	}
	a.checkReadBack(ctx, rep, seg, f.sysid)
	return rep
}

// checkArchiving judges archive_mode and archive_command (or a configured WAL receiver).
func (a *app) checkArchiving(rep *checkReport, f serverFacts) {
	receiver := a.cfg.WAL.Stream.Enabled
	switch {
	case f.archiveMode == "off" && receiver:
		rep.add("archiving", checkOK, "archive_mode = off; WAL comes from the receiver (wal.stream.enabled): check `pgharbor info` for its lag")
		return
	case f.archiveMode == "off":
		rep.add("archiving", checkFail, "archive_mode = off: no WAL reaches the repository and no backup can be restored (ALTER SYSTEM SET archive_mode = on; restart), or enable wal.stream")
		return
	case f.standby && f.archiveMode != "always":
		rep.add("archiving", checkOK, "archive_mode = %s on a standby: the primary archives (set always to archive here too)", f.archiveMode)
		return
	}
	cmdline := strings.TrimSpace(f.archiveCommand)
	switch {
	case cmdline == "" || cmdline == "(disabled)":
		rep.add("archiving", checkFail, "archive_mode = %s but archive_command is empty: segments pile up in pg_wal (ALTER SYSTEM SET archive_command = 'pgharbor wal push %%p'; SELECT pg_reload_conf())", f.archiveMode)
	case strings.Contains(cmdline, "pgharbor") && strings.Contains(cmdline, "wal push") && strings.Contains(cmdline, "%p"):
		rep.add("archiving", checkOK, "archive_mode = %s, archive_command = %s", f.archiveMode, cmdline)
	default:
		rep.add("archiving", checkWarn, "archive_command = %s does not run `pgharbor wal push %%p`: the archive round trip below tells whether WAL reaches this repository anyway", cmdline)
	}
}

// checkArchiver reads pg_stat_archiver and the backlog of .ready files.
func (a *app) checkArchiver(ctx context.Context, rep *checkReport, conn *pgx.Conn) error {
	var failed int64
	var lastFailed, lastArchived string
	var failedAt, archivedAt *time.Time
	err := conn.QueryRow(ctx, `SELECT failed_count, coalesce(last_failed_wal, ''), last_failed_time,
		coalesce(last_archived_wal, ''), last_archived_time FROM pg_stat_archiver`).Scan(&failed, &lastFailed, &failedAt, &lastArchived, &archivedAt)
	if err != nil {
		return err
	}
	ready := int64(-1)
	// pg_ls_archive_statusdir needs superuser or pg_monitor; without it the backlog is unknown.
	_ = conn.QueryRow(ctx, `SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'`).Scan(&ready)
	backlog := "backlog unknown (pg_ls_archive_statusdir needs pg_monitor)"
	if ready >= 0 {
		backlog = fmt.Sprintf("%d segment(s) waiting to be archived", ready)
	}
	recentFailure := failedAt != nil && (archivedAt == nil || failedAt.After(*archivedAt))
	switch {
	case recentFailure:
		rep.add("archiver", checkWarn, "the last archive_command failed (%s at %s, %d failures since the statistics reset) and nothing was archived since; %s; see the server log",
			lastFailed, failedAt.Format(time.RFC3339), failed, backlog)
	case ready > 100:
		rep.add("archiver", checkWarn, "%s: archiving falls behind the server", backlog)
	default:
		last := "nothing archived since the statistics reset"
		if archivedAt != nil {
			last = fmt.Sprintf("last archived %s at %s", lastArchived, archivedAt.Format(time.RFC3339))
		}
		rep.add("archiver", checkOK, "%s; %s", last, backlog)
	}
	return nil
}

// checkRoundTrip writes a restore point, switches WAL and waits until the switched segment
// is in the repository, failing early when the archiver reports a failure for it.
func (a *app) checkRoundTrip(ctx context.Context, r *repo.Repo, conn *pgx.Conn, timeout time.Duration) (string, time.Duration, error) {
	var failedBefore int64
	if err := conn.QueryRow(ctx, `SELECT failed_count FROM pg_stat_archiver`).Scan(&failedBefore); err != nil {
		return "", 0, fmt.Errorf("pg_stat_archiver: %w", err)
	}
	start := time.Now()
	// The restore point makes sure the segment holds a record, so that the switch happens
	// even on an idle server.
	var seg string
	err := conn.QueryRow(ctx, `SELECT pg_walfile_name(lsn) FROM (SELECT pg_create_restore_point('pgharbor check'), pg_switch_wal() AS lsn) s`).Scan(&seg)
	if err != nil {
		return "", 0, fmt.Errorf("switch WAL (needs superuser or EXECUTE on pg_switch_wal and pg_create_restore_point): %w", err)
	}
	key, err := wal.SegmentKey(seg)
	if err != nil {
		return seg, 0, err
	}
	deadline := start.Add(timeout)
	for {
		ok, err := storage.Exists(ctx, r.Backend(), r.Key(key))
		if err != nil {
			return seg, 0, fmt.Errorf("look for %s: %w", r.Location(r.Key(key)), err)
		}
		if ok {
			return seg, time.Since(start), nil
		}
		var failed int64
		var lastFailed string
		if err := conn.QueryRow(ctx, `SELECT failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver`).Scan(&failed, &lastFailed); err == nil &&
			failed > failedBefore && lastFailed == seg {
			return seg, 0, fmt.Errorf("archive_command failed for segment %s (pg_stat_archiver); the server log has its message", seg)
		}
		if time.Now().After(deadline) {
			return seg, 0, fmt.Errorf("segment %s is not in %s after %s: is archive_command = 'pgharbor wal push %%p' set, with this repository and cluster in its configuration?",
				seg, r.Location(r.Key(wal.Dir)), timeout)
		}
		select {
		case <-ctx.Done():
			return seg, 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checkReadBack decrypts the archived segment with this host's identity and checks that it
// is the server's.
func (a *app) checkReadBack(ctx context.Context, rep *checkReport, seg, sysid string) {
	r, err := a.openRepo(ctx, true)
	if err != nil {
		rep.add("read back", checkFail, "%v", err)
		return
	}
	defer r.Backend().Close()
	key, err := wal.SegmentKey(seg)
	if err != nil {
		rep.add("read back", checkFail, "%v", err)
		return
	}
	data, err := r.GetBytes(ctx, r.Key(key))
	if err != nil {
		rep.add("read back", checkFail, "%s: %v", r.Location(r.Key(key)), err)
		return
	}
	h, err := wal.ParseSegmentHeader(data)
	switch {
	case err != nil:
		rep.add("read back", checkFail, "%s decrypted but is not a WAL segment: %v", seg, err)
	case repo.FormatSystemIdentifier(h.SystemIdentifier) != sysid:
		rep.add("read back", checkFail, "%s belongs to system %d, the server is %s", seg, h.SystemIdentifier, sysid)
	default:
		rep.add("read back", checkOK, "%s decrypted with this host's identity: %d bytes of the server's WAL", seg, len(data))
	}
}
