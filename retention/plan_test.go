package retention

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/wal"
)

const segSize = 16 << 20

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

// seg returns the LSN of segment n's first byte plus off.
func seg(n uint64, off uint64) wal.LSN { return wal.LSN(n*segSize + off) }

// bk is a backup on tli that stopped ago before now, took an hour, and started in segment startSeg.
func bk(label string, ago time.Duration, tli wal.TimelineID, startSeg uint64) Backup {
	return Backup{Label: label, Type: "full", StartTime: now.Add(-ago - time.Hour), StopTime: now.Add(-ago),
		StartLSN: seg(startSeg, 0x28), StopLSN: seg(startSeg, 0x1000), Timeline: tli}
}

func segFile(tli wal.TimelineID, n uint64) WALFile {
	name, _ := wal.Segment{TLI: tli, No: n}.SegmentName(segSize)
	k, _ := wal.ObjectPath(name)
	return WALFile{Name: name, Key: "c/" + k, Size: 100}
}

// segs returns segments from..to inclusive of tli.
func segs(tli wal.TimelineID, from, to uint64) []WALFile {
	var out []WALFile
	for n := from; n <= to; n++ {
		out = append(out, segFile(tli, n))
	}
	return out
}

func named(name string) WALFile {
	k, _ := wal.ObjectPath(name)
	return WALFile{Name: name, Key: "c/" + k}
}

