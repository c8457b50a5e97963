package pool

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgharbor/pgharbor/pool/cluster"
)

// Timing of the server itself.
const (
	loginTimeout    = 15 * time.Second
	shutdownTimeout = 10 * time.Second
	janitorPeriod   = time.Second
)

// Server is the connection pooler: it accepts PostgreSQL clients, authenticates them and
// relays their traffic over pooled server connections, routed by the cluster's roles.
// Create it with New, run it with Serve.
type Server struct {
	log    *slog.Logger
	cfgPtr atomic.Pointer[Config]
	auth   atomic.Pointer[authFile]
	tlsCfg atomic.Pointer[tls.Config]
	cl     *cluster.Cluster
	stmts  stmtRegistry

	nextID   atomic.Uint64
	attached atomic.Int64 // sessions holding a server connection
	// handovers counts sessions the event loop moved to a goroutine (demoteSession).
	handovers atomic.Int64
	// ringRecvs and ringSends count the socket reads and writes the event loop made in
	// batches through its io_uring (readAhead, flushQueued).
	ringRecvs, ringSends atomic.Int64
	loop                 *evLoop // runs transaction-mode sessions on plain sockets; nil with io_engine goroutines

	mu       sync.Mutex
	pools    map[poolKey]*serverPool
	sessions map[uint32]*session // by the BackendKeyData process id we gave out
	admins   map[*adminSession]struct{}
	creds    map[string]serverCreds                   // server credentials by server user
	params   map[[2]string][]pgproto3.ParameterStatus // login settings by (client db, user)
	reloader func() (Config, error)

	usable  atomic.Pointer[map[int]bool]   // node ids that may get traffic
	nodeCtl atomic.Pointer[nodeControlRef] // the admin console's node commands; nil: none

	fo         atomic.Pointer[FailoverOptions] // nil: no failover monitor acts on the cluster
	down       primaryDown
	clusterGen atomic.Uint64 // counts changes of the cluster seen by watchCluster

	pauseMu  sync.Mutex
	paused   bool
	resumeCh chan struct{}

	ln, unixLn  net.Listener
	metricsLn   net.Listener
	extraColls  extraCollectors // AddCollector: served beside the pool's own metrics
	started     time.Time
	stopping    atomic.Bool
	wg          sync.WaitGroup
	totalLogins atomic.Int64
	inLogin     atomic.Int64 // connections not yet logged in (also bounded by max_client_conn)
}

// New validates cfg, reads the auth file and binds the listeners (so Addr works at once);
// Serve then accepts clients. A nil logger discards logs.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cl, err := cluster.New(cfg.Cluster, logger.With("component", "cluster"))
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	s := &Server{log: logger, cl: cl, stmts: stmtRegistry{ids: map[string]uint64{}},
		pools: map[poolKey]*serverPool{}, sessions: map[uint32]*session{}, admins: map[*adminSession]struct{}{},
		creds: map[string]serverCreds{}, params: map[[2]string][]pgproto3.ParameterStatus{},
		resumeCh: make(chan struct{}), started: time.Now()}
	close(s.resumeCh)
	s.down.node.Store(-1)
	if err := s.apply(cfg); err != nil {
		return nil, err
	}
	s.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("pool: listen on %s: %w", cfg.Listen, err)
	}
	if cfg.UnixSocketDir != "" {
		port := s.ln.Addr().(*net.TCPAddr).Port
		path := filepath.Join(cfg.UnixSocketDir, ".s.PGSQL."+strconv.Itoa(port))
		_ = os.Remove(path)
		s.unixLn, err = net.Listen("unix", path)
		if err != nil {
			s.ln.Close()
			return nil, fmt.Errorf("pool: listen on %s: %w", path, err)
		}
		_ = os.Chmod(path, 0o777)
	}
	if cfg.MetricsListen != "" {
		s.metricsLn, err = net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("pool: metrics_listen %s: %w", cfg.MetricsListen, err)
		}
	}
	return s, nil
}

