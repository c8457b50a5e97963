package pool

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/pgharbor/pgharbor/pool/clienttest"
)

// TestClientLibrariesThroughPool runs the psycopg2 and pgJDBC programs of pool/clienttest
// (queries, transactions, prepared statements, batch, COPY in/out, error mid-transaction,
// cancel) through the pool in both modes, with SCRAM pass-through to the server.
func TestClientLibrariesThroughPool(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg := clienttest.StartSCRAMCluster(t)
	secret := pg.QueryString(t, "postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = $1", clienttest.User)
	auth := writeFile(t, "u.txt", fmt.Sprintf("%q %q\n", clienttest.User, secret))
	f := &fixture{primary: pg}
	for _, mode := range []PoolMode{ModeTransaction, ModeSession} {
		t.Run(string(mode), func(t *testing.T) {
			cfg := baseConfig(f, mode)
			cfg.AuthType, cfg.AuthFile = AuthSCRAM, auth
			s := startPool(t, cfg)
			port, _ := strconv.Atoi(poolPort(s))
			t.Run("psycopg2", func(t *testing.T) {
				clienttest.RunPsycopg2(t, "127.0.0.1", port, clienttest.Database, clienttest.User, clienttest.Password)
			})
			t.Run("jdbc", func(t *testing.T) {
				clienttest.RunJDBC(t, "127.0.0.1", port, clienttest.Database, clienttest.User, clienttest.Password)
			})
		})
	}
}
