// Package clienttest runs real client libraries against a PostgreSQL endpoint (normally the
// pgharbor pool) from Go tests: psycopg2 (libpq, Python) and pgJDBC (Java). Each client runs
// the programs in pool/testdata/clients: queries, transactions, prepared statements, COPY in
// and out, an error mid-transaction, and a cancel of pg_sleep(10) that must return within 5 s.
//
// A missing client (python3-psycopg2, java, libpostgresql-jdbc-java) skips the test with a
// message, except under CI=true where it fails it.
package clienttest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/ci"
	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// Defaults for the client programs; the environment variables PGHARBOR_PYTHON,
// PGHARBOR_JAVA and PGHARBOR_JDBC_JAR override them.
const (
	DefaultPython  = "/usr/bin/python3" // Debian's, which python3-psycopg2 installs into (not pyenv's)
	DefaultJava    = "java"
	DefaultJDBCJar = "/usr/share/java/postgresql.jar"
	// Timeout bounds one client run.
	Timeout = 3 * time.Minute
)

// Dir returns the directory holding the client programs (pool/testdata/clients).
func Dir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("..", "testdata", "clients")
	}
	return filepath.Join(filepath.Dir(file), "..", "testdata", "clients")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// missing skips t outside CI and fails it under CI when a client is not installed.
func missing(t testing.TB, what, install string) {
	t.Helper()
	msg := fmt.Sprintf("%s not available (%s)", what, install)
	if ci.Enabled() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Psycopg2Available reports why psycopg2 cannot run ("" when it can).
func Psycopg2Available() string {
	py := envOr("PGHARBOR_PYTHON", DefaultPython)
	if out, err := exec.Command(py, "-c", "import psycopg2").CombinedOutput(); err != nil {
		return fmt.Sprintf("%s -c 'import psycopg2': %v: %s", py, err, strings.TrimSpace(string(out)))
	}
	return ""
}

// JDBCAvailable reports why the JDBC client cannot run ("" when it can).
func JDBCAvailable() string {
	java := envOr("PGHARBOR_JAVA", DefaultJava)
	if _, err := exec.LookPath(java); err != nil {
		return fmt.Sprintf("java: %v", err)
	}
	jar := envOr("PGHARBOR_JDBC_JAR", DefaultJDBCJar)
	if _, err := os.Stat(jar); err != nil {
		return fmt.Sprintf("JDBC driver: %v", err)
	}
	return ""
}

// RunPsycopg2 runs psycopg2_client.py against host:port and fails t, with the program's
// output, unless every step passes. It returns the output.
func RunPsycopg2(t testing.TB, host string, port int, db, user, password string) string {
	t.Helper()
	if why := Psycopg2Available(); why != "" {
		missing(t, "psycopg2", why+"; apt-get install -y python3-psycopg2")
	}
	py := envOr("PGHARBOR_PYTHON", DefaultPython)
	return run(t, "psycopg2", py, filepath.Join(Dir(), "psycopg2_client.py"), host, strconv.Itoa(port), db, user, password)
}

// RunJDBC runs JdbcClient.java (single-file source launch, no build step) against host:port
// and fails t, with the program's output, unless every step passes. It returns the output.
func RunJDBC(t testing.TB, host string, port int, db, user, password string) string {
	t.Helper()
	if why := JDBCAvailable(); why != "" {
		missing(t, "JDBC client", why+"; apt-get install -y default-jre-headless libpostgresql-jdbc-java")
	}
	java := envOr("PGHARBOR_JAVA", DefaultJava)
	jar := envOr("PGHARBOR_JDBC_JAR", DefaultJDBCJar)
	return run(t, "JDBC", java, "-cp", jar, filepath.Join(Dir(), "JdbcClient.java"), host, strconv.Itoa(port), db, user, password)
}

func run(t testing.TB, name, prog string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.WaitDelay = 5 * time.Second
	// Keep JVM options of the environment from changing what is tested; libpq's PG*
	// variables (PGSSLMODE, ...) pass through so a test can ask for TLS.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "JAVA_TOOL_OPTIONS=") && !strings.HasPrefix(kv, "_JAVA_OPTIONS=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	text := out.String()
	if err != nil || !strings.Contains(text, "OK all") {
		t.Fatalf("%s client against %s:%s failed after %v: %v\n%s", name, args[len(args)-5], args[len(args)-4], time.Since(start).Round(time.Millisecond), err, text)
	}
	t.Logf("%s client passed in %v:\n%s", name, time.Since(start).Round(time.Millisecond), text)
	return text
}

// The role the client programs log in as; the password has a quote in it on purpose.
const (
	User     = "compat"
	Database = "compat"
	Password = "comp'at pw"
)

// StartSCRAMCluster starts PostgreSQL with the User role (SCRAM password, loopback TCP) and
// its Database, for running the client programs against it or through a pool in front of it.
func StartSCRAMCluster(t testing.TB) *pgtest.Cluster {
	t.Helper()
	pg := pgtest.Start(t, pgtest.Options{
		Config: map[string]string{"password_encryption": "'scram-sha-256'"},
		HBA:    []string{"host all " + User + " 127.0.0.1/32 scram-sha-256"},
	})
	pg.Exec(t, "CREATE ROLE "+User+" LOGIN PASSWORD '"+strings.ReplaceAll(Password, "'", "''")+"'")
	pg.Exec(t, "CREATE DATABASE "+Database+" OWNER "+User)
	return pg
}
