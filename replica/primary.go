package replica

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgharbor/pgharbor/wal"
)

// PrimaryError is a problem with the primary found before anything was written.
type PrimaryError struct {
	Reason Reason
	Detail string
}

func (e *PrimaryError) Error() string {
	s := fmt.Sprintf("primary: %s", e.Reason)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if a := advice[e.Reason]; a != "" {
		s += "\n  what to do: " + a
	}
	return s
}

// Primary is what a probe of the primary found.
type Primary struct {
	SystemIdentifier string
	Timeline         wal.TimelineID
	WALPosition      wal.LSN
	History          wal.History // the primary's path from timeline 1 to Timeline
	InRecovery       bool        // the upstream is itself a standby (cascading)
}

// Slot is a replication slot's state on the primary.
type Slot struct {
	Exists    bool
	Physical  bool
	Active    bool
	ActivePID int
	// ActiveApp is the application_name of the walsender using the slot.
	ActiveApp string
}

// probeTimeout bounds each connection attempt of a probe.
const probeTimeout = 10 * time.Second

// Probe connects to the primary twice, as the standby's walreceiver would (a replication
// connection: pg_hba's replication lines, the REPLICATION attribute) and for SQL, and reads
// its system identifier, timeline and history. A failure is a *PrimaryError whose reason says
// what is wrong.
func Probe(ctx context.Context, conninfo string) (Primary, error) {
	var p Primary
	rc, err := replicationConn(ctx, conninfo)
	if err != nil {
		return p, err
	}
	defer rc.Close(context.Background())
	rows, err := rc.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return p, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	if len(rows) != 1 || len(rows[0].Rows) != 1 || len(rows[0].Rows[0]) < 3 {
		return p, errors.New("IDENTIFY_SYSTEM: unexpected reply")
	}
	row := rows[0].Rows[0]
	p.SystemIdentifier = string(row[0])
	tli, err := strconv.ParseUint(string(row[1]), 10, 32)
	if err != nil {
		return p, fmt.Errorf("IDENTIFY_SYSTEM timeline %q: %w", row[1], err)
	}
	p.Timeline = wal.TimelineID(tli)
	if p.WALPosition, err = wal.ParseLSN(string(row[2])); err != nil {
		return p, fmt.Errorf("IDENTIFY_SYSTEM position: %w", err)
	}
	p.History = wal.History{TLI: p.Timeline}
	if p.Timeline > 1 {
		rows, err := rc.Exec(ctx, fmt.Sprintf("TIMELINE_HISTORY %d", p.Timeline)).ReadAll()
		if err != nil {
			return p, fmt.Errorf("TIMELINE_HISTORY %d: %w", p.Timeline, err)
		}
		if len(rows) != 1 || len(rows[0].Rows) != 1 || len(rows[0].Rows[0]) < 2 {
			return p, fmt.Errorf("TIMELINE_HISTORY %d: unexpected reply", p.Timeline)
		}
		if p.History, err = wal.NewHistory(p.Timeline, rows[0].Rows[0][1]); err != nil {
			return p, err
		}
	}
	conn, err := sqlConn(ctx, conninfo)
	if err != nil {
		return p, err
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&p.InRecovery); err != nil {
		return p, fmt.Errorf("primary: %w", err)
	}
	return p, nil
}

// SlotState reads a slot's state on the primary.
func SlotState(ctx context.Context, conninfo, name string) (Slot, error) {
	conn, err := sqlConn(ctx, conninfo)
	if err != nil {
		return Slot{}, err
	}
	defer conn.Close(context.Background())
	var s Slot
	var typ string
	err = conn.QueryRow(ctx, `SELECT s.slot_type, s.active, coalesce(s.active_pid, 0), coalesce(r.application_name, '')
		FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1`, name).Scan(&typ, &s.Active, &s.ActivePID, &s.ActiveApp)
	if errors.Is(err, pgx.ErrNoRows) {
		return Slot{}, nil
	}
	if err != nil {
		return Slot{}, fmt.Errorf("read slot %q on the primary: %w", name, err)
	}
	s.Exists, s.Physical = true, typ == "physical"
	return s, nil
}

