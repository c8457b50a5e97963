package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgharbor/pgharbor/wal"
)

// Where a backup is taken.
const (
	// FromPrimary backs up the server that writes the WAL (the default).
	FromPrimary = "primary"
	// FromStandby backs up a streaming standby: pg_backup_start/pg_backup_stop (or
	// BASE_BACKUP) run on the standby and the files are read from it, so the primary reads no
	// data file. The WAL still reaches the repository through the primary's archive_command
	// (or a receiver); a standby cannot switch WAL segments, so the backup waits until the
	// primary archived the segment holding the stop position.
	FromStandby = "standby"
)

// signalFiles are left out of every backup although BASE_BACKUP sends them. A standby's
// standby.signal restored with its data would put the restored cluster in standby mode,
// where a recovery target such as latest never ends; the restore, replica create and
// refresh write the signal file the new cluster needs. pg_verifybackup ignores both names.
var signalFiles = map[string]bool{"standby.signal": true, "recovery.signal": true}

// standbyWaitNotice is how often a backup from a standby says it is still waiting for the
// primary to archive the last segment.
const standbyWaitNotice = 10 * time.Second

// standby is what a backup from a standby keeps: the optional connection to the primary.
type standby struct {
	primary     *pgx.Conn
	primaryConn string
}

// checkSource refuses a server that is not what the options say it is: --from-standby
// aimed at a primary, a standby without --from-standby, or a --primary that is not the
// standby's primary. For a standby it returns the connection to the primary, if one was
// given (nil otherwise); the caller closes it.
func checkSource(ctx context.Context, conn *pgx.Conn, facts serverFacts, o Options) (*standby, error) {
	switch {
	case facts.inRecover && !o.FromStandby:
		return nil, errors.New("the server is a standby (pg_is_in_recovery() is true): give --from-standby (backup.from: standby) to back it up, or point postgres.conn at the primary")
	case !facts.inRecover && o.FromStandby:
		return nil, errors.New("--from-standby: the server is not a standby (pg_is_in_recovery() is false): point postgres.conn at a standby, or back up the primary without --from-standby")
	case !facts.inRecover:
		if o.PrimaryConnString != "" {
			return nil, errors.New("--primary is only for backups from a standby (--from-standby)")
		}
		return nil, nil
	}
	var status, sender string
	err := conn.QueryRow(ctx, `SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), ''),
		coalesce((SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver), '')`).Scan(&status, &sender)
	if err != nil {
		return nil, fmt.Errorf("read the standby's WAL receiver: %w", err)
	}
	if status != "streaming" {
		// A standby fed by restore_command alone replays WAL that is archived already; one
		// that receives nothing leaves the backup waiting for the archive check, which says so.
		o.Logger.Warn("the standby is not streaming from its primary; the backup needs the primary to archive the WAL up to its stop position",
			"wal_receiver", status)
	}
	s := &standby{primaryConn: o.PrimaryConnString}
	if o.PrimaryConnString == "" {
		return s, nil
	}
	p, err := pgx.Connect(ctx, o.PrimaryConnString)
	if err != nil {
		return nil, fmt.Errorf("--primary: connect to the primary: %w", err)
	}
	pf, err := readServerFacts(ctx, p)
	if err != nil {
		p.Close(context.Background())
		return nil, fmt.Errorf("--primary: %w", err)
	}
	switch {
	case pf.inRecover:
		p.Close(context.Background())
		return nil, errors.New("--primary: that server is a standby too (pg_is_in_recovery() is true): give the primary, which archives the WAL")
	case pf.systemID != facts.systemID:
		p.Close(context.Background())
		return nil, fmt.Errorf("--primary: that server has system identifier %s, the standby %s: another cluster", pf.systemID, facts.systemID)
	}
	s.primary = p
	return s, nil
}

func (s *standby) close() {
	if s != nil && s.primary != nil {
		s.primary.Close(context.Background())
	}
}

// standbyStop checks what a backup from a standby read: the WAL range lies on one timeline
// and ends after it starts. PostgreSQL ends such a backup at the standby's minimum recovery
// point (which pg_backup_stop and BASE_BACKUP return) on that point's timeline.
func standbyStop(src *source) error {
	if src.stopTLI != src.startTLI {
		return fmt.Errorf("the standby moved from timeline %d to %d during the backup (its primary was promoted or it follows a new one): a backup spanning timelines is not kept; run CHECKPOINT on the new primary and take the backup again",
			src.startTLI, src.stopTLI)
	}
	start, err := wal.ParseLSN(src.startLSN)
	if err != nil {
		return fmt.Errorf("start position %q: %w", src.startLSN, err)
	}
	stop, err := wal.ParseLSN(src.stopLSN)
	if err != nil {
		return fmt.Errorf("stop position %q: %w", src.stopLSN, err)
	}
	if stop < start {
		return fmt.Errorf("the standby's minimum recovery point %s is before the backup's start %s: the standby has not replayed past its last restartpoint; retry once it streams", src.stopLSN, src.startLSN)
	}
	return nil
}

