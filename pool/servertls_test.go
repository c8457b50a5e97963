package pool

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// TestServerTLSCoversAuthQueryAndServerConnections runs PostgreSQL with ssl = on and a
// pg_hba.conf that rejects every TCP connection without TLS: a client whose password the
// pool learns through auth_query can log in only if the auth_query connection and the
// server connection both use TLS, which pg_stat_ssl then shows. The default
// server_tls_sslmode (prefer) must do it; disable must fail against the same server.
func TestServerTLSCoversAuthQueryAndServerConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg := pgtest.New(t, pgtest.Options{NoStart: true,
		Config: map[string]string{"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'",
			"password_encryption": "'scram-sha-256'"},
		HBA: []string{"hostnossl all all 127.0.0.1/32 reject", "hostssl all alice 127.0.0.1/32 scram-sha-256"},
	})
	certFile, keyFile := selfSignedCert(t)
	for src, dst := range map[string]string{certFile: "server.crt", keyFile: "server.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(pg.DataDir, dst)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if pg.Cred != nil {
			if err := os.Chown(p, int(pg.Cred.Uid), int(pg.Cred.Gid)); err != nil {
				t.Fatal(err)
			}
		}
	}
	pg.Start(t)
	pg.Exec(t, "CREATE ROLE alice LOGIN PASSWORD 'alice-pw'")

	f := &fixture{primary: pg}
	newConfig := func(mode string) Config {
		cfg := baseConfig(f, ModeTransaction)
		cfg.Cluster.HealthCheckSSLMode = "require"
		cfg.AuthType, cfg.AuthUser, cfg.ServerTLSMode = AuthSCRAM, "postgres", mode
		// The secret comes back only over TLS: a plain auth_query connection finds no row.
		cfg.AuthQuery = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1 AND (SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_backend_pid())"
		return cfg
	}
	for _, mode := range []string{"", "require"} {
		t.Run("mode="+mode, func(t *testing.T) {
			s := startPool(t, newConfig(mode))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := pgx.Connect(ctx, poolConnString(s, "alice", "postgres")+" password=alice-pw")
			if err != nil {
				t.Fatalf("login through auth_query: %v\nserver log:\n%s", err, pg.Log())
			}
			defer c.Close(context.Background())
			var ssl bool
			var version string
			if err := c.QueryRow(ctx, "SELECT ssl, version FROM pg_catalog.pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version); err != nil || !ssl {
				t.Fatalf("server connection: ssl %v (%v)", ssl, err)
			}
			t.Logf("server connection over %s", version)
		})
	}
	t.Run("disable fails against a TLS-only server", func(t *testing.T) {
		cfg := newConfig("disable")
		s := startPool(t, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := pgx.Connect(ctx, poolConnString(s, "alice", "postgres")+" password=alice-pw")
		if err == nil || !strings.Contains(err.Error(), "auth_query") {
			t.Fatalf("login with server_tls_sslmode disable: %v, want the auth_query connection refused", err)
		}
	})
}
