package wal

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseHistory(t *testing.T) {
	for _, tc := range []struct {
		name string
		tli  TimelineID
		data string
		want []HistoryEntry
		err  bool
	}{
		{name: "promotion", tli: 2, data: "1\t0/3000158\tno recovery target specified\n",
			want: []HistoryEntry{{1, 0x3000158, "no recovery target specified"}}},
		{name: "three timelines, comments, blank lines, no reason", tli: 4,
			data: "# comment\n\n1\t0/3000158\tno recovery target specified\n  2\t0/5000000\n3\t1/0\tat restore point \"x\"\n",
			want: []HistoryEntry{{1, 0x3000158, "no recovery target specified"}, {2, 0x5000000, ""}, {3, 1 << 32, "at restore point \"x\""}}},
		{name: "empty (timeline 1 has no file, but an empty one is valid)", tli: 1, data: "", want: nil},
		{name: "CRLF", tli: 2, data: "1\t0/10\treason\r\n", want: []HistoryEntry{{1, 0x10, "reason"}}},
		{name: "missing switch point", tli: 2, data: "1\n", err: true},
		{name: "bad LSN", tli: 2, data: "1\t0/XYZ\treason\n", err: true},
		{name: "timeline 0", tli: 2, data: "0\t0/10\treason\n", err: true},
		{name: "not an ancestor", tli: 2, data: "2\t0/10\treason\n", err: true},
		{name: "timelines must increase", tli: 4, data: "2\t0/10\ta\n1\t0/20\tb\n", err: true},
		{name: "switch points must not go back", tli: 4, data: "1\t0/20\ta\n2\t0/10\tb\n", err: true},
		{name: "file of timeline 0", tli: 0, data: "", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHistory(tc.tli, []byte(tc.data))
			if tc.err {
				if !errors.Is(err, ErrBadHistory) {
					t.Fatalf("err = %v, want ErrBadHistory", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestHistoryPath(t *testing.T) {
	// 1 --(0/3000000)--> 2 --(0/5000000)--> 4 (timeline 3 is a dead branch elsewhere)
	h, err := NewHistory(4, []byte("1\t0/3000000\tx\n2\t0/5000000\ty\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		t    TimelineID
		x    LSN
		want bool
	}{
		{1, 0, true}, {1, 0x2FFFFFF, true}, {1, 0x3000000, false},
		{2, 0x2FFFFFF, false}, {2, 0x3000000, true}, {2, 0x4FFFFFF, true}, {2, 0x5000000, false},
		{3, 0x4000000, false},
		{4, 0x4FFFFFF, false}, {4, 0x5000000, true}, {4, 1 << 40, true},
		{5, 0x6000000, false},
	} {
		if got := h.Contains(tc.t, tc.x); got != tc.want {
			t.Errorf("Contains(%d, %s) = %v, want %v", tc.t, tc.x, got, tc.want)
		}
	}
	if sw, ok := h.SwitchPoint(2); !ok || sw != 0x5000000 {
		t.Errorf("SwitchPoint(2) = %s, %v", sw, ok)
	}
	if _, ok := h.SwitchPoint(4); ok {
		t.Error("the target timeline has a switch point")
	}
	if _, ok := h.SwitchPoint(3); ok {
		t.Error("timeline 3 is not on the path")
	}
	if got := h.TimelineOf(0x4000000); got != 2 {
		t.Errorf("TimelineOf = %d", got)
	}
	if got := h.TimelineOf(0x5000000); got != 4 {
		t.Errorf("TimelineOf = %d", got)
	}
	if b, ok := h.Begin(4); !ok || b != 0x5000000 {
		t.Errorf("Begin(4) = %s %v", b, ok)
	}
	// Timeline 1 without a file.
	one := History{TLI: 1}
	if !one.Contains(1, 12345) || one.Contains(2, 1) {
		t.Error("timeline 1 path")
	}
}

func FuzzParseHistory(f *testing.F) {
	f.Add(uint32(2), "1\t0/3000158\tno recovery target specified\n")
	f.Add(uint32(4), "# c\n1\t0/3000158\tx\n2\t0/5000000\n3\t1/0\ty\n")
	f.Add(uint32(3), "1\t0/10\n1\t0/20\n")
	f.Add(uint32(1), "")
	f.Fuzz(func(t *testing.T, tli uint32, data string) {
		entries, err := ParseHistory(TimelineID(tli), []byte(data))
		if err != nil {
			if !errors.Is(err, ErrBadHistory) {
				t.Fatalf("error without ErrBadHistory: %v", err)
			}
			return
		}
		for i, e := range entries {
			if e.TLI == 0 || e.TLI >= TimelineID(tli) {
				t.Fatalf("entry %d: timeline %d for history of %d", i, e.TLI, tli)
			}
			if i > 0 && (e.TLI <= entries[i-1].TLI || e.Switch < entries[i-1].Switch) {
				t.Fatalf("entry %d out of order: %+v", i, entries)
			}
			if strings.ContainsAny(e.Reason, "\n") {
				t.Fatalf("reason spans lines: %q", e.Reason)
			}
		}
		h := History{TLI: TimelineID(tli), Entries: entries}
		for _, e := range entries {
			if sw, ok := h.SwitchPoint(e.TLI); !ok || sw != e.Switch {
				t.Fatalf("SwitchPoint(%d) = %s %v", e.TLI, sw, ok)
			}
			if h.Contains(e.TLI, e.Switch) {
				t.Fatalf("switch point %s counted on timeline %d, which it ends", e.Switch, e.TLI)
			}
		}
	})
}
