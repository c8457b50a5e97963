package fs_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/fs"
	"github.com/pgharbor/pgharbor/storage/storagetest"
)

func TestConformance(t *testing.T) {
	t.Run("unnamed", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Backend {
			b, err := fs.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if runtime.GOOS == "linux" && !fs.WritesUnnamed(b) {
				t.Fatal("Put does not write unnamed files (O_TMPFILE) in a temp dir on Linux")
			}
			return b
		})
	})
	t.Run("named", func(t *testing.T) {
		storagetest.Run(t, func(t *testing.T) storage.Backend {
			b, err := fs.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			fs.NamedTempOnly(b)
			return b
		})
	})
}

// A writer killed in the middle of a Put leaves nothing in the repository where files can
// be unnamed; where they cannot, it leaves one temporary file, which RemoveTemp removes once
// it is older than the cutoff.
func TestKilledPutLeavesNothing(t *testing.T) {
	if dir := os.Getenv("PGHARBOR_FS_KILL_DIR"); dir != "" {
		b, err := fs.New(dir)
		if err != nil {
			t.Fatal(err)
		}
		if os.Getenv("PGHARBOR_FS_KILL_NAMED") != "" {
			fs.NamedTempOnly(b)
		}
		body := io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), stallReader{})
		err = b.Put(context.Background(), "backups/x/data/00000001", body, storage.PutOptions{})
		t.Fatalf("Put returned: %v", err)
	}
	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprintf("named=%v", named), func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run", "^TestKilledPutLeavesNothing$")
			cmd.Env = append(os.Environ(), "PGHARBOR_FS_KILL_DIR="+dir)
			if named {
				cmd.Env = append(cmd.Env, "PGHARBOR_FS_KILL_NAMED=1")
			}
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil || line != "STALLED\n" {
				cmd.Process.Kill()
				t.Fatalf("the writer said %q, %v", line, err)
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()

			var left []string
			var size int64
			filepath.WalkDir(dir, func(path string, d iofs.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					left = append(left, path)
					if info, err := d.Info(); err == nil {
						size += info.Size()
					}
				}
				return err
			})
			b, err := fs.New(dir)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if got, err := b.RemoveTemp(ctx, time.Now().Add(-time.Hour)); err != nil || got.Count != 0 {
				t.Fatalf("RemoveTemp of files older than an hour: %+v, %v", got, err)
			}
			got, err := b.RemoveTemp(ctx, time.Now().Add(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			if !named {
				if runtime.GOOS == "linux" && len(left) != 0 {
					t.Fatalf("a killed writer left %v", left)
				}
				return
			}
			if len(left) != 1 || !strings.HasPrefix(filepath.Base(left[0]), ".pgharbor-tmp-") || size != 1<<20 {
				t.Fatalf("a killed writer without unnamed files left %v (%d bytes), want one temporary file of 1 MiB", left, size)
			}
			if got.Count != 1 || got.Bytes != 1<<20 {
				t.Fatalf("RemoveTemp removed %+v, want 1 file of 1 MiB", got)
			}
			if _, err := os.Stat(left[0]); !os.IsNotExist(err) {
				t.Fatalf("%s is still there: %v", left[0], err)
			}
		})
	}
}

// stallReader says STALLED on stdout and blocks: the body of a Put whose writer is killed.
type stallReader struct{}

func (stallReader) Read([]byte) (int, error) {
	fmt.Println("STALLED")
	select {}
}

