package pool

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// maxAuthMessage bounds password and SASL messages from clients.
const maxAuthMessage = 8192

// authenticate runs the client's login exchange and returns how to log in to servers as
// this user. Errors that are not *pgError mean "password authentication failed".
func (s *Server) authenticate(ctx context.Context, conn net.Conn, mr *msgReader, cw *bufio.Writer, user, db string) (serverCreds, error) {
	cfg := s.config()
	af := *s.auth.Load()
	sec := af[user]
	if sec == nil && cfg.AuthUser != "" && user != cfg.AuthUser && cfg.AuthType != AuthTrust {
		var err error
		if sec, err = s.authQuery(ctx, user, db); err != nil {
			return serverCreds{}, err
		}
	}
	creds := serverCreds{user: user}
	if sec != nil {
		creds.password, creds.md5 = sec.plain, sec.md5
		if sec.scram != nil {
			creds.keys = sec.scram
		}
	}
	send := func(msgs ...encoder) error {
		_, _ = cw.Write(appendMsg(nil, msgs...))
		return cw.Flush()
	}
	if cfg.AuthType == AuthTrust {
		return creds, send(&pgproto3.AuthenticationOk{})
	}
	if sec == nil {
		return creds, fmt.Errorf("user %q is not in auth_file (nor found by auth_query)", user)
	}
	// Like PostgreSQL: a SCRAM secret always means SCRAM, an md5 hash always means md5.
	useSCRAM := sec.scram != nil || (cfg.AuthType == AuthSCRAM && sec.md5 == "")
	if !useSCRAM {
		hash, _ := sec.userMD5(user)
		var salt [4]byte
		_, _ = rand.Read(salt[:])
		if err := send(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
			return creds, err
		}
		body, err := readAuthMessage(mr)
		if err != nil {
			return creds, err
		}
		got, _, ok := cstring(body)
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(md5Response(hash, salt))) != 1 {
			return creds, errWrongPassword
		}
		if creds.md5 == "" && creds.password == "" {
			creds.md5 = hash
		}
		return creds, send(&pgproto3.AuthenticationOk{})
	}
	keys, err := sec.keys()
	if err != nil {
		return creds, err
	}
	if err := send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}}); err != nil {
		return creds, err
	}
	body, err := readAuthMessage(mr)
	if err != nil {
		return creds, err
	}
	var init pgproto3.SASLInitialResponse
	if err := init.Decode(body); err != nil {
		return creds, fatal(sqlstateProtocolViolation, "malformed SASLInitialResponse: %v", err)
	}
	if init.AuthMechanism != "SCRAM-SHA-256" {
		return creds, fatal(sqlstateProtocolViolation, "SASL mechanism %q is not supported: use SCRAM-SHA-256", init.AuthMechanism)
	}
	ss := &scramServer{keys: keys}
	first, err := ss.first(init.Data)
	if err != nil {
		return creds, fatal(sqlstateProtocolViolation, "%v", err)
	}
	if err := send(&pgproto3.AuthenticationSASLContinue{Data: []byte(first)}); err != nil {
		return creds, err
	}
	body, err = readAuthMessage(mr)
	if err != nil {
		return creds, err
	}
	final, clientKey, err := ss.final(body)
	if err != nil {
		if errors.Is(err, errWrongPassword) {
			return creds, err
		}
		return creds, fatal(sqlstateProtocolViolation, "%v", err)
	}
	if sec.scram != nil {
		// SCRAM pass-through: the client's key logs us in to servers with the same secret.
		k := *sec.scram
		k.clientKey = clientKey
		creds.keys = &k
	}
	return creds, send(&pgproto3.AuthenticationSASLFinal{Data: []byte(final)}, &pgproto3.AuthenticationOk{})
}

// readAuthMessage reads one 'p' message (password, SASL) from a client in login.
func readAuthMessage(mr *msgReader) ([]byte, error) {
	typ, n, err := mr.header()
	if err != nil {
		return nil, err
	}
	if typ != 'p' || n > maxAuthMessage {
		return nil, fatal(sqlstateProtocolViolation, "expected a password message, got %q", typ)
	}
	msg, err := mr.whole(n)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), msg[5:]...), nil
}

// authQuery looks up user's secret with auth_query, logged in as auth_user (whose password
// is in auth_file) on the primary.
func (s *Server) authQuery(ctx context.Context, user, db string) (*secret, error) {
	cfg := s.config()
	af := *s.auth.Load()
	au := af[cfg.AuthUser]
	p, ok := s.cl.Primary()
	if !ok {
		return nil, fatal(sqlstateCannotConnect, "auth_query: no primary node is available")
	}
	if cfg.AuthDatabase != "" {
		db = cfg.AuthDatabase
	} else {
		db = cfg.resolve(db, user).dbname
	}
	pc, err := pgconn.ParseConfig("")
	if err != nil {
		return nil, err
	}
	pc.Host, pc.Port, pc.User, pc.Database = p.Host, uint16(p.Port), cfg.AuthUser, db
	// The connection carries auth_user's password and brings back password hashes: it goes
	// as server connections do, under server_tls_sslmode.
	pc.TLSConfig, pc.Fallbacks = nil, nil
	if cfg.ServerTLSMode != "disable" && !strings.HasPrefix(p.Host, "/") {
		if pc.TLSConfig, err = serverTLSConfig(cfg, p.Host); err != nil {
			return nil, fatal(sqlstateCannotConnect, "auth_query: %v", err)
		}
		if cfg.ServerTLSMode == "prefer" {
			pc.Fallbacks = []*pgconn.FallbackConfig{{Host: pc.Host, Port: pc.Port}}
		}
	}
	pc.ConnectTimeout = cfg.ServerConnectTimeout
	pc.RuntimeParams = map[string]string{"application_name": "pgharbor auth_query"}
	if au != nil {
		pc.Password = au.plain
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ServerConnectTimeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fatal(sqlstateCannotConnect, "auth_query: connect as auth_user %s to %s:%s: %v", cfg.AuthUser, p.Host, strconv.Itoa(p.Port), err)
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, cfg.AuthQuery, [][]byte{[]byte(user)}, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, fatal(sqlstateCannotConnect, "auth_query: %v", res.Err)
	}
	if len(res.Rows) == 0 || len(res.Rows[0]) < 2 || res.Rows[0][1] == nil {
		return nil, fmt.Errorf("auth_query found no password for user %q", user)
	}
	return parseSecret(string(res.Rows[0][1]))
}
