package testserver

import (
	"fmt"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"
)

// FakeGCS is a running fake-gcs-server.
type FakeGCS struct {
	// Endpoint is the JSON API endpoint, e.g. "http://127.0.0.1:PORT/storage/v1/".
	Endpoint string
	// Host is "127.0.0.1:PORT", the value for STORAGE_EMULATOR_HOST.
	Host string
}

// StartFakeGCS starts fake-gcs-server over plain HTTP with a filesystem backend in a temporary
// directory (so large objects do not sit in memory) and stops it when the test ends. The
// server starts with no buckets.
func StartFakeGCS(t testing.TB) FakeGCS {
	t.Helper()
	bin := FindBinary(t, "fake-gcs-server", "go install github.com/fsouza/fake-gcs-server@v1.56.1")
	port := FreePort(t)
	host := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin,
		"-scheme", "http", "-host", "127.0.0.1", "-port", strconv.Itoa(port),
		"-backend", "filesystem", "-filesystem-root", t.TempDir(),
		// Without these, download URLs point at storage.googleapis.com and reads 404.
		"-public-host", host, "-external-url", "http://"+host,
		"-log-level", "error",
	)
	out := &fakeGCSLog{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start fake-gcs-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := WaitTCP(host, 15*time.Second); err != nil {
		t.Fatalf("fake-gcs-server did not start: %v\n%s", err, out.String())
	}
	return FakeGCS{Endpoint: fmt.Sprintf("http://%s/storage/v1/", host), Host: host}
}

// fakeGCSLog keeps the last few KiB of the server's output for failure messages.
type fakeGCSLog struct {
	mu  sync.Mutex
	buf []byte
}

func (l *fakeGCSLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if len(l.buf) > 8<<10 {
		l.buf = l.buf[len(l.buf)-8<<10:]
	}
	return len(p), nil
}

func (l *fakeGCSLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}
