package failover

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/pool/cluster"
)

// TestMonitorAloneSkipsNoFailoverNode runs the monitor without a pool (as `pgharbor
// monitor` does) on a primary and two standbys. The standby that would win every tie is
// marked no_failover: when the primary stops, the other one must be promoted, and the
// no_failover standby must be re-pointed to it.
func TestMonitorAloneSkipsNoFailoverNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	primary := pgtest.Start(t, pgtest.Options{})
	keep, promote := primary.StartStandby(t), primary.StartStandby(t)
	primary.Exec(t, "CREATE TABLE t AS SELECT 1 AS x")
	primary.WaitReplay(t, keep)
	primary.WaitReplay(t, promote)

	nodes := []cluster.NodeConfig{
		{Name: "p", Host: "127.0.0.1", Port: primary.Port},
		{Name: "keep", Host: "127.0.0.1", Port: keep.Port},
		{Name: "promote", Host: "127.0.0.1", Port: promote.Port},
	}
	cfg := Config{HealthCheckPeriod: 200 * time.Millisecond, ConnectTimeout: time.Second, QueryTimeout: time.Second,
		Retries: -1, RetryDelay: 100 * time.Millisecond,
		Nodes: map[string]NodeOptions{"keep": {NoFailover: true, Priority: 100}, "promote": {DataDir: promote.DataDir}}}
	m, _ := runMonitor(t, cfg, nodes)
	waitFor(t, "monitor watches the primary", 30*time.Second, func() bool { return m.Primary() == 0 })

	primary.Stop(t, "immediate")
	waitFor(t, "failover", 60*time.Second, func() bool { return len(m.Events()) == 1 })
	ev := m.Events()[0]
	if ev.OldPrimary != 0 || ev.NewPrimary != 2 {
		t.Fatalf("failover %+v: want node 2 (promote) promoted, never node 1 (no_failover)", ev)
	}
	if ev.Passed["keep"] != "no_failover" {
		t.Errorf("keep passed over for %q, want no_failover", ev.Passed["keep"])
	}
	if len(ev.Followed) != 1 || ev.Followed[0] != 1 {
		t.Errorf("followed %v, want [1]", ev.Followed)
	}
	if got := promote.QueryString(t, "postgres", "SELECT pg_is_in_recovery()::text"); got != "false" {
		t.Fatalf("promote still in recovery: %s", got)
	}
	if got := keep.QueryString(t, "postgres", "SELECT pg_is_in_recovery()::text"); got != "true" {
		t.Fatalf("keep was promoted")
	}
	promote.Exec(t, "INSERT INTO t VALUES (2)")
	waitFor(t, "keep streams from the new primary", 60*time.Second, func() bool {
		return keep.QueryString(t, "postgres", "SELECT count(*)::text FROM t") == "2" &&
			keep.QueryString(t, "postgres", "SELECT coalesce((SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'), 0)::text") == fmt.Sprint(promote.Port)
	})
	if m.Primary() != 2 {
		t.Fatalf("monitor watches node %d, want 2", m.Primary())
	}
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMonitorStartsBesideAnOldPrimary: a monitor that starts (or restarts, forgetting the
// failover it made) while the old primary runs again beside the node promoted in its place
// watches the promoted node, the one on the newer timeline, even though the old primary is
// listed first, and takes the old one for a former primary: never a candidate, and no
// failover is made on its account.
func TestMonitorStartsBesideAnOldPrimary(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	old := pgtest.Start(t, pgtest.Options{})
	promoted := old.StartStandby(t)
	promoted.Exec(t, "SELECT pg_promote()")
	nodes := []cluster.NodeConfig{
		{Name: "old", Host: "127.0.0.1", Port: old.Port},
		{Name: "promoted", Host: "127.0.0.1", Port: promoted.Port},
	}
	cfg := Config{HealthCheckPeriod: 200 * time.Millisecond, ConnectTimeout: time.Second, QueryTimeout: time.Second,
		Retries: -1, RetryDelay: 100 * time.Millisecond}
	m, ctx := runMonitor(t, cfg, nodes)
	waitFor(t, "monitor watches the promoted node", 30*time.Second, func() bool { return m.Primary() == 1 })
	if !m.isFailed(0) {
		t.Fatal("the old primary is not taken for a former primary")
	}
	id, err := m.findPrimary(ctx)
	if err != nil || id != 1 {
		t.Fatalf("findPrimary: %d %v", id, err)
	}
	time.Sleep(time.Second)
	if m.Primary() != 1 || len(m.Events()) != 0 {
		t.Fatalf("primary %d, events %+v", m.Primary(), m.Events())
	}
}

// runMonitor runs a monitor of nodes (without a pool) until the test ends; ctx is the
// context it runs under.
func runMonitor(t *testing.T, cfg Config, nodes []cluster.NodeConfig) (*Monitor, context.Context) {
	t.Helper()
	m, err := New(cfg, nodes, nil, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m, ctx
}
