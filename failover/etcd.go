package failover

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgharbor/pgharbor/internal/secret"
)

// DefaultEtcdTTL is the leader lease's time to live when failover.etcd.ttl is not set.
const DefaultEtcdTTL = 10 * time.Second

// EtcdConfig is failover.etcd: with it, several monitors may run and an etcd lease elects
// the one that acts. It speaks etcd's v3 JSON gateway over net/http (no etcd client library).
type EtcdConfig struct {
	Endpoints []string      `yaml:"endpoints"` // http:// or https:// URLs, tried in order
	Prefix    string        `yaml:"prefix"`    // the leader key is Prefix + "leader"
	TTL       time.Duration `yaml:"ttl"`       // the leader lease; DefaultEtcdTTL when 0
	// Name identifies this monitor in the leader key; hostname/pid when empty.
	Name string `yaml:"name"`
	// CAFile verifies https endpoints; CertFile and KeyFile are a client certificate.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Username with Password or PasswordFile authenticate to an etcd with auth enabled
	// (`etcdctl auth enable`); the user needs read and write on Prefix.
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
}

func (c EtcdConfig) withDefaults() (EtcdConfig, error) {
	if len(c.Endpoints) == 0 {
		return c, errors.New("failover.etcd: endpoints is empty")
	}
	for _, e := range c.Endpoints {
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			return c, fmt.Errorf("failover.etcd: endpoint %q: want http://host:port or https://host:port", e)
		}
	}
	if c.Prefix == "" {
		return c, errors.New("failover.etcd: prefix is empty (e.g. /pgharbor/<cluster>/): monitors of different clusters must not share a leader key")
	}
	if c.TTL == 0 {
		c.TTL = DefaultEtcdTTL
	}
	if c.TTL < 2*time.Second {
		return c, fmt.Errorf("failover.etcd: ttl %v is below 2s (etcd grants leases in whole seconds)", c.TTL)
	}
	if c.TTL%time.Second != 0 {
		return c, fmt.Errorf("failover.etcd: ttl %v is not whole seconds", c.TTL)
	}
	if c.Password != "" && c.PasswordFile != "" {
		return c, errors.New("failover.etcd: set password or password_file, not both")
	}
	if c.Username == "" && (c.Password != "" || c.PasswordFile != "") {
		return c, errors.New("failover.etcd: password without username")
	}
	if c.Name == "" {
		h, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s/%d", h, os.Getpid())
	}
	return c, nil
}

// Elector campaigns for the leader key in etcd. While it holds the key with a live lease it
// is the leader and its Run calls lead; it stops leading (cancels lead's context) as soon as
// it cannot prove the lease alive.
type Elector struct {
	cfg  EtcdConfig
	key  string
	hc   *http.Client
	log  *slog.Logger
	poll time.Duration

	mu       sync.Mutex
	leader   bool
	lease    int64
	deadline time.Time // monotonic: after it the lease may have expired in etcd
	holder   string    // the leader's name as last read ("" when none or unknown)
	etcdErr  string    // the last error talking to etcd ("" when the last request worked)
	terms    int       // times this elector became leader

	password string
	// tokens holds an auth token per endpoint: etcd's default (simple) tokens are known
	// only to the member that issued them.
	tokens map[string]string
	auths  int // successful authentications, for tests
}

// NewElector checks cfg and returns an elector; it does not talk to etcd yet.
func NewElector(cfg EtcdConfig, log *slog.Logger) (*Elector, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.CAFile != "" || cfg.CertFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("failover.etcd.ca_file: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("failover.etcd.ca_file %s: no PEM certificate in it", cfg.CAFile)
			}
		}
		if cfg.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("failover.etcd.cert_file/key_file: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		tr.TLSClientConfig = tc
	}
	password := cfg.Password
	if cfg.PasswordFile != "" {
		warn, err := secret.CheckServiceFile(cfg.PasswordFile, "failover.etcd.password_file")
		if err != nil {
			return nil, err
		}
		if warn != "" {
			log.Warn(warn)
		}
		b, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("failover.etcd.password_file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
		if password == "" {
			return nil, fmt.Errorf("failover.etcd.password_file %s is empty", cfg.PasswordFile)
		}
	}
	poll := min(cfg.TTL/5, time.Second)
	return &Elector{cfg: cfg, key: cfg.Prefix + "leader", hc: &http.Client{Transport: tr}, log: log.With("component", "failover-etcd"), poll: poll,
		password: password, tokens: map[string]string{}}, nil
}

