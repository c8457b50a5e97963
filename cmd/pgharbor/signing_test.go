package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/codec"
)

func signingApp(t *testing.T) (*app, string, string) {
	t.Helper()
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	sk, vk, err := codec.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "signing.key")
	if err := os.WriteFile(keyFile, []byte(sk+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Repo.URL = "file://" + t.TempDir()
	cfg.Repo.Cluster = "main"
	return &app{cfg: cfg, logger: slog.New(slog.NewTextHandler(io.Discard, nil)), stdout: io.Discard, stderr: io.Discard}, keyFile, vk
}

func TestSigningKeyFileIsRefusedWhenOthersCanReadIt(t *testing.T) {
	a, keyFile, _ := signingApp(t)
	a.cfg.Encryption.Mode = "none"
	a.cfg.Repo.SigningKeyFile = keyFile
	if err := os.Chmod(keyFile, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := a.codecConfig(false); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable signing key: %v", err)
	}
	if err := os.Chmod(keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	cc, err := a.codecConfig(false)
	if err != nil || cc.SigningKey == "" {
		t.Fatalf("codecConfig: %v", err)
	}
}

// A passphrase cluster initialised with the write key has a signed data key, so readers
// with the verify key open it; the restore_command they write carries the verify key.
func TestPassphraseClusterWithSigningOpensForVerifyingReaders(t *testing.T) {
	ctx := context.Background()
	a, keyFile, vk := signingApp(t)
	a.cfg.Encryption.Mode = "passphrase"
	a.cfg.Encryption.Passphrase = "correct horse battery staple"
	a.cfg.Repo.SigningKeyFile = keyFile
	r, err := a.openRepoInit(ctx, false, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := ensureDataKey(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Init(ctx, repo.Identity{}); err != nil {
		t.Fatal(err)
	}
	r.Backend().Close()

	a.cfg.Repo.SigningKeyFile = ""
	a.cfg.Repo.VerifyKeys = []string{vk}
	r, err = a.openRepo(ctx, true)
	if err != nil {
		t.Fatalf("reader with the verify key: %v", err)
	}
	r.Backend().Close()
	cmd, err := a.restoreCommand()
	if err != nil || !strings.Contains(cmd, "--verify-key "+vk) {
		t.Fatalf("restore_command %q, %v: want the verify key in it", cmd, err)
	}
}

func TestSpoolIDSeparatesFetchesThatCheckSignatures(t *testing.T) {
	a, _, vk := signingApp(t)
	plain := a.spoolID()
	a.cfg.Repo.VerifyKeys = []string{vk}
	if verified := a.spoolID(); verified == plain {
		t.Fatalf("spool %q is shared by fetches with and without verify keys", plain)
	}
}

// Compression levels out of range, or set with compression off, are refused naming the key.
func TestCompressionLevelErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		typ          string
		level, dense int
		want         string
	}{
		{"zstd", 30, 0, "compression.level 30: want a zstd level 1..22"},
		{"zstd", 3, 23, "compression.dense_level 23: want a zstd level 1..22"},
		{"zstd", 0, -1, "compression.dense_level -1: want a zstd level 1..22"},
		{"none", 0, 2, "compression.dense_level 2 is set but compression.type is none"},
		{"none", 3, 0, "compression.level 3 is set but compression.type is none"},
	} {
		a, _, _ := signingApp(t)
		a.cfg.Encryption.Mode = "none"
		a.cfg.Compression.Type, a.cfg.Compression.Level, a.cfg.Compression.DenseLevel = tc.typ, tc.level, tc.dense
		if _, err := a.codecConfig(false); err == nil || err.Error() != tc.want {
			t.Errorf("%+v: error %v, want %q", tc, err, tc.want)
		}
	}
	a, _, _ := signingApp(t)
	a.cfg.Encryption.Mode = "none"
	cc, err := a.codecConfig(false)
	if err != nil || cc.DenseLevel != defaultDenseLevel {
		t.Fatalf("defaults: dense level %d, %v; want %d", cc.DenseLevel, err, defaultDenseLevel)
	}
	a.cfg.Compression.Type = "none"
	if cc, err := a.codecConfig(false); err != nil || cc.DenseLevel != 0 {
		t.Fatalf("compression none: dense level %d, %v; want 0", cc.DenseLevel, err)
	}
}