// apply installs a validated configuration (auth file and TLS files are re-read).
func (s *Server) apply(cfg Config) error {
	af, err := loadAuthFile(cfg.AuthFile, s.log)
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	var tc *tls.Config
	if cfg.ClientTLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.ClientTLSCertFile, cfg.ClientTLSKeyFile)
		if err != nil {
			return fmt.Errorf("pool: client TLS certificate: %w", err)
		}
		tc = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	s.cfgPtr.Store(&cfg)
	s.auth.Store(&af)
	s.tlsCfg.Store(tc)
	s.mu.Lock()
	for k, p := range s.pools {
		t := cfg.resolve(k.clientDB, k.user)
		p.mu.Lock()
		if p.size >= 0 {
			p.size, p.minSize = t.size, t.minSize
		}
		p.mu.Unlock()
	}
	s.mu.Unlock()
	return nil
}

func (s *Server) config() *Config { return s.cfgPtr.Load() }

// Addr is the TCP address clients connect to.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// MetricsAddr is the address of the /metrics endpoint ("" when off).
func (s *Server) MetricsAddr() string {
	if s.metricsLn == nil {
		return ""
	}
	return s.metricsLn.Addr().String()
}

// Cluster is the node registry the pool routes by (for a failover monitor).
func (s *Server) Cluster() *cluster.Cluster { return s.cl }

// SetReloader sets how RELOAD (admin console) gets a new configuration, e.g. by re-reading
// the config file; without one RELOAD re-applies the current configuration (re-reading the
// auth file and TLS files).
func (s *Server) SetReloader(f func() (Config, error)) {
	s.mu.Lock()
	s.reloader = f
	s.mu.Unlock()
}

// Reload validates and applies cfg: pool sizes, modes for new sessions, timeouts, auth,
// load balancing, admin users. Listen addresses and cluster nodes are fixed at New.
func (s *Server) Reload(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	old := s.config()
	if cfg.Listen != old.Listen || cfg.UnixSocketDir != old.UnixSocketDir || cfg.MetricsListen != old.MetricsListen {
		s.log.Warn("reload: listen addresses change only at restart")
	}
	cfg.Cluster = old.Cluster
	if err := s.apply(cfg); err != nil {
		return err
	}
	s.log.Info("pool configuration reloaded")
	return nil
}

func (s *Server) reload() error {
	s.mu.Lock()
	f := s.reloader
	s.mu.Unlock()
	if f == nil {
		return s.Reload(*s.config())
	}
	cfg, err := f()
	if err != nil {
		return err
	}
	return s.Reload(cfg)
}

