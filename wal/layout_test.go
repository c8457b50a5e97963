package wal

import (
	"context"
	"reflect"
	"testing"
)

func TestListArchiveGaps(t *testing.T) {
	const size = DefaultSegmentSize
	seg := func(tli TimelineID, no uint64) string { return Segment{tli, no}.name(size) }
	type files struct {
		segs    map[TimelineID][]uint64
		partial []string
		history map[TimelineID]string
	}
	for _, tc := range []struct {
		name string
		in   files
		want map[TimelineID][]Gap
	}{
		{
			name: "continuous",
			in:   files{segs: map[TimelineID][]uint64{1: {1, 2, 3, 4}}},
			want: map[TimelineID][]Gap{1: nil},
		},
		{
			name: "holes inside a timeline",
			in:   files{segs: map[TimelineID][]uint64{1: {1, 2, 3, 5, 6, 9}}},
			want: map[TimelineID][]Gap{1: {{1, seg(1, 4), seg(1, 4), 1}, {1, seg(1, 7), seg(1, 8), 2}}},
		},
		{
			name: "promotion: old timeline ends in a partial, the new one starts at the switch segment",
			in: files{
				segs:    map[TimelineID][]uint64{1: {1, 2, 3, 4}, 2: {5, 6, 7}},
				partial: []string{seg(1, 5) + ".partial"},
				history: map[TimelineID]string{2: "1\t0/5800000\tno recovery target specified\n"},
			},
			want: map[TimelineID][]Gap{1: nil, 2: nil},
		},
		{
			name: "the new timeline's first segments are missing",
			in: files{
				segs:    map[TimelineID][]uint64{1: {1, 2, 3, 4}, 2: {7, 8}},
				history: map[TimelineID]string{2: "1\t0/5800000\treason\n"},
			},
			want: map[TimelineID][]Gap{1: nil, 2: {{2, seg(2, 5), seg(2, 6), 2}}},
		},
		{
			name: "expired: the old timeline's WAL and the new one's first segments are gone",
			in: files{
				segs:    map[TimelineID][]uint64{2: {7, 8}},
				history: map[TimelineID]string{2: "1\t0/5800000\treason\n"},
			},
			want: map[TimelineID][]Gap{2: nil},
		},
		{
			name: "expired up to the switch: only the old primary's tail is left on the old timeline",
			in: files{
				segs:    map[TimelineID][]uint64{1: {9, 10}, 2: {7, 8}},
				history: map[TimelineID]string{2: "1\t0/5800000\treason\n"},
			},
			want: map[TimelineID][]Gap{1: nil, 2: nil},
		},
		{
			name: "old primary's WAL after the switch is not needed by anyone but itself",
			in: files{
				segs:    map[TimelineID][]uint64{1: {1, 2, 3, 4, 9, 10}, 2: {5, 6}},
				history: map[TimelineID]string{2: "1\t0/5800000\treason\n"},
			},
			want: map[TimelineID][]Gap{1: nil, 2: nil},
		},
		{
			name: "a hole before the switch is a gap",
			in: files{
				segs:    map[TimelineID][]uint64{1: {1, 2, 4, 9}, 2: {5, 6}},
				history: map[TimelineID]string{2: "1\t0/5800000\treason\n"},
			},
			want: map[TimelineID][]Gap{1: {{1, seg(1, 3), seg(1, 3), 1}}, 2: nil},
		},
		{
			name: "two branches from timeline 1: the later switch bounds it",
			in: files{
				segs:    map[TimelineID][]uint64{1: {1, 2, 5, 6, 7, 8}, 2: {3}, 3: {9}},
				history: map[TimelineID]string{2: "1\t0/3000000\ta\n", 3: "1\t0/9000010\tb\n"},
			},
			want: map[TimelineID][]Gap{1: {{1, seg(1, 3), seg(1, 4), 2}}, 2: nil, 3: nil},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r := memRepo(t)
			put := func(name string) {
				p, err := ObjectPath(name)
				must(t, err)
				data := []byte("x")
				if tli, ok := historyTLI(name); ok {
					data = []byte(tc.in.history[tli])
				}
				must(t, r.PutBytes(ctx, r.Key(p), data, true))
			}
			for tli, nos := range tc.in.segs {
				for _, no := range nos {
					put(seg(tli, no))
				}
			}
			for _, p := range tc.in.partial {
				put(p)
			}
			for tli := range tc.in.history {
				put(HistoryFileName(tli))
			}
			a, err := ListArchive(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			got := map[TimelineID][]Gap{}
			for _, tl := range a.Timelines {
				got[tl.TLI] = tl.Gaps
				if want := tc.in.segs[tl.TLI]; len(want) != tl.Count || tl.First != seg(tl.TLI, want[0]) || tl.Last != seg(tl.TLI, want[len(want)-1]) {
					t.Errorf("timeline %d: count %d first %s last %s", tl.TLI, tl.Count, tl.First, tl.Last)
				}
				if _, ok := tc.in.history[tl.TLI]; ok != tl.HasHistory || (ok && tl.History == nil) {
					t.Errorf("timeline %d: history %v %v", tl.TLI, tl.HasHistory, tl.History)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("gaps\n got %+v\nwant %+v", got, tc.want)
			}
			if len(a.Warnings) > 0 {
				t.Errorf("warnings: %v", a.Warnings)
			}
			if a.Newest.IsZero() || a.Objects == 0 {
				t.Errorf("newest %v objects %d", a.Newest, a.Objects)
			}
		})
	}
}

func historyTLI(name string) (TimelineID, bool) {
	if !IsHistoryName(name) {
		return 0, false
	}
	tli, err := ParseTimelineID(name[:8])
	return tli, err == nil
}

func TestListArchiveWithoutIdentityStillListsAndWarns(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	dir := t.TempDir()
	w := fsRepo(t, dir, codecFor(t, k, true))
	for _, name := range []string{seg16(1, 1), seg16(1, 2), seg16(1, 4), "00000002.history"} {
		p, _ := ObjectPath(name)
		must(t, w.PutBytes(ctx, w.Key(p), []byte("1\t0/3000000\tx\n"), true))
	}
	r := fsRepo(t, dir, codecFor(t, k, false))
	a, err := ListArchive(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Warnings) != 1 || len(a.Timelines) != 2 || len(a.Timelines[0].Gaps) != 1 {
		t.Fatalf("%+v", a)
	}
}

func seg16(tli TimelineID, no uint64) string { return Segment{tli, no}.name(DefaultSegmentSize) }