// Name is this monitor's name in the leader key.
func (e *Elector) Name() string { return e.cfg.Name }

// ElectionStatus is what the elector knows now.
type ElectionStatus struct {
	Leader    bool   `json:"leader"`     // this monitor acts
	Name      string `json:"name"`       // this monitor
	Holder    string `json:"holder"`     // the leader's name, as last read ("" when unknown or none)
	EtcdError string `json:"etcd_error"` // the last error talking to etcd
	Terms     int    `json:"terms"`
}

// Status returns the election's state.
func (e *Elector) Status() ElectionStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return ElectionStatus{Leader: e.leader && time.Now().Before(e.deadline), Name: e.cfg.Name, Holder: e.holder, EtcdError: e.etcdErr, Terms: e.terms}
}

// IsLeader: this monitor holds the leader key with a lease proved alive within its ttl.
func (e *Elector) IsLeader() bool { return e.Status().Leader }

// ErrNotLeader: this monitor does not (provably) hold the leader key, so it does not act.
var ErrNotLeader = errors.New("this monitor is not the etcd leader")

// Confirm proves, in one etcd transaction, that the leader key still holds this monitor's
// lease, within the lease's deadline. The monitor calls it right before it promotes, so a
// leader whose leadership went stale (a pause, a partition) never promotes.
func (e *Elector) Confirm(ctx context.Context) error {
	e.mu.Lock()
	lead, lease, dl := e.leader, e.lease, e.deadline
	e.mu.Unlock()
	if !lead || !time.Now().Before(dl) {
		return ErrNotLeader
	}
	cctx, cancel := context.WithDeadline(ctx, dl)
	defer cancel()
	held, err := e.holdsKey(cctx, lease)
	if err != nil {
		return fmt.Errorf("%w: cannot confirm the leader key: %v", ErrNotLeader, err)
	}
	if !held {
		return fmt.Errorf("%w: the leader key no longer holds this monitor's lease", ErrNotLeader)
	}
	return nil
}

// holdsKey asks etcd, in one transaction, whether the leader key holds lease.
func (e *Elector) holdsKey(ctx context.Context, lease int64) (bool, error) {
	var r txnResp
	err := e.call(ctx, "/v3/kv/txn", map[string]any{
		"compare": []map[string]any{{"key": b64(e.key), "result": "EQUAL", "target": "LEASE", "lease": strconv.FormatInt(lease, 10)}},
	}, &r)
	return r.Succeeded, err
}

// Run campaigns until ctx ends. Each time this monitor becomes leader it calls lead with a
// context that ends when leadership is lost (or ctx ends) and waits for lead to return
// before it campaigns again. On return it gives the key up (revokes its lease).
func (e *Elector) Run(ctx context.Context, lead func(context.Context)) {
	e.log.Info("etcd leader election started", "name", e.cfg.Name, "key", e.key, "ttl", e.cfg.TTL, "endpoints", e.cfg.Endpoints)
	for ctx.Err() == nil {
		lease, ok := e.campaign(ctx)
		if !ok {
			if !sleepCtx(ctx, e.poll) {
				return
			}
			continue
		}
		e.leadTerm(ctx, lease, lead)
	}
}

