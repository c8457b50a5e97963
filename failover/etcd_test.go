package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgharbor/pgharbor/internal/etcdtest"
	"github.com/pgharbor/pgharbor/internal/pgtest"
)

func startEtcd(t *testing.T) string { return etcdtest.Start(t) }

// tcpProxy forwards a loopback port to target until Cut, which closes the port and every
// connection through it: the partition of one monitor from etcd.
type tcpProxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
	cut   bool
}

func newProxy(t *testing.T, target string) (*tcpProxy, string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{l: l}
	t.Cleanup(p.Cut)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.cut {
				c.Close()
				u.Close()
			} else {
				p.conns = append(p.conns, c, u)
			}
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p, "http://" + l.Addr().String()
}

func (p *tcpProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.l.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// candidate runs an elector whose lead function records when it led.
type candidate struct {
	e       *Elector
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	started []time.Time
	ended   []time.Time
}

func runCandidate(t *testing.T, name string, endpoints []string, ttl time.Duration, active *atomic.Int32, overlap *atomic.Bool) *candidate {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := NewElector(EtcdConfig{Endpoints: endpoints, Prefix: "/pgharbor/test/", TTL: ttl, Name: name}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{e: e, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		e.Run(ctx, func(lctx context.Context) {
			if active.Add(1) > 1 {
				overlap.Store(true)
			}
			c.mu.Lock()
			c.started = append(c.started, time.Now())
			c.mu.Unlock()
			<-lctx.Done()
			c.mu.Lock()
			c.ended = append(c.ended, time.Now())
			c.mu.Unlock()
			active.Add(-1)
		})
	}()
	t.Cleanup(func() { cancel(); <-c.done })
	return c
}

// pair is two candidates whose terms are counted together: active is how many lead at
// once, overlap records that two ever did.
type pair struct {
	a, b    *candidate
	active  atomic.Int32
	overlap atomic.Bool
}

// leaderAndFollower starts candidate a on aURL until it leads, then b on bURL until it
// knows a leads.
func leaderAndFollower(t *testing.T, aURL, bURL string, ttl time.Duration) *pair {
	t.Helper()
	p := &pair{}
	p.a = runCandidate(t, "a", []string{aURL}, ttl, &p.active, &p.overlap)
	waitFor(t, "a leads", 10*time.Second, p.a.e.IsLeader)
	p.b = runCandidate(t, "b", []string{bURL}, ttl, &p.active, &p.overlap)
	waitFor(t, "b knows a leads", 10*time.Second, func() bool { return p.b.e.Status().Holder == "a" })
	return p
}

func (c *candidate) terms() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.started), len(c.ended)
}

func (c *candidate) lastEnd() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended[len(c.ended)-1]
}

func (c *candidate) lastStart() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started[len(c.started)-1]
}

// TestEtcdElectionOneLeaderAndTakeover: of two candidates exactly one leads; when the
// leader stops, the other leads within the ttl; the key names the leader.
func TestEtcdElectionOneLeaderAndTakeover(t *testing.T) {
	url := startEtcd(t)
	const ttl = 3 * time.Second
	p := leaderAndFollower(t, url, url, ttl)
	a, b := p.a, p.b
	time.Sleep(2 * ttl) // a keeps the lease alive through several keepalives; b never leads
	if b.e.IsLeader() || !a.e.IsLeader() || p.active.Load() != 1 {
		t.Fatalf("a leader %v, b leader %v, active %d", a.e.IsLeader(), b.e.IsLeader(), p.active.Load())
	}
	if err := a.e.Confirm(context.Background()); err != nil {
		t.Fatalf("leader a cannot confirm: %v", err)
	}
	if la, lb := leaderGauge(t, a.e), leaderGauge(t, b.e); la != 1 || lb != 0 {
		t.Fatalf("pgharbor_failover_leader: a %v, b %v", la, lb)
	}
	if err := b.e.Confirm(context.Background()); err == nil {
		t.Fatal("follower b confirms a leadership it does not hold")
	}

	stopped := time.Now()
	a.cancel()
	<-a.done
	waitFor(t, "b leads after a stopped", ttl+2*time.Second, b.e.IsLeader)
	t.Logf("takeover after a clean stop: %v", time.Since(stopped).Round(time.Millisecond))
	if p.overlap.Load() {
		t.Fatal("two candidates led at once")
	}
	if n, _ := b.terms(); n != 1 {
		t.Fatalf("b led %d terms", n)
	}
	if lb := leaderGauge(t, b.e); lb != 1 {
		t.Fatalf("pgharbor_failover_leader of b: %v", lb)
	}
}

