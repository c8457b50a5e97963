package pool

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// serverConn is one connection to a PostgreSQL server. While a session holds it, only that
// session's goroutines touch it; idle ones belong to their serverPool.
type serverConn struct {
	id     uint64
	pool   *serverPool
	conn   net.Conn
	mr     msgReader
	w      *bufio.Writer
	pid    uint32
	secret []byte

	// params are the server's current settings as reported by ParameterStatus or set by us;
	// dirty names the ones a client changed away from the login value.
	params map[string]string
	dirty  map[string]bool
	// matchKey is the paramsKey of the client settings that params and dirty were last
	// found to match (matchOK), so the next attach of a client with the same settings
	// compares one string instead of walking both maps. Every change to params or dirty
	// clears matchOK (paramsChanged).
	matchKey string
	matchOK  bool
	// prepared holds the ids (see stmtRegistry) of statements prepared on this connection.
	// The value is the batch (see batch) that last used the statement.
	prepared map[uint64]uint64
	// batch counts the Syncs and Queries sent on this connection.
	batch uint64
	// login is the ParameterStatus set the server sent at login (canonical names).
	login []pgproto3.ParameterStatus
	// loginVals holds the login values of the reported settings no client may change for
	// the next one (session_authorization, is_superuser, ...: every reported setting that is
	// not in trackedParams), by lower-case name.
	loginVals map[string]string
	// reported names the settings the server reports when they change (those it sent at
	// login); the pool's record of any other is only as good as the last SET it sent.
	reported map[string]bool
	// identity is set when the server reported one of loginVals changed (SET SESSION
	// AUTHORIZATION, or SET ROLE by a superuser login: is_superuser); resetRole when a
	// client sent something that may have run SET ROLE, which the server does not report.
	// Either way the connection is reset (or closed) before another client gets it.
	identity, resetRole bool

	// ev is set while the event loop owns the socket (conn is then closed; see enterLoop).
	ev *loopServer

	created  time.Time
	lastUsed time.Time // when it last went idle
	// guarded by pool.mu:
	// nPrepared is len(prepared) when the connection last went back to its pool: the
	// session holding it changes prepared without the pool's lock (SHOW SERVERS).
	nPrepared int
	active    bool
	client    *session
}

// serverCreds say how to log in to a server.
type serverCreds struct {
	user     string
	password string     // plaintext; preferred
	md5      string     // "md5..." hash, for md5 servers
	keys     *scramKeys // with clientKey: SCRAM pass-through
}

// dialServer opens and logs in a server connection; a *pgError it returns came from the
// server and may be shown to the client as is.
func dialServer(ctx context.Context, cfg *Config, host string, port int, db string, creds serverCreds) (*serverConn, error) {
	d := net.Dialer{KeepAlive: 30 * time.Second}
	network, addr := "tcp", net.JoinHostPort(host, strconv.Itoa(port))
	if len(host) > 0 && host[0] == '/' {
		network, addr = "unix", fmt.Sprintf("%s/.s.PGSQL.%d", host, port)
	}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	sc, err := loginServer(conn, cfg, host, db, creds)
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = sc.conn.SetDeadline(time.Time{})
	return sc, nil
}