// campaign makes one attempt: when the leader key is absent, grant a lease and create the
// key with it in a transaction that succeeds only if nobody created it meanwhile.
func (e *Elector) campaign(ctx context.Context) (int64, bool) {
	var rr rangeResp
	if err := e.call(ctx, "/v3/kv/range", map[string]any{"key": b64(e.key)}, &rr); err != nil {
		return 0, false
	}
	if len(rr.Kvs) > 0 {
		e.setHolder(rr.Kvs[0].value())
		return 0, false
	}
	sent := time.Now()
	var g struct {
		ID  string `json:"ID"`
		TTL string `json:"TTL"`
	}
	if err := e.call(ctx, "/v3/lease/grant", map[string]any{"TTL": strconv.Itoa(int(e.cfg.TTL / time.Second))}, &g); err != nil {
		return 0, false
	}
	lease, err := strconv.ParseInt(g.ID, 10, 64)
	ttl, terr := strconv.Atoi(g.TTL)
	if err != nil || terr != nil || ttl <= 0 {
		e.noteErr(fmt.Errorf("lease grant answered ID %q TTL %q", g.ID, g.TTL))
		return 0, false
	}
	var r txnResp
	err = e.call(ctx, "/v3/kv/txn", map[string]any{
		"compare": []map[string]any{{"key": b64(e.key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}},
		"success": []map[string]any{{"request_put": map[string]any{"key": b64(e.key), "value": b64(e.cfg.Name), "lease": g.ID}}},
		"failure": []map[string]any{{"request_range": map[string]any{"key": b64(e.key)}}},
	}, &r)
	if err != nil || !r.Succeeded {
		if err == nil {
			for _, resp := range r.Responses {
				if resp.ResponseRange != nil && len(resp.ResponseRange.Kvs) > 0 {
					e.setHolder(resp.ResponseRange.Kvs[0].value())
				}
			}
		}
		e.revoke(lease)
		return 0, false
	}
	e.mu.Lock()
	e.leader, e.lease, e.holder = true, lease, e.cfg.Name
	e.deadline = e.leaseDeadline(sent, time.Duration(ttl)*time.Second)
	e.terms++
	e.mu.Unlock()
	e.log.Warn("this monitor is the leader now: it acts on the cluster", "name", e.cfg.Name, "lease", lease)
	return lease, true
}

// leaseDeadline is when this monitor stops taking itself for the leader after a grant or
// keepalive sent at sent answered ttl: a fifth of the ttl earlier than etcd lets the lease
// expire, so that the former leader has stopped before a new one can be elected.
func (e *Elector) leaseDeadline(sent time.Time, ttl time.Duration) time.Time {
	return sent.Add(ttl - ttl/5)
}

// leadTerm runs lead while the lease is kept alive and returns when leadership is lost.
func (e *Elector) leadTerm(ctx context.Context, lease int64, lead func(context.Context)) {
	tctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); lead(tctx) }()
	why := e.keepAlive(tctx, lease)
	e.mu.Lock()
	e.leader = false
	e.mu.Unlock()
	cancel()
	if ctx.Err() == nil {
		e.log.Error("this monitor lost the leadership: it stops acting", "name", e.cfg.Name, "reason", why)
	}
	<-done
	// Give the key up at once (a clean stop, or a lease that may still live): the next
	// leader need not wait for the ttl. Unreachable etcd: the lease expires by itself.
	e.revoke(lease)
	e.setHolder("")
	if ctx.Err() != nil {
		e.log.Info("left the leadership on shutdown", "name", e.cfg.Name)
	}
}

// keepAlive renews the lease every ttl/3 until the deadline passes without a renewal, the
// lease is gone, or ctx ends; it returns why it stopped.
func (e *Elector) keepAlive(ctx context.Context, lease int64) string {
	every := e.cfg.TTL / 3
	next := time.Now().Add(every)
	for {
		e.mu.Lock()
		dl := e.deadline
		e.mu.Unlock()
		wait := time.Until(next)
		if dl.Before(next) {
			wait = time.Until(dl)
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return "shutdown"
			case <-t.C:
			}
		}
		if !time.Now().Before(dl) {
			return "the lease could not be renewed within its ttl (etcd unreachable or too slow)"
		}
		if time.Now().Before(next) {
			continue
		}
		next = time.Now().Add(every)
		sent := time.Now()
		kctx, cancel := context.WithDeadline(ctx, dl)
		var k struct {
			Result struct {
				ID  string `json:"ID"`
				TTL string `json:"TTL"`
			} `json:"result"`
		}
		err := e.call(kctx, "/v3/lease/keepalive", map[string]any{"ID": strconv.FormatInt(lease, 10)}, &k)
		cancel()
		if ctx.Err() != nil {
			return "shutdown"
		}
		if err != nil {
			e.log.Warn("lease keepalive failed; retrying", "err", err, "leader_until", time.Until(dl).Round(time.Millisecond))
			next = time.Now().Add(min(every, e.poll))
			continue
		}
		ttl, _ := strconv.Atoi(k.Result.TTL)
		if ttl <= 0 {
			return "etcd says the lease has expired"
		}
		e.mu.Lock()
		e.deadline = e.leaseDeadline(sent, time.Duration(ttl)*time.Second)
		e.mu.Unlock()
		// A live lease is not enough: the key may have been deleted (etcdctl del) and
		// taken by another monitor.
		cctx, cancel := context.WithDeadline(ctx, e.leaseDeadline(sent, time.Duration(ttl)*time.Second))
		held, err := e.holdsKey(cctx, lease)
		cancel()
		if err == nil && !held {
			return "the leader key no longer holds this monitor's lease"
		}
	}
}

func (e *Elector) revoke(lease int64) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = e.call(ctx, "/v3/lease/revoke", map[string]any{"ID": strconv.FormatInt(lease, 10)}, nil)
}

