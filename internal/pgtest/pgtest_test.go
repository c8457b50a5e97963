package pgtest_test

import (
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

func TestPrimaryAndStandbyReplicate(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Exec(t, "CREATE TABLE t (id int primary key, v text)")
	pg.Exec(t, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
	if got := pg.QueryString(t, "postgres", "SELECT current_setting('wal_level')"); got != "replica" {
		t.Fatalf("wal_level = %s", got)
	}
	sb := pg.StartStandby(t)
	if got := sb.QueryString(t, "postgres", "SELECT pg_is_in_recovery()::text"); got != "true" {
		t.Fatalf("standby pg_is_in_recovery = %s", got)
	}
	pg.Exec(t, "INSERT INTO t VALUES (1001, 'late')")
	pg.WaitReplay(t, sb)
	if got := sb.QueryString(t, "postgres", "SELECT count(*)::text FROM t"); got != "1001" {
		t.Fatalf("standby has %s rows, want 1001; log:\n%s", got, strings.TrimSpace(sb.Log()))
	}
}
