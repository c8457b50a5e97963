package restore

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/wal"
)

const seg = 16 << 20

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func bk(label string, startSeg uint64, stop time.Time, nextXID uint64) backup.Summary {
	start := wal.LSN(startSeg*seg + 0x28)
	return backup.Summary{Label: label, Timeline: 1, WALSegmentSize: seg, StartLSN: start.String(),
		StopLSN: (start + 0xd8).String(), StartTime: stop.Add(-time.Minute), StopTime: stop, StopNextXID: nextXID}
}

func archive(newest time.Time, segs ...uint64) wal.Archive {
	return wal.Archive{SegmentSize: seg, Newest: newest, Timelines: []wal.TimelineArchive{{TLI: 1, Segments: segs}}}
}

func TestMakePlanChoosesTheNewestBackupThatReachesTheTarget(t *testing.T) {
	b1 := bk("B1", 2, t0, 100)
	b2 := bk("B2", 5, t0.Add(time.Hour), 200)
	b3 := bk("B3", 8, t0.Add(2*time.Hour), 300)
	backups := []backup.Summary{b1, b2, b3}
	arch := archive(t0.Add(3*time.Hour), 2, 3, 4, 5, 6, 7, 8, 9, 10)
	cases := []struct {
		name   string
		target Target
		label  string
		want   string
		err    string
	}{
		{"latest", Target{Kind: TargetLatest}, "", "B3", ""},
		{"immediate", Target{Kind: TargetImmediate}, "", "B3", ""},
		{"immediate with label", Target{Kind: TargetImmediate}, "B1", "B1", ""},
		{"time between B1 and B2", Target{Kind: TargetTime, Time: t0.Add(30 * time.Minute)}, "", "B1", ""},
		{"time at B2's end", Target{Kind: TargetTime, Time: t0.Add(time.Hour)}, "", "B2", ""},
		{"time after B3", Target{Kind: TargetTime, Time: t0.Add(150 * time.Minute)}, "", "B3", ""},
		{"time before everything", Target{Kind: TargetTime, Time: t0.Add(-time.Minute)}, "", "", "before the end of the oldest"},
		{"time after the newest WAL", Target{Kind: TargetTime, Time: t0.Add(4 * time.Hour)}, "", "", "after the newest archived WAL"},
		{"time before the named backup", Target{Kind: TargetTime, Time: t0.Add(30 * time.Minute)}, "B3", "", "before the end"},
		{"lsn in B2..B3", Target{Kind: TargetLSN, LSN: wal.LSN(7 * seg)}, "", "B2", ""},
		{"lsn before B1 ends", Target{Kind: TargetLSN, LSN: wal.LSN(2 * seg)}, "", "", "before the end of the oldest"},
		{"xid 250", Target{Kind: TargetXID, XID: 250}, "", "B2", ""},
		{"xid 300", Target{Kind: TargetXID, XID: 300}, "", "B3", ""},
		{"xid too old", Target{Kind: TargetXID, XID: 50}, "", "", "had started before"},
		{"name", Target{Kind: TargetName, Name: "x"}, "", "B3", ""},
		{"unknown label", Target{Kind: TargetLatest}, "B9", "", "no complete backup"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := MakePlan(backups, arch, c.target, c.label)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got plan %v err %v, want error containing %q", p, err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Backup.Label != c.want {
				t.Fatalf("chose %s, want %s", p.Backup.Label, c.want)
			}
		})
	}
}

func TestBackupsWithoutTheirWALAreNotUsed(t *testing.T) {
	b1 := bk("B1", 2, t0, 100)
	b2 := bk("B2", 5, t0.Add(time.Hour), 200)
	arch := archive(t0.Add(2*time.Hour), 2, 3, 4) // B2's segment 5 is missing
	p, err := MakePlan([]backup.Summary{b1, b2}, arch, Target{Kind: TargetImmediate}, "")
	if err != nil {
		t.Fatal(err)
	}
	if p.Backup.Label != "B1" {
		t.Fatalf("chose %s", p.Backup.Label)
	}
	if _, err := MakePlan([]backup.Summary{b2}, archive(t0, 2), Target{Kind: TargetLatest}, ""); !errors.Is(err, ErrOutsideWindow) {
		t.Fatalf("got %v", err)
	}
	w := ComputeWindow(Usable([]backup.Summary{b1, b2}, arch), arch.Newest)
	if !w.Earliest.Equal(t0) || !w.Latest.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("window %v", w)
	}
}

