package failover

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/pool/cluster"
)

// TestTwoMonitorsWithEtcdFailOverOnce runs two monitors (as two `pgharbor monitor`) with the
// same etcd on a primary and a standby. Only the leader watches; when the primary stops,
// exactly one failover happens across both and the standby is promoted once (timeline 2).
// When the leader then stops, the other becomes leader and watches the new primary without
// failing over again.
func TestTwoMonitorsWithEtcdFailOverOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and etcd")
	}
	url := startEtcd(t)
	primary := pgtest.Start(t, pgtest.Options{})
	standby := primary.StartStandby(t)
	primary.Exec(t, "CREATE TABLE t AS SELECT 1 AS x")
	primary.WaitReplay(t, standby)
	nodes := []cluster.NodeConfig{
		{Name: "p", Host: "127.0.0.1", Port: primary.Port},
		{Name: "s", Host: "127.0.0.1", Port: standby.Port},
	}
	const ttl = 3 * time.Second
	type mon struct {
		m      *Monitor
		cancel context.CancelFunc
		done   chan struct{}
	}
	start := func(name string) *mon {
		cfg := Config{HealthCheckPeriod: 200 * time.Millisecond, ConnectTimeout: time.Second, QueryTimeout: time.Second,
			Retries: -1, RetryDelay: 100 * time.Millisecond,
			Etcd: &EtcdConfig{Endpoints: []string{url}, Prefix: "/pgharbor/e2e/", TTL: ttl, Name: name}}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("monitor", name)
		m, err := New(cfg, nodes, nil, log)
		if err != nil {
			t.Fatal(err)
		}
		e, err := NewElector(*m.Config().Etcd, log)
		if err != nil {
			t.Fatal(err)
		}
		m.SetElector(e)
		ctx, cancel := context.WithCancel(context.Background())
		x := &mon{m: m, cancel: cancel, done: make(chan struct{})}
		go func() { defer close(x.done); m.RunElected(ctx) }()
		t.Cleanup(func() { cancel(); <-x.done })
		return x
	}
	m1 := start("m1")
	waitFor(t, "m1 leads and watches the primary", 30*time.Second, func() bool { return m1.m.elector.IsLeader() && m1.m.Primary() == 0 })
	m2 := start("m2")
	waitFor(t, "m2 knows m1 leads", 10*time.Second, func() bool { return m2.m.elector.Status().Holder == "m1" })
	if m2.m.Primary() != -1 || m2.m.running.Load() {
		t.Fatal("the follower m2 watches")
	}
	// SHOW FAILOVER on either names the leader; only the leader watches.
	for _, c := range []struct {
		m     *Monitor
		watch string
	}{{m1.m, "true"}, {m2.m, "false"}} {
		st := map[string]string{}
		for _, kv := range (Console{M: c.m}).Status() {
			st[kv[0]] = kv[1]
		}
		if st["etcd_leader"] != "m1" || st["watching"] != c.watch || st["etcd_error"] != "" || st["etcd_name"] != c.m.elector.Name() {
			t.Fatalf("SHOW FAILOVER of %s: %v", c.m.elector.Name(), st)
		}
		if c.watch == "true" && (st["primary"] != "p" || st["primary_health"] != "healthy") {
			t.Fatalf("SHOW FAILOVER of the leader: %v", st)
		}
	}
	// A node command on the follower is refused and names the leader.
	if _, err := m2.m.Detach(context.Background(), 1); err == nil {
		t.Fatal("the follower m2 ran DETACH NODE")
	} else {
		t.Logf("follower refuses a node command: %v", err)
	}

	primary.Stop(t, "immediate")
	waitFor(t, "failover by the leader", 60*time.Second, func() bool { return len(m1.m.Events()) == 1 })
	time.Sleep(2 * time.Second) // room for a second, wrong failover by either monitor
	if n1, n2 := len(m1.m.Events()), len(m2.m.Events()); n1 != 1 || n2 != 0 {
		t.Fatalf("failovers: m1 %d, m2 %d; want 1 and 0", n1, n2)
	}
	if ev := m1.m.Events()[0]; ev.OldPrimary != 0 || ev.NewPrimary != 1 {
		t.Fatalf("failover %+v", ev)
	}
	if got := standby.QueryString(t, "postgres", "SELECT pg_is_in_recovery()::text"); got != "false" {
		t.Fatalf("standby still in recovery: %s", got)
	}
	// Promoted exactly once: one timeline switch.
	if got := standby.QueryString(t, "postgres", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); got != "00000002" {
		t.Fatalf("the promoted standby writes on timeline %s, want 00000002", got)
	}

	stopped := time.Now()
	m1.cancel()
	<-m1.done
	waitFor(t, "m2 leads and watches the new primary", ttl+30*time.Second, func() bool {
		return m2.m.elector.IsLeader() && m2.m.Primary() == 1
	})
	t.Logf("m2 leads and watches the new primary %v after m1 stopped", time.Since(stopped).Round(time.Millisecond))
	time.Sleep(time.Second)
	if len(m2.m.Events()) != 0 || m2.m.Primary() != 1 {
		t.Fatalf("m2 after taking over: events %+v, primary %d", m2.m.Events(), m2.m.Primary())
	}
	standby.Exec(t, "INSERT INTO t VALUES (2)")
}