func hist(t *testing.T, tli wal.TimelineID, text string) wal.History {
	t.Helper()
	h, err := wal.NewHistory(tli, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func hours(n int) time.Duration { return time.Duration(n) * time.Hour }

func days(n int) time.Duration { return hours(24 * n) }

type tlWant struct {
	tli       wal.TimelineID
	firstKept string // "" with keepAll or unreachable
	keepAll   bool
	dropped   int
}

func TestPlan(t *testing.T) {
	oneTL := Archive{SegmentSize: segSize, Files: segs(1, 1, 40)}
	tests := []struct {
		name     string
		policy   Policy
		backups  []Backup
		arch     Archive
		kept     []string          // labels kept, oldest first
		reasons  map[string]string // label → substring of the reason
		timeline []tlWant
		notes    string // substring of a note
	}{
		{
			name:     "count keeps the newest N full",
			policy:   Policy{FullCount: 3},
			backups:  []Backup{bk("b1", days(5), 1, 2), bk("b2", days(4), 1, 10), bk("b3", days(3), 1, 18), bk("b4", days(2), 1, 26), bk("b5", days(1), 1, 34)},
			arch:     oneTL,
			kept:     []string{"b3", "b4", "b5"},
			reasons:  map[string]string{"b1": "dropped: older than the newest 3 full", "b3": "kept: newest 3 full"},
			timeline: []tlWant{{tli: 1, firstKept: "000000010000000000000012", dropped: 17}},
		},
		{
			name:     "age keeps every backup younger than the duration",
			policy:   Policy{KeepYoungerThan: hours(36)},
			backups:  []Backup{bk("b1", hours(72), 1, 2), bk("b2", hours(48), 1, 10), bk("b3", hours(30), 1, 18), bk("b4", hours(10), 1, 26)},
			arch:     oneTL,
			kept:     []string{"b3", "b4"},
			reasons:  map[string]string{"b2": "dropped: older than 36h0m0s (stopped before 2026-12-03T00:00:00Z)", "b4": "kept: younger than 36h0m0s"},
			timeline: []tlWant{{tli: 1, firstKept: "000000010000000000000012", dropped: 17}},
		},
		{
			name:     "window keeps the newest backup stopped before its start, with its WAL",
			policy:   Policy{Window: days(2)},
			backups:  []Backup{bk("b1", days(5), 1, 2), bk("b2", days(3), 1, 10), bk("b3", hours(36), 1, 18), bk("b4", hours(12), 1, 26)},
			arch:     oneTL,
			kept:     []string{"b2", "b3", "b4"},
			reasons:  map[string]string{"b1": "dropped: older than the base backup of the 2d recovery window (starting 2026-12-02T12:00:00Z)", "b2": "kept: recovery window (base for its start 2026-12-02T12:00:00Z)", "b3": "kept: recovery window"},
			timeline: []tlWant{{tli: 1, firstKept: "00000001000000000000000A", dropped: 9}},
		},
		{
			name:     "window exactly at a backup's stop time: that backup is the base",
			policy:   Policy{Window: days(3)},
			backups:  []Backup{bk("b1", days(5), 1, 2), bk("b2", days(3), 1, 10), bk("b3", hours(12), 1, 26)},
			arch:     oneTL,
			kept:     []string{"b2", "b3"},
			timeline: []tlWant{{tli: 1, firstKept: "00000001000000000000000A", dropped: 9}},
		},
		{
			name:     "window reaching before the oldest backup keeps everything and says so",
			policy:   Policy{Window: days(10)},
			backups:  []Backup{bk("b1", days(5), 1, 2), bk("b2", days(3), 1, 10)},
			arch:     oneTL,
			kept:     []string{"b1", "b2"},
			notes:    "before the oldest backup stopped",
			timeline: []tlWant{{tli: 1, firstKept: "000000010000000000000002", dropped: 1}},
		},
		{
			name:     "minimum count is never crossed",
			policy:   Policy{KeepYoungerThan: hours(1), MinCount: 2},
			backups:  []Backup{bk("b1", days(5), 1, 2), bk("b2", days(4), 1, 10), bk("b3", days(3), 1, 18)},
			arch:     oneTL,
			kept:     []string{"b2", "b3"},
			reasons:  map[string]string{"b3": "kept: minimum count 2", "b1": "dropped: older than 1h0m0s"},
			timeline: []tlWant{{tli: 1, firstKept: "00000001000000000000000A", dropped: 9}},
		},
		{
			name:     "the last backup always stays (minimum count defaults to 1)",
			policy:   Policy{KeepYoungerThan: hours(1)},
			backups:  []Backup{bk("b1", days(5), 1, 2), bk("b2", days(4), 1, 10)},
			arch:     oneTL,
			kept:     []string{"b2"},
			reasons:  map[string]string{"b2": "kept: minimum count 1"},
			timeline: []tlWant{{tli: 1, firstKept: "00000001000000000000000A", dropped: 9}},
		},
		{
			name:     "a pinned backup stays with its WAL",
			policy:   Policy{FullCount: 1},
			backups:  []Backup{bk("b1", days(5), 1, 2), func() Backup { b := bk("b2", days(4), 1, 10); b.Pinned = true; return b }(), bk("b3", days(3), 1, 18)},
			arch:     oneTL,
			kept:     []string{"b2", "b3"},
			reasons:  map[string]string{"b2": "kept: pinned", "b1": "dropped: older than the newest 1 full"},
			timeline: []tlWant{{tli: 1, firstKept: "00000001000000000000000A", dropped: 9}},
		},
		{
			name:   "all pinned: nothing goes",
			policy: Policy{FullCount: 1},
			backups: func() []Backup {
				bs := []Backup{bk("b1", days(5), 1, 2), bk("b2", days(4), 1, 10), bk("b3", days(3), 1, 18)}
				for i := range bs {
					bs[i].Pinned = true
				}
				return bs
			}(),
			arch:     oneTL,
			kept:     []string{"b1", "b2", "b3"},
			reasons:  map[string]string{"b3": "kept: newest 1 full; pinned", "b1": "kept: pinned"},
			timeline: []tlWant{{tli: 1, firstKept: "000000010000000000000002", dropped: 1}},
		},
		{
			name:   "labels that sort against their times: order by stop time",
			policy: Policy{FullCount: 2},
			// After a restore of an old cluster's clock, or labels from another naming scheme:
			// "z-…" is the oldest, "a-…" the newest.
			backups:  []Backup{bk("a-newest", hours(1), 1, 34), bk("z-oldest", days(5), 1, 2), bk("m-middle", days(2), 1, 18)},
			arch:     oneTL,
			kept:     []string{"m-middle", "a-newest"},
			reasons:  map[string]string{"z-oldest": "dropped"},
			timeline: []tlWant{{tli: 1, firstKept: "000000010000000000000012", dropped: 17}},
		},
		{
			name:     "empty repository: no backup, WAL left alone",
			policy:   Policy{FullCount: 2},
			arch:     oneTL,
			kept:     nil,
			timeline: []tlWant{{tli: 1, keepAll: true}},
		},
		{
			name:     "no WAL at all",
			policy:   Policy{FullCount: 1},
			backups:  []Backup{bk("b1", days(5), 1, 2), bk("b2", days(4), 1, 10)},
			arch:     Archive{SegmentSize: segSize},
			kept:     []string{"b2"},
			timeline: nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Plan(tc.policy, tc.backups, tc.arch, now)
			if err != nil {
				t.Fatal(err)
			}
			checkDecision(t, d, tc.kept, tc.reasons, tc.timeline)
			if tc.notes != "" && !strings.Contains(strings.Join(d.Notes, "\n"), tc.notes) {
				t.Errorf("notes %q do not mention %q", d.Notes, tc.notes)
			}
		})
	}
}

func checkDecision(t *testing.T, d *Decision, kept []string, reasons map[string]string, tls []tlWant) {
	t.Helper()
	var got []string
	for i, b := range d.Backups {
		if i > 0 && b.StopTime.Before(d.Backups[i-1].StopTime) {
			t.Errorf("decisions not in stop-time order at %s", b.Label)
		}
		if b.Keep {
			got = append(got, b.Label)
		}
		if want, ok := reasons[b.Label]; ok && !strings.Contains(b.Reason, want) {
			t.Errorf("backup %s: reason %q, want it to contain %q", b.Label, b.Reason, want)
		}
		if b.Keep != strings.HasPrefix(b.Reason, "kept: ") {
			t.Errorf("backup %s: keep=%v but reason %q", b.Label, b.Keep, b.Reason)
		}
	}
	if !slices.Equal(got, kept) {
		t.Errorf("kept %v, want %v", got, kept)
	}
	if len(d.Timelines) != len(tls) {
		t.Fatalf("timelines %+v, want %d", d.Timelines, len(tls))
	}
	dropped := map[string]bool{}
	for _, f := range d.DropWAL {
		dropped[f.Name] = true
		if wal.Classify(f.Name) == wal.KindHistory {
			t.Errorf("history file %s dropped", f.Name)
		}
	}
	for i, w := range tls {
		td := d.Timelines[i]
		if td.Timeline != w.tli || td.FirstKept != w.firstKept || td.KeepAll != w.keepAll || td.Dropped != w.dropped {
			t.Errorf("timeline %d: got %+v, want %+v", w.tli, td, w)
		}
	}
}

// Timelines (segment numbers in parentheses):
//
//	TL1 ──(2: b-tl1)──(10)──────────────────(40)  old primary kept writing after the promotion
//	         │         └─ TL2 ──(12: b-tl2)─(15)─(30)
//	         │                               └─ TL3 ──(16: b-tl3)─(25)
//	         └─(3) TL4 (0x38: branched before b-tl1 started, an abandoned test restore)
//	TL5 has segments but its history file is missing.
func severalTimelines(t *testing.T) Archive {
	files := segs(1, 1, 40)
	files = append(files, segs(2, 10, 30)...)
	files = append(files, segs(3, 15, 25)...)
	files = append(files, segs(4, 1, 6)...)
	files = append(files, segs(5, 30, 32)...)
	files = append(files, named("00000002.history"), named("00000003.history"), named("00000004.history"),
		named("00000002000000000000000C.00000028.backup"), named("00000001000000000000000A.partial"))
	return Archive{
		SegmentSize: segSize,
		Files:       files,
		Histories: map[wal.TimelineID]wal.History{
			2: hist(t, 2, fmt.Sprintf("1\t%s\tno recovery target specified\n", seg(10, 0x5000))),
			3: hist(t, 3, fmt.Sprintf("1\t%s\tx\n2\t%s\ty\n", seg(10, 0x5000), seg(15, 0x100))),
			4: hist(t, 4, fmt.Sprintf("1\t%s\tbefore the backup\n", seg(1, 0x38))),
		},
	}
}

func TestPlanSeveralTimelines(t *testing.T) {
	arch := severalTimelines(t)
	t.Run("backup on the first timeline reaches its successors", func(t *testing.T) {
		d, err := Plan(Policy{FullCount: 1}, []Backup{bk("b-tl1", days(3), 1, 2)}, arch, now)
		if err != nil {
			t.Fatal(err)
		}
		checkDecision(t, d, []string{"b-tl1"}, nil, []tlWant{
			{tli: 1, firstKept: "000000010000000000000002", dropped: 1},
			{tli: 2, firstKept: "00000002000000000000000A", dropped: 0},
			{tli: 3, firstKept: "00000003000000000000000F", dropped: 0},
			{tli: 4, dropped: 6}, // branched off before the backup started: unreachable
			{tli: 5, keepAll: true},
		})
		if r := d.Timelines[1].Reason; !strings.Contains(r, "where this timeline begins; kept backup b-tl1 reaches it") {
			t.Errorf("timeline 2 reason: %s", r)
		}
		if r := d.Timelines[0].Reason; !strings.Contains(r, "the start of kept backup b-tl1") {
			t.Errorf("timeline 1 reason: %s", r)
		}
	})
	t.Run("backup on timeline 2 drops timeline 1 and its abandoned tail", func(t *testing.T) {
		d, err := Plan(Policy{FullCount: 1}, []Backup{bk("b-tl1", days(3), 1, 2), bk("b-tl2", days(2), 2, 12)}, arch, now)
		if err != nil {
			t.Fatal(err)
		}
		checkDecision(t, d, []string{"b-tl2"}, map[string]string{"b-tl1": "dropped"}, []tlWant{
			{tli: 1, dropped: 41}, // 40 segments and the .partial
			{tli: 2, firstKept: "00000002000000000000000C", dropped: 2},
			{tli: 3, firstKept: "00000003000000000000000F", dropped: 0},
			{tli: 4, dropped: 6},
			{tli: 5, keepAll: true},
		})
		for _, name := range []string{"00000001000000000000000A.partial", "00000002000000000000000A", "00000002000000000000000B"} {
			if !slices.ContainsFunc(d.DropWAL, func(f WALFile) bool { return f.Name == name }) {
				t.Errorf("%s not dropped", name)
			}
		}
		if slices.ContainsFunc(d.DropWAL, func(f WALFile) bool { return strings.HasSuffix(f.Name, ".backup") }) {
			t.Errorf("the kept backup's .backup file was dropped")
		}
	})
	t.Run("backup on timeline 3 only", func(t *testing.T) {
		d, err := Plan(Policy{FullCount: 1}, []Backup{bk("b-tl2", days(2), 2, 12), bk("b-tl3", days(1), 3, 16)}, arch, now)
		if err != nil {
			t.Fatal(err)
		}
		checkDecision(t, d, []string{"b-tl3"}, nil, []tlWant{
			{tli: 1, dropped: 41},
			{tli: 2, dropped: 22}, // 21 segments and the .backup file
			{tli: 3, firstKept: "000000030000000000000010", dropped: 1},
			{tli: 4, dropped: 6},
			{tli: 5, keepAll: true},
		})
	})
}

func TestPlanRefusesAPolicyWithoutRules(t *testing.T) {
	for _, p := range []Policy{{}, {MinCount: 3}} {
		if _, err := Plan(p, nil, Archive{}, now); !errors.Is(err, ErrNoPolicy) {
			t.Errorf("policy %+v: got %v, want ErrNoPolicy", p, err)
		}
	}
	if _, err := Plan(Policy{FullCount: -1}, nil, Archive{}, now); err == nil {
		t.Errorf("negative count accepted")
	}
}

func TestPlanIsDeterministicAndLeavesInputAlone(t *testing.T) {
	bs := []Backup{bk("b3", days(1), 1, 18), bk("b1", days(3), 1, 2), bk("b2", days(2), 1, 10)}
	before := slices.Clone(bs)
	a, _ := Plan(Policy{FullCount: 2}, bs, Archive{SegmentSize: segSize, Files: segs(1, 1, 20)}, now)
	b, _ := Plan(Policy{FullCount: 2}, bs, Archive{SegmentSize: segSize, Files: segs(1, 1, 20)}, now)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("two plans differ")
	}
	if fmt.Sprint(bs) != fmt.Sprint(before) {
		t.Errorf("input reordered")
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"7d": days(7), "36h": hours(36), "1.5d": hours(36), "90m": 90 * time.Minute, " 2d ": days(2)} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "7 days", "-1d", "7x", "1w"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) accepted", in)
		}
	}
	if s := FormatDuration(days(7)); s != "7d" {
		t.Errorf("FormatDuration(7d) = %s", s)
	}
}

