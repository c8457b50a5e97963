package pool

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/pool/cluster"
)

// slowCancelProxy forwards TCP connections to a PostgreSQL server and holds every
// CancelRequest for delay before passing it on, as a server far away or overloaded does.
type slowCancelProxy struct {
	ln      net.Listener
	target  string
	delay   time.Duration
	mu      sync.Mutex
	cancels int
	wg      sync.WaitGroup
}

func startSlowCancelProxy(t *testing.T, target string, delay time.Duration) *slowCancelProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowCancelProxy{ln: ln, target: target, delay: delay}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *slowCancelProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *slowCancelProxy) serve(c net.Conn) {
	defer c.Close()
	var first [8]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return
	}
	isCancel := binary.BigEndian.Uint32(first[4:]) == codeCancel
	if isCancel {
		p.mu.Lock()
		p.cancels++
		p.mu.Unlock()
		time.Sleep(p.delay)
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	if _, err := up.Write(first[:]); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// TestSlowCancelDoesNotStallOtherSessions: a client cancels a query while the server takes
// seconds to take the cancel connection. The query ends by itself meanwhile, so the event
// loop must finish it (which needs the cancelled session's lock) while the cancel is still
// pending; the other clients' queries, on the same event loop, must not wait for it.
func TestSlowCancelDoesNotStallOtherSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	const delay = 3 * time.Second
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Exec(t, "CREATE ROLE victim LOGIN")
	proxy := startSlowCancelProxy(t, fmt.Sprintf("127.0.0.1:%d", pg.Port), delay)
	cfg := Config{PoolMode: ModeTransaction, AuthType: AuthTrust, AdminUsers: []string{"postgres"}, QueryWaitTimeout: 30 * time.Second,
		Cluster: cluster.Config{HealthCheckPeriod: 200 * time.Millisecond, HealthCheckTimeout: time.Second, HealthCheckMaxRetries: -1,
			Nodes: []cluster.NodeConfig{{Host: "127.0.0.1", Port: proxy.port()}}}}
	s := startPool(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The simple query protocol keeps the sessions on the event loop.
	simple := " default_query_exec_mode=simple_protocol"
	victim, err := pgx.Connect(ctx, poolConnString(s, "victim", "postgres")+simple)
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close(context.Background())
	const others = 4
	conns := make([]*pgx.Conn, others)
	for i := range conns {
		if conns[i], err = pgx.Connect(ctx, poolConnString(s, "postgres", "postgres")+simple); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close(context.Background())
		if _, err := conns[i].Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range adminQuery(t, s, "SHOW CLIENTS") {
		if r[len(r)-1] != "epoll" && (r[0] == "postgres" || r[0] == "victim") {
			t.Logf("client %v is not on the event loop", r)
		}
	}

	victimDone := make(chan error, 1)
	go func() {
		_, err := victim.Exec(ctx, "SELECT pg_sleep(0.5)")
		victimDone <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancelDone := make(chan error, 1)
	start := time.Now()
	go func() { cancelDone <- victim.PgConn().CancelRequest(ctx) }()

	// Others query throughout the cancel's delay; record the slowest answer.
	var mu sync.Mutex
	var worst time.Duration
	var queries int
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < delay+500*time.Millisecond {
				t0 := time.Now()
				if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
					t.Errorf("other session: %v", err)
					return
				}
				d := time.Since(t0)
				mu.Lock()
				worst, queries = max(worst, d), queries+1
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	// And the admin console, which reads every session under its lock.
	var adminWorst time.Duration
	for time.Since(start) < delay {
		t0 := time.Now()
		adminQuery(t, s, "SHOW POOLS")
		adminWorst = max(adminWorst, time.Since(t0))
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	if err := <-victimDone; err != nil {
		t.Logf("victim query: %v", err)
	}
	if err := <-cancelDone; err != nil {
		t.Fatalf("cancel request: %v", err)
	}
	proxy.mu.Lock()
	n := proxy.cancels
	proxy.mu.Unlock()
	if n != 1 {
		t.Fatalf("the server got %d cancel connections, want 1", n)
	}
	t.Logf("cancel pending %s: %d queries of other sessions, slowest %s; slowest SHOW POOLS %s", delay, queries, worst, adminWorst)
	if worst > delay/3 || adminWorst > delay/3 {
		t.Fatalf("a pending cancel stalled other sessions: slowest query %s, slowest SHOW POOLS %s", worst, adminWorst)
	}
}
