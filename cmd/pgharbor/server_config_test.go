package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/server"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pgharbor.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const fleetConfig = `
repo:
  url: s3://fleet/pg
encryption:
  mode: age
  recipients: [age1top]
backup:
  workers: 3
  fast_checkpoint: false
schedules:
  backup: "0 1 * * *"
  timezone: Europe/Paris
readiness:
  max_backup_age: 26h
wal:
  spool_dir: /var/spool/pgharbor
retention:
  full_count: 7
server:
  listen: 127.0.0.1:9999
clusters:
  - name: billing
    repo: {cluster: billing}
    postgres: {conn: "host=db1 user=backup"}
    backup: {workers: 5}
  - name: shop
    repo: {cluster: shop, url: "file:///srv/shop"}
    postgres: {conn: "host=db2 user=backup"}
    encryption: {recipients: [age1shop1, age1shop2]}
    backup: {fast_checkpoint: true}
    schedules: {backup: "@every 6h", verify: "@weekly", timezone: UTC}
    readiness: {max_wal_age: 10m}
    retention: {window: 14d}
`

func TestClustersInheritTheTopLevelAndOverrideWhatTheySet(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, fleetConfig))
	if err != nil {
		t.Fatal(err)
	}
	list, err := cfg.Clusters()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "billing" || list[1].Name != "shop" {
		t.Fatalf("clusters %+v", list)
	}
	b, s := list[0].Cfg, list[1].Cfg
	// billing: its own name, conn and workers; the rest from the top level.
	if b.Repo.URL != "s3://fleet/pg" || b.Repo.Cluster != "billing" || b.Postgres.Conn != "host=db1 user=backup" || b.Backup.Workers != 5 ||
		*b.Backup.FastCheckpoint || b.Encryption.Mode != "age" || strings.Join(b.Encryption.Recipients, ",") != "age1top" ||
		b.Schedules.Backup != "0 1 * * *" || b.Schedules.Timezone != "Europe/Paris" || b.Readiness.MaxBackupAge != 26*time.Hour {
		t.Errorf("billing merged as %+v", b)
	}
	// shop: lists replace, scalars replace, untouched keys inherit.
	if s.Repo.URL != "file:///srv/shop" || strings.Join(s.Encryption.Recipients, ",") != "age1shop1,age1shop2" || s.Encryption.Mode != "age" ||
		!*s.Backup.FastCheckpoint || s.Backup.Workers != 3 || s.Schedules.Backup != "@every 6h" || s.Schedules.Verify != "@weekly" ||
		s.Schedules.Timezone != "UTC" || s.Readiness.MaxWALAge != 10*time.Minute || s.Readiness.MaxBackupAge != 26*time.Hour {
		t.Errorf("shop merged as %+v", s)
	}
	// An inherited spool directory is split per cluster.
	if b.WAL.SpoolDir != "/var/spool/pgharbor/billing" || s.WAL.SpoolDir != "/var/spool/pgharbor/shop" || cfg.WAL.SpoolDir != "/var/spool/pgharbor" {
		t.Errorf("spool dirs %q %q (top %q)", b.WAL.SpoolDir, s.WAL.SpoolDir, cfg.WAL.SpoolDir)
	}
	// A cluster's values never leak into the top level or another cluster.
	if *cfg.Backup.FastCheckpoint || cfg.Backup.Workers != 3 || len(cfg.Encryption.Recipients) != 1 || cfg.Repo.Cluster != "" {
		t.Errorf("top level changed by the clusters: %+v", cfg)
	}
	// Sections merge key by key.
	if b.Retention.FullCount != 7 || b.Retention.Window != "" || s.Retention.FullCount != 7 || s.Retention.Window != "14d" {
		t.Errorf("retention merged as %+v and %+v", b.Retention, s.Retention)
	}
	if !b.hasSection("retention") || cfg.Server.Listen != "127.0.0.1:9999" {
		t.Errorf("sections: retention %v, listen %q", b.hasSection("retention"), cfg.Server.Listen)
	}
}

func TestSingleClusterFileIsOneCluster(t *testing.T) {
	cfg, err := LoadConfig("../../docs/pgharbor.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	list, err := cfg.Clusters()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Cfg != cfg || list[0].Name != cfg.Repo.Cluster || list[0].Key != "" {
		t.Fatalf("single-cluster file gives %+v", list)
	}
	if cc, err := cfg.selectCluster(""); err != nil || cc.Cfg != cfg {
		t.Fatalf("select: %v", err)
	}
}

func TestSelectingAClusterForACommand(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, fleetConfig))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.selectCluster(""); err == nil || !strings.Contains(err.Error(), "2 clusters (billing, shop)") || !strings.Contains(err.Error(), "--cluster-name") {
		t.Errorf("ambiguous selection: %v", err)
	}
	if _, err := cfg.selectCluster("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown name: %v", err)
	}
	cc, err := cfg.selectCluster("shop")
	if err != nil || cc.Cfg.Repo.Cluster != "shop" {
		t.Fatalf("select shop: %+v %v", cc, err)
	}
}

func TestBadClusterEntriesAreRefusedWithTheirPlace(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"clusters:\n  - name: a\n    repo: {cluster: a, urll: x}\n", "clusters[0].repo"},
		{"clusters:\n  - name: a\n    bogus: 1\n", `clusters[0]: unknown key "bogus"`},
		{"clusters:\n  - name: a\n    server: {listen: x}\n", "server is a top-level setting"},
		{"clusters:\n  - repo: {cluster: a}\n  - name: a\n    repo: {cluster: b}\n", `clusters[1]: name "a" is also the name of clusters[0]`},
		{"repo: {url: file:///r}\nclusters:\n  - name: a\n    repo: {cluster: x}\n  - name: b\n    repo: {cluster: x}\n", "repository file:///r cluster x is also clusters[0]'s"},
		{"clusters:\n  - name: 'a b'\n", `name "a b"`},
		{"clusters:\n  - name: a\n    wal: {spool_dir: /s}\n  - name: b\n    wal: {spool_dir: /s}\n", "wal.spool_dir /s is also clusters[0]'s"},
		{"clusters:\n  - postgres: {conn: x}\n", "no name and no repo.cluster"},
		{"clusters: {a: 1}\n", "want a list"},
	} {
		cfg, err := LoadConfig(writeConfig(t, tc.text))
		if err == nil {
			_, err = cfg.Clusters()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.text, err, tc.want)
		}
	}
}

func TestSchedulesAreCheckedWithTheKeyAndTheParsersReason(t *testing.T) {
	a := &app{logger: slog.New(slog.DiscardHandler)}
	for _, tc := range []struct{ schedules, want string }{
		{`{backup: "61 * * * *"}`, `clusters[0] (a).schedules.backup "61 * * * *": end of range (61) above maximum (59)`},
		{`{verify: "@fortnightly"}`, `clusters[0] (a).schedules.verify "@fortnightly": unrecognized descriptor`},
		{`{expire: "* * *"}`, `clusters[0] (a).schedules.expire "* * *": expected exactly 5 fields`},
		{`{backup: "@daily", timezone: Mars/Olympus}`, `clusters[0] (a).schedules.timezone "Mars/Olympus"`},
		{`{backup: "CRON_TZ=Nowhere/None 0 1 * * *"}`, `schedules.backup "CRON_TZ=Nowhere/None 0 1 * * *": provided bad location Nowhere/None`},
	} {
		cfg, err := LoadConfig(writeConfig(t, "encryption: {mode: none}\nclusters:\n  - name: a\n    schedules: "+tc.schedules+"\n"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.serverClusters(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.schedules, err, tc.want)
		}
	}
	// Good ones, with the time zone applied to expressions that do not name their own.
	cfg, err := LoadConfig(writeConfig(t, `repo: {cluster: a}