func (e *Elector) setHolder(h string) {
	e.mu.Lock()
	changed := e.holder != h
	e.holder = h
	e.mu.Unlock()
	if changed && h != "" && h != e.cfg.Name {
		e.log.Info("another monitor is the leader; this one does not act", "leader", h, "name", e.cfg.Name)
	}
}

func (e *Elector) noteErr(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	e.mu.Lock()
	// Logged on the change between reachable and not, not on every failed request.
	changed := (e.etcdErr == "") != (msg == "")
	e.etcdErr = msg
	e.mu.Unlock()
	if changed && err != nil {
		e.log.Error("etcd unreachable or refusing this monitor: it does not act unless it holds the leader key", "endpoints", e.cfg.Endpoints, "err", err)
	} else if changed {
		e.log.Info("etcd reachable again", "endpoints", e.cfg.Endpoints)
	}
}

// call POSTs req as JSON to path on the first endpoint that answers and decodes the
// answer into resp (when not nil).
func (e *Elector) call(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	var errs []error
	for _, ep := range e.cfg.Endpoints {
		err := e.callEndpoint(ctx, strings.TrimSuffix(ep, "/"), path, body, resp)
		if err == nil {
			e.noteErr(nil)
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep, err))
		if ctx.Err() != nil {
			break
		}
	}
	err = errors.Join(errs...)
	e.noteErr(err)
	return err
}

// callEndpoint is one request to one endpoint, authenticated when a username is set: with
// the endpoint's token, and once more with a new token when etcd says the token expired
// (simple tokens expire after some minutes unused, and with a restart of the member).
func (e *Elector) callEndpoint(ctx context.Context, ep, path string, body []byte, resp any) error {
	if e.cfg.Username == "" {
		err := e.post(ctx, ep+path, body, "", resp)
		if err != nil && strings.Contains(err.Error(), "user name is empty") {
			err = fmt.Errorf("%w (etcd has authentication enabled: set failover.etcd.username and password or password_file)", err)
		}
		return err
	}
	e.mu.Lock()
	tok := e.tokens[ep]
	e.mu.Unlock()
	if tok != "" {
		err := e.post(ctx, ep+path, body, tok, resp)
		if err == nil || !strings.Contains(err.Error(), "invalid auth token") {
			return err
		}
	}
	tok, err := e.authenticate(ctx, ep)
	if err != nil {
		return err
	}
	return e.post(ctx, ep+path, body, tok, resp)
}

// authenticate gets a token for ep with the configured user and password.
func (e *Elector) authenticate(ctx context.Context, ep string) (string, error) {
	body, err := json.Marshal(map[string]string{"name": e.cfg.Username, "password": e.password})
	if err != nil {
		return "", err
	}
	var a struct {
		Token string `json:"token"`
	}
	if err := e.post(ctx, ep+"/v3/auth/authenticate", body, "", &a); err != nil {
		return "", fmt.Errorf("authenticating as etcd user %q: %w", e.cfg.Username, err)
	}
	if a.Token == "" {
		return "", fmt.Errorf("authenticating as etcd user %q: etcd returned no token (is auth enabled on this member?)", e.cfg.Username)
	}
	e.mu.Lock()
	e.tokens[ep] = a.Token
	e.auths++
	e.mu.Unlock()
	return a.Token, nil
}

func (e *Elector) post(ctx context.Context, url string, body []byte, token string, resp any) error {
	// One request may not use the whole deadline when there are other endpoints to try.
	rctx, cancel := context.WithTimeout(ctx, max(e.cfg.TTL/3, time.Second))
	defer cancel()
	hr, err := http.NewRequestWithContext(rctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	if token != "" {
		hr.Header.Set("Authorization", token)
	}
	res, err := e.hc.Do(hr)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %s: %s", res.Status, strings.TrimSpace(string(b)))
	}
	// A streaming endpoint (keepalive) answers {"error": ...} with status 200.
	var ge struct {
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &ge) == nil && ge.Error != nil {
		return fmt.Errorf("etcd: %s", ge.Error.Message)
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(b, resp); err != nil {
		return fmt.Errorf("decoding etcd's answer %q: %w", b, err)
	}
	return nil
}

type kv struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

func (k kv) value() string {
	v, err := base64.StdEncoding.DecodeString(k.Value)
	if err != nil {
		return k.Value
	}
	return string(v)
}

type rangeResp struct {
	Kvs []kv `json:"kvs"`
}

type txnResp struct {
	Succeeded bool `json:"succeeded"`
	Responses []struct {
		ResponseRange *rangeResp `json:"response_range"`
	} `json:"responses"`
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