// leaderGauge scrapes pgharbor_failover_leader from e's collector.
func leaderGauge(t *testing.T, e *Elector) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(e.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "pgharbor_failover_leader" && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != e.Name() {
				t.Fatalf("labels %v", m.GetLabel())
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatal("no pgharbor_failover_leader")
	return 0
}

// TestEtcdElectionLeaderPartitioned: the leader reaches etcd through a proxy that is cut.
// It must stop acting within the ttl, before the other candidate starts, and the other
// must lead once the lease expired (ttl and a poll later).
func TestEtcdElectionLeaderPartitioned(t *testing.T) {
	url := startEtcd(t)
	const ttl = 3 * time.Second
	proxy, purl := newProxy(t, strings.TrimPrefix(url, "http://"))
	p := leaderAndFollower(t, purl, url, ttl)
	a, b := p.a, p.b
	time.Sleep(ttl / 2)

	cut := time.Now()
	proxy.Cut()
	waitFor(t, "a stops acting", ttl+time.Second, func() bool { _, e := a.terms(); return e == 1 })
	stoppedAfter := a.lastEnd().Sub(cut)
	if stoppedAfter > ttl {
		t.Fatalf("a stopped acting %v after the cut; ttl %v", stoppedAfter, ttl)
	}
	if a.e.IsLeader() {
		t.Fatal("a still takes itself for the leader")
	}
	if err := a.e.Confirm(context.Background()); err == nil {
		t.Fatal("partitioned a confirms its leadership")
	}
	waitFor(t, "b leads", 2*ttl+2*time.Second, b.e.IsLeader)
	takeover := b.lastStart().Sub(cut)
	t.Logf("partitioned leader stopped after %v; the other led after %v", stoppedAfter.Round(time.Millisecond), takeover.Round(time.Millisecond))
	if !b.lastStart().After(a.lastEnd()) || p.overlap.Load() {
		t.Fatalf("b started leading (%v) before a stopped (%v)", b.lastStart(), a.lastEnd())
	}
	if st := a.e.Status(); st.EtcdError == "" {
		t.Fatal("a does not report why it cannot reach etcd")
	}
	time.Sleep(ttl)
	if n, _ := a.terms(); n != 1 || a.e.IsLeader() {
		t.Fatal("partitioned a leads again")
	}
}

// TestEtcdElectionUnreachableNeverLeads: with etcd unreachable from the start a candidate
// never leads and says why.
func TestEtcdElectionUnreachableNeverLeads(t *testing.T) {
	port := pgtest.FreePort(t)
	var active atomic.Int32
	var overlap atomic.Bool
	a := runCandidate(t, "a", []string{fmt.Sprintf("http://127.0.0.1:%d", port)}, 2*time.Second, &active, &overlap)
	time.Sleep(3 * time.Second)
	if n, _ := a.terms(); n != 0 || a.e.IsLeader() {
		t.Fatal("a leads without etcd")
	}
	if st := a.e.Status(); !strings.Contains(st.EtcdError, "connect") {
		t.Fatalf("etcd error %q", st.EtcdError)
	}
}

func TestEtcdConfigChecks(t *testing.T) {
	for _, c := range []EtcdConfig{
		{Prefix: "/p/"},
		{Endpoints: []string{"127.0.0.1:2379"}, Prefix: "/p/"},
		{Endpoints: []string{"http://127.0.0.1:2379"}},
		{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p/", TTL: time.Second},
		{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p/", TTL: 2500 * time.Millisecond},
		{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p/", Password: "x"},
		{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p/", Username: "u", Password: "x", PasswordFile: "/etc/hostname"},
		{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p/", Username: "u", PasswordFile: "/nonexistent/pw"},
	} {
		if _, err := NewElector(c, nil); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	open := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(open, []byte("pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewElector(EtcdConfig{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p/", Username: "u", PasswordFile: open}, nil); err == nil ||
		!strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a password file others can read: %v", err)
	}
	e, err := NewElector(EtcdConfig{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p/"}, nil)
	if err != nil || e.cfg.TTL != DefaultEtcdTTL || !strings.Contains(e.Name(), "/") {
		t.Fatalf("%v %+v", err, e)
	}
}

// runElector runs an elector for cfg whose leader only waits, stopped at cleanup.
func runElector(t *testing.T, cfg EtcdConfig) *Elector {
	t.Helper()
	e, err := NewElector(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx, func(c context.Context) { <-c.Done() }) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

// TestEtcdElectionTLS: an etcd that requires client certificates elects a candidate given
// ca_file, cert_file and key_file, and refuses one without a client certificate.
func TestEtcdElectionTLS(t *testing.T) {
	c := etcdtest.NewTLS(t)
	url := etcdtest.StartTLS(t, c)
	run := func(cfg EtcdConfig) *Elector { return runElector(t, cfg) }
	noCert := run(EtcdConfig{Endpoints: []string{url}, Prefix: "/tls/", TTL: 2 * time.Second, Name: "nocert", CAFile: c.CAFile})
	time.Sleep(time.Second)
	if noCert.IsLeader() || noCert.Status().EtcdError == "" {
		t.Fatalf("a candidate without a client certificate: %+v", noCert.Status())
	}
	ok := run(EtcdConfig{Endpoints: []string{url}, Prefix: "/tls/", TTL: 2 * time.Second, Name: "tls",
		CAFile: c.CAFile, CertFile: c.ClientCert, KeyFile: c.ClientKey})
	waitFor(t, "the candidate with a client certificate leads", 10*time.Second, ok.IsLeader)
	if err := ok.Confirm(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestEtcdElectionKeyDeleted: when the leader key is deleted by hand (etcdctl del) while
// the leader's lease lives on, another candidate may take the key at once; the old leader
// stops acting at its next keepalive (within ttl/3), and meanwhile only the key's new holder
// passes the check made before a promotion.
func TestEtcdElectionKeyDeleted(t *testing.T) {
	url := startEtcd(t)
	const ttl = 3 * time.Second
	p := leaderAndFollower(t, url, url, ttl)
	a, b := p.a, p.b
	res, err := http.Post(url+"/v3/kv/deleterange", "application/json", strings.NewReader(fmt.Sprintf(`{"key":%q}`, b64("/pgharbor/test/leader"))))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	deleted := time.Now()
	if err := a.e.Confirm(context.Background()); err == nil {
		t.Fatal("a confirms its leadership after its key was deleted")
	}
	waitFor(t, "b leads", 2*ttl, b.e.IsLeader)
	if err := b.e.Confirm(context.Background()); err != nil {
		t.Fatalf("b cannot confirm: %v", err)
	}
	if err := a.e.Confirm(context.Background()); err == nil {
		t.Fatal("a and b both confirm")
	}
	waitFor(t, "a stops acting", ttl/3+time.Second, func() bool { _, e := a.terms(); return e == 1 })
	t.Logf("a stopped acting %v after the key was deleted; b led %v after", a.lastEnd().Sub(deleted).Round(time.Millisecond),
		b.lastStart().Sub(deleted).Round(time.Millisecond))
	time.Sleep(ttl)
	if a.e.IsLeader() || !b.e.IsLeader() || p.active.Load() != 1 {
		t.Fatalf("a leader %v, b leader %v, active %d", a.e.IsLeader(), b.e.IsLeader(), p.active.Load())
	}
}

// etcdAdmin POSTs body to path on an etcd JSON gateway with an optional token and fails the
// test on any error answer.
func etcdAdmin(t *testing.T, url, token, path, body string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s %s", path, body, res.Status, b)
	}
	return b
}

// TestEtcdElectionAuth: an etcd with authentication enabled and a user allowed on the
// prefix only. A candidate with that user's password leads; one with a wrong password or
// none never leads and says why; and the leader keeps leading across expired tokens
// (--auth-token-ttl 1 against keepalives every 2 s: every renewal needs a new token).
func TestEtcdElectionAuth(t *testing.T) {
	url := etcdtest.StartArgs(t, "--auth-token-ttl", "1")
	etcdAdmin(t, url, "", "/v3/auth/user/add", `{"name":"root","password":"rootpw"}`)
	etcdAdmin(t, url, "", "/v3/auth/user/grant", `{"user":"root","role":"root"}`)
	etcdAdmin(t, url, "", "/v3/auth/role/add", `{"name":"monitors"}`)
	etcdAdmin(t, url, "", "/v3/auth/role/grant", fmt.Sprintf(`{"name":"monitors","perm":{"permType":"READWRITE","key":%q,"range_end":%q}}`,
		b64("/auth/"), b64("/auth0")))
	etcdAdmin(t, url, "", "/v3/auth/user/add", `{"name":"mon","password":"s3cret"}`)
	etcdAdmin(t, url, "", "/v3/auth/user/grant", `{"user":"mon","role":"monitors"}`)
	etcdAdmin(t, url, "", "/v3/auth/enable", `{}`)

	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(cfg EtcdConfig) *Elector {
		cfg.Endpoints, cfg.Prefix = []string{url}, "/auth/"
		return runElector(t, cfg)
	}
	wrong := run(EtcdConfig{Name: "wrong", TTL: 2 * time.Second, Username: "mon", Password: "nope"})
	anon := run(EtcdConfig{Name: "anon", TTL: 2 * time.Second})
	waitFor(t, "the wrong password and no user both fail", 10*time.Second, func() bool {
		return wrong.Status().EtcdError != "" && anon.Status().EtcdError != ""
	})
	if e := wrong.Status().EtcdError; !strings.Contains(e, `authenticating as etcd user "mon"`) || !strings.Contains(e, "authentication failed") {
		t.Fatalf("wrong password: %q", e)
	}
	if e := anon.Status().EtcdError; !strings.Contains(e, "set failover.etcd.username") {
		t.Fatalf("without a user: %q", e)
	}

	ok := run(EtcdConfig{Name: "mon", TTL: 6 * time.Second, Username: "mon", PasswordFile: pwFile})
	waitFor(t, "the candidate with the password leads", 10*time.Second, ok.IsLeader)
	time.Sleep(5 * time.Second) // two keepalives, each after the token expired
	if err := ok.Confirm(context.Background()); err != nil {
		t.Fatalf("after the tokens expired: %v", err)
	}
	ok.mu.Lock()
	auths := ok.auths
	ok.mu.Unlock()
	if auths < 2 || !ok.IsLeader() || wrong.IsLeader() || anon.IsLeader() {
		t.Fatalf("authentications %d; leaders: mon %v wrong %v anon %v", auths, ok.IsLeader(), wrong.IsLeader(), anon.IsLeader())
	}
	t.Logf("mon authenticated %d times in its term", auths)

	// The root token sees the leader key with mon's name.
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(etcdAdmin(t, url, "", "/v3/auth/authenticate", `{"name":"root","password":"rootpw"}`), &tok); err != nil {
		t.Fatal(err)
	}
	var rr rangeResp
	if err := json.Unmarshal(etcdAdmin(t, url, tok.Token, "/v3/kv/range", fmt.Sprintf(`{"key":%q}`, b64("/auth/leader"))), &rr); err != nil {
		t.Fatal(err)
	}
	if len(rr.Kvs) != 1 || rr.Kvs[0].value() != "mon" {
		t.Fatalf("leader key: %+v", rr.Kvs)
	}
}
