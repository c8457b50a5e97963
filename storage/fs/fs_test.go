package fs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/fs"
	"github.com/pgharbor/pgharbor/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, err := fs.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func TestListIgnoresLeftoverTempFiles(t *testing.T) {
	dir := t.TempDir()
	b, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Put(ctx, "wal/seg", bytes.NewReader([]byte("x")), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	// A crash between create and rename leaves a temp file behind.
	if err := os.WriteFile(filepath.Join(dir, "wal", ".pgharbor-tmp-deadbeef"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
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
	parent := t.TempDir()
	const uid, gid = 4242, 4343
	if err := os.Chown(parent, uid, gid); err != nil {
		t.Fatal(err)
	}
	b, err := fs.New(filepath.Join(parent, "repo", "sub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(context.Background(), "main/x", bytes.NewReader([]byte("x")), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"repo", "repo/sub", "repo/sub/main", "repo/sub/main/x"} {
		st, err := os.Stat(filepath.Join(parent, p))
		if err != nil {
			t.Fatal(err)
		}
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != uid || sys.Gid != gid {
			t.Errorf("%s owned by %d:%d, want %d:%d", p, sys.Uid, sys.Gid, uid, gid)
		}
	}
}