// inc is an incremental (typ incr or diff) of parent that references refs.
func inc(label, typ string, ago time.Duration, startSeg uint64, parent string, refs ...string) Backup {
	b := bk(label, ago, 1, startSeg)
	b.Type, b.Parent, b.References = typ, parent, refs
	return b
}

// incrChain is f1 ← i1 ← i2, f2 ← d1 (diff of f2), i3 (incr of d1), a day apart.
func incrChain() []Backup {
	return []Backup{
		bk("f1", days(6), 1, 2),
		inc("i1", "incr", days(5), 5, "f1", "f1"),
		inc("i2", "incr", days(4), 8, "i1", "f1", "i1"),
		bk("f2", days(3), 1, 12),
		inc("d1", "diff", days(2), 15, "f2", "f2"),
		inc("i3", "incr", days(1), 18, "d1", "d1", "f2"),
	}
}

func TestPlanKeepsWhatKeptIncrementalsReference(t *testing.T) {
	arch := Archive{SegmentSize: segSize, Files: segs(1, 1, 40)}
	chain := incrChain()
	tests := []struct {
		name    string
		policy  Policy
		backups []Backup
		kept    []string
		reasons map[string]string
		horizon string // first kept segment of timeline 1
	}{
		{
			name:    "a young incremental keeps its parent and the full it references",
			policy:  Policy{KeepYoungerThan: hours(4*24 + 12)},
			backups: chain,
			kept:    []string{"f1", "i1", "i2", "f2", "d1", "i3"},
			reasons: map[string]string{"i1": "parent of i2", "f1": "referenced by i2"},
			horizon: "000000010000000000000002",
		},
		{
			name:    "once the incrementals expire, their full goes",
			policy:  Policy{KeepYoungerThan: hours(3*24 + 12)},
			backups: chain,
			kept:    []string{"f2", "d1", "i3"},
			horizon: "00000001000000000000000C",
		},
		{
			name:    "full count keeps the backups descending from the kept fulls",
			policy:  Policy{FullCount: 1},
			backups: chain,
			kept:    []string{"f2", "d1", "i3"},
			reasons: map[string]string{"d1": "descends from f2", "i3": "descends from f2"},
			horizon: "00000001000000000000000C",
		},
		{
			name:    "a pinned incremental keeps its whole chain",
			policy:  Policy{FullCount: 1},
			backups: func() []Backup { bs := slices.Clone(chain); bs[2].Pinned = true; return bs }(),
			kept:    []string{"f1", "i1", "i2", "f2", "d1", "i3"},
			reasons: map[string]string{"i2": "pinned", "i1": "kept: parent of i2", "f1": "kept: referenced by i2"},
			horizon: "000000010000000000000002",
		},
		{
			name:    "minimum count on an incremental keeps its references",
			policy:  Policy{KeepYoungerThan: hours(1), MinCount: 1},
			backups: chain,
			kept:    []string{"f2", "d1", "i3"},
			reasons: map[string]string{"i3": "minimum count", "d1": "parent of i3", "f2": "referenced by i3"},
			horizon: "00000001000000000000000C",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Plan(tc.policy, tc.backups, arch, now)
			if err != nil {
				t.Fatal(err)
			}
			var kept []string
			for _, b := range d.Backups {
				if b.Keep {
					kept = append(kept, b.Label)
				}
				if want, ok := tc.reasons[b.Label]; ok && !strings.Contains(b.Reason, want) {
					t.Errorf("%s: reason %q, want it to say %q", b.Label, b.Reason, want)
				}
			}
			if !slices.Equal(kept, tc.kept) {
				t.Errorf("kept %v, want %v", kept, tc.kept)
			}
			if len(d.Timelines) != 1 || d.Timelines[0].FirstKept != tc.horizon {
				t.Errorf("timelines %+v, want the WAL kept from %s", d.Timelines, tc.horizon)
			}
		})
	}
}