// Pause stops handing out server connections for new transactions (they wait, up to
// query_wait_timeout) and waits until no session holds a server connection or ctx is
// done. The pool stays paused until Resume, also when Pause returns an error.
func (s *Server) Pause(ctx context.Context) error {
	s.pauseMu.Lock()
	if !s.paused {
		s.paused = true
		s.resumeCh = make(chan struct{})
	}
	s.pauseMu.Unlock()
	s.log.Info("pool paused")
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.attached.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("pause: %d sessions still hold server connections: %w", s.attached.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Resume lets waiting and new transactions proceed.
func (s *Server) Resume() {
	s.pauseMu.Lock()
	if s.paused {
		s.paused = false
		close(s.resumeCh)
	}
	s.pauseMu.Unlock()
	s.log.Info("pool resumed")
}

func (s *Server) isPaused() bool {
	s.pauseMu.Lock()
	defer s.pauseMu.Unlock()
	return s.paused
}

func (s *Server) waitResumed(ctx context.Context) error {
	s.pauseMu.Lock()
	ch := s.resumeCh
	s.pauseMu.Unlock()
	select {
	case <-ch:
		return nil
	default:
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Serve runs the health checks and accepts clients until ctx is done, then closes
// gracefully: no new clients, running transactions get shutdownTimeout to finish.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := s.config()
	// First round of checks before the first client, so roles are known; unreachable nodes
	// are marked down and the pool starts degraded.
	s.cl.CheckNow(ctx)
	s.refreshNodes()
	if cfg.IOEngine != IOEngineGoroutines && !haveEventLoop {
		s.log.Warn("io_engine epoll needs Linux: every session runs on its goroutine (io_engine goroutines)")
	}
	if cfg.IOEngine != IOEngineGoroutines && haveEventLoop {
		l, err := newLoop(ctx, s)
		if err != nil {
			return err
		}
		s.loop = l
	}
	s.wg.Add(3)
	go func() { defer s.wg.Done(); _ = s.cl.Run(ctx) }()
	go func() { defer s.wg.Done(); s.watchCluster(ctx) }()
	go func() { defer s.wg.Done(); s.janitor(ctx) }()
	var httpSrv *http.Server
	if s.metricsLn != nil {
		httpSrv = &http.Server{Handler: s.metricsHandler(), ReadHeaderTimeout: 10 * time.Second}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); _ = httpSrv.Serve(s.metricsLn) }()
	}
	s.log.Info("pool listening", "addr", s.Addr(), "mode", cfg.PoolMode, "unix", cfg.UnixSocketDir)
	errc := make(chan error, 2)
	for _, ln := range []net.Listener{s.ln, s.unixLn} {
		if ln == nil {
			continue
		}
		s.wg.Add(1)
		go func(ln net.Listener) {
			defer s.wg.Done()
			errc <- s.accept(ctx, ln)
		}(ln)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.stopping.Store(true)
	s.closeListeners()
	if httpSrv != nil {
		_ = httpSrv.Close()
	}
	s.shutdown()
	if s.loop != nil {
		s.loop.stop()
	}
	cancel()
	s.wg.Wait()
	return err
}

func (s *Server) closeListeners() {
	for _, ln := range []net.Listener{s.ln, s.unixLn, s.metricsLn} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

func (s *Server) accept(ctx context.Context, ln net.Listener) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.stopping.Load() || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if strings.Contains(err.Error(), "too many open files") {
				s.log.Error("accept", "err", err)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return fmt.Errorf("pool: accept: %w", err)
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handleConn(ctx, conn)
		}()
	}
}

// shutdown closes idle clients at once and the others once their transaction ends (or
// after shutdownTimeout), then every server connection.
func (s *Server) shutdown() {
	deadline := time.Now().Add(shutdownTimeout)
	for {
		s.mu.Lock()
		var left int
		for _, sess := range s.sessions {
			sess.mu.Lock()
			idle := sess.sc == nil || (sess.tgt.mode == ModeSession && sess.pending == 0 && !sess.inBatch && sess.txStatus == 'I')
			sess.mu.Unlock()
			if idle || time.Now().After(deadline) {
				sess.kill(fatal(sqlstateAdminShutdown, "pgharbor pool is shutting down"))
			}
			left++
		}
		for a := range s.admins {
			_ = a.conn.Close()
		}
		s.mu.Unlock()
		if left == 0 || time.Now().After(deadline.Add(2*time.Second)) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range s.poolList() {
		p.closeAll()
	}
}

// poolList is a snapshot of the server pools (taken under s.mu, used without it).
func (s *Server) poolList() []*serverPool {
	s.mu.Lock()
	defer s.mu.Unlock()
	pools := make([]*serverPool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	return pools
}

// kill sends pe to the client, when nobody else is writing to it, and closes the connection.
func (s *session) kill(pe *pgError) {
	if s.inLoop.Load() {
		s.srv.loop.post(loopMsg{kind: msgKill, sess: s, data: pe.encode(nil)})
		return
	}
	s.writeClientNoWait(pe.encode(nil))
	_ = s.conn.Close()
}

// writeClientNoWait writes b when nobody else is writing to the client.
func (s *session) writeClientNoWait(b []byte) {
	if s.cwMu.TryLock() {
		_ = s.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = s.cw.Write(b)
		_ = s.cw.Flush()
		s.cwMu.Unlock()
	}
}

func (s *Server) janitor(ctx context.Context) {
	t := time.NewTicker(janitorPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.refreshNodes()
		s.evictStale()
		for _, p := range s.poolList() {
			p.maintain(ctx)
		}
	}
}

// evictStale ends sessions that sit idle on a server connection the cluster no longer
// allows: a node that went down, or a former primary for a session that writes (session
// mode keeps its connection, so it would otherwise keep writing to a demoted primary).
// They get a FATAL error at a safe point (no transaction open) and reconnect; sessions in
// a transaction are handled on a later round, once it ends.
func (s *Server) evictStale() {
	prim, hasPrim := s.cl.Primary()
	for _, x := range s.sessionList() {
		x.mu.Lock()
		stale := false
		if x.sc != nil && x.pending == 0 && !x.inBatch && x.txStatus == 'I' {
			stale = !s.nodeUsable(x.node) || (!x.sessionRO && !x.roAttach && hasPrim && x.node != prim.ID)
		}
		x.mu.Unlock() // nodeUsable takes no lock
		if stale {
			s.log.Info("closing a session on a node that is down or no longer the primary", "client", x.addr, "node", x.node)
			x.kill(&pgError{Severity: "FATAL", Code: sqlstateAdminShutdown,
				Message: "terminating connection: its server node is down or no longer the primary (failover); reconnect"})
		}
	}
}

// watchCluster reacts to role and status changes at once: connections to nodes that went
// down are closed when idle and never handed out again.
func (s *Server) watchCluster(ctx context.Context) {
	ch := s.cl.Subscribe()
	defer s.cl.Unsubscribe(ch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			s.refreshNodes()
			s.clusterGen.Add(1)
			if s.loop != nil {
				// sessions of the loop parked for a primary look again
				s.loop.post(loopMsg{kind: msgCluster})
			}
			s.evictStale()
			for _, p := range s.poolList() {
				if !s.nodeUsable(p.key.nodeID) {
					p.maintain(ctx)
				}
			}
		}
	}
}

func (s *Server) refreshNodes() {
	u := map[int]bool{}
	for _, n := range s.cl.Nodes() {
		u[n.ID] = n.Status == cluster.StatusUp
	}
	s.usable.Store(&u)
}

func (s *Server) nodeUsable(id int) bool {
	u := s.usable.Load()
	return u != nil && (*u)[id]
}

// poolFor picks the node for a session's next transaction and returns its pool.
func (s *Server) poolFor(waitCtx func() context.Context, sess *session, readOnly bool) (*serverPool, int, bool, error) {
	if readOnly {
		if n, ok := s.cl.PickReader(uint64(sess.id)); ok {
			return s.sessionPool(sess, n), n.ID, true, nil
		}
	}
	var sub <-chan struct{}
	for {
		if n, ok := s.cl.Primary(); ok {
			if sub != nil {
				s.cl.Unsubscribe(sub)
			}
			return s.sessionPool(sess, n), n.ID, false, nil
		}
		if sub == nil {
			sub = s.cl.Subscribe()
			continue // re-check after subscribing: no change is missed
		}
		ctx := waitCtx()
		select {
		case <-sub:
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			s.cl.Unsubscribe(sub)
			return nil, 0, false, &pgError{Severity: "ERROR", Code: sqlstateCannotConnect, Message: "no primary node is available (query_wait_timeout)", Hint: "see SHOW POOL_NODES"}
		}
	}
}

// sessionPool is pool() with a one-entry cache per session (node addresses never change).
func (s *Server) sessionPool(sess *session, n cluster.NodeState) *serverPool {
	if c := sess.poolCache; c != nil && c.key.nodeID == n.ID {
		return c
	}
	p := s.pool(n, sess.tgt)
	sess.poolCache = p
	return p
}

func (s *Server) pool(n cluster.NodeState, t target) *serverPool {
	k := poolKey{nodeID: n.ID, host: n.Host, port: n.Port, db: t.dbname, user: t.user, clientDB: t.clientDB}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pools[k]
	if p == nil {
		p = &serverPool{srv: s, key: k, all: map[*serverConn]struct{}{}, size: t.size, minSize: t.minSize}
		s.pools[k] = p
	}
	if t.forced {
		s.creds[t.user] = serverCreds{user: t.user, password: t.password}
	}
	return p
}

// credsFor returns how to log in as server user u.
func (s *Server) credsFor(u string) serverCreds {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.creds[u]
	if !ok {
		c = serverCreds{user: u}
	}
	return c
}

// learnCreds records what a client's login taught us about user u's server password,
// unless config forces the server credentials.
func (s *Server) learnCreds(u string, c serverCreds) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.creds[u]
	if ok && old.password != "" && c.password == "" {
		return
	}
	s.creds[u] = c
}

func (s *Server) forget(sess *session) {
	s.mu.Lock()
	if s.sessions[sess.pid] == sess {
		delete(s.sessions, sess.pid)
	}
	s.mu.Unlock()
}

// handleConn runs one client connection from the first byte to the end.
func (s *Server) handleConn(ctx context.Context, conn net.Conn) {
	if n := s.inLogin.Add(1); n > int64(s.config().MaxClientConn) {
		s.inLogin.Add(-1)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write(fatal(sqlstateTooManyConns, "too many connections in login (max_client_conn)").encode(nil))
		_ = conn.Close()
		return
	}
	loggingIn := true
	endLogin := func() {
		if loggingIn {
			loggingIn = false
			s.inLogin.Add(-1)
		}
	}
	defer endLogin()
	_ = conn.SetDeadline(time.Now().Add(loginTimeout))
	isTLS := false
	var params map[string]string
	fail := func(e *pgError) {
		_, _ = conn.Write(e.encode(nil))
		_ = conn.Close()
	}
	for params == nil {
		code, buf, err := readStartup(conn)
		if err != nil {
			if errors.Is(err, errProtocol) {
				fail(fatal(sqlstateProtocolViolation, "invalid startup packet: %v", err))
				return
			}
			_ = conn.Close()
			return
		}
		switch {
		case code == codeSSLRequest:
			tc := s.tlsCfg.Load()
			if tc == nil || isTLS || s.config().ClientTLSMode == "disable" {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					_ = conn.Close()
					return
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				_ = conn.Close()
				return
			}
			t := tls.Server(conn, tc)
			if err := t.HandshakeContext(ctx); err != nil {
				s.log.Debug("client TLS handshake", "err", err)
				_ = conn.Close()
				return
			}
			conn, isTLS = t, true
		case code == codeGSSENC:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				_ = conn.Close()
				return
			}
		case code == codeCancel:
			var cr pgproto3.CancelRequest
			if cr.Decode(buf) == nil {
				s.cancel(ctx, cr.ProcessID, cr.SecretKey)
			}
			_ = conn.Close()
			return
		case code>>16 == 3:
			p, err := parseStartupParams(buf)
			if err != nil {
				fail(fatal(sqlstateProtocolViolation, "invalid startup packet: %v", err))
				return
			}
			if minor := code & 0xffff; minor != 0 || hasPQOptions(p) {
				var unknown []string
				for k := range p {
					if strings.HasPrefix(k, "_pq_.") {
						unknown = append(unknown, k)
						delete(p, k)
					}
				}
				if _, err := conn.Write(appendMsg(nil, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown})); err != nil {
					_ = conn.Close()
					return
				}
			}
			params = p
		default:
			fail(fatal(sqlstateProtocolViolation, "unsupported frontend protocol %d.%d: server supports 3.0", code>>16, code&0xffff))
			return
		}
	}
	cfg := s.config()
	if cfg.ClientTLSMode == "require" && !isTLS && conn.RemoteAddr().Network() != "unix" {
		fail(fatal(sqlstateInvalidAuth, "TLS is required (client_tls_sslmode require): connect with sslmode=require"))
		return
	}
	user := params["user"]
	if user == "" {
		fail(fatal(sqlstateInvalidAuth, "no PostgreSQL user name specified in startup packet"))
		return
	}
	db := params["database"]
	if db == "" {
		db = user
	}
	if _, ok := params["replication"]; ok && params["replication"] != "false" && params["replication"] != "off" && params["replication"] != "0" {
		fail(fatal(sqlstateFeatureNotSupp, "replication connections are not supported by the pool; connect to PostgreSQL directly"))
		return
	}
	rw := socketIO(conn)
	mr := msgReader{r: bufio.NewReaderSize(rw, bufSize)}
	cw := bufio.NewWriterSize(rw, bufSize)
	creds, err := s.authenticate(ctx, conn, &mr, cw, user, db)
	if err != nil {
		var pe *pgError
		if !errors.As(err, &pe) {
			pe = fatal(sqlstateInvalidPassword, "password authentication failed for user %q", user)
			s.log.Info("client authentication failed", "user", user, "db", db, "client", conn.RemoteAddr().String(), "err", err)
		}
		_, _ = cw.Write(pe.encode(nil))
		_ = cw.Flush()
		_ = conn.Close()
		return
	}
	s.totalLogins.Add(1)
	if db == AdminDatabase {
		if !cfg.isAdmin(user) {
			_, _ = cw.Write(fatal(sqlstateInsufficientPriv, "user %q is not in admin_users", user).encode(nil))
			_ = cw.Flush()
			_ = conn.Close()
			return
		}
		_ = conn.SetDeadline(time.Time{})
		endLogin()
		s.runAdmin(ctx, conn, &mr, cw, user)
		return
	}
	sess := &session{srv: s, id: s.nextID.Add(1), conn: conn, mr: mr, cw: cw, user: user, db: db, tgt: cfg.resolve(db, user),
		params: clientParams(params), startup: clientParams(params), addr: conn.RemoteAddr().String(), tls: isTLS, started: time.Now(), stmts: map[string]*stmt{}, txStatus: 'I'}
	ro := strings.ToLower(sess.params["default_transaction_read_only"])
	sess.sessionRO = cfg.LoadBalance && sess.tgt.route != "primary" && (sess.tgt.route == "reader" || ro == "on" || ro == "true" || ro == "1" || ro == "yes")
	if !sess.tgt.forced {
		s.learnCreds(user, creds)
	}
	// register (max_client_conn) with a unique process id for CancelRequest
	s.mu.Lock()
	if len(s.sessions) >= cfg.MaxClientConn {
		s.mu.Unlock()
		_, _ = cw.Write(fatal(sqlstateTooManyConns, "no more connections allowed (max_client_conn %d)", cfg.MaxClientConn).encode(nil))
		_ = cw.Flush()
		_ = conn.Close()
		return
	}
	for {
		sess.pid = randomKey()
		if _, dup := s.sessions[sess.pid]; !dup {
			break
		}
	}
	sess.secret = randomKey()
	s.sessions[sess.pid] = sess
	s.mu.Unlock()
	ps, err := s.loginParams(ctx, sess)
	if err != nil {
		var pe *pgError
		if !errors.As(err, &pe) {
			pe = fatal(sqlstateCannotConnect, "%v", err)
		}
		if pe.Severity != "FATAL" {
			pe.Severity = "FATAL"
		}
		_, _ = cw.Write(pe.encode(nil))
		_ = cw.Flush()
		_ = conn.Close()
		s.forget(sess)
		return
	}
	var out []byte
	for _, p := range ps {
		if v, ok := sess.params[strings.ToLower(p.Name)]; ok {
			p.Value = v
		}
		out = appendMsg(out, &p)
	}
	out = appendMsg(out, &pgproto3.BackendKeyData{ProcessID: sess.pid, SecretKey: u32(nil, sess.secret)}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	_, _ = cw.Write(out)
	if err := cw.Flush(); err != nil {
		_ = conn.Close()
		s.forget(sess)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	endLogin()
	if s.loop != nil && sess.tgt.mode == ModeTransaction && !isTLS && cfg.IOEngine != IOEngineGoroutines {
		var buffered []byte
		if n := mr.r.Buffered(); n > 0 {
			b, _ := mr.r.Peek(n)
			buffered = append(buffered, b...)
		}
		if s.loop.adopt(sess, conn, buffered) {
			return
		}
	}
	sess.run(ctx)
}

func hasPQOptions(p map[string]string) bool {
	for k := range p {
		if strings.HasPrefix(k, "_pq_.") {
			return true
		}
	}
	return false
}

// clientParams returns the settings a client asked for at startup (lower-case names),
// including "-c name=value" from options.
func clientParams(p map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range p {
		switch k {
		case "user", "database", "replication", "options":
			continue
		}
		out[strings.ToLower(k)] = v
	}
	f := strings.Fields(p["options"])
	for i := 0; i < len(f); i++ {
		kv := ""
		switch {
		case f[i] == "-c" && i+1 < len(f):
			kv = f[i+1]
			i++
		case strings.HasPrefix(f[i], "-c"):
			kv = f[i][2:]
		case strings.HasPrefix(f[i], "--"):
			kv = f[i][2:]
		}
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[strings.ReplaceAll(strings.ToLower(k), "-", "_")] = v
		}
	}
	return out
}

