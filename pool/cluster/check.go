package cluster

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// checkSQL learns a node's role and replication position in one round trip. On a primary the
// name of the WAL file it writes carries the timeline it writes on: of two nodes that both
// claim to be primary, the one on the newer timeline was promoted after the other.
// pg_current_wal_lsn() fails during recovery, hence the CASE. The time lag counts only while
// the standby has received WAL it has not replayed (or receives none, e.g. archive
// recovery): an idle, caught-up standby's last replayed transaction may be old.
const checkSQL = `SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END,
  pg_last_wal_replay_lsn(),
  CASE WHEN pg_is_in_recovery()
        AND (pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn())
       THEN COALESCE(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 0)
       ELSE 0 END,
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END`

// connString builds a libpq keyword/value connection string for a health check.
func (c *Cluster) connString(n NodeConfig) string {
	kv := [][2]string{
		{"host", n.Host},
		{"port", strconv.Itoa(n.Port)},
		{"user", c.cfg.HealthCheckUser},
		{"dbname", c.cfg.HealthCheckDatabase},
		{"sslmode", c.cfg.HealthCheckSSLMode},
		{"application_name", "pgharbor health check"},
	}
	if c.cfg.HealthCheckPassword != "" {
		kv = append(kv, [2]string{"password", c.cfg.HealthCheckPassword})
	}
	var b strings.Builder
	for _, p := range kv {
		v := strings.ReplaceAll(strings.ReplaceAll(p[1], `\`, `\\`), `'`, `\'`)
		fmt.Fprintf(&b, "%s='%s' ", p[0], v)
	}
	return b.String()
}

// pgProbe connects to the node (a fresh connection each time, so a node that stops accepting
// connections is noticed) and runs checkSQL. ctx carries the per-attempt timeout.
func (c *Cluster) pgProbe(ctx context.Context, n NodeConfig) (probeResult, error) {
	pc, err := pgconn.ParseConfig(c.connString(n))
	if err != nil {
		return probeResult{}, fmt.Errorf("health check config for %s: %w", n.Name, err)
	}
	pc.ConnectTimeout = c.cfg.HealthCheckTimeout
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return probeResult{}, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	results, err := conn.Exec(ctx, checkSQL).ReadAll()
	if err != nil {
		return probeResult{}, fmt.Errorf("query: %w", err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) != 5 {
		return probeResult{}, fmt.Errorf("query: unexpected result shape")
	}
	return parseCheckRow(results[0].Rows[0])
}

// parseCheckRow reads checkSQL's text-format row.
func parseCheckRow(row [][]byte) (probeResult, error) {
	var r probeResult
	switch string(row[0]) {
	case "t":
		r.inRecovery = true
	case "f":
	default:
		return r, fmt.Errorf("pg_is_in_recovery() returned %q", row[0])
	}
	var err error
	if row[1] != nil {
		if r.currentLSN, err = parseLSN(string(row[1])); err != nil {
			return r, err
		}
		r.hasCurrent = true
	}
	if row[2] != nil {
		if r.replayLSN, err = parseLSN(string(row[2])); err != nil {
			return r, err
		}
		r.hasReplay = true
	}
	if row[3] != nil {
		secs, err := strconv.ParseFloat(string(row[3]), 64)
		if err != nil {
			return r, fmt.Errorf("replay lag %q: %w", row[3], err)
		}
		if secs > 0 {
			r.lagTime = time.Duration(secs * float64(time.Second))
		}
	}
	if len(row) > 4 && row[4] != nil {
		if len(row[4]) < 8 {
			return r, fmt.Errorf("WAL file name %q", row[4])
		}
		tli, err := strconv.ParseUint(string(row[4][:8]), 16, 32)
		if err != nil {
			return r, fmt.Errorf("WAL file name %q: %w", row[4], err)
		}
		r.timeline = uint32(tli)
	}
	return r, nil
}

// parseLSN parses PostgreSQL's pg_lsn text form "XXXXXXXX/XXXXXXXX".
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("bad LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("bad LSN %q: %w", s, err)
	}
	return h<<32 | l, nil
}
