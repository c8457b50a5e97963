package wal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/codec"
)

// binDir holds the pgharbor binary, built once per test run when a test needs it.
var (
	binDir   string
	binOnce  sync.Once
	binPath  string
	binError error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pgharbor-wal-bin-")
	if err == nil {
		err = os.Chmod(dir, 0o755) // PostgreSQL runs it as the postgres user
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// pgharborBinary builds cmd/pgharbor once.
func pgharborBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binPath = filepath.Join(binDir, "pgharbor")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/pgharbor/pgharbor/cmd/pgharbor").CombinedOutput()
		if err != nil {
			binError = fmt.Errorf("go build cmd/pgharbor: %v\n%s", err, out)
		}
	})
	if binError != nil {
		t.Fatal(binError)
	}
	return binPath
}

// binEnv is a repository, spool and config file usable by the binary, all accessible to
// the PostgreSQL OS user.
type binEnv struct {
	bin, base, cfg, repoDir, spool string
	keys                           testKeys
	cred                           *syscall.Credential
}

func newBinEnv(t *testing.T, prefetch int) binEnv {
	t.Helper()
	cred, err := pgtest.OSUser()
	must(t, err)
	e := binEnv{bin: pgharborBinary(t), keys: newKeys(t), cred: cred}
	e.base = pgtest.MkdirOwned(t, cred, "pgharbor-wal-test-")
	e.repoDir = pgtest.MkdirOwned(t, cred, "pgharbor-wal-repo-")
	e.spool = pgtest.MkdirOwned(t, cred, "pgharbor-wal-spool-")
	idFile := filepath.Join(e.base, "identity.txt")
	must(t, os.WriteFile(idFile, []byte(e.keys.identity+"\n"), 0o600))
	if cred != nil {
		must(t, os.Chown(idFile, int(cred.Uid), int(cred.Gid))) // the binary also runs as the cluster's user
	}
	e.cfg = filepath.Join(e.base, "pgharbor.yaml")
	cfg := fmt.Sprintf(`repo:
  url: file://%s
  cluster: test
encryption:
  mode: age
  recipients: [%q]
  identity_file: %s
compression:
  level: 1
wal:
  spool_dir: %s
  fetch_prefetch: %d
`, e.repoDir, e.keys.recipient, idFile, e.spool, prefetch)
	must(t, os.WriteFile(e.cfg, []byte(cfg), 0o644))
	return e
}

// repo opens the env's repository in-process with the identity.
func (e binEnv) repo(t *testing.T) *repo.Repo {
	t.Helper()
	return fsRepo(t, e.repoDir, codecFor(t, e.keys, true))
}

// run runs the binary (as the PostgreSQL OS user when asUser) and returns its exit code.
func (e binEnv) run(t *testing.T, asUser bool, args ...string) (int, string, time.Duration) {
	t.Helper()
	cmd := exec.Command(e.bin, append([]string{"--config", e.cfg}, args...)...)
	if asUser && e.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), elapsed
	}
	if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return 0, out.String(), elapsed
}

// pushFake pushes fake segments 1..n of timeline 1 (1 MiB each) and returns their names
// and contents.
func pushFake(t *testing.T, r *repo.Repo, n int) ([]string, [][]byte) {
	t.Helper()
	pgdata := fakePGData(t, testSysid)
	var names []string
	var datas [][]byte
	for no := uint64(1); no <= uint64(n); no++ {
		name, data := addSegment(t, pgdata, testSysid, Segment{1, no}, false)
		must(t, Push(context.Background(), r, filepath.Join(pgdata, "pg_wal", name), PushOptions{DataDir: pgdata, Parallel: -1}))
		names, datas = append(names, name), append(datas, data)
	}
	return names, datas
}

func TestFetchMissingSegmentIsExitOne(t *testing.T) {
	e := newBinEnv(t, 0)
	e.repo(t)
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	for _, name := range []string{"000000010000000000000009", "00000002.history"} {
		code, out, elapsed := e.run(t, false, "wal", "fetch", name, dest)
		if code != 1 {
			t.Fatalf("fetch of missing %s: exit %d, want 1\n%s", name, code, out)
		}
		t.Logf("exit %d after %v: %s", code, elapsed, out)
		if elapsed > 2*time.Second {
			t.Errorf("fetch of missing %s took %v, want < 2 s", name, elapsed)
		}
		if !strings.Contains(out, name) || !strings.Contains(out, "not in the archive") {
			t.Errorf("message does not say what is missing: %s", out)
		}
		if _, err := os.Stat(dest); !os.IsNotExist(err) {
			t.Errorf("dest exists after a missing fetch: %v", err)
		}
	}
}