// loginParams returns the ParameterStatus set a new client of (db, user) gets, logging in
// to a server once per (db, user) to learn it (which also checks the database exists).
func (s *Server) loginParams(ctx context.Context, sess *session) ([]pgproto3.ParameterStatus, error) {
	k := [2]string{sess.db, sess.user}
	s.mu.Lock()
	ps, ok := s.params[k]
	s.mu.Unlock()
	if ok {
		return ps, nil
	}
	wait := max(positive(s.config().QueryWaitTimeout), time.Second)
	fo := s.failoverOpts()
	var sub <-chan struct{}
	if fo != nil {
		// during a failover a new client waits for the primary like a transaction does
		wait = max(wait, fo.ClientWait)
		sub = s.cl.Subscribe()
		defer s.cl.Unsubscribe(sub)
	}
	deadline := time.Now().Add(wait)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var sc *serverConn
	var p *serverPool
	var err error
	for {
		var node int
		var reader bool
		p, node, reader, err = s.poolFor(func() context.Context { return ctx }, sess, sess.sessionRO)
		if err != nil {
			return nil, err
		}
		sc, err = p.acquire(ctx)
		if err == nil || fo == nil || !serverUnreachable(err) {
			break
		}
		if !reader {
			s.notePrimaryUnreachable(node, err)
		}
		if werr := s.waitForPrimary(ctx, sub, deadline); werr != nil {
			return nil, fatal(sqlstateCannotConnect, "%s", s.clientWaitError(fo.ClientWait).Message)
		}
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fatal(sqlstateCannotConnect, "query_wait_timeout: no server connection became free in time")
		}
		return nil, err
	}
	ps = append([]pgproto3.ParameterStatus(nil), sc.login...)
	p.release(sc)
	s.mu.Lock()
	s.params[k] = ps
	s.mu.Unlock()
	return ps, nil
}