// CreateSlot creates a physical slot that reserves WAL from now on, over a replication
// connection (the REPLICATION attribute is enough; no superuser needed).
func CreateSlot(ctx context.Context, conninfo, name string) error {
	rc, err := replicationConn(ctx, conninfo)
	if err != nil {
		return err
	}
	defer rc.Close(context.Background())
	if _, err := rc.Exec(ctx, "CREATE_REPLICATION_SLOT "+quoteIdent(name)+" PHYSICAL RESERVE_WAL").ReadAll(); err != nil {
		return fmt.Errorf("create slot %q on the primary: %w", name, err)
	}
	return nil
}

// DropSlot drops a slot (used to undo a slot this run created when the run fails).
func DropSlot(ctx context.Context, conninfo, name string) error {
	rc, err := replicationConn(ctx, conninfo)
	if err != nil {
		return err
	}
	defer rc.Close(context.Background())
	if _, err := rc.Exec(ctx, "DROP_REPLICATION_SLOT "+quoteIdent(name)).ReadAll(); err != nil {
		return fmt.Errorf("drop slot %q on the primary: %w", name, err)
	}
	return nil
}

// streamingOnPrimary reports whether the primary sees the standby stream: a walsender in
// state streaming for its application_name, through its slot when it has one.
func streamingOnPrimary(ctx context.Context, conninfo, slot, appName string) (bool, error) {
	conn, err := sqlConn(ctx, conninfo)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var ok bool
	if slot != "" {
		err = conn.QueryRow(ctx, `SELECT coalesce((SELECT s.active AND r.state = 'streaming' AND r.application_name = $2 FROM pg_replication_slots s
			JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1), false)`, slot, appName).Scan(&ok)
	} else {
		err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming')", appName).Scan(&ok)
	}
	return ok, err
}

func replicationConn(ctx context.Context, conninfo string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		return nil, fmt.Errorf("primary connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "true"
	cfg.RuntimeParams["application_name"] = "pgharbor replica probe"
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > probeTimeout {
		cfg.ConnectTimeout = probeTimeout
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, connError(cfg, "replication connection", err)
	}
	return c, nil
}

func sqlConn(ctx context.Context, conninfo string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(conninfo)
	if err != nil {
		return nil, fmt.Errorf("primary connection string: %w", err)
	}
	delete(cfg.RuntimeParams, "replication")
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > probeTimeout {
		cfg.ConnectTimeout = probeTimeout
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, connError(&cfg.Config, "connection", err)
	}
	return c, nil
}

// connError turns a failed connection into a PrimaryError with its reason.
func connError(cfg *pgconn.Config, what string, err error) error {
	where := fmt.Sprintf("%s to %s", what, endpoint(cfg))
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "28P01":
			return &PrimaryError{ReasonAuth, where + ": " + pe.Message}
		case pe.Code == "28000" && strings.Contains(pe.Message, "pg_hba.conf"):
			return &PrimaryError{ReasonHBA, where + ": " + pe.Message}
		case pe.Code == "42501" || strings.Contains(pe.Message, "replication role"):
			return &PrimaryError{ReasonNotReplication, where + ": " + pe.Message}
		}
	}
	if r, ok := Classify(err.Error()); ok {
		return &PrimaryError{r, where + ": " + err.Error()}
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) || strings.Contains(err.Error(), "dial") {
		return &PrimaryError{ReasonUnreachable, where + ": " + err.Error()}
	}
	return fmt.Errorf("%s: %w", where, err)
}

func endpoint(cfg *pgconn.Config) string {
	host := cfg.Host
	if strings.HasPrefix(host, "/") {
		return fmt.Sprintf("socket %s/.s.PGSQL.%d", host, cfg.Port)
	}
	return fmt.Sprintf("%s:%d", host, cfg.Port)
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
