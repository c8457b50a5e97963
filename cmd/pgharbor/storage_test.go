package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// A passphrase cluster is opened only once `repo init` wrote its identity (after its data
// key): a command opening it before then could miss the key, find the identity a moment
// later and seal its objects with a scrypt each (a wal push racing repo init did).
func TestPassphraseClusterOpensOnlyOnceInitialised(t *testing.T) {
	ctx := context.Background()
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Repo.URL = "file://" + t.TempDir()
	cfg.Repo.Cluster = "main"
	cfg.Encryption.Mode = "passphrase"
	cfg.Encryption.Passphrase = "correct horse battery staple"
	a := &app{cfg: cfg, logger: slog.New(slog.NewTextHandler(io.Discard, nil)), stdout: io.Discard, stderr: io.Discard}

	if _, err := a.openRepo(ctx, false); !errors.Is(err, repo.ErrNotInitialized) {
		t.Fatalf("opening an uninitialised passphrase cluster: %v, want ErrNotInitialized", err)
	}
	r, err := a.openRepoInit(ctx, false, true)
	if err != nil {
		t.Fatalf("open for repo init: %v", err)
	}
	if err := ensureDataKey(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Init(ctx, repo.Identity{}); err != nil {
		t.Fatal(err)
	}
	r.Backend().Close()

	r, err = a.openRepo(ctx, false)
	if err != nil {
		t.Fatalf("opening the initialised cluster: %v", err)
	}
	defer r.Backend().Close()
	key, err := r.DataKey(ctx, false)
	if err != nil || key == "" {
		t.Fatalf("data key after init: %q, %v", key, err)
	}
}