func TestFetchStorageErrorIsFatalExitCode(t *testing.T) {
	e := newBinEnv(t, 0)
	r := e.repo(t)
	names, _ := pushFake(t, r, 2)
	destDir := pgtest.MkdirOwned(t, e.cred, "pgharbor-wal-dest-")
	dest := filepath.Join(destDir, "RECOVERYXLOG")

	t.Run("damaged object", func(t *testing.T) {
		p, _ := ObjectPath(names[0])
		stored := filepath.Join(e.repoDir, "test", p)
		b, err := os.ReadFile(stored)
		must(t, err)
		b[len(b)/2] ^= 0x40
		must(t, os.WriteFile(stored, b, 0o644))
		code, out, _ := e.run(t, false, "wal", "fetch", names[0], dest)
		t.Logf("exit %d: %s", code, out)
		if code != 126 || !strings.Contains(out, stored) || !strings.Contains(out, "corrupt") {
			t.Fatalf("damaged object: exit %d, want 126 naming %s as corrupt\n%s", code, stored, out)
		}
		if _, err := os.Stat(dest); !os.IsNotExist(err) {
			t.Errorf("dest written from a damaged object: %v", err)
		}
	})
	t.Run("unreadable repository", func(t *testing.T) {
		if os.Geteuid() == 0 && e.cred == nil {
			t.Skip("needs the postgres OS user to run the binary without root's permissions")
		}
		must(t, os.Chmod(e.repoDir, 0))
		t.Cleanup(func() { os.Chmod(e.repoDir, 0o755) })
		code, out, _ := e.run(t, true, "wal", "fetch", names[1], dest)
		t.Logf("exit %d: %s", code, out)
		if code != 126 || !strings.Contains(out, "permission denied") {
			t.Fatalf("unreadable repository: exit %d, want 126 with the cause\n%s", code, out)
		}
	})
}

func TestFetchWrongIdentityIsClearError(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	dir := t.TempDir()
	w := fsRepo(t, dir, codecFor(t, k, false))
	names, _ := pushFake(t, w, 1)
	wrong, err := repo.New(w.Backend(), codecFor(t, newKeys(t), true), "test")
	must(t, err)
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	err = Fetch(ctx, wrong, names[0], dest, FetchOptions{})
	if !errors.Is(err, codec.ErrWrongKey) || errors.Is(err, ErrSegmentMissing) {
		t.Fatalf("wrong identity: %v, want ErrWrongKey", err)
	}
	if !strings.Contains(err.Error(), names[0]) {
		t.Errorf("message does not name the object: %v", err)
	}
	noKey, err := repo.New(w.Backend(), codecFor(t, k, false), "test")
	must(t, err)
	if err := Fetch(ctx, noKey, names[0], dest, FetchOptions{}); !errors.Is(err, codec.ErrNoIdentity) {
		t.Fatalf("no identity: %v, want ErrNoIdentity", err)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Errorf("dest exists: %v", err)
	}
}

