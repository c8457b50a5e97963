package testserver

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// VersityInstall is the command that installs the pinned Versity S3 gateway.
const VersityInstall = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// VersityServer is a running Versity S3 gateway with its posix backend.
type VersityServer struct {
	// Endpoint is the gateway's base URL, e.g. "http://127.0.0.1:41234"; use path-style addressing.
	Endpoint string
	// AccessKey and SecretKey are the root account's credentials.
	AccessKey, SecretKey string
	// Dir is the posix root: every subdirectory is a bucket.
	Dir string
}

// StartVersity starts a Versity S3 gateway on a free loopback port over a fresh temp
// directory and stops it when the test ends. It has no buckets; create them with the S3 API.
func StartVersity(t testing.TB) VersityServer {
	t.Helper()
	bin := FindBinary(t, "versitygw", VersityInstall)
	srv := VersityServer{
		AccessKey: "pgharbor-test-access",
		SecretKey: "pgharbor-test-secret-key",
		Dir:       filepath.Join(t.TempDir(), "posix"),
	}
	if err := os.MkdirAll(srv.Dir, 0o755); err != nil {
		t.Fatalf("versitygw: %v", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	srv.Endpoint = "http://" + addr

	cmd := exec.Command(bin, "--port", addr, "--quiet", "posix", srv.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+srv.AccessKey, "ROOT_SECRET_KEY="+srv.SecretKey)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	if err := WaitTCP(addr, 10*time.Second); err != nil {
		t.Fatalf("versitygw did not come up: %v\noutput:\n%s", err, out.String())
	}
	select {
	case <-exited:
		t.Fatalf("versitygw exited at startup:\n%s", out.String())
	default:
	}
	return srv
}

// lockedBuffer collects a child's output while the test may read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