// cancel forwards a client's CancelRequest to the server connection its session holds.
func (s *Server) cancel(ctx context.Context, pid uint32, secret []byte) {
	s.mu.Lock()
	sess := s.sessions[pid]
	s.mu.Unlock()
	if sess == nil || len(secret) != 4 || subtle.ConstantTimeCompare(u32(nil, sess.secret), secret) != 1 {
		return
	}
	// No lock is held while dialling or waiting for the server: the event loop and every
	// listing take sess.mu, and a cancel can take seconds.
	sess.mu.Lock()
	sc := sess.sc
	sess.mu.Unlock()
	if sc == nil || sc.pid == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := dialCancel(cctx, sc.pool.key.host, sc.pool.key.port)
	if err != nil {
		s.log.Warn("cancel request", "err", err)
		return
	}
	defer conn.Close()
	// The request goes out only while the session still holds that server connection: in
	// transaction mode it may have passed to another client during the dial, whose query
	// is not this client's to cancel. The write does not wait on the server.
	sess.mu.Lock()
	still := sess.sc == sc
	if still {
		err = writeCancel(conn, sc.pid, sc.secret)
	}
	sess.mu.Unlock()
	if !still {
		return
	}
	if err != nil {
		s.log.Warn("cancel request", "err", err)
		return
	}
	awaitCancel(conn)
}