func TestPrefetch(t *testing.T) {
	e := newBinEnv(t, 3)
	r := e.repo(t)
	names, datas := pushFake(t, r, 6)
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	start := time.Now()
	if code, out, _ := e.run(t, false, "wal", "fetch", names[0], dest); code != 0 {
		t.Fatalf("fetch: exit %d\n%s", code, out)
	}
	got, _ := os.ReadFile(dest)
	if !bytes.Equal(got, datas[0]) {
		t.Fatal("fetched bytes differ")
	}
	var pre string
	waitFor(t, 20*time.Second, "segments 2-4 prefetched", func() bool {
		dirs, _ := filepath.Glob(filepath.Join(e.spool, "test-*", "prefetch"))
		if len(dirs) != 1 {
			return false
		}
		pre = dirs[0]
		for _, n := range names[1:4] {
			if _, err := os.Stat(filepath.Join(pre, n)); err != nil {
				return false
			}
		}
		return true
	})
	t.Logf("3 segments prefetched %v after the first fetch", time.Since(start))
	if _, err := os.Stat(filepath.Join(pre, names[4])); err == nil {
		t.Error("prefetched beyond the window")
	}
	// Prove the next fetch uses the spool: its object is gone from the repository.
	p, _ := ObjectPath(names[1])
	must(t, os.Remove(filepath.Join(e.repoDir, "test", p)))
	if code, out, _ := e.run(t, false, "wal", "fetch", names[1], dest); code != 0 {
		t.Fatalf("fetch of a prefetched segment: exit %d\n%s", code, out)
	}
	got, _ = os.ReadFile(dest)
	if !bytes.Equal(got, datas[1]) {
		t.Fatal("prefetched bytes differ")
	}
	if _, err := os.Stat(filepath.Join(pre, names[1])); !os.IsNotExist(err) {
		t.Errorf("prefetched file still in the spool: %v", err)
	}
	// The window moved: segment 5 follows.
	waitFor(t, 20*time.Second, "segment 5 prefetched", func() bool {
		_, err := os.Stat(filepath.Join(pre, names[4]))
		return err == nil
	})
	waitFor(t, 20*time.Second, "prefetcher exits", func() bool {
		l, err := tryLock(pre)
		if l != nil {
			l.Close()
		}
		return err == nil && l != nil
	})
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPushCommandExitCodes(t *testing.T) {
	e := newBinEnv(t, 0)
	e.repo(t)
	pgdata := fakePGData(t, testSysid)
	name, _ := addSegment(t, pgdata, testSysid, Segment{1, 1}, true)
	for i := range 2 {
		if code, out, _ := e.run(t, false, "wal", "push", "--pgdata", pgdata, "pg_wal/"+name); code != 0 {
			t.Fatalf("push #%d: exit %d\n%s", i+1, code, out)
		}
	}
	must(t, os.WriteFile(filepath.Join(pgdata, "pg_wal", name), fakeSegment(testSysid, Segment{1, 1}, testSegSize, 7), 0o600))
	code, out, _ := e.run(t, false, "wal", "push", "--pgdata", pgdata, "pg_wal/"+name)
	t.Logf("exit %d: %s", code, out)
	if code != 1 || !strings.Contains(out, "already archived") || !strings.Contains(out, name) {
		t.Fatalf("push of different bytes: exit %d, want 1 with a clear message\n%s", code, out)
	}
}

func TestPrefetchInProcessFollowsTheWindow(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	r := fsRepo(t, t.TempDir(), codecFor(t, k, true))
	names, datas := pushFake(t, r, 8)
	spool := t.TempDir()
	var wg sync.WaitGroup
	var started atomic.Int32
	opts := FetchOptions{SpoolDir: spool, Prefetch: 2, StartPrefetcher: func(root, _ string) error {
		started.Add(1)
		wg.Go(func() {
			if err := Prefetch(ctx, r, PrefetchOptions{SpoolDir: root}); err != nil {
				t.Errorf("prefetch: %v", err)
			}
		})
		return nil
	}}
	dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
	for i, name := range names[:6] {
		must(t, Fetch(ctx, r, name, dest, opts))
		got, err := os.ReadFile(dest)
		must(t, err)
		if !bytes.Equal(got, datas[i]) {
			t.Fatalf("%s: bytes differ", name)
		}
		if i == 2 {
			wg.Wait() // let the spool fill up: the next fetches are served from it
			p, _ := ObjectPath(names[3])
			must(t, r.Backend().Delete(ctx, r.Key(p)))
		}
	}
	wg.Wait()
	if started.Load() == 0 {
		t.Fatal("no prefetcher started")
	}
	// The window after segment 6 is 7 and 8; nothing older stays in the spool.
	entries, err := os.ReadDir(filepath.Join(spool, SpoolID(r.Backend().Location(), r.Cluster()), "prefetch"))
	must(t, err)
	var segs []string
	for _, e := range entries {
		if IsSegmentName(e.Name()) {
			segs = append(segs, e.Name())
		}
	}
	if !slices.Equal(segs, names[6:8]) {
		t.Fatalf("spool holds %v, want %v", segs, names[6:8])
	}
}
