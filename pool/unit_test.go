package pool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgharbor/pgharbor/pool/cluster"
)

func TestSCRAMServerAcceptsOwnClientAndRejectsWrongPassword(t *testing.T) {
	secret, err := SCRAMSecret("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	sec, err := parseSecret(secret)
	if err != nil || sec.scram == nil {
		t.Fatalf("parse %q: %v", secret, err)
	}
	for _, tc := range []struct {
		password string
		ok       bool
	}{{"s3cret", true}, {"wrong", false}} {
		srv := &scramServer{keys: sec.scram}
		cl := &scramClient{password: tc.password}
		first, _ := cl.first()
		sfirst, err := srv.first(first)
		if err != nil {
			t.Fatal(err)
		}
		cfinal, err := cl.final([]byte(sfirst))
		if err != nil {
			t.Fatal(err)
		}
		sfinal, clientKey, err := srv.final(cfinal)
		if tc.ok != (err == nil) {
			t.Fatalf("password %q: err %v", tc.password, err)
		}
		if !tc.ok {
			continue
		}
		if err := cl.verify([]byte(sfinal)); err != nil {
			t.Fatal(err)
		}
		// pass-through: the recovered client key logs in without the password
		k := *sec.scram
		k.clientKey = clientKey
		srv2 := &scramServer{keys: sec.scram}
		cl2 := &scramClient{keys: &k}
		first, _ = cl2.first()
		sfirst, _ = srv2.first(first)
		cfinal, err = cl2.final([]byte(sfirst))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := srv2.final(cfinal); err != nil {
			t.Fatalf("pass-through proof rejected: %v", err)
		}
	}
}

func TestSCRAMServerRejectsMalformedMessages(t *testing.T) {
	sec, _ := parseSecret("pw")
	keys, _ := sec.keys()
	for _, m := range []string{"", "x", "p=tls-server-end-point,,n=,r=abc", "n,a=admin,n=,r=abc", "n,,n=,m=ext,r=a", "n,,n=u"} {
		if _, err := (&scramServer{keys: keys}).first([]byte(m)); err == nil {
			t.Errorf("client-first %q accepted", m)
		}
	}
	s := &scramServer{keys: keys}
	if _, err := s.first([]byte("n,,n=,r=abc")); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"", "c=biws,r=abc", "c=biws,r=abc,p=!!", "c=eHl6,r=" + s.nonce + ",p=" + strings.Repeat("A", 44)} {
		if _, _, err := s.final([]byte(m)); err == nil {
			t.Errorf("client-final %q accepted", m)
		}
	}
}

