package pool

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// poolVariant is one way the pool runs sessions: a pool mode and an io_engine. Session mode
// always runs sessions on goroutines; both engines are listed so that a change of that rule
// is covered too.
type poolVariant struct {
	mode   PoolMode
	engine string
}

func (v poolVariant) String() string { return string(v.mode) + "-" + v.engine }

var poolVariants = []poolVariant{
	{ModeSession, IOEngineEpoll}, {ModeSession, IOEngineGoroutines},
	{ModeTransaction, IOEngineEpoll}, {ModeTransaction, IOEngineGoroutines},
}

// startVariant starts a pool of one server connection (so that every client gets the
// connection the previous one used) for v.
func startVariant(t *testing.T, f *fixture, v poolVariant) *Server {
	t.Helper()
	cfg := baseConfig(f, v.mode)
	cfg.IOEngine = v.engine
	cfg.DefaultPoolSize = 1
	cfg.QueryWaitTimeout = 10 * time.Second
	return startPool(t, cfg)
}

// simpleConn connects a simple-protocol client as user (transaction mode with io_engine
// epoll: a session of the event loop) with extra connection-string settings.
func simpleConn(t *testing.T, s *Server, user, extra string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, poolConnString(s, user, "postgres")+" "+extra)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// TestPoolBehavesLikeDirectConnection covers the differences between a connection through
// the pool and a direct one that issue 15 lists, each in both pool modes and both engines.
func TestPoolBehavesLikeDirectConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	primary := pgtest.Start(t, pgtest.Options{})
	f := &fixture{primary: primary}
	primary.Exec(t, `CREATE ROLE pool_leak NOLOGIN;
		CREATE ROLE diff_role NOLOGIN; GRANT CREATE ON SCHEMA public TO diff_role;
		CREATE ROLE pool_app LOGIN; CREATE ROLE pool_tenant NOLOGIN; GRANT pool_tenant TO pool_app;
		GRANT ALL ON SCHEMA public TO pool_app;
		CREATE FUNCTION pool_become(r text) RETURNS text LANGUAGE plpgsql AS
		  $$ BEGIN EXECUTE format('SET %s %I', 'RO' || 'LE', r); RETURN current_user; END $$`)

	t.Run("RoleAndSessionAuthorizationDoNotLeakToTheNextClient", func(t *testing.T) { testNoRoleLeak(t, f) })
	t.Run("ResetGivesTheClientsStartupValues", func(t *testing.T) { testResetStartupParams(t, f) })
	t.Run("SessionSetsFollowTheClientNotTheServerConnection", func(t *testing.T) { testSessionSets(t, f) })
	t.Run("DeallocateAllReachesTheServer", func(t *testing.T) { testDeallocateAll(t, f) })
	t.Run("FunctionCallsAndLargeObjects", func(t *testing.T) { testFunctionCall(t, f) })
	t.Run("DeadIdleServerConnectionIsReplaced", func(t *testing.T) { testDeadIdleServer(t, f) })
	t.Run("ClientLeavingDuringCopyInEndsTheCopyAlike", func(t *testing.T) { testCopyInClientGone(t, f) })
	t.Run("DifferentialPsqlScripts", func(t *testing.T) { testDifferential(t, f) })
}