func loginServer(conn net.Conn, cfg *Config, host, db string, creds serverCreds) (*serverConn, error) {
	if cfg.ServerTLSMode != "disable" && conn.RemoteAddr().Network() != "unix" {
		var err error
		if conn, err = serverTLS(conn, cfg, host); err != nil {
			return nil, err
		}
	}
	rw := socketIO(conn)
	sc := &serverConn{conn: conn, mr: msgReader{r: bufio.NewReaderSize(rw, bufSize)}, w: bufio.NewWriterSize(rw, bufSize),
		params: map[string]string{}, dirty: map[string]bool{}, prepared: map[uint64]uint64{}, created: time.Now(),
		loginVals: map[string]string{}, reported: map[string]bool{}}
	start := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": creds.user, "database": db}}
	buf := appendMsg(nil, start)
	if _, err := conn.Write(buf); err != nil {
		return nil, fmt.Errorf("send startup: %w", err)
	}
	var scram *scramClient
	for {
		typ, n, err := sc.mr.header()
		if err != nil {
			return nil, fmt.Errorf("server login: %w", err)
		}
		msg, err := sc.mr.whole(n)
		if err != nil {
			return nil, fmt.Errorf("server login: %w", err)
		}
		body := msg[5:]
		switch typ {
		case 'R':
			if len(body) < 4 {
				return nil, fmt.Errorf("server login: %w: short authentication message", errProtocol)
			}
			var reply []byte
			switch code := binary.BigEndian.Uint32(body); code {
			case 0: // ok
				continue
			case 3: // cleartext
				if creds.password == "" {
					return nil, errors.New("server asks for a cleartext password and none is configured for user " + creds.user)
				}
				reply = appendMsg(nil, &pgproto3.PasswordMessage{Password: creds.password})
			case 5: // md5
				if len(body) < 8 {
					return nil, fmt.Errorf("server login: %w: short md5 request", errProtocol)
				}
				hash := creds.md5
				if creds.password != "" {
					hash = md5Hash(creds.password, creds.user)
				}
				if hash == "" {
					return nil, errors.New("server asks for md5 and neither the password nor its md5 hash is known for user " + creds.user)
				}
				var salt [4]byte
				copy(salt[:], body[4:8])
				reply = appendMsg(nil, &pgproto3.PasswordMessage{Password: md5Response(hash, salt)})
			case 10: // SASL
				scram = &scramClient{password: creds.password, keys: creds.keys}
				first, err := scram.first()
				if err != nil {
					return nil, err
				}
				reply = appendMsg(nil, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: first})
			case 11: // SASL continue
				if scram == nil {
					return nil, fmt.Errorf("server login: %w: SASL continue before SASL", errProtocol)
				}
				fin, err := scram.final(body[4:])
				if err != nil {
					return nil, fmt.Errorf("server login as %s: %w", creds.user, err)
				}
				reply = appendMsg(nil, &pgproto3.SASLResponse{Data: fin})
			case 12: // SASL final
				if scram == nil {
					return nil, fmt.Errorf("server login: %w: SASL final before SASL", errProtocol)
				}
				if err := scram.verify(body[4:]); err != nil {
					return nil, err
				}
				continue
			default:
				return nil, fmt.Errorf("server login: authentication method %d is not supported", code)
			}
			if _, err := conn.Write(reply); err != nil {
				return nil, fmt.Errorf("server login: %w", err)
			}
		case 'E':
			return nil, decodeServerError(body)
		case 'S':
			var ps pgproto3.ParameterStatus
			if err := ps.Decode(body); err == nil {
				k := strings.ToLower(ps.Name)
				sc.params[k] = ps.Value
				sc.paramsChanged()
				sc.reported[k] = true
				if !trackedParams[k] {
					sc.loginVals[k] = ps.Value
				}
				sc.login = append(sc.login, ps)
			}
		case 'K':
			var k pgproto3.BackendKeyData
			if err := k.Decode(body); err != nil {
				return nil, fmt.Errorf("server login: %w", err)
			}
			sc.pid, sc.secret = k.ProcessID, k.SecretKey
		case 'Z':
			return sc, nil
		case 'N', 'v':
			// notices and protocol negotiation: nothing to do
		default:
			return nil, fmt.Errorf("server login: %w: unexpected message %q", errProtocol, typ)
		}
	}
}

func decodeServerError(body []byte) *pgError {
	var er pgproto3.ErrorResponse
	if err := er.Decode(body); err != nil {
		return fatal(sqlstateProtocolViolation, "server sent a malformed error")
	}
	return &pgError{Severity: er.Severity, Code: er.Code, Message: er.Message, Detail: er.Detail, Hint: er.Hint}
}