schedules: {backup: "30 2 * * *", verify: "@every 6h", expire: "CRON_TZ=UTC @daily", timezone: America/New_York}
`))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := a.serverClusters(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := cl[0].Schedules
	if s[server.JobBackup] != "CRON_TZ=America/New_York 30 2 * * *" || s[server.JobVerify] != "CRON_TZ=America/New_York @every 6h" || s[server.JobExpire] != "CRON_TZ=UTC @daily" {
		t.Fatalf("schedules %v", s)
	}
	sched, _ := server.ParseSchedule(s[server.JobBackup])
	ny, _ := time.LoadLocation("America/New_York")
	next := sched.Next(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)).In(ny)
	if next.Hour() != 2 || next.Minute() != 30 {
		t.Fatalf("backup at 30 2 * * * New York time runs at %s", next)
	}
	if !cl[0].CatchUpBackup || cl[0].ExpireAfterBackup {
		t.Fatalf("catch-up %v (default true), expire after backup %v without retention", cl[0].CatchUpBackup, cl[0].ExpireAfterBackup)
	}
}

// TestServerDocExampleParses keeps the fleet example of docs/server.md in step with the code.
func TestServerDocExampleParses(t *testing.T) {
	doc, err := os.ReadFile("../../docs/server.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n# /etc/pgharbor/pgharbor.yaml\n")
	if !ok {
		t.Fatal("docs/server.md has no fleet example")
	}
	example, _, _ := strings.Cut(rest, "```")
	cfg, err := LoadConfig(writeConfig(t, example))
	if err != nil {
		t.Fatal(err)
	}
	a := &app{logger: slog.New(slog.DiscardHandler)}
	cl, err := a.serverClusters(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(cl) != 2 || cl[1].Name != "shop" || cl[1].Schedules[server.JobBackup] != "CRON_TZ=Europe/Paris @every 6h" ||
		cl[1].Schedules[server.JobVerify] != "CRON_TZ=Europe/Paris 0 4 * * 0" || cl[1].MaxBackupAge != 7*time.Hour || cl[0].MaxWALAge != 15*time.Minute {
		t.Fatalf("example parsed as %+v", cl)
	}
	if cfg.Server.Listen != "127.0.0.1:9187" || cfg.Server.ShutdownGrace != 10*time.Minute {
		t.Fatalf("server section %+v", cfg.Server)
	}
}
