package wal

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// waitArchived waits until the server's archiver has archived segment last, with no failure.
func waitArchived(t *testing.T, pg *pgtest.Cluster, last string) {
	t.Helper()
	conn := pg.Connect(t, "postgres")
	deadline := time.Now().Add(90 * time.Second)
	for {
		var archived, failed int64
		var lastWAL string
		err := conn.QueryRow(context.Background(),
			"SELECT archived_count, coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver").Scan(&archived, &lastWAL, &failed)
		if err != nil {
			t.Fatal(err)
		}
		if failed > 0 {
			t.Fatalf("archive_command failed %d times; server log:\n%s", failed, pg.Log())
		}
		if IsSegmentName(lastWAL) && lastWAL >= last {
			t.Logf("archiver: %d archived, last %s", archived, lastWAL)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("archiver did not reach %s (at %q) in 90 s; server log:\n%s", last, lastWAL, pg.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestArchiveWithRealServer(t *testing.T) {
	e := newBinEnv(t, -1)
	r := e.repo(t)
	ctx := context.Background()
	pg := pgtest.Start(t, pgtest.Options{Config: map[string]string{
		"archive_mode":    "on",
		"archive_command": fmt.Sprintf("'%s --config %s wal push %%p'", e.bin, e.cfg),
	}})
	start := time.Now()
	pg.Pgbench(t, "postgres", "-i", "-s", "5", "-q")
	last := pg.QueryString(t, "postgres", "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchived(t, pg, last)
	t.Logf("load and archiving up to %s took %v", last, time.Since(start))

	id, err := r.ReadIdentity(ctx)
	must(t, err)
	sysid := pg.QueryString(t, "postgres", "SELECT system_identifier::text FROM pg_control_system()")
	if id.SystemIdentifier != sysid || id.WALSegmentSize != DefaultSegmentSize || id.PGVersion/10000 != 15 {
		t.Fatalf("identity after the first push: %+v (server %s)", id, sysid)
	}

	// Every archived segment still in pg_wal comes back byte for byte.
	walDir := filepath.Join(pg.DataDir, "pg_wal")
	entries, err := os.ReadDir(walDir)
	must(t, err)
	compared := 0
	for _, ent := range entries {
		name := ent.Name()
		if !IsSegmentName(name) || name > last {
			continue
		}
		if _, err := os.Stat(filepath.Join(walDir, "archive_status", name+".done")); err != nil {
			continue // recycled or not archived by this run
		}
		want, err := os.ReadFile(filepath.Join(walDir, name))
		must(t, err)
		if got := fetchBytes(t, r, name); !bytes.Equal(got, want) {
			t.Errorf("%s: fetched bytes differ from pg_wal's", name)
		}
		compared++
	}
	if compared < 3 {
		t.Fatalf("only %d archived segments left in pg_wal to compare", compared)
	}
	t.Logf("compared %d segments", compared)

	a, err := ListArchive(ctx, r)
	must(t, err)
	if len(a.Timelines) != 1 || a.Timelines[0].Last < last || len(a.Timelines[0].Gaps) != 0 {
		t.Fatalf("archive listing: %+v", a)
	}

	t.Run("promotion archives the history file and the partial segment", func(t *testing.T) {
		sb := pg.StartStandby(t)
		pg.Exec(t, "CREATE TABLE after_standby AS SELECT 1 AS x")
		pg.WaitReplay(t, sb)
		sb.Exec(t, "SELECT pg_promote()")
		hk := r.Key(HistoryKey(2))
		waitFor(t, 60*time.Second, "00000002.history archived by the promoted standby", func() bool {
			_, err := r.Backend().Stat(ctx, hk)
			return err == nil
		})
		want, err := os.ReadFile(filepath.Join(sb.DataDir, "pg_wal", "00000002.history"))
		must(t, err)
		got := fetchBytes(t, r, "00000002.history")
		if !bytes.Equal(got, want) {
			t.Fatalf("history file differs:\n%s\nwant\n%s", got, want)
		}
		entries, err := ParseHistory(2, got)
		must(t, err)
		if len(entries) != 1 || entries[0].TLI != 1 || entries[0].Switch == 0 {
			t.Fatalf("parsed history: %+v from %q", entries, got)
		}
		h, err := ReadHistory(ctx, r, 2)
		must(t, err)
		sw, _ := h.SwitchPoint(1)
		now, err := ParseLSN(sb.QueryString(t, "postgres", "SELECT pg_current_wal_lsn()::text"))
		must(t, err)
		if !h.Contains(2, now) || h.Contains(1, now) || !h.Contains(1, sw-1) || sw > now {
			t.Fatalf("history %+v vs current LSN %s", h, now)
		}
		partial := SegmentOf(sw, 1, DefaultSegmentSize).name(DefaultSegmentSize) + ".partial"
		if _, err := os.Stat(filepath.Join(sb.DataDir, "pg_wal", partial)); err == nil {
			waitFor(t, 30*time.Second, partial+" archived", func() bool {
				p, _ := ObjectPath(partial)
				_, err := r.Backend().Stat(ctx, r.Key(p))
				return err == nil
			})
		}

		// The CLI's listing sees both timelines.
		code, out, _ := e.run(t, false, "wal", "ls", "--output", "json")
		if code != 0 {
			t.Fatalf("wal ls: exit %d\n%s", code, out)
		}
		var ls Archive
		if err := json.Unmarshal([]byte(out), &ls); err != nil {
			t.Fatalf("wal ls output: %v\n%s", err, out)
		}
		tlis := []TimelineID{}
		for _, tl := range ls.Timelines {
			tlis = append(tlis, tl.TLI)
			if len(tl.Gaps) > 0 {
				t.Errorf("gaps on timeline %d: %+v", tl.TLI, tl.Gaps)
			}
		}
		if !slices.Equal(tlis, []TimelineID{1, 2}) || !ls.Timelines[1].HasHistory || ls.Timelines[1].History == nil {
			t.Fatalf("wal ls: %s", out)
		}
		code, out, _ = e.run(t, false, "wal", "ls")
		if code != 0 || !strings.Contains(out, "from 1 at "+sw.String()) {
			t.Fatalf("wal ls text: exit %d\n%s", code, out)
		}
		t.Logf("wal ls:\n%s", out)
	})
}