func serverTLS(conn net.Conn, cfg *Config, host string) (net.Conn, error) {
	req := u32(u32(nil, 8), codeSSLRequest)
	if _, err := conn.Write(req); err != nil {
		return nil, fmt.Errorf("SSLRequest: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return nil, fmt.Errorf("SSLRequest: %w", err)
	}
	if b[0] != 'S' {
		if cfg.ServerTLSMode == "prefer" {
			return conn, nil
		}
		return nil, fmt.Errorf("server %s does not support TLS (server_tls_sslmode %s)", host, cfg.ServerTLSMode)
	}
	tc, err := serverTLSConfig(cfg, host)
	if err != nil {
		return nil, err
	}
	t := tls.Client(conn, tc)
	if err := t.Handshake(); err != nil {
		return nil, fmt.Errorf("TLS to %s: %w", host, err)
	}
	return t, nil
}

// serverTLSConfig is the TLS configuration towards server host under server_tls_sslmode
// (not disable): prefer and require encrypt without checking the certificate, as libpq's
// modes of the same names do; verify-ca checks the chain, verify-full also the host name.
func serverTLSConfig(cfg *Config, host string) (*tls.Config, error) {
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	switch cfg.ServerTLSMode {
	case "prefer", "require":
		tc.InsecureSkipVerify = true
	case "verify-ca", "verify-full":
		if cfg.ServerTLSCAFile != "" {
			pem, err := os.ReadFile(cfg.ServerTLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("server_tls_ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("server_tls_ca_file %s: no PEM certificate in it", cfg.ServerTLSCAFile)
			}
			tc.RootCAs = pool
		}
		if cfg.ServerTLSMode == "verify-ca" {
			tc.InsecureSkipVerify = true
			tc.VerifyConnection = func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("the server sent no certificate")
				}
				opts := x509.VerifyOptions{Roots: tc.RootCAs, Intermediates: x509.NewCertPool()}
				for _, c := range cs.PeerCertificates[1:] {
					opts.Intermediates.AddCert(c)
				}
				_, err := cs.PeerCertificates[0].Verify(opts)
				return err
			}
		}
	}
	return tc, nil
}

// cancelServer sends a CancelRequest for the backend (pid, secret) at host:port.
func cancelServer(ctx context.Context, host string, port int, pid uint32, secret []byte) error {
	conn, err := dialCancel(ctx, host, port)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := writeCancel(conn, pid, secret); err != nil {
		return err
	}
	awaitCancel(conn)
	return nil
}

