package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The walk leaves out what PostgreSQL's BASE_BACKUP leaves out, keeps what it keeps, and
// holds pg_control back (the caller reads it last).
func TestWalkLeavesOutWhatBaseBackupLeavesOut(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"PG_VERSION": "15\n", "postgresql.auto.conf": "", "postgresql.auto.conf.tmp": "x",
		"postmaster.pid": "1", "postmaster.opts": "x", "backup_label": "old", "tablespace_map": "old",
		"backup_manifest": "old", "current_logfiles.tmp": "x",
		"global/pg_control": "c", "global/1262": "rel", "global/pg_internal.init": "cache",
		"base/1/1259": "rel", "base/1/1259_fsm": "fsm", "base/1/1259.1": "seg",
		"base/1/16384": "unlogged", "base/1/16384_init": "init", "base/1/16384_vm": "vm", "base/1/16384.2": "seg",
		"base/1/t3_16390": "temp", "base/1/t3_16390_fsm": "temp", "base/1/pg_internal.init.123": "cache",
		"base/pgsql_tmp/pgsql_tmp1.0": "spill", "base/1/PG_VERSION": "15\n",
		"pg_wal/000000010000000000000001": "wal", "pg_wal/archive_status/000000010000000000000001.done": "",
		"pg_stat_tmp/global.stat": "x", "pg_replslot/slot/state": "x", "pg_subtrans/0000": "x",
		"pg_notify/0000": "x", "pg_serial/0000": "x", "pg_snapshots/x": "x", "pg_dynshmem/x": "x",
		"pg_stat/pgstat.stat": "kept", "pg_xact/0000": "kept",
		"16384_init": "not in a database directory, kept", "16384": "kept too",
	}
	for p, c := range files {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "pg_tblspc"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/srv/ts1", filepath.Join(root, "pg_tblspc", "16400")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "stray-link")); err != nil {
		t.Fatal(err)
	}
	w := &walker{skipDirs: map[string]bool{}, log: slog.New(slog.DiscardHandler)}
	if err := w.walk(0, root, "", false); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range w.entries {
		got = append(got, e.Type+" "+e.Path)
		if e.Type == "symlink" && e.Link != "/srv/ts1" {
			t.Errorf("link %s -> %s", e.Path, e.Link)
		}
		if e.Type == "file" && e.Size != int64(len(files[e.Path])) {
			t.Errorf("%s: size %d, want %d", e.Path, e.Size, len(files[e.Path]))
		}
	}
	want := []string{
		"file 16384", "file 16384_init", "file PG_VERSION",
		"dir base", "dir base/1", "file base/1/1259", "file base/1/1259.1", "file base/1/1259_fsm",
		"file base/1/16384_init", "file base/1/PG_VERSION",
		"dir global", "file global/1262",
		"dir pg_dynshmem", "dir pg_notify", "dir pg_replslot", "dir pg_serial", "dir pg_snapshots",
		"dir pg_stat", "file pg_stat/pgstat.stat", "dir pg_stat_tmp", "dir pg_subtrans",
		"dir pg_tblspc", "symlink pg_tblspc/16400",
		"dir pg_wal", "dir pg_wal/archive_status",
		"dir pg_xact", "file pg_xact/0000",
		"file postgresql.auto.conf",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("walk listed\n%q\nwant\n%q", got, want)
	}
}

// The manifest for pg_verifybackup ends with the SHA-256 of everything before its last line.
func TestPGManifestChecksumCoversEverythingBeforeIt(t *testing.T) {
	m := buildPGManifest([]File{
		{Path: "backup_label", Type: "file", Size: 3, CRC: 0x01020304},
		{Path: "base", Type: "dir"},
		{Tablespace: 16400, Path: "PG_15_202209061/5/16385", Type: "file", Size: 8192, CRC: 7},
	}, 2, "0/2000028", "0/2000100")
	s := string(m)
	for _, want := range []string{
		`{ "Path": "backup_label", "Size": 3, "Last-Modified": "0001-01-01 00:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "04030201" }`,
		`"Path": "pg_tblspc/16400/PG_15_202209061/5/16385"`,
		`{ "Timeline": 2, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }`,
	} {
		if !strings.Contains(s, want) {
			t.Fatalf("manifest lacks %s:\n%s", want, s)
		}
	}
	if strings.Contains(s, `"base"`) {
		t.Fatalf("a directory is listed:\n%s", s)
	}
	i := strings.Index(s, `"Manifest-Checksum": "`)
	if i < 0 || !strings.HasSuffix(s, "\"}\n") {
		t.Fatalf("no checksum line:\n%s", s)
	}
	sum := sha256.Sum256(m[:i])
	if got := s[i+len(`"Manifest-Checksum": "`) : len(s)-3]; got != hex.EncodeToString(sum[:]) {
		t.Fatalf("manifest checksum %s, want %x", got, sum)
	}
}
