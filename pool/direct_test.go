package pool

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

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
		CREATE ROLE pool_app LOGIN; CREATE ROLE pool_tenant NOLOGIN; GRANT pool_tenant TO pool_app;
		GRANT ALL ON SCHEMA public TO pool_app;
		CREATE FUNCTION pool_become(r text) RETURNS text LANGUAGE plpgsql AS
		  $$ BEGIN EXECUTE format('SET %s %I', 'RO' || 'LE', r); RETURN current_user; END $$`)

	t.Run("RoleAndSessionAuthorizationDoNotLeakToTheNextClient", func(t *testing.T) { testNoRoleLeak(t, f) })
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
					if io := clientIO(t, s, a.PID()); io != "epoll" {
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
