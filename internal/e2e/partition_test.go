package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// cutProxy forwards TCP connections from a loopback port to a target; cut closes every
// connection and refuses new ones (a partition), heal accepts again on the same port.
type cutProxy struct {
	t      *testing.T
	port   int
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	p := &cutProxy{t: t, port: pgtest.FreePort(t), target: target, conns: map[net.Conn]struct{}{}}
	p.heal()
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *cutProxy) heal() {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p.port))
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(c, s) {
				return
			}
			for _, pair := range [][2]net.Conn{{c, s}, {s, c}} {
				p.wg.Add(1)
				go func() {
					defer p.wg.Done()
					io.Copy(pair[0], pair[1])
					pair[0].Close()
					pair[1].Close()
				}()
			}
		}
	}()
}

func (p *cutProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]struct{}{}
}

// TestPartitionedPrimaryGetsNoRoutedQuery: the primary is cut off from the pool and the
// monitor only (a proxy between them is cut; the primary keeps running and its standbys
// keep their direct connections). The monitor fails over; when the partition heals the
// old primary, still claiming to be a primary, must get no routed query: its database
// "app" commits no transaction after the failover while the clients keep writing and
// reading through the pool.
func TestPartitionedPrimaryGetsNoRoutedQuery(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	nodes := startHANodes(t, pgtest.Options{})
	n0 := nodes[0]
	n0.Exec(t, "CREATE DATABASE app")
	proxy := newCutProxy(t, fmt.Sprintf("127.0.0.1:%d", n0.Port))
	h := startHAPool(t, nodes, []int{proxy.port, 0, 0}, nil, "")
	led := newLedgerIn(t, n0, "app", h.connString("app"))
	ctx, stop := context.WithCancel(context.Background())
	led.start(ctx, 3)
	defer func() { stop(); led.wg.Wait() }()
	waitUntil(t, "writes through the pool", 30*time.Second, func() bool { return led.count() >= 200 })
	t.Logf("SHOW POOL_NODES before:\n%s", formatRows(h.poolNodes()))

	proxy.cut()
	cut := time.Now()
	var newP *pgtest.Cluster
	waitUntil(t, "a standby promoted", 60*time.Second, func() bool {
		for _, s := range nodes[1:] {
			if queryOK(s, "SELECT (NOT pg_is_in_recovery())::text") == "true" {
				newP = s
				return true
			}
		}
		return false
	})
	t.Logf("promoted %.2fs after the partition", time.Since(cut).Seconds())
	if got := queryOK(n0, "SELECT pg_is_in_recovery()::text"); got != "false" {
		t.Fatalf("the partitioned old primary should still run as a primary, pg_is_in_recovery = %q", got)
	}
	after := led.count()
	waitUntil(t, "writes on the new primary", 30*time.Second, func() bool { return led.count() >= after+100 })

	// Baseline on the old primary, directly (not through the pool): sessions opened in
	// database app (client backends only; autovacuum's transactions do not count). The
	// test's own rowsOn(n0) below opens exactly one.
	sessions := func() int {
		n, _ := strconv.Atoi(queryOK(n0, "SELECT sessions::text FROM pg_stat_database WHERE datname = 'app'"))
		return n
	}
	rowsOn := func(c *pgtest.Cluster) string {
		conn := c.Connect(t, "app")
		defer conn.Close(context.Background())
		var n string
		if err := conn.QueryRow(context.Background(), "SELECT count(*)::text FROM ledger").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	time.Sleep(2 * time.Second)
	baseSessions := sessions()
	baseRows := rowsOn(n0)

	proxy.heal()
	healed := time.Now()
	waitUntil(t, "the monitor sees the old primary back and logs the split-brain risk", 30*time.Second, func() bool {
		return strings.Contains(h.poolLog(), "split-brain risk")
	})
	mid := led.count()
	waitUntil(t, "writes go on after the partition healed", 30*time.Second, func() bool { return led.count() >= mid+300 })
	// Reads through the pool too.
	for i := 0; i < 50; i++ {
		rc := h.connString("app")
		c, err := connectSimple(rc)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := c.QueryRow(context.Background(), "SELECT count(*) FROM ledger").Scan(&n); err != nil {
			t.Fatal(err)
		}
		c.Close(context.Background())
	}
	stop()
	led.wg.Wait()
	time.Sleep(2 * time.Second)
	if got := sessions(); got != baseSessions+1 {
		t.Errorf("the old primary got %d sessions in database app after the failover (only the test's own check should be there)", got-baseSessions)
	}
	if got := rowsOn(n0); got != baseRows {
		t.Errorf("ledger rows on the old primary changed after the failover: %s, then %s", baseRows, got)
	}
	if missing := led.missingOnDB(t, newP, "app"); len(missing) > 0 {
		t.Errorf("%d acknowledged transactions missing on the new primary", len(missing))
	}
	rows := h.poolNodes()
	if got := roleOf(rows, 0); !strings.HasPrefix(got, "down/") {
		t.Errorf("the old primary is %q in SHOW POOL_NODES, want down", got)
	}
	t.Logf("SHOW POOL_NODES after the partition healed (%.1fs):\n%s", time.Since(healed).Seconds(), formatRows(rows))
	t.Logf("old primary: no session in app after the failover; ledger rows there %s (new primary: %s); clients: %d acknowledged, %d errors (in flight at the cut)",
		baseRows, rowsOn(newP), led.count(), len(led.errs))
}
