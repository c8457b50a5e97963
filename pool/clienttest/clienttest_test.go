package clienttest

import (
	"runtime"
	"testing"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// The client programs pass directly against PostgreSQL with SCRAM password auth, so a failure
// through the pool is the pool's.
func TestClientsPassDirectlyAgainstPostgreSQL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg := StartSCRAMCluster(t)
	t.Run("psycopg2", func(t *testing.T) {
		RunPsycopg2(t, "127.0.0.1", pg.Port, Database, User, Password)
	})
	t.Run("jdbc", func(t *testing.T) {
		RunJDBC(t, "127.0.0.1", pg.Port, Database, User, Password)
	})
}

func TestRunFailsOnAWrongPassword(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	pg := pgtest.Start(t, pgtest.Options{HBA: []string{"host all compat 127.0.0.1/32 scram-sha-256"}})
	pg.Exec(t, "CREATE ROLE compat LOGIN PASSWORD 'right'")
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() { // Fatal ends the goroutine with runtime.Goexit
		defer close(done)
		RunPsycopg2(ft, "127.0.0.1", pg.Port, "postgres", "compat", "wrong")
	}()
	<-done
	if !ft.failed {
		t.Fatal("a failing client run did not fail the test")
	}
}

type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = true
	f.TB.Logf("(expected) "+format, args...)
	runtime.Goexit()
}
