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
func StartVersity(t testing.TB) VersityServer { return StartVersityProcess(t).VersityServer }

// Versity is a running Versity gateway whose process a test can kill and start again, on
// the same port over the same data, to see what clients do when the server dies.
type Versity struct {
	VersityServer
	t      testing.TB
	bin    string
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	out    *lockedBuffer
}

// StartVersityProcess is StartVersity for tests that kill the server (Kill, Restart).
func StartVersityProcess(t testing.TB) *Versity {
	t.Helper()
	bin := FindBinary(t, "versitygw", VersityInstall)
	v := &Versity{VersityServer: VersityServer{
		AccessKey: "pgharbor-test-access",
		SecretKey: "pgharbor-test-secret-key",
		Dir:       filepath.Join(t.TempDir(), "posix"),
	}, t: t, bin: bin, out: &lockedBuffer{}}
	if err := os.MkdirAll(v.Dir, 0o755); err != nil {
		t.Fatalf("versitygw: %v", err)
	}
	v.addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	v.Endpoint = "http://" + v.addr
	v.start()
	t.Cleanup(v.Kill)
	return v
}

func (v *Versity) start() {
	v.t.Helper()
	cmd := exec.Command(v.bin, "--port", v.addr, "--quiet", "posix", v.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+v.AccessKey, "ROOT_SECRET_KEY="+v.SecretKey)
	cmd.Stdout, cmd.Stderr = v.out, v.out
	if err := cmd.Start(); err != nil {
		v.t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	v.cmd, v.exited = cmd, exited
	if err := WaitTCP(v.addr, 10*time.Second); err != nil {
		v.t.Fatalf("versitygw did not come up: %v\noutput:\n%s", err, v.out.String())
	}
	select {
	case <-exited:
		v.t.Fatalf("versitygw exited at startup:\n%s", v.out.String())
	default:
	}
}

// Kill ends the server process with SIGKILL (no clean shutdown) and waits for it to exit.
func (v *Versity) Kill() {
	if v.cmd == nil {
		return
	}
	_ = v.cmd.Process.Kill()
	<-v.exited
	v.cmd = nil
}

// Restart starts the server again on the same address over the same data; it must have
// been killed.
func (v *Versity) Restart() {
	v.t.Helper()
	if v.cmd != nil {
		v.t.Fatal("versitygw: Restart while it runs")
	}
	v.start()
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