// lastSegment is the name of the segment holding the WAL just before stop: the last one
// the backup needs.
func lastSegment(tli uint32, startLSN, stopLSN string, segSize int64) (wal.Segment, string, error) {
	start, err := wal.ParseLSN(startLSN)
	if err != nil {
		return wal.Segment{}, "", err
	}
	stop, err := wal.ParseLSN(stopLSN)
	if err != nil {
		return wal.Segment{}, "", err
	}
	if stop > start {
		stop--
	}
	seg := wal.SegmentOf(stop, wal.TimelineID(tli), segSize)
	name, err := seg.SegmentName(segSize)
	return seg, name, err
}

// switchPrimary asks the primary to finish the segment holding the backup's last WAL, so
// that its archive_command takes it now rather than when the segment fills or
// archive_timeout passes. It does nothing when the primary has moved past that segment
// already. Only WAL is touched: the primary reads no data file.
func (s *standby) switchPrimary(ctx context.Context, src *source, segSize int64, log *slog.Logger) error {
	seg, name, err := lastSegment(src.stopTLI, src.startLSN, src.stopLSN, segSize)
	if err != nil {
		return err
	}
	// The timeline the primary writes on is in the name of its current segment: that is
	// the live value, where pg_control's lags behind a promotion until the next checkpoint.
	var cur, file string
	if err := s.primary.QueryRow(ctx, "SELECT l::text, pg_walfile_name(l) FROM pg_current_wal_lsn() l").Scan(&cur, &file); err != nil {
		return fmt.Errorf("--primary: read the primary's WAL position: %w", err)
	}
	lsn, err := wal.ParseLSN(cur)
	if err != nil {
		return fmt.Errorf("--primary: WAL position %q: %w", cur, err)
	}
	cs, err := wal.ParseSegmentName(file, segSize)
	if err != nil {
		return fmt.Errorf("--primary: current segment %q: %w", file, err)
	}
	tli := uint32(cs.TLI)
	if tli != src.stopTLI {
		// The segment was finished on the old timeline by the promotion that began the
		// primary's (the new primary archives it as a .partial, and recovery follows the
		// history): switching the new timeline's segment would not help.
		log.Info("the primary is on another timeline than the standby's backup; not switching its WAL", "primary_timeline", tli, "backup_timeline", src.stopTLI)
		return nil
	}
	if wal.SegmentOf(lsn, wal.TimelineID(tli), segSize).No > seg.No {
		return nil
	}
	var sw string
	if err := s.primary.QueryRow(ctx, "SELECT pg_switch_wal()::text").Scan(&sw); err != nil {
		return fmt.Errorf("--primary: pg_switch_wal() on the primary (the user needs superuser or EXECUTE on it): %w", err)
	}
	log.Info("asked the primary to switch WAL so that it archives the backup's last segment", "segment", name, "switch_lsn", sw)
	return nil
}

// waitArchived runs the archive check of a backup from a standby, saying what it waits for
// and why while it waits (the check itself bounds the wait).
func waitArchived(ctx context.Context, o Options, s *standby, src *source, segSize int64) error {
	_, name, err := lastSegment(src.stopTLI, src.startLSN, src.stopLSN, segSize)
	if err != nil {
		return err
	}
	how := "give --primary (backup.primary) to have pgharbor ask the primary to switch WAL at once"
	if s.primary != nil {
		how = "pgharbor asked the primary to switch WAL"
	}
	o.Logger.Info("waiting for the primary to archive the backup's WAL: a standby cannot switch WAL segments, so the last one arrives when the primary fills it, when its archive_timeout passes, or through the WAL receiver; "+how,
		"stop_lsn", src.stopLSN, "segment", name)
	done := make(chan error, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { done <- o.ArchiveCheck(cctx, src.startTLI, src.startLSN, src.stopLSN, segSize) }()
	began := time.Now()
	tick := time.NewTicker(standbyWaitNotice)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil && s.primary == nil {
				return fmt.Errorf("%w (a backup from a standby waits for the primary to archive segment %s: set archive_timeout on the primary below --archive-timeout, or %s)", err, name, how)
			}
			return err
		case <-tick.C:
			o.Logger.Info("still waiting for the primary to archive the backup's WAL", "segment", name, "waited", time.Since(began).Round(time.Second).String())
		}
	}
}