// dialCancel opens the connection a CancelRequest goes over. It is the slow part of a cancel
// (a server far away or overloaded), so callers hold no lock while it runs.
func dialCancel(ctx context.Context, host string, port int) (net.Conn, error) {
	d := net.Dialer{}
	network, addr := "tcp", net.JoinHostPort(host, strconv.Itoa(port))
	if len(host) > 0 && host[0] == '/' {
		network, addr = "unix", fmt.Sprintf("%s/.s.PGSQL.%d", host, port)
	}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("cancel: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	return conn, nil
}

// writeCancel sends the CancelRequest on a fresh connection: sixteen bytes into an empty
// socket buffer, which does not wait on the server.
func writeCancel(conn net.Conn, pid uint32, secret []byte) error {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write(appendMsg(nil, &pgproto3.CancelRequest{ProcessID: pid, SecretKey: secret})); err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	return nil
}

// awaitCancel waits for the server to close the connection, which it does once it has read
// the request (or the deadline passes).
func awaitCancel(conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.Copy(io.Discard, conn)
}

// alive probes an idle connection without blocking: a closed or chattering server
// connection is not reused.
func (sc *serverConn) alive() bool {
	if sc.ev != nil {
		return sc.aliveLoop()
	}
	if sc.mr.r.Buffered() > 0 {
		return false
	}
	var raw net.Conn = sc.conn
	if tc, ok := raw.(*tls.Conn); ok {
		// bytes on the socket of an idle TLS connection (a record with an error, a
		// close_notify) mean the same as on a plain one
		raw = tc.NetConn()
	}
	if scn, ok := raw.(syscall.Conn); ok {
		if rc, err := scn.SyscallConn(); err == nil {
			ok := false
			if rc.Control(func(fd uintptr) { ok = aliveFD(int(fd)) }) == nil {
				return ok
			}
		}
	}
	_ = sc.conn.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := sc.mr.r.Peek(1)
	_ = sc.conn.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// simpleQuery runs sql on an idle connection and swallows the results; used for resets
// and parameter changes between clients.
func (sc *serverConn) simpleQuery(sql string, onParam func(name, value string)) error {
	if _, err := sc.w.Write(appendMsg(nil, &pgproto3.Query{String: sql})); err != nil {
		return err
	}
	if err := sc.w.Flush(); err != nil {
		return err
	}
	var qerr error
	for {
		typ, n, err := sc.mr.header()
		if err != nil {
			return err
		}
		msg, err := sc.mr.whole(n)
		if err != nil {
			return err
		}
		switch typ {
		case 'E':
			qerr = decodeServerError(msg[5:])
		case 'S':
			var ps pgproto3.ParameterStatus
			if ps.Decode(msg[5:]) == nil {
				sc.setParam(strings.ToLower(ps.Name), ps.Value)
				if onParam != nil {
					onParam(ps.Name, ps.Value)
				}
			}
		case 'Z':
			if qerr == nil && len(msg) == 6 && msg[5] != 'I' {
				qerr = fmt.Errorf("%q left the connection in transaction status %q", sql, msg[5])
			}
			return qerr
		}
	}
}

// preparedShown is the number of prepared statements SHOW SERVERS shows (pool.mu held).
func (sc *serverConn) preparedShown() int {
	if sc.active {
		return sc.nPrepared
	}
	return len(sc.prepared)
}

// setParam records a setting the server reported (k in lower case).
func (sc *serverConn) setParam(k, v string) {
	sc.params[k] = v
	sc.paramsChanged()
	if lv, ok := sc.loginVals[k]; ok && lv != v {
		sc.identity = true
	}
}

// discarded records what DISCARD ALL did to the connection: the settings clients changed
// are the login ones again, and nothing is prepared.
func (sc *serverConn) discarded() {
	for k := range sc.dirty {
		if !sc.reported[k] {
			delete(sc.params, k)
		}
	}
	sc.dirty = map[string]bool{}
	sc.paramsChanged()
	sc.prepared = map[uint64]uint64{}
	sc.resetRole = false // DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT and RESET ROLE
}

// paramsChanged forgets which client settings params and dirty were found to match.
func (sc *serverConn) paramsChanged() { sc.matchOK = false }

// needsReset says whether the connection may carry a client's role or session
// authorization (or another reported setting no client may pass on) and must be reset
// before another client gets it.
func (sc *serverConn) needsReset() bool { return sc.identity || sc.resetRole }

// resetSQL undoes SET SESSION AUTHORIZATION and SET ROLE (in that order: the first also
// ends a role set under the authorization). RESET ALL leaves both alone.
const resetSQL = "RESET SESSION AUTHORIZATION; RESET ROLE"

// cleanUp makes a connection whose client is done with it fit for any client of its pool:
// it rolls back a transaction left open (status is the last ReadyForQuery's), runs DISCARD
// ALL when discard is set (session mode), and resets the role and session authorization
// when they may have changed. An error means the connection must be closed, also when a
// reported setting still differs from its login value after the reset.
func (sc *serverConn) cleanUp(status byte, discard bool) error {
	if status != 'I' {
		if err := sc.simpleQuery("ROLLBACK", nil); err != nil {
			return err
		}
	}
	if discard {
		if err := sc.simpleQuery("DISCARD ALL", nil); err != nil {
			return err
		}
		sc.discarded()
	}
	if sc.needsReset() {
		if err := sc.simpleQuery(resetSQL, nil); err != nil {
			return err
		}
		sc.resetRole = false
	}
	sc.identity = false
	for k, lv := range sc.loginVals {
		if v, ok := sc.params[k]; ok && v != lv {
			sc.identity = true
			return fmt.Errorf("server connection: %s is %q after a reset, %q at login", k, v, lv)
		}
	}
	return nil
}

func (sc *serverConn) close() {
	if sc.ev != nil {
		sc.closeLoop()
		return
	}
	_ = sc.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = sc.conn.Write([]byte{'X', 0, 0, 0, 4})
	_ = sc.conn.Close()
}

// randomKey returns a random non-zero 32-bit value for BackendKeyData.
func randomKey() uint32 {
	var b [4]byte
	for {
		_, _ = rand.Read(b[:])
		if v := binary.BigEndian.Uint32(b[:]); v != 0 {
			return v & 0x7fffffff
		}
	}
}
