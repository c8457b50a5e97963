package cluster

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// hangingListener accepts TCP connections and never answers: a node that is "there" but
// stuck, the case where a health check without a timeout would hang forever.
func hangingListener(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().(*net.TCPAddr).Port
}

func waitFor(t *testing.T, what string, d time.Duration, c *Cluster, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; nodes: %+v", what, d, c.Nodes())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRealClusterRolesLagDownAndFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	top := t // clusters restarted inside subtests must outlive them
	primary := pgtest.Start(t, pgtest.Options{})
	standby := primary.StartStandby(t)
	stuck := hangingListener(t)

	const period = 300 * time.Millisecond
	// Config order says nothing about roles: the standby is listed first.
	cfg := Config{
		Nodes: []NodeConfig{
			{Host: "127.0.0.1", Port: standby.Port, Name: "standby"},
			{Host: "127.0.0.1", Port: primary.Port, Name: "primary"},
			{Host: "127.0.0.1", Port: stuck, Name: "stuck"},
		},
		HealthCheckPeriod:     period,
		HealthCheckTimeout:    500 * time.Millisecond,
		HealthCheckRetryDelay: 50 * time.Millisecond,
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	t.Run("roles discovered, unreachable node down", func(t *testing.T) {
		start := time.Now()
		c.CheckNow(ctx)
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("a round with a stuck node took %v", d)
		}
		ns := c.Nodes()
		if ns[0].Role != RoleStandby || ns[0].Status != StatusUp || ns[1].Role != RolePrimary || ns[1].Status != StatusUp || ns[2].Status != StatusDown {
			t.Fatalf("nodes: %+v", ns)
		}
		if p, ok := c.Primary(); !ok || p.ID != 1 {
			t.Fatalf("primary: %+v %v", p, ok)
		}
	})

	t.Run("lag measured in bytes and time", func(t *testing.T) {
		primary.Exec(t, "CREATE TABLE lagtest (x int)")
		primary.WaitReplay(t, standby)
		standby.Exec(t, "SELECT pg_wal_replay_pause()")
		primary.Exec(t, "INSERT INTO lagtest SELECT generate_series(1, 20000)")
		time.Sleep(300 * time.Millisecond) // let the standby receive but not replay
		c.CheckNow(ctx)
		n, _ := c.Node(0)
		if n.LagBytes < 100_000 || n.LagTime <= 0 {
			t.Fatalf("paused standby: lag %d bytes, %v", n.LagBytes, n.LagTime)
		}
		// Over the limit, reads avoid it.
		c.cfg.MaxLagBytes = 1000
		for k := uint64(0); k < 200; k++ {
			if r, ok := c.PickReader(k); !ok || r.ID != 1 {
				t.Fatalf("lagging standby picked: %+v %v", r, ok)
			}
		}
		c.cfg.MaxLagBytes = 0
		standby.Exec(t, "SELECT pg_wal_replay_resume()")
		primary.WaitReplay(t, standby)
		c.CheckNow(ctx)
		if n, _ := c.Node(0); n.LagTime != 0 || n.LagBytes > 1000 {
			t.Fatalf("caught-up standby: lag %d bytes, %v", n.LagBytes, n.LagTime)
		}
	})

	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(ctx) }()
	defer func() { cancel(); <-runDone }()

	t.Run("stopped standby marked down and subscribers told", func(t *testing.T) {
		sub := c.Subscribe()
		defer c.Unsubscribe(sub)
		stopped := time.Now()
		standby.Stop(t, "fast")
		deadline := time.After(3*period + 2*time.Second)
		for {
			select {
			case <-sub:
			case <-deadline:
				t.Fatalf("standby not marked down in time: %+v", c.Nodes())
			}
			if n, _ := c.Node(0); n.Status == StatusDown {
				break
			}
		}
		t.Logf("standby down %v after stop", time.Since(stopped).Round(time.Millisecond))
		if p, ok := c.Primary(); !ok || p.ID != 1 {
			t.Fatalf("primary lost: %+v", c.Nodes())
		}
		standby.Start(top)
		waitFor(t, "restarted standby up", 10*time.Second, c, func() bool { n, _ := c.Node(0); return n.Status == StatusUp })
	})

	t.Run("SetPrimary fences the old primary", func(t *testing.T) {
		standby.Exec(t, "SELECT pg_promote()")
		c.SetPrimary(0)
		if n, _ := c.Node(1); n.Status != StatusDown || !n.Fenced {
			t.Fatalf("old primary not fenced at once: %+v", n)
		}
		// The old primary keeps running and claims primary: split brain; never routed to.
		// A round that began before the promotion finished may still report node 0 as a
		// standby (and a round waits for the stuck node's timeout): wait for the next ones.
		waitFor(t, "promoted node seen as primary", 10*time.Second, c, func() bool { p, ok := c.Primary(); return ok && p.ID == 0 })
		time.Sleep(3 * period)
		if p, ok := c.Primary(); !ok || p.ID != 0 {
			t.Fatalf("primary: %+v %v; nodes %+v", p, ok, c.Nodes())
		}
		n, _ := c.Node(1)
		if n.Status != StatusDown || n.Role != RolePrimary {
			t.Fatalf("old primary: %+v", n)
		}
		for k := uint64(0); k < 100; k++ {
			if r, ok := c.PickReader(k); !ok || r.ID != 0 {
				t.Fatalf("read to %+v %v", r, ok)
			}
		}
	})
}

// The old primary still runs after a standby was promoted, and a pool starts afresh (no fence
// survives a restart): the promoted node, on the newer timeline, gets the writes even though
// the old primary is listed first.
func TestRealClusterFreshPoolPicksThePromotedNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	old := pgtest.Start(t, pgtest.Options{})
	promoted := old.StartStandby(t)
	promoted.Exec(t, "SELECT pg_promote()")
	if tl := promoted.QueryString(t, "postgres", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); tl != "00000002" {
		t.Fatalf("promoted node writes on timeline %s", tl)
	}
	cfg := Config{
		Nodes: []NodeConfig{
			{Host: "127.0.0.1", Port: old.Port, Name: "old"},
			{Host: "127.0.0.1", Port: promoted.Port, Name: "promoted"},
		},
		HealthCheckTimeout: 5 * time.Second,
	}
	c, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.CheckNow(ctx)
	if p, ok := c.Primary(); !ok || p.ID != 1 {
		t.Fatalf("primary %+v %v; nodes %+v", p, ok, c.Nodes())
	}
	n, _ := c.Node(0)
	if n.Status != StatusDown || n.Role != RolePrimary || !strings.Contains(n.Reason, "stale primary: writes on timeline 1 while node 1 writes on timeline 2") {
		t.Fatalf("old primary: %+v", n)
	}
}
