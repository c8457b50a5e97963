// Package etcdtest starts a real one-member etcd for tests.
package etcdtest

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/ci"
	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// Start runs a one-member etcd on free loopback ports with a temp data dir, stopped in
// cleanup, and returns its client URL. Without the etcd binary the test is skipped, except
// in CI where it fails.
func Start(t testing.TB) string {
	t.Helper()
	return start(t, nil)
}

// StartArgs is Start with more etcd command-line flags (e.g. --auth-token-ttl).
func StartArgs(t testing.TB, args ...string) string {
	t.Helper()
	return start(t, nil, args...)
}

// TLS is a certificate set for StartTLS, as PEM files.
type TLS struct {
	CAFile, ServerCert, ServerKey string
	// ClientCert and ClientKey are signed by the CA; etcd requires a client certificate.
	ClientCert, ClientKey string
	Client                *http.Client // trusts the CA and presents the client certificate
}

// StartTLS is Start with an https client URL that requires a client certificate signed by
// the CA of c.
func StartTLS(t testing.TB, c TLS) string {
	t.Helper()
	return start(t, &c)
}

func start(t testing.TB, c *TLS, args ...string) string {
	// The free ports are picked before etcd binds them: a test running beside this one may
	// take one in between. Then etcd exits at once, and new ports are tried.
	for attempt := 1; ; attempt++ {
		url, busy := startOnce(t, c, args...)
		if !busy {
			return url
		}
		if attempt == 5 {
			t.Fatalf("etcd: its ports were taken by others %d times in a row", attempt)
		}
	}
}

// startOnce starts etcd on new free ports; busy reports that a port was taken meanwhile.
func startOnce(t testing.TB, c *TLS, args ...string) (url string, busy bool) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if ci.Enabled() {
			t.Fatalf("etcd not found (apt-get install etcd-server, or scripts/setup.sh): %v", err)
		}
		t.Skip("etcd not found: apt-get install etcd-server (scripts/setup.sh) to run this test")
	}
	cp, pp := pgtest.FreePort(t), pgtest.FreePort(t)
	scheme, hc, extra := "http", http.DefaultClient, []string(nil)
	if c != nil {
		scheme, hc = "https", c.Client
		extra = []string{"--cert-file", c.ServerCert, "--key-file", c.ServerKey, "--trusted-ca-file", c.CAFile, "--client-cert-auth"}
	}
	curl, purl := fmt.Sprintf("%s://127.0.0.1:%d", scheme, cp), fmt.Sprintf("http://127.0.0.1:%d", pp)
	dir := t.TempDir()
	logf, err := os.Create(dir + "/etcd.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--name", "t", "--data-dir", dir+"/data",
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "t="+purl, "--log-outputs", "stderr")
	cmd.Args = append(cmd.Args, extra...)
	cmd.Args = append(cmd.Args, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		logf.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := hc.Post(curl+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"eA=="}`))
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return curl, false
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(dir + "/etcd.log")
			if strings.Contains(string(b), "address already in use") {
				return "", true
			}
			t.Fatalf("etcd exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(dir + "/etcd.log")
			t.Fatalf("etcd not ready within 30s: %s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