func TestGapAfterTheBackupRefusesLatestAndLSNBeyondIt(t *testing.T) {
	b1 := bk("B1", 2, t0, 100)
	arch := archive(t0.Add(time.Hour), 2, 3, 4, 6, 7)
	arch.Timelines[0].Gaps = []wal.Gap{{TLI: 1, From: "000000010000000000000005", To: "000000010000000000000005", Count: 1}}
	if _, err := MakePlan([]backup.Summary{b1}, arch, Target{Kind: TargetLatest}, ""); err == nil || !strings.Contains(err.Error(), "gap") {
		t.Fatalf("latest across a gap: %v", err)
	}
	if _, err := MakePlan([]backup.Summary{b1}, arch, Target{Kind: TargetLSN, LSN: wal.LSN(6 * seg)}, ""); err == nil {
		t.Fatal("LSN beyond the gap was accepted")
	}
	if _, err := MakePlan([]backup.Summary{b1}, arch, Target{Kind: TargetLSN, LSN: wal.LSN(4*seg + 100)}, ""); err != nil {
		t.Fatalf("LSN before the gap: %v", err)
	}
}

func TestSettingsPerTarget(t *testing.T) {
	cases := []struct {
		t    Target
		want string
	}{
		{Target{Kind: TargetTime, Time: t0.Add(1500 * time.Microsecond), Action: "promote"}, "recovery_target_action=promote recovery_target_time=2026-11-22 10:00:00.0015+00"},
		{Target{Kind: TargetLSN, LSN: 0x3000060, Exclusive: true}, "recovery_target_inclusive=off recovery_target_lsn=0/3000060"},
		{Target{Kind: TargetXID, XID: 742, Timeline: "2"}, "recovery_target_timeline=2 recovery_target_xid=742"},
		{Target{Kind: TargetName, Name: "before-migration"}, "recovery_target_name=before-migration"},
		{Target{Kind: TargetImmediate, Action: "shutdown"}, "recovery_target=immediate recovery_target_action=shutdown"},
		{Target{Kind: TargetLatest}, ""},
	}
	for _, c := range cases {
		s := settings(c.t)
		var parts []string
		for _, k := range []string{"recovery_target", "recovery_target_action", "recovery_target_inclusive", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_timeline", "recovery_target_xid"} {
			if v, ok := s[k]; ok {
				parts = append(parts, k+"="+v)
			}
		}
		if got := strings.Join(parts, " "); got != c.want {
			t.Errorf("%+v: got %q, want %q", c.t, got, c.want)
		}
	}
	if err := (Target{Kind: TargetLatest, Action: "pause"}).Validate(); err == nil {
		t.Error("latest with an action accepted")
	}
}

func TestStripRecoverySettingsKeepsTheRest(t *testing.T) {
	in := "# Do not edit this file manually!\nshared_buffers = '1GB'\n# recovery settings written by pgharbor restore of backup X\nrestore_command = 'pgharbor wal fetch %f %p'\nrecovery_target_time = '2026-01-01 00:00:00+00'\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\nwork_mem = '64MB'"
	want := "# Do not edit this file manually!\nshared_buffers = '1GB'\nwork_mem = '64MB'\n"
	if got := stripRecoverySettings(in); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestTimelineThatForkedBeforeTheBackupIsNotFollowed(t *testing.T) {
	b := bk("B", 10, t0, 100) // on timeline 1, ends in segment 10
	hist2, _ := wal.NewHistory(2, []byte("1\t0/5000000\tbefore the backup\n"))
	hist3, _ := wal.NewHistory(3, []byte("1\t0/20000000\tafter the backup\n"))
	arch := wal.Archive{SegmentSize: seg, Newest: t0.Add(time.Hour), Timelines: []wal.TimelineArchive{
		{TLI: 1, Segments: []uint64{10, 11, 12}},
		{TLI: 2, Segments: []uint64{5, 6}, HasHistory: true, History: &hist2},
	}}
	p, err := MakePlan([]backup.Summary{b}, arch, Target{Kind: TargetLatest}, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Settings["recovery_target_timeline"]; got != "1" {
		t.Fatalf("timeline 2 forked before the backup: recovery_target_timeline = %q, want 1", got)
	}
	arch.Timelines = append(arch.Timelines, wal.TimelineArchive{TLI: 3, Segments: []uint64{32}, HasHistory: true, History: &hist3})
	p, err = MakePlan([]backup.Summary{b}, arch, Target{Kind: TargetLatest}, "")
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := p.Settings["recovery_target_timeline"]; ok {
		t.Fatalf("timeline 3 descends from the backup and is the newest: got setting %q, want PostgreSQL's default", got)
	}
	// An explicit choice is kept.
	p, _ = MakePlan([]backup.Summary{b}, arch, Target{Kind: TargetLatest, Timeline: "current"}, "")
	if p.Settings["recovery_target_timeline"] != "current" {
		t.Fatalf("explicit timeline overridden: %v", p.Settings)
	}
}
