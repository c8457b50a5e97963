package pool

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/pool/cluster"
)

func TestServerUnreachableClassifiesLoginErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&netErr{}, true},
		{syscall.ECONNREFUSED, true},
		{errors.Join(errors.New("connect to 127.0.0.1:1"), syscall.ECONNREFUSED), true},
		{&pgError{Severity: "FATAL", Code: "57P03", Message: "the database system is shutting down"}, true},
		{&pgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}, true},
		{&pgError{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"}, false},
		{&pgError{Severity: "FATAL", Code: "3D000", Message: "database does not exist"}, false},
		{context.DeadlineExceeded, false}, // the pool's own query_wait_timeout
		{context.Canceled, false},
		{errPoolClosed, false},
		{errors.New("server asks for md5 and neither the password nor its md5 hash is known"), false},
	} {
		if got := serverUnreachable(c.err); got != c.want {
			t.Errorf("serverUnreachable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

type netErr struct{}

func (*netErr) Error() string   { return "dial tcp: connection refused" }
func (*netErr) Timeout() bool   { return false }
func (*netErr) Temporary() bool { return false }

// TestFailoverWaitHoldsNewTransactionsUntilNewPrimary: the primary's postmaster is
// SIGKILLed while the pool still takes it for the primary (its own health checks are an
// hour apart, as if the crash fell between two). A query running on it fails with 08006
// saying a failover is under way; new write transactions, on connections opened before and
// after the crash, wait instead of failing; after failover.client_wait one gets a clean
// ERROR and its session goes on; once the standby is promoted and SetPrimary is called, the
// waiting transactions run on it. For both engines and both pool modes.
func TestFailoverWaitHoldsNewTransactionsUntilNewPrimary(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	for _, c := range []struct {
		name   string
		mode   PoolMode
		engine string
	}{
		{"transaction-epoll", ModeTransaction, IOEngineEpoll},
		{"transaction-goroutines", ModeTransaction, IOEngineGoroutines},
		{"session", ModeSession, IOEngineGoroutines},
	} {
		t.Run(c.name, func(t *testing.T) { testFailoverWait(t, c.mode, c.engine) })
	}
}

func testFailoverWait(t *testing.T, mode PoolMode, engine string) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	primary := pgtest.Start(t, pgtest.Options{})
	primary.Exec(t, "CREATE TABLE fw (who text)")
	standby := primary.StartStandby(t)
	cfg := Config{PoolMode: mode, AuthType: AuthTrust, AdminUsers: []string{"postgres"}, IOEngine: engine,
		QueryWaitTimeout: 30 * time.Second, ServerConnectTimeout: 2 * time.Second,
		Cluster: cluster.Config{HealthCheckPeriod: time.Hour, HealthCheckTimeout: time.Second, HealthCheckMaxRetries: -1,
			Nodes: []cluster.NodeConfig{{Host: "127.0.0.1", Port: primary.Port}, {Host: "127.0.0.1", Port: standby.Port}}}}
	s := startPool(t, cfg)
	var kmu sync.Mutex
	var kicked []int
	fo := &FailoverOptions{ClientWait: 20 * time.Second, CheckPrimary: func(id int) {
		kmu.Lock()
		kicked = append(kicked, id)
		kmu.Unlock()
	}}
	s.SetFailover(fo)

	dial := func(app string) *pgconn.PgConn {
		t.Helper()
		return loopConn(t, s, app)
	}
	// clients logged in before the crash, each with a transaction behind it
	before := []*pgconn.PgConn{dial("before0"), dial("before1")}
	for _, c := range before {
		mustOne(t, ctx, c, "SELECT 1")
	}
	if mode == ModeTransaction && engine == IOEngineEpoll {
		if io := waitClientIO(t, s, before[0].PID(), "epoll"); io != "epoll" {
			t.Fatalf("SHOW CLIENTS io %q, want epoll", io)
		}
	}
	inflight := dial("inflight")
	sleepErr := make(chan error, 1)
	go func() { _, err := one(ctx, inflight, "SELECT pg_sleep(60)"); sleepErr <- err }()
	waitUntilT(t, "pg_sleep running", func() bool {
		return primary.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'") == "1"
	})

	killPostmaster(t, primary)
	crash := time.Now()

	// the query that ran on the dead primary fails, saying why
	select {
	case err := <-sleepErr:
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != sqlstateConnFailure || !strings.Contains(pe.Message, "failover") {
			t.Fatalf("in-flight query: %v, want 08006 saying a failover is under way", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight query on the killed primary did not fail")
	}

	// session mode: the sessions held server connections to the dead primary and are gone;
	// its clients come back with new connections
	if mode == ModeSession {
		before = []*pgconn.PgConn{dial("again0"), dial("again1")}
	}

	// failover.client_wait passes with no new primary: a clean ERROR, the session goes on
	s.SetFailover(&FailoverOptions{ClientWait: 400 * time.Millisecond, CheckPrimary: fo.CheckPrimary})
	t0 := time.Now()
	_, err := one(ctx, before[0], "INSERT INTO fw VALUES ('too late')")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != sqlstateCannotConnect || pe.Severity != "ERROR" || !strings.Contains(pe.Message, "failover.client_wait") {
		t.Fatalf("write after client_wait: %v, want ERROR 08001 naming failover.client_wait", err)
	}
	if d := time.Since(t0); d < 350*time.Millisecond || d > 5*time.Second {
		t.Fatalf("client_wait 400ms ended after %v", d)
	}
	s.SetFailover(fo)

	// new write transactions wait: on the connections from before the crash and on new ones
	type result struct {
		who  string
		err  error
		port string
		at   time.Time
	}
	results := make(chan result, 8)
	write := func(c *pgconn.PgConn, who string) {
		_, err := one(ctx, c, "INSERT INTO fw VALUES ('"+who+"')")
		port := ""
		if err == nil {
			port, err = one(ctx, c, "SELECT inet_server_port()::text")
		}
		results <- result{who, err, port, time.Now()}
	}
	go write(before[0], "before0")
	go write(before[1], "before1")
	for i := 0; i < 2; i++ {
		who := "after" + strconv.Itoa(i)
		go func() {
			c, err := pgconn.Connect(ctx, poolConnString(s, "postgres", "postgres"))
			if err != nil {
				results <- result{who: who, err: err, at: time.Now()}
				return
			}
			defer c.Close(context.Background())
			write(c, who)
		}()
	}
	select {
	case r := <-results:
		t.Fatalf("%s finished with no primary: %v", r.who, r.err)
	case <-time.After(time.Second):
	}
	// The waiting sessions dial the dead primary again every failoverRetry, and each refused
	// login asks for an early check: on a loaded machine the first may come late.
	var k []int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		kmu.Lock()
		k = append(k[:0], kicked...)
		kmu.Unlock()
		if len(k) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(k) == 0 || k[0] != 0 {
		t.Errorf("CheckPrimary calls %v, want node 0 (an early health check)", k)
	}

	standby.Exec(t, "SELECT pg_promote()")
	promoted := time.Now()
	s.Cluster().SetPrimary(1)
	for i := 0; i < 4; i++ {
		select {
		case r := <-results:
			if r.err != nil {
				t.Errorf("%s: %v", r.who, r.err)
				continue
			}
			if r.port != strconv.Itoa(standby.Port) {
				t.Errorf("%s ran on port %s, want the new primary's %d", r.who, r.port, standby.Port)
			}
			if r.at.Before(promoted) {
				t.Errorf("%s finished before the promotion", r.who)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("waiting transactions did not finish after SetPrimary")
		}
	}
	if mode == ModeTransaction && engine == IOEngineEpoll {
		if io := clientIO(t, s, before[0].PID()); io != "epoll" {
			t.Errorf("after waiting for the primary the session runs on %q, want epoll (parked in the loop, not moved)", io)
		}
	}
	if got := standby.QueryString(t, "postgres", "SELECT string_agg(who, ',' ORDER BY who) FROM fw"); got != "after0,after1,before0,before1" {
		t.Errorf("rows on the new primary: %q", got)
	}
	t.Logf("%s/%s: crash to promotion %v; the waiting transactions ran on the new primary", mode, engine, promoted.Sub(crash).Round(time.Millisecond))
}

func killPostmaster(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// its backends exit on their own once they see the postmaster gone
	waitUntilT(t, "the killed postmaster's port closed", func() bool {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := pgconn.Connect(cctx, c.TCPConnString("postgres")+" connect_timeout=1")
		if err == nil {
			conn.Close(context.Background())
		}
		return err != nil
	})
}

func waitUntilT(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