// psqlCtx runs psql (with a deadline: a hang is a failure) as postgres through s.
func psqlCtx(t *testing.T, s *Server, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	all := append([]string{"-h", "127.0.0.1", "-p", poolPort(s), "-U", "postgres", "-d", "postgres", "-X", "-v", "ON_ERROR_STOP=1"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(pgtest.DefaultBinDir, "psql"), all...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10", "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("psql %q: no answer in 20 s:\n%s", args, out)
	}
	return strings.TrimSpace(string(out)), err
}

// testDeallocateAll: DEALLOCATE ALL removes SQL-level prepared statements on the server as
// on a direct connection (transaction mode answered it in the pool before), and the
// client's protocol-level statements are forgotten too.
func testDeallocateAll(t *testing.T, f *fixture) {
	for _, v := range poolVariants {
		t.Run(v.String(), func(t *testing.T) {
			s := startVariant(t, f, v)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c := simpleConn(t, s, "postgres", "")
			mustOne(t, ctx, c, "PREPARE pool_p1 AS SELECT 1")
			if got := mustOne(t, ctx, c, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'pool_p1'"); got != "1" {
				t.Fatalf("after PREPARE: %s statements named pool_p1, want 1", got)
			}
			res := c.Exec(ctx, "DEALLOCATE ALL")
			results, err := res.ReadAll()
			if err != nil || len(results) != 1 || results[0].CommandTag.String() != "DEALLOCATE ALL" {
				t.Fatalf("DEALLOCATE ALL: %v %+v", err, results)
			}
			if got := mustOne(t, ctx, c, "SELECT count(*) FROM pg_prepared_statements"); got != "0" {
				t.Fatalf("after DEALLOCATE ALL: pg_prepared_statements lists %s statements, want 0", got)
			}
			// protocol-level statements: gone for the client, and re-prepared on the server
			// when a new one of the same text comes
			sd, err := c.Prepare(ctx, "pool_proto", "SELECT $1::int + 1", nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Exec(ctx, "DEALLOCATE ALL").ReadAll(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.ExecPrepared(ctx, sd.Name, [][]byte{[]byte("1")}, nil, nil).Close(); err == nil || !strings.Contains(err.Error(), "does not exist") {
				t.Fatalf("a statement used after DEALLOCATE ALL: %v, want 'does not exist'", err)
			}
			if _, err := c.Prepare(ctx, "pool_proto", "SELECT $1::int + 1", nil); err != nil {
				t.Fatal(err)
			}
			r := c.ExecPrepared(ctx, "pool_proto", [][]byte{[]byte("41")}, nil, nil).Read()
			if r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != "42" {
				t.Fatalf("statement prepared again after DEALLOCATE ALL: %v %v", r.Err, r.Rows)
			}
		})
	}
}

// testFunctionCall: FunctionCall messages (libpq's PQfn: psql's \lo_import and \lo_export)
// are forwarded and answered (the pool ignored them before: the client hung), and a message
// type the protocol does not have gets an error instead of silence.
func testFunctionCall(t *testing.T, f *fixture) {
	data := bytes.Repeat([]byte("large object through the pool\n"), 5000)
	src := writeFile(t, "lo_src.txt", string(data))
	absOID := f.primary.QueryString(t, "postgres", "SELECT 'abs(int4)'::regprocedure::oid::text")
	oid, _ := strconv.ParseUint(absOID, 10, 32)
	for _, v := range poolVariants {
		t.Run(v.String(), func(t *testing.T) {
			s := startVariant(t, f, v)
			out, err := psqlCtx(t, s, "-c", "\\lo_import "+src)
			if err != nil || !strings.HasPrefix(out, "lo_import ") {
				t.Fatalf("\\lo_import: %v\n%s", err, out)
			}
			lo := strings.TrimPrefix(out, "lo_import ")
			dst := filepath.Join(t.TempDir(), "lo_dst.txt")
			if out, err := psqlCtx(t, s, "-c", "\\lo_export "+lo+" "+dst); err != nil {
				t.Fatalf("\\lo_export: %v\n%s", err, out)
			}
			if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("exported large object: %v, %d bytes, want the %d imported", err, len(got), len(data))
			}
			if out, err := psqlCtx(t, s, "-c", "\\lo_unlink "+lo); err != nil || out != "lo_unlink "+lo {
				t.Fatalf("\\lo_unlink: %v\n%s", err, out)
			}

			// a FunctionCall outside a transaction block, then a query on the same session
			fe, _ := rawClient(t, s)
			fe.Send(&pgproto3.FunctionCall{Function: uint32(oid), ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("-7")}})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			m, err := fe.Receive()
			for err == nil {
				if _, ok := m.(*pgproto3.ParameterStatus); !ok {
					break // ParameterStatus may come at any time
				}
				m, err = fe.Receive()
			}
			if r, ok := m.(*pgproto3.FunctionCallResponse); err != nil || !ok || string(r.Result) != "7" {
				t.Fatalf("FunctionCall abs(-7): %v %#v", err, m)
			}
			if got := until(t, fe, 'Z'); got != "Z" {
				t.Fatalf("after FunctionCallResponse: %q, want ReadyForQuery", got)
			}
			fe.Send(&pgproto3.Query{String: "SELECT 1"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := until(t, fe, 'Z'); got != "TDCZ" {
				t.Fatalf("query after a FunctionCall: %q", got)
			}

			// a FunctionCall that gets no server connection (paused pool, query_wait_timeout)
			// is answered with the error and ReadyForQuery, like a Query (the session waited
			// for a Sync before)
			if v.mode == ModeTransaction {
				cfg := baseConfig(f, v.mode)
				cfg.IOEngine = v.engine
				cfg.QueryWaitTimeout = time.Second
				ps := startPool(t, cfg)
				fe, _ := rawClient(t, ps)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := ps.Pause(ctx); err != nil {
					t.Fatalf("PAUSE: %v", err)
				}
				fe.Send(&pgproto3.FunctionCall{Function: uint32(oid), ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("-7")}})
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
				m, err := fe.Receive()
				if e, ok := m.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != sqlstateCannotConnect {
					t.Fatalf("FunctionCall while paused: %v %#v, want ErrorResponse 08001", err, m)
				}
				if got := until(t, fe, 'Z'); got != "Z" {
					t.Fatalf("after the FunctionCall's error: %q, want ReadyForQuery", got)
				}
				ps.Resume()
				fe.Send(&pgproto3.Query{String: "SELECT 1"})
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
				if got := until(t, fe, 'Z'); !strings.HasSuffix(got, "TDCZ") {
					t.Fatalf("query after resume: %q", got)
				}
			}

			// a message type the protocol does not have: an error, not silence
			_, conn := rawClient(t, s)
			if _, err := conn.Write([]byte{'y', 0, 0, 0, 4}); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			fe2 := pgproto3.NewFrontend(conn, conn)
			m, err = fe2.Receive()
			if e, ok := m.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != sqlstateProtocolViolation {
				t.Fatalf("unknown message type: %v %#v, want ErrorResponse 08P01", err, m)
			}
		})
	}
}

// testDeadIdleServer: a server connection that died while idle in the pool (here
// pg_terminate_backend) is replaced before a client gets it; no client sees an error for it.
func testDeadIdleServer(t *testing.T, f *fixture) {
	for _, v := range poolVariants {
		t.Run(v.String(), func(t *testing.T) {
			s := startVariant(t, f, v)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			terminate := func(pid string) {
				t.Helper()
				f.primary.Exec(t, "SELECT pg_terminate_backend("+pid+")")
				deadline := time.Now().Add(10 * time.Second)
				for f.primary.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_activity WHERE pid = "+pid) != "0" {
					if time.Now().After(deadline) {
						t.Fatalf("backend %s still there 10 s after pg_terminate_backend", pid)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			for round := 0; round < 2; round++ {
				c := simpleConn(t, s, "postgres", "")
				pid := mustOne(t, ctx, c, "SELECT pg_backend_pid()")
				if v.mode == ModeTransaction {
					// between this client's transactions
					terminate(pid)
					time.Sleep(200 * time.Millisecond) // let the event loop see the hang-up
					if got, err := one(ctx, c, "SELECT pg_backend_pid()"); err != nil || got == pid {
						t.Fatalf("round %d: query after the idle server connection died: %q %v, want a new backend", round, got, err)
					}
					pid = mustOne(t, ctx, c, "SELECT pg_backend_pid()")
				}
				c.Close(ctx)
				terminate(pid)
				time.Sleep(200 * time.Millisecond)
				c = simpleConn(t, s, "postgres", "")
				if got, err := one(ctx, c, "SELECT pg_backend_pid()"); err != nil || got == pid {
					t.Fatalf("round %d: new client after the idle server connection died: %q %v, want a new backend", round, got, err)
				}
				c.Close(ctx)
			}
		})
	}
}

// testNoRoleLeak: a client that changes its role or session authorization and leaves (or, in
// transaction mode, just ends its transaction) must not pass that identity to the next client
// of its server connection.
func testNoRoleLeak(t *testing.T, f *fixture) {
	changes := []struct {
		name, user, sql, becomes string
	}{
		{"SetSessionAuthorization", "postgres", "SET SESSION AUTHORIZATION pool_leak", "pool_leak"},
		{"SetRole", "postgres", "SET ROLE pool_leak", "pool_leak"},
		{"SetRoleInAFunction", "postgres", "SELECT pool_become('pool_leak')", "pool_leak"},
		{"SetRoleNotSuperuser", "pool_app", "SET ROLE pool_tenant", "pool_tenant"},
		{"SetConfigRole", "pool_app", "SELECT set_config('role', 'pool_tenant', false)", "pool_tenant"},
	}
	for _, v := range poolVariants {
		t.Run(v.String(), func(t *testing.T) {
			s := startVariant(t, f, v)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for _, ch := range changes {
				identity := func(c *pgconn.PgConn, who string) {
					t.Helper()
					defer c.Close(ctx)
					got := mustOne(t, ctx, c, "SELECT current_user || ' ' || session_user || ' ' || current_setting('is_superuser')")
					want := ch.user + " " + ch.user + " " + map[bool]string{true: "on", false: "off"}[ch.user == "postgres"]
					if got != want {
						t.Fatalf("%s: %s after another client ran %q: current_user session_user is_superuser = %q, want %q", ch.name, who, ch.sql, got, want)
					}
				}
				a := simpleConn(t, s, ch.user, "")
				if v.mode == ModeTransaction && v.engine == IOEngineEpoll {
					if io := waitClientIO(t, s, a.PID(), "epoll"); io != "epoll" {
						t.Fatalf("client io %q, want epoll", io)
					}
				}
				if got := mustOne(t, ctx, a, ch.sql+"; SELECT current_user"); got != ch.becomes {
					t.Fatalf("%s: %q then current_user = %q, want %q", ch.name, ch.sql, got, ch.becomes)
				}
				if v.mode == ModeTransaction {
					// a stays connected; its transaction ended, so the connection moves on
					identity(simpleConn(t, s, ch.user, ""), "a client while the first is still connected")
				}
				a.Close(ctx)
				identity(simpleConn(t, s, ch.user, ""), "the next client")
			}
			if a, total := activeServers(t, s); a != 0 || total > 2 {
				t.Fatalf("%d active of %d server connections, want 0 active", a, total)
			}
		})
	}
}

// testResetStartupParams: RESET (one name or ALL), SET ... TO DEFAULT and DISCARD ALL give
// the client the values it asked for at startup, as on a direct connection, not the
// server's defaults (the pool's server connections log in without them).
func testResetStartupParams(t *testing.T, f *fixture) {
	const startup = "datestyle='Postgres, MDY' timezone=Asia/Tokyo options='-c work_mem=1234kB'"
	want := map[string]string{"datestyle": "Postgres, MDY", "timezone": "Asia/Tokyo", "work_mem": "1234kB"}
	def := map[string]string{"datestyle": "ISO, MDY", "work_mem": "4MB"}
	for _, v := range poolVariants {
		t.Run(v.String(), func(t *testing.T) {
			s := startVariant(t, f, v)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c := simpleConn(t, s, "postgres", startup)
			check := func(after string) {
				t.Helper()
				for k, w := range want {
					if got := mustOne(t, ctx, c, "SHOW "+k); got != w {
						t.Fatalf("after %s: %s is %q, want the startup value %q", after, k, got, w)
					}
				}
			}
			check("connecting")
			for _, step := range [][]string{
				{"SET datestyle TO 'ISO, DMY'", "RESET datestyle"},
				{"SET datestyle TO 'SQL, DMY'; SET timezone TO 'UTC'; SET work_mem TO '64kB'", "RESET ALL"},
				{"SET timezone TO 'Europe/Paris'", "SET timezone TO DEFAULT"},
				{"SET work_mem = '99kB'", "SET SESSION work_mem = DEFAULT"},
				{"SET datestyle TO 'ISO, DMY'; SET work_mem TO '64kB'", "DISCARD ALL"},
			} {
				mustOne(t, ctx, c, step[0])
				if got := mustOne(t, ctx, c, "SHOW datestyle"); got == want["datestyle"] && strings.Contains(step[0], "datestyle") {
					t.Fatalf("%s did not change datestyle", step[0])
				}
				mustOne(t, ctx, c, step[1])
				check(step[1])
				// and the client's record of the reported settings says so too
				if got := c.ParameterStatus("DateStyle"); got != want["datestyle"] {
					t.Fatalf("after %s: DateStyle reported to the client last: %q, want %q", step[1], got, want["datestyle"])
				}
			}
			// inside a transaction block: the startup value at once, and kept after COMMIT
			mustOne(t, ctx, c, "BEGIN")
			mustOne(t, ctx, c, "SET datestyle TO 'SQL, DMY'")
			mustOne(t, ctx, c, "RESET datestyle")
			if got := mustOne(t, ctx, c, "SHOW datestyle"); got != want["datestyle"] {
				t.Fatalf("RESET datestyle inside a transaction block: %q, want %q", got, want["datestyle"])
			}
			mustOne(t, ctx, c, "COMMIT")
			check("RESET datestyle in a committed transaction block")
			// a RESET that fails or is rolled back changes nothing
			mustOne(t, ctx, c, "SET datestyle TO 'ISO, DMY'")
			mustOne(t, ctx, c, "BEGIN")
			mustOne(t, ctx, c, "RESET datestyle")
			mustOne(t, ctx, c, "ROLLBACK")
			if got := mustOne(t, ctx, c, "SHOW datestyle"); got != "ISO, DMY" {
				t.Fatalf("after a rolled back RESET: %q, want ISO, DMY", got)
			}
			if _, err := one(ctx, c, "RESET datestyle; SELECT 1/0"); err == nil {
				t.Fatal("1/0 did not fail")
			}
			if got := mustOne(t, ctx, c, "SHOW datestyle"); got != "ISO, DMY" {
				t.Fatalf("after a RESET in a failed query: %q, want ISO, DMY", got)
			}
			mustOne(t, ctx, c, "RESET datestyle")
			// another client of the same server connection keeps the server's defaults
			if v.mode == ModeSession {
				c.Close(ctx)
			}
			o := simpleConn(t, s, "postgres", "")
			for k, w := range def {
				if got := mustOne(t, ctx, o, "SHOW "+k); got != w {
					t.Fatalf("a client without startup settings: %s is %q, want the server's %q", k, got, w)
				}
			}
			if v.mode == ModeTransaction {
				check("another client's queries")
			}
		})
	}
}

// testSessionSets: a session-level SET of a setting the server does not report (work_mem,
// search_path, a custom one) stays the client's across transactions, and the next client of
// the server connection does not get it (in transaction mode it did).
func testSessionSets(t *testing.T, f *fixture) {
	for _, v := range poolVariants {
		t.Run(v.String(), func(t *testing.T) {
			s := startVariant(t, f, v)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			a := simpleConn(t, s, "postgres", "")
			mustOne(t, ctx, a, "SET work_mem = '77kB'")
			mustOne(t, ctx, a, `SET search_path TO pg_catalog, "$user"`)
			mustOne(t, ctx, a, "SET SESSION myapp.tenant TO 'blue'; SELECT 1")
			mustOne(t, ctx, a, "BEGIN; SET statement_timeout = '5s'; ROLLBACK") // undone
			own := func(after string) {
				t.Helper()
				got := mustOne(t, ctx, a, "SELECT current_setting('work_mem') || ' ' || current_setting('search_path') || ' ' || current_setting('myapp.tenant') || ' ' || current_setting('statement_timeout')")
				if want := `77kB pg_catalog, "$user" blue 0`; got != want {
					t.Fatalf("%s: the client's settings are %q, want %q", after, got, want)
				}
			}
			own("its own SETs")
			if v.mode == ModeSession {
				return
			}
			b := simpleConn(t, s, "postgres", "")
			got := mustOne(t, ctx, b, "SELECT current_setting('work_mem') || ' ' || current_setting('search_path') || ' ' || current_setting('myapp.tenant', true)")
			if want := `4MB "$user", public `; got != want {
				t.Fatalf("another client of the server connection: settings %q, want the server's %q", got, want)
			}
			own("another client's transaction")
			mustOne(t, ctx, a, "RESET work_mem; RESET search_path")
			if got := mustOne(t, ctx, a, "SELECT current_setting('work_mem') || ' ' || current_setting('search_path')"); got != `4MB "$user", public` {
				t.Fatalf("after RESET: %q", got)
			}
			mustOne(t, ctx, b, "SELECT 1")
			if got := mustOne(t, ctx, a, "SELECT current_setting('work_mem') || ' ' || current_setting('myapp.tenant')"); got != "4MB blue" {
				t.Fatalf("after RESET and another client: %q", got)
			}
		})
	}
}

// testCopyInClientGone: a client that leaves while its COPY FROM STDIN runs gets the COPY
// ended with CopyFail on both engines (the goroutine engine cancelled it instead, over a new
// connection), nothing of it is kept, and its server connection serves the next client.
func testCopyInClientGone(t *testing.T, f *fixture) {
	f.primary.Exec(t, "CREATE TABLE IF NOT EXISTS copy_gone (a int)")
	for i, v := range poolVariants {
		t.Run(v.String(), func(t *testing.T) {
			s := startVariant(t, f, v)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			marker := "copy_gone_" + strconv.Itoa(i)
			fe, conn := rawClient(t, s)
			fe.Send(&pgproto3.Query{String: "COPY copy_gone FROM STDIN /* " + marker + " */"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := until(t, fe, 'G'); got != "G" {
				t.Fatalf("COPY FROM STDIN: %q, want CopyInResponse", got)
			}
			fe.Send(&pgproto3.CopyData{Data: []byte("1\n2\n")})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			conn.Close()
			deadline := time.Now().Add(10 * time.Second)
			// the error and, a line or two on, the statement it ended
			failed := regexp.MustCompile(`COPY from stdin failed: client disconnected\n(.*\n)?.*STATEMENT: +COPY copy_gone FROM STDIN /\* ` + marker + ` \*/`)
			for !failed.MatchString(f.primary.Log()) {
				if time.Now().After(deadline) {
					t.Fatalf("no CopyFail in the server log 10 s after the client left:\n%s", f.primary.Log())
				}
				time.Sleep(50 * time.Millisecond)
			}
			c := simpleConn(t, s, "postgres", "")
			if got := mustOne(t, ctx, c, "SELECT count(*) FROM copy_gone"); got != "0" {
				t.Fatalf("rows of the abandoned COPY: %s, want 0", got)
			}
		})
	}
}