func TestPlanSet(t *testing.T) {
	arch := Archive{SegmentSize: segSize, Files: segs(1, 1, 40)}
	chain := incrChain()
	for _, tc := range []struct {
		set     string
		kept    []string
		reasons map[string]string
		horizon string
	}{
		{set: "i1", kept: []string{"f1", "f2", "d1", "i3"}, reasons: map[string]string{"i1": "named by --set i1", "i2": "depends on i1"},
			horizon: "000000010000000000000002"},
		{set: "d1", kept: []string{"f1", "i1", "i2", "f2"}, reasons: map[string]string{"i3": "depends on d1", "f2": "kept: not named by --set"},
			horizon: "000000010000000000000002"},
		// The oldest chain goes, and with it the WAL only it needed.
		{set: "f1", kept: []string{"f2", "d1", "i3"}, reasons: map[string]string{"i2": "depends on"}, horizon: "00000001000000000000000C"},
		// The newest backup may go (a bad one), the rest stays.
		{set: "i3", kept: []string{"f1", "i1", "i2", "f2", "d1"}, horizon: "000000010000000000000002"},
	} {
		d, err := PlanSet(tc.set, chain, arch, now)
		if err != nil {
			t.Fatalf("--set %s: %v", tc.set, err)
		}
		var kept []string
		for _, b := range d.Backups {
			if b.Keep {
				kept = append(kept, b.Label)
			}
			if want, ok := tc.reasons[b.Label]; ok && !strings.Contains(b.Reason, want) {
				t.Errorf("--set %s: %s: reason %q, want %q", tc.set, b.Label, b.Reason, want)
			}
		}
		if !slices.Equal(kept, tc.kept) {
			t.Errorf("--set %s: kept %v, want %v", tc.set, kept, tc.kept)
		}
		if len(d.Timelines) != 1 || d.Timelines[0].FirstKept != tc.horizon {
			t.Errorf("--set %s: timelines %+v, want the first kept segment %s", tc.set, d.Timelines, tc.horizon)
		}
	}
	pinned := slices.Clone(chain)
	pinned[2].Pinned = true
	for _, tc := range []struct {
		set     string
		backups []Backup
		want    string
	}{
		{"nope", chain, "no complete backup has that label"},
		{"i1", pinned, "backup i2 is pinned; unpin it first"},
		{"f1", chain[:3], "would delete every backup"},
	} {
		if _, err := PlanSet(tc.set, tc.backups, arch, now); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--set %s: %v, want %q", tc.set, err, tc.want)
		}
	}
}