func TestAuthFileFormats(t *testing.T) {
	af, err := parseAuthFile(strings.NewReader(`; comment
# another
"alice" "plain pass"
"bob"   "md5` + strings.Repeat("a", 32) + `"
"we""ird" "x"
"carol" "SCRAM-SHA-256$4096:c2FsdA==$` + strings.Repeat("A", 43) + `=:` + strings.Repeat("B", 43) + `="
`))
	if err != nil {
		t.Fatal(err)
	}
	if af["alice"].plain != "plain pass" || af["bob"].md5 == "" || af[`we"ird`] == nil || af["carol"].scram == nil {
		t.Fatalf("parsed %+v", af)
	}
	for _, bad := range []string{`alice "x"`, `"alice" x`, `"alice`, `"c" "SCRAM-SHA-256$x:y$z"`} {
		if _, err := parseAuthFile(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if h, ok := af["alice"].userMD5("alice"); !ok || h != md5Hash("plain pass", "alice") {
		t.Fatal("md5 of plaintext")
	}
	if _, ok := af["carol"].userMD5("carol"); ok {
		t.Fatal("md5 from a SCRAM secret")
	}
}

func TestReadOnlyClassification(t *testing.T) {
	for q, want := range map[string]bool{
		"SELECT 1":                                      true,
		"  select * from t where a = 'x;y'":             true,
		"SELECT $1::int":                                true,
		"WITH x AS (SELECT 1) SELECT * FROM x":          true,
		"VALUES (1)":                                    true,
		"SELECT 1; SELECT 2;":                           true,
		"/* c */ SELECT 'it''s' -- update\n":            true,
		"SELECT $$ update $$":                           true,
		"SELECT * FROM t FOR UPDATE":                    false,
		"SELECT * FROM t FOR SHARE":                     false,
		"select * from t for no key update":             false,
		"SELECT nextval('s')":                           false,
		"SELECT pg_catalog.setval('s', 1)":              false,
		"SELECT pg_advisory_lock(1)":                    false,
		"SELECT * INTO t2 FROM t":                       false,
		"WITH d AS (DELETE FROM t RETURNING *) TABLE d": false,
		"INSERT INTO t VALUES (1)":                      false,
		"UPDATE t SET a = 1":                            false,
		"BEGIN; SELECT 1":                               false,
		"SELECT 1; UPDATE t SET a = 1":                  false,
		"SHOW search_path":                              false,
		"SELECT 'unterminated":                          false,
		"SELECT my_writer()":                            false,
		"":                                              false,
		"SET x = 1":                                     false,
	} {
		if got := isReadOnlyQuery(q, []string{"my_writer"}); got != want {
			t.Errorf("isReadOnlyQuery(%q) = %v, want %v", q, got, want)
		}
	}
	for q, want := range map[string]bool{"SHOW POOL_NODES": true, "show pool_nodes;": true, " Show  Pool_Nodes ": true, "SHOW POOLS": false, "SHOW pool_nodes x": false} {
		if isShowPoolNodes(q) != want {
			t.Errorf("isShowPoolNodes(%q) != %v", q, want)
		}
	}
}

func TestPreparedStatementMessagesRoundTrip(t *testing.T) {
	parse := appendMsg(nil, &pgproto3.Parse{Name: "s1", Query: "SELECT $1", ParameterOIDs: []uint32{23}})
	name, query, rest, ok := parseMsg(parse[5:])
	if !ok || name != "s1" || query != "SELECT $1" {
		t.Fatalf("parseMsg: %q %q %v", name, query, ok)
	}
	var p pgproto3.Parse
	if err := p.Decode(encodeParse(nil, "pgharbor_7", rest)[5:]); err != nil || p.Name != "pgharbor_7" || p.Query != "SELECT $1" || len(p.ParameterOIDs) != 1 {
		t.Fatalf("encodeParse: %+v %v", p, err)
	}
	bind := appendMsg(nil, &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1", Parameters: [][]byte{[]byte("42")}, ResultFormatCodes: []int16{1}})
	portal, stmtName, brest, ok := bindStmt(bind[5:])
	if !ok || portal != "p" || stmtName != "s1" {
		t.Fatal("bindStmt")
	}
	var b pgproto3.Bind
	if err := b.Decode(encodeBind(nil, portal, "pgharbor_7", brest)[5:]); err != nil || b.PreparedStatement != "pgharbor_7" || string(b.Parameters[0]) != "42" {
		t.Fatalf("encodeBind: %+v %v", b, err)
	}
	var d pgproto3.Describe
	if err := d.Decode(encodeDescribeStmt(nil, "x")[5:]); err != nil || d.ObjectType != 'S' || d.Name != "x" {
		t.Fatal("encodeDescribeStmt")
	}
	var c pgproto3.Close
	if err := c.Decode(encodeClose(nil, "x")[5:]); err != nil || c.ObjectType != 'S' || c.Name != "x" {
		t.Fatal("encodeClose")
	}
	r := stmtRegistry{ids: map[string]uint64{}}
	if r.id([]byte("a")) != r.id([]byte("a")) || r.id([]byte("a")) == r.id([]byte("b")) {
		t.Fatal("registry ids")
	}
}

func TestClientParamsFromOptions(t *testing.T) {
	p := clientParams(map[string]string{"user": "u", "database": "d", "application_name": "app", "DateStyle": "ISO",
		"options": "-c search_path=s1 -cstatement_timeout=5 --work-mem=64MB"})
	want := map[string]string{"application_name": "app", "datestyle": "ISO", "search_path": "s1", "statement_timeout": "5", "work_mem": "64MB"}
	if len(p) != len(want) {
		t.Fatalf("got %v", p)
	}
	for k, v := range want {
		if p[k] != v {
			t.Fatalf("got %v, want %v", p, want)
		}
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	nodes := cluster.Config{Nodes: []cluster.NodeConfig{{Host: "h", Port: 5432}}}
	c, err := Config{AuthType: AuthTrust, Cluster: nodes}.withDefaults()
	if err != nil || c.PoolMode != ModeSession || c.DefaultPoolSize != DefaultPoolSize || c.Listen != DefaultListen || c.MaxPreparedStatements != DefaultMaxPreparedStatements || c.IOEngine != IOEngineEpoll || c.IOUring != "auto" {
		t.Fatalf("%+v %v", c, err)
	}
	for _, bad := range []Config{
		{AuthType: AuthTrust},
		{AuthType: "password", Cluster: nodes},
		{AuthType: AuthSCRAM, Cluster: nodes},
		{AuthType: AuthTrust, PoolMode: "statement", Cluster: nodes},
		{AuthType: AuthTrust, MinPoolSize: 30, Cluster: nodes},
		{AuthType: AuthTrust, MaxPreparedStatements: -1, Cluster: nodes},
		{AuthType: AuthTrust, ClientTLSMode: "require", Cluster: nodes},
		{AuthType: AuthTrust, Databases: map[string]DatabaseConfig{"x": {Route: "standby"}}, Cluster: nodes},
		{AuthType: AuthTrust, IOEngine: "io_uring", Cluster: nodes},
		{AuthType: AuthTrust, IOUring: "on", Cluster: nodes},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
	tg := (&Config{PoolMode: ModeSession, DefaultPoolSize: 20, Databases: map[string]DatabaseConfig{"app": {DBName: "real", PoolMode: ModeTransaction, PoolSize: 5, User: "svc", Password: "p"}}}).resolve("app", "alice")
	if tg.dbname != "real" || tg.mode != ModeTransaction || tg.size != 5 || tg.user != "svc" || !tg.forced {
		t.Fatalf("resolve: %+v", tg)
	}
}

// fuzzServer is a Server whose only node is unreachable: logins fail fast after startup.
func fuzzServer(t testing.TB) *Server {
	cfg := Config{Listen: "127.0.0.1:0", AuthType: AuthTrust, AdminUsers: []string{"admin"}, QueryWaitTimeout: 20 * time.Millisecond,
		ServerConnectTimeout: 50 * time.Millisecond, Cluster: cluster.Config{Nodes: []cluster.NodeConfig{{Host: "127.0.0.1", Port: 1}}}}
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.closeListeners() })
	return s
}

func startupPacket(params ...string) []byte {
	b := []byte{0, 0, 0, 0, 0, 3, 0, 0}
	for _, p := range params {
		b = append(append(b, p...), 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// fakeConn is a client that sends input and then EOF; it records what the pool writes.
type fakeConn struct {
	r *bytes.Reader
	w bytes.Buffer
}

func (c *fakeConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *fakeConn) Write(b []byte) (int, error) { return c.w.Write(b) }
func (c *fakeConn) Close() error                { return nil }
func (c *fakeConn) LocalAddr() net.Addr         { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6432} }
func (c *fakeConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *fakeConn) SetDeadline(t time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(t time.Time) error { return nil }

// runConn feeds input to handleConn and returns everything the pool wrote.
func runConn(t testing.TB, s *Server, input []byte) []byte {
	c := &fakeConn{r: bytes.NewReader(input)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.handleConn(context.Background(), c)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("handleConn did not return for input %q", input)
	}
	return c.w.Bytes()
}

func FuzzStartupMessage(f *testing.F) {
	f.Add(startupPacket("user", "admin", "database", "pgharbor"))
	f.Add(startupPacket("user", "u", "database", "d", "options", "-c x=y"))
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30})
	f.Add([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2})
	f.Add([]byte{0, 0, 0, 8, 0, 2, 0, 0})
	f.Add(startupPacket("user", "u", "_pq_.x", "1"))
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		out := runConn(t, s, data)
		// Whatever came back must be well-framed messages ('N'/'S' single bytes aside).
		for len(out) > 0 && (out[0] == 'N') {
			out = out[1:]
		}
		mr := msgReader{r: bufio.NewReader(bytes.NewReader(out))}
		for {
			_, n, err := mr.header()
			if err != nil {
				break
			}
			if _, err := mr.whole(n); err != nil {
				t.Fatalf("truncated reply %q", out)
			}
		}
	})
}

func FuzzClientMessages(f *testing.F) {
	q := func(s string) []byte { return appendMsg(nil, &pgproto3.Query{String: s}) }
	f.Add(q("SHOW POOLS"))
	f.Add(append(q("SHOW POOL_NODES"), q("PAUSE")...))
	f.Add(appendMsg(nil, &pgproto3.Parse{Name: "a", Query: "SELECT 1"}, &pgproto3.Bind{PreparedStatement: "a"}, &pgproto3.Execute{}, &pgproto3.Sync{}))
	f.Add([]byte{'Q', 0, 0, 0, 3})
	f.Add([]byte{'B', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{'X', 0, 0, 0, 4})
	s := fuzzServer(f)
	login := startupPacket("user", "admin", "database", AdminDatabase)
	f.Fuzz(func(t *testing.T, data []byte) {
		// the admin console over a real login
		var in []byte
		in = append(in, login...)
		in = append(in, data...)
		if bytes.Contains(data, []byte("PAUSE")) {
			return // would pause the shared fuzz server
		}
		runConn(t, s, in)
		// and the decoders of the session's hot path on every framed message
		mr := msgReader{r: bufio.NewReader(bytes.NewReader(data))}
		for {
			typ, n, err := mr.header()
			if err != nil {
				return
			}
			msg, err := mr.whole(n)
			if err != nil {
				return
			}
			body := msg[5:]
			switch typ {
			case 'P':
				if _, q, rest, ok := parseMsg(body); ok {
					_ = isReadOnlyQuery(q, nil)
					_ = encodeParse(nil, "x", rest)
				}
			case 'B':
				if p, name, rest, ok := bindStmt(body); ok {
					_ = encodeBind(nil, p, name, rest)
				}
			case 'Q':
				if q, _, ok := cstring(body); ok {
					_ = isReadOnlyQuery(q, []string{"f"})
					_ = isShowPoolNodes(q)
				}
			}
		}
	})
}

func TestDeallocateOfProtocolStatementsIsAnsweredByThePoolAllGoesToTheServer(t *testing.T) {
	s := &session{stmts: map[string]*stmt{"s1": {}, "Mixed": {}, "p2": {}}}
	for _, c := range [][2]string{ // in order: ALL comes last
		{"DEALLOCATE s1", "DEALLOCATE"},
		{"deallocate prepare p2;", "DEALLOCATE"},
		{`DEALLOCATE "Mixed"`, "DEALLOCATE"},
		{"DEALLOCATE sql_level", ""},
		{"SELECT 1", ""},
		{"DEALLOCATE s1; SELECT 1", ""},
		{"DEALLOCATE ALL", ""}, // forgets them all, and the server runs it too
	} {
		q, want := c[0], c[1]
		tag, ok := s.deallocate(q)
		if tag != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", q, tag, ok, want)
		}
	}
	s.stmts["x"] = &stmt{}
	if tag, ok := s.deallocate("DEALLOCATE ALL"); ok {
		t.Fatalf("DEALLOCATE ALL answered by the pool (%q): SQL-level statements would stay on the server", tag)
	}
	if len(s.stmts) != 0 {
		t.Fatalf("left %v", s.stmts)
	}
	for q, want := range map[string]bool{"DISCARD ALL": true, "select 1; deallocate x": true, "SELECT discarded": true, "SELECT 1": false, "deal": false} {
		if mentionsDealloc([]byte(q)) != want {
			t.Errorf("mentionsDealloc(%q) != %v", q, want)
		}
	}
}

func TestResetTargetsNamesWhatAStatementPutsBackToItsStartupValue(t *testing.T) {
	for q, want := range map[string]string{
		"RESET datestyle":                                 "datestyle",
		"reset ALL":                                       "ALL",
		"DISCARD ALL":                                     "ALL",
		"SET TimeZone TO DEFAULT":                         "timezone",
		"SET SESSION work_mem = DEFAULT":                  "work_mem",
		"set time zone default":                           "timezone",
		"RESET TIME ZONE; reset myext.opt":                "timezone myext.opt",
		"BEGIN; SET datestyle TO 'ISO'; RESET datestyle;": "datestyle",
		"SET LOCAL datestyle TO DEFAULT":                  "",
		"SET datestyle TO 'default'":                      "",
		`RESET "DateStyle"`:                               "",
		"SELECT 'reset datestyle'":                        "",
		"-- RESET ALL\nSELECT 1":                          "",
		"DISCARD PLANS":                                   "",
	} {
		names, all := resetTargets(q)
		got := strings.Join(names, " ")
		if all {
			got = strings.TrimSpace("ALL " + got)
		}
		if got != want {
			t.Errorf("resetTargets(%q) = %q, want %q", q, got, want)
		}
		if want != "" && scanText([]byte(q))&textReset == 0 {
			t.Errorf("scanText(%q) has no textReset", q)
		}
	}
	for q, want := range map[string]int{
		"SELECT 1":                              0,
		"UPDATE t SET a = 1 WHERE k = 2;":       0,
		"SET work_mem = 1":                      textSet,
		"BEGIN;\n  set\twork_mem TO 1;":         textSet,
		"SETTINGS":                              0,
		"SET ROLE x":                            textSet | textRole,
		"select set_config('ROLE', 'x', false)": textRole,
		"ROLLBACK":                              textRollback,
		"abort":                                 textRollback,
		"SET x TO DEFAULT":                      textSet | textReset,
	} {
		if got := scanText([]byte(q)); got != want {
			t.Errorf("scanText(%q) = %b, want %b", q, got, want)
		}
	}
}

func TestSessionSetsAreTheSettingsAClientKeeps(t *testing.T) {
	for q, want := range map[string]string{
		"SET work_mem = '64kB'":                          "work_mem='64kB'",
		`set search_path to pg_catalog, "$user"`:         `search_path=pg_catalog, "$user"`,
		"SET SESSION myapp.tenant TO 'a;b'; SELECT 1":    "myapp.tenant='a;b'",
		"BEGIN; SET statement_timeout = 5000; COMMIT":    "statement_timeout=5000",
		"SET LOCAL work_mem = '1MB'":                     "",
		"SET work_mem TO DEFAULT":                        "",
		"SET ROLE x":                                     "",
		"SET SESSION AUTHORIZATION x":                    "",
		"SET TIME ZONE 'UTC'":                            "",
		"SET timezone = 'UTC'":                           "", // reported: ParameterStatus
		"SET transaction_isolation = 'serializable'":     "",
		"SET work_mem = '1MB' -- comment":                "",
		"UPDATE t SET a = 1":                             "",
		"SET work_mem = 1; SET maintenance_work_mem = 2": "work_mem=1 maintenance_work_mem=2",
	} {
		var got []string
		for _, kv := range sessionSets(q) {
			got = append(got, kv[0]+"="+kv[1])
		}
		if g := strings.Join(got, " "); g != want {
			t.Errorf("sessionSets(%q) = %q, want %q", q, g, want)
		}
	}
}

func TestAuthFileOthersCanReadIsRefusedSayingTheChmod(t *testing.T) {
	p := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(p, []byte(`"alice" "pw"`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Listen: "127.0.0.1:0", AuthFile: p, Cluster: cluster.Config{Nodes: []cluster.NodeConfig{{Host: "127.0.0.1", Port: 1}}}}
	if _, err := New(cfg, nil); err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
		t.Fatalf("a 0644 auth_file: %v, want a refusal saying the chmod", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("a 0600 auth_file: %v", err)
	}
	s.closeListeners()
}
