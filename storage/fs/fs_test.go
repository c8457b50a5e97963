package fs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
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
