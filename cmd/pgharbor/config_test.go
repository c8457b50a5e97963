package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/failover"
	"github.com/pgharbor/pgharbor/pool"
)

func TestExampleConfigParses(t *testing.T) {
	cfg, err := LoadConfig("../../docs/pgharbor.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Repo.URL != "s3://acme-backups/postgres" || cfg.Backup.LockTimeout != 2*time.Minute || cfg.WAL.FetchPrefetch != 8 || len(cfg.Encryption.Recipients) != 1 ||
		cfg.Backup.Method != "auto" || cfg.Compression.WALLevel != 1 {
		t.Fatalf("parsed %+v", cfg)
	}
	var pc pool.Config
	if err := cfg.Section("pool", &pc); err != nil {
		t.Fatalf("pool section: %v", err)
	}
	if pc.Listen != "0.0.0.0:6432" || len(pc.Cluster.Nodes) != 2 {
		t.Fatalf("pool section parsed as %+v", pc)
	}
	var fc failover.Config
	if err := cfg.Section("failover", &fc); err != nil {
		t.Fatalf("failover section: %v", err)
	}
	if _, err := failover.New(fc, pc.Cluster.Nodes, nil, nil); err != nil || fc.Retries != 1 || fc.Nodes["db2.internal:5432"].Priority != 10 {
		t.Fatalf("failover section %+v: %v", fc, err)
	}
}

func TestEnvironmentOverridesTheFile(t *testing.T) {
	t.Setenv("PGHARBOR_REPO_URL", "file:///elsewhere")
	t.Setenv("PGHARBOR_ENCRYPTION_RECIPIENTS", "age1a, age1b")
	t.Setenv("PGHARBOR_BACKUP_WORKERS", "7")
	t.Setenv("PGHARBOR_BACKUP_FAST_CHECKPOINT", "false")
	t.Setenv("PGHARBOR_BACKUP_LOCK_TIMEOUT", "90s")
	t.Setenv("PGHARBOR_BACKUP_METHOD", "stream")
	t.Setenv("PGHARBOR_COMPRESSION_WAL_LEVEL", "3")
	t.Setenv("PGHARBOR_COMPRESSION_ENCODER", "go")
	cfg, err := LoadConfig("../../docs/pgharbor.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Repo.URL != "file:///elsewhere" || strings.Join(cfg.Encryption.Recipients, "|") != "age1a|age1b" ||
		cfg.Backup.Workers != 7 || cfg.Backup.FastCheckpoint == nil || *cfg.Backup.FastCheckpoint || cfg.Backup.LockTimeout != 90*time.Second ||
		cfg.Backup.Method != "stream" || cfg.Compression.WALLevel != 3 || cfg.Compression.Encoder != "go" {
		t.Fatalf("env not applied: %+v", cfg)
	}
}

func TestUnknownKeysAreErrors(t *testing.T) {
	dir := t.TempDir()
	for _, text := range []string{"repo:\n  urll: x\n", "bogus:\n  a: 1\n", "backup:\n  workers: many\n"} {
		p := dir + "/c.yaml"
		os.WriteFile(p, []byte(text), 0o600)
		if _, err := LoadConfig(p); err == nil {
			t.Errorf("%q accepted", text)
		}
	}
	t.Setenv("PGHARBOR_BACKUP_WORKERS", "many")
	if _, err := LoadConfig(""); err == nil || !strings.Contains(err.Error(), "PGHARBOR_BACKUP_WORKERS") {
		t.Errorf("bad env value: %v", err)
	}
}

func TestRetentionSettingsFromFileAndEnvironment(t *testing.T) {
	p := t.TempDir() + "/c.yaml"
	os.WriteFile(p, []byte("retention:\n  full_count: 3\n  window: 7d\n  min_count: 2\n"), 0o600)
	t.Setenv("PGHARBOR_RETENTION_KEEP_YOUNGER_THAN", "36h")
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := cfg.Retention.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if pol.FullCount != 3 || pol.Window != 7*24*time.Hour || pol.KeepYoungerThan != 36*time.Hour || pol.MinCount != 2 {
		t.Fatalf("policy %+v", pol)
	}
	t.Setenv("PGHARBOR_RETENTION_WINDOW", "a week")
	cfg, _ = LoadConfig(p)
	if _, err := cfg.Retention.Policy(); err == nil || !strings.Contains(err.Error(), "retention.window") {
		t.Fatalf("bad window: %v", err)
	}
	if _, err := (RetentionConfig{MinCount: 2}).Policy(); err == nil || !strings.Contains(err.Error(), "no retention rule") {
		t.Fatalf("policy without rules: %v", err)
	}
}

func TestConfigHoldingSecretsMustBePrivate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pgharbor.yaml")
	if err := os.WriteFile(p, []byte("repo: {url: 'file:///x', cluster: main}\nencryption: {mode: passphrase, passphrase: hunter2}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a 0644 config holding a passphrase: %v, want a refusal saying the chmod", err)
	}
	os.Chmod(p, 0o600)
	if _, err := LoadConfig(p); err != nil {
		t.Fatalf("a 0600 config: %v", err)
	}
	// Without secrets a readable config is fine (archive_command's user must read it).
	if err := os.WriteFile(p, []byte("repo: {url: 'file:///x', cluster: main}\nencryption: {mode: age, recipients: [age1abc]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p); err != nil {
		t.Fatalf("a 0644 config without secrets: %v", err)
	}
}
