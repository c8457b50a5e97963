package wal

import (
	"errors"
	"testing"
)

func TestParseLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want LSN
		ok   bool
	}{
		{"16/B374D848", 0x16_B374D848, true},
		{"0/0", 0, true},
		{"FFFFFFFF/FFFFFFFF", ^LSN(0), true},
		{"0/3000158", 0x3000158, true},
		{"a/b", 0xA_0000000B, true},
		{"", 0, false},
		{"16", 0, false},
		{"16/", 0, false},
		{"/1", 0, false},
		{"123456789/0", 0, false},
		{"0/123456789", 0, false},
		{"G/0", 0, false},
		{"+1/0", 0, false},
		{"1/2/3", 0, false},
	} {
		got, err := ParseLSN(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok {
			back, err := ParseLSN(got.String())
			if err != nil || back != got {
				t.Errorf("round trip of %q via %q: %v %v", tc.in, got.String(), back, err)
			}
		}
	}
	if s := LSN(0x16_B374D848).String(); s != "16/B374D848" {
		t.Errorf("String = %q", s)
	}
}

func TestSegmentNames(t *testing.T) {
	const mb = 1 << 20
	for _, tc := range []struct {
		seg  Segment
		size int64
		name string
	}{
		{Segment{1, 1}, 16 * mb, "000000010000000000000001"},
		{Segment{1, 0xFF}, 16 * mb, "0000000100000000000000FF"},
		{Segment{1, 0x100}, 16 * mb, "000000010000000100000000"},
		{Segment{2, 0x16B3}, 16 * mb, "0000000200000016000000B3"},
		{Segment{0xA, 5}, 1 << 30, "0000000A0000000100000001"},
		{Segment{1, 4097}, mb, "000000010000000100000001"},
	} {
		got, err := tc.seg.SegmentName(tc.size)
		if err != nil || got != tc.name {
			t.Errorf("%+v.SegmentName(%d) = %q, %v; want %q", tc.seg, tc.size, got, err, tc.name)
		}
		back, err := ParseSegmentName(tc.name, tc.size)
		if err != nil || back != tc.seg {
			t.Errorf("ParseSegmentName(%q, %d) = %+v, %v; want %+v", tc.name, tc.size, back, err, tc.seg)
		}
	}
	if _, err := (Segment{1, 1}).SegmentName(3 << 20); err == nil {
		t.Error("a 3 MiB segment size was accepted")
	}
}

func TestParseSegmentNameRejects(t *testing.T) {
	for _, name := range []string{
		"", "00000001000000000000000", "0000000100000000000000001",
		"00000000000000000000000A", // timeline 0
		"0000000100000000000000ab", // lower case: PostgreSQL never writes it
		"000000010000000000000100", // segment part too large for 16 MiB
		"00000001000000000000000G", //
		"000000010000000000000001.partial",
	} {
		if _, err := ParseSegmentName(name, DefaultSegmentSize); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ParseSegmentName(%q) = %v, want ErrInvalidName", name, err)
		}
	}
}

func TestSegmentOfAndNext(t *testing.T) {
	const size = 16 << 20
	lsn, _ := ParseLSN("16/B374D848")
	s := SegmentOf(lsn, 3, size)
	if name, _ := s.SegmentName(size); name != "0000000300000016000000B3" {
		t.Errorf("SegmentOf = %s", name)
	}
	if s.StartLSN(size) > lsn || s.Next().StartLSN(size) <= lsn {
		t.Errorf("segment %v does not hold %s", s, lsn)
	}
	last, _ := ParseSegmentName("0000000100000000000000FF", size)
	if name, _ := last.Next().SegmentName(size); name != "000000010000000100000000" {
		t.Errorf("Next across a log boundary = %s", name)
	}
}

func TestClassify(t *testing.T) {
	for name, want := range map[string]Kind{
		"000000010000000000000001":                 KindSegment,
		"000000010000000000000001.partial":         KindPartial,
		"00000002.history":                         KindHistory,
		"000000010000000000000002.00000028.backup": KindBackupHistory,
		"0000000100000000000000010":                KindUnknown,
		"00000002.History":                         KindUnknown,
		"0000002.history":                          KindUnknown,
		"000000010000000000000002.0000028.backup":  KindUnknown,
		"000000010000000000000002.00000028":        KindUnknown,
		"RECOVERYXLOG":                             KindUnknown,
		"archive_status":                           KindUnknown,
		"000000010000000000000001.ready":           KindUnknown,
	} {
		if got := Classify(name); got != want {
			t.Errorf("Classify(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestObjectPath(t *testing.T) {
	for name, want := range map[string]string{
		"000000010000000A000000B3":                 "wal/000000010000000A/000000010000000A000000B3",
		"000000010000000A000000B3.partial":         "wal/000000010000000A/000000010000000A000000B3.partial",
		"000000010000000A000000B3.00000028.backup": "wal/000000010000000A/000000010000000A000000B3.00000028.backup",
		"00000002.history":                         "wal/00000002.history",
	} {
		got, err := ObjectPath(name)
		if err != nil || got != want {
			t.Errorf("ObjectPath(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	for _, bad := range []string{"", "../x", "RECOVERYXLOG", "wal/000000010000000A000000B3"} {
		if _, err := ObjectPath(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ObjectPath(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
	if _, err := SegmentKey("00000002.history"); err == nil {
		t.Error("SegmentKey accepted a history file")
	}
	if got := HistoryKey(2); got != "wal/00000002.history" {
		t.Errorf("HistoryKey(2) = %q", got)
	}
}

func FuzzParseSegmentName(f *testing.F) {
	for _, s := range []string{"000000010000000000000001", "0000000A0000000100000001", "00000000000000000000000A", "FFFFFFFFFFFFFFFFFFFFFFFF", "x"} {
		f.Add(s, int64(16<<20))
	}
	f.Add("000000010000000100000001", int64(1<<30))
	f.Fuzz(func(t *testing.T, name string, size int64) {
		seg, err := ParseSegmentName(name, size)
		if err != nil {
			return
		}
		if CheckSegmentSize(size) != nil {
			t.Fatalf("accepted size %d", size)
		}
		back, err := seg.SegmentName(size)
		if err != nil || back != name {
			t.Fatalf("%q parsed to %+v, which names %q (%v)", name, seg, back, err)
		}
		if seg.TLI == 0 {
			t.Fatalf("%q: timeline 0 accepted", name)
		}
		if Classify(name) != KindSegment {
			t.Fatalf("%q parses but is not classified as a segment", name)
		}
		if got := SegmentOf(seg.StartLSN(size), seg.TLI, size); got != seg {
			t.Fatalf("SegmentOf(StartLSN) = %+v, want %+v", got, seg)
		}
	})
}