// RemoveTemp leaves objects and fresh temporary files alone.
func TestRemoveTempKeepsObjectsAndLiveWrites(t *testing.T) {
	dir, b := withLeftovers(t, "wal/.pgharbor-tmp-0ld", ".pgharbor-tmp-fresh")
	ctx := context.Background()
	old := filepath.Join(dir, "wal", ".pgharbor-tmp-0ld")
	fresh := filepath.Join(dir, ".pgharbor-tmp-fresh")
	past := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	got, err := b.RemoveTemp(ctx, time.Now().Add(-time.Hour))
	if err != nil || got != (storage.TempRemoved{Count: 1, Bytes: 4}) {
		t.Fatalf("RemoveTemp: %+v, %v", got, err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("old temporary file still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatalf("fresh temporary file removed: %v", err)
	}
	if _, err := b.Stat(ctx, "wal/seg"); err != nil {
		t.Fatalf("object removed: %v", err)
	}
}

// withLeftovers is a backend in a new directory holding the object wal/seg and, at each of
// rel (slash-separated, under the root), a 4-byte temporary file as a killed writer leaves one
// where files cannot be unnamed.
func withLeftovers(t *testing.T, rel ...string) (string, *fs.Backend) {
	t.Helper()
	dir := t.TempDir()
	b, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(context.Background(), "wal/seg", bytes.NewReader([]byte("x")), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range rel {
		if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(r)), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, b
}

func TestListIgnoresLeftoverTempFiles(t *testing.T) {
	_, b := withLeftovers(t, "wal/.pgharbor-tmp-deadbeef")
	ctx := context.Background()
	var keys []string
	if err := b.List(ctx, "", func(i storage.ObjectInfo) error { keys = append(keys, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, ",") != "wal/seg" {
		t.Fatalf("list shows %v", keys)
	}
}

func TestListOrderIsLexicalAcrossDirectories(t *testing.T) {
	b, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, k := range []string{"a/b/c", "a/b-x", "a/b0"} {
		if err := b.Put(ctx, k, bytes.NewReader(nil), storage.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	_ = b.List(ctx, "a/", func(i storage.ObjectInfo) error { keys = append(keys, i.Key); return nil })
	if got := strings.Join(keys, ","); got != "a/b-x,a/b/c,a/b0" {
		t.Fatalf("order %s", got)
	}
}

func TestUnwritableRootIsAClearError(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := fs.New(filepath.Join(f, "repo"))
	if err == nil || !strings.Contains(err.Error(), "create repository directory") || !storage.IsPermanent(err) {
		t.Fatalf("got %v", err)
	}
}

// TestIfNotExistsAcrossProcesses starts several processes (this test binary again) that put
// the same key with IfNotExists at once: link(2) lets exactly one win.
func TestIfNotExistsAcrossProcesses(t *testing.T) {
	if dir := os.Getenv("PGHARBOR_FS_RACE_DIR"); dir != "" {
		b, err := fs.New(dir)
		if err != nil {
			t.Fatal(err)
		}
		body := []byte("writer " + os.Getenv("PGHARBOR_FS_RACE_ID"))
		err = b.Put(context.Background(), "race/key", bytes.NewReader(body), storage.PutOptions{IfNotExists: true})
		switch {
		case err == nil:
			fmt.Println("RESULT won")
		case errors.Is(err, storage.ErrExists):
			fmt.Println("RESULT exists")
		default:
			t.Fatal(err)
		}
		return
	}
	dir := t.TempDir()
	const n = 8
	for round := 0; round < 3; round++ {
		os.RemoveAll(filepath.Join(dir, "race"))
		var cmds []*exec.Cmd
		var outs []*bytes.Buffer
		for i := 0; i < n; i++ {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestIfNotExistsAcrossProcesses$")
			cmd.Env = append(os.Environ(), "PGHARBOR_FS_RACE_DIR="+dir, fmt.Sprintf("PGHARBOR_FS_RACE_ID=%d", i))
			out := new(bytes.Buffer)
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds, outs = append(cmds, cmd), append(outs, out)
		}
		won := 0
		for i, cmd := range cmds {
			if err := cmd.Wait(); err != nil {
				t.Fatalf("writer %d: %v\n%s", i, err, outs[i])
			}
			if strings.Contains(outs[i].String(), "RESULT won") {
				won++
			} else if !strings.Contains(outs[i].String(), "RESULT exists") {
				t.Fatalf("writer %d said %s", i, outs[i])
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d processes won, want exactly 1", round, won)
		}
	}
}

// Permission denied is not retried: a repository written by another OS user (root's files,
// the archiver running as postgres) stays unreadable, and retries only delay the error.
func TestPermissionDeniedIsPermanent(t *testing.T) {
	err := fmt.Errorf("get main/pgharbor.json: %w", &os.PathError{Op: "open", Path: "/repo/main/pgharbor.json", Err: os.ErrPermission})
	if !storage.IsPermanent(err) {
		t.Fatalf("%v is retried", err)
	}
	if storage.IsPermanent(fmt.Errorf("put: %w", errors.New("connection reset"))) {
		t.Fatal("a transient error counts as permanent")
	}
}

// TestNewRepositoryDirTakesItsParentsOwner: run as root, a repository directory created
// under another user's directory belongs to that user (archive_command, running as that
// user, writes into it later).
func TestNewRepositoryDirTakesItsParentsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	// Both ways of writing a file, and both ways of naming it (rename, and a link that must
	// not replace an object).
	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprintf("named=%v", named), func(t *testing.T) {
			parent := t.TempDir()
			const uid, gid = 4242, 4343
			if err := os.Chown(parent, uid, gid); err != nil {
				t.Fatal(err)
			}
			b, err := fs.New(filepath.Join(parent, "repo", "sub"))
			if err != nil {
				t.Fatal(err)
			}
			if named {
				fs.NamedTempOnly(b)
			}
			if err := b.Put(context.Background(), "main/x", bytes.NewReader([]byte("x")), storage.PutOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := b.Put(context.Background(), "main/y", bytes.NewReader([]byte("y")), storage.PutOptions{IfNotExists: true}); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"repo", "repo/sub", "repo/sub/main", "repo/sub/main/x", "repo/sub/main/y"} {
				st, err := os.Stat(filepath.Join(parent, p))
				if err != nil {
					t.Fatal(err)
				}
				if sys := st.Sys().(*syscall.Stat_t); sys.Uid != uid || sys.Gid != gid {
					t.Errorf("%s owned by %d:%d, want %d:%d", p, sys.Uid, sys.Gid, uid, gid)
				}
			}
		})
	}
}
