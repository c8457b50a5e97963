package replica

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/restore"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/mem"
	"github.com/pgharbor/pgharbor/wal"
)

const stageSegSize = 1 << 20

// stagePGData makes a data directory with pg_wal/archive_status and a pg_control naming
// sysid.
func stagePGData(t *testing.T, sysid uint64) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"pg_wal/archive_status", "global"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ctl := make([]byte, 8192)
	for i := range 8 {
		ctl[i] = byte(sysid >> (8 * i))
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "global", "pg_control"), ctl, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Staging writes the archived segments after the backup into pg_wal, marked .done; into the
// data directory of another system it writes nothing, and the standby is then started with
// restore_command as usual.
func TestStageWALRefusesAnotherSystem(t *testing.T) {
	ctx := context.Background()
	const sysid = 7312345678901234567
	c, err := codec.New(codec.Config{Encryption: "none", Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.New(mem.New(), c, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Init(ctx, repo.Identity{}); err != nil {
		t.Fatal(err)
	}
	src := stagePGData(t, sysid)
	var names []string
	for no := uint64(3); no <= 4; no++ {
		seg := wal.Segment{TLI: 1, No: no}
		name, _ := seg.SegmentName(stageSegSize)
		data := wal.AppendSegmentHeader(nil, wal.SegmentHeader{Magic: 0xD110, TLI: 1, PageAddr: seg.StartLSN(stageSegSize), SystemIdentifier: sysid, SegmentSize: stageSegSize, BlockSize: 8192})
		data = append(data, make([]byte, stageSegSize-len(data))...)
		if err := os.WriteFile(filepath.Join(src, "pg_wal", name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := wal.Push(ctx, r, filepath.Join(src, "pg_wal", name), wal.PushOptions{DataDir: src, Parallel: -1}); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	arch, err := wal.ListArchive(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	arch.SegmentSize = stageSegSize
	pl := &restore.Plan{Backup: backup.Summary{Timeline: 1, StopTimeline: 1, StartLSN: wal.Segment{TLI: 1, No: 3}.StartLSN(stageSegSize).String()}}
	ck := checked{primary: Primary{Timeline: 1}}

	other := stagePGData(t, sysid+1)
	o := Options{PGData: other, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	if n := stageWAL(ctx, Source{Repo: r, Archive: arch}, pl, o, ck, nil); n != 0 {
		t.Fatalf("staged %d segments into another system's data directory", n)
	}
	if ents, _ := os.ReadDir(filepath.Join(other, "pg_wal")); len(ents) != 1 { // archive_status
		t.Fatalf("pg_wal of another system holds %d entries after a refused staging", len(ents))
	}
	if ents, _ := os.ReadDir(filepath.Join(other, "pg_wal", "archive_status")); len(ents) != 0 {
		t.Fatalf("archive_status of another system holds %d entries after a refused staging", len(ents))
	}

	own := stagePGData(t, sysid)
	o.PGData = own
	if n := stageWAL(ctx, Source{Repo: r, Archive: arch}, pl, o, ck, nil); n != 2 {
		t.Fatalf("staged %d segments, want 2", n)
	}
	for _, name := range names {
		for _, p := range []string{filepath.Join(own, "pg_wal", name), filepath.Join(own, "pg_wal", "archive_status", name+".done")} {
			if _, err := os.Stat(p); err != nil {
				t.Fatal(err)
			}
		}
	}

	// A primary on a later timeline: nothing staged (its history files come through
	// restore_command).
	again := stagePGData(t, sysid)
	o.PGData = again
	if n := stageWAL(ctx, Source{Repo: r, Archive: arch}, pl, o, checked{primary: Primary{Timeline: 2}}, nil); n != 0 {
		t.Fatalf("staged %d segments for a primary on another timeline", n)
	}
}
