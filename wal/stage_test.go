package wal

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestStageRange(t *testing.T) {
	arch := Archive{SegmentSize: testSegSize, Timelines: []TimelineArchive{
		{TLI: 1, Segments: []uint64{3, 4, 5, 7, 8}},
		{TLI: 2, Segments: []uint64{8, 9}},
	}}
	name := func(tli TimelineID, no uint64) string { return Segment{tli, no}.name(testSegSize) }
	at := func(no uint64) LSN { return Segment{1, no}.StartLSN(testSegSize) + 100 }
	for _, c := range []struct {
		tli      TimelineID
		from     LSN
		max      int
		want     []string
		complete bool
	}{
		{1, at(7), 10, []string{name(1, 7), name(1, 8)}, true},
		{1, at(8), 1, []string{name(1, 8)}, true},
		{1, at(7), 1, []string{name(1, 7)}, false},                          // bounded before the newest
		{1, at(3), 10, []string{name(1, 3), name(1, 4), name(1, 5)}, false}, // a hole at 6
		{1, at(6), 10, nil, false},                                          // the first one is missing
		{2, at(8), 10, []string{name(2, 8), name(2, 9)}, true},
		{3, at(8), 10, nil, false},
	} {
		got, complete := StageRange(arch, c.tli, c.from, c.max)
		if !slices.Equal(got, c.want) || complete != c.complete {
			t.Errorf("StageRange(tli %d, %s, max %d) = %v, %v; want %v, %v", c.tli, c.from, c.max, got, complete, c.want, c.complete)
		}
	}
}

// Staged segments land in pg_wal with the archived bytes; segments of another system are
// refused and never reach pg_wal, as a fetch refuses them.
func TestStageSegments(t *testing.T) {
	ctx := context.Background()
	r := fsRepo(t, t.TempDir(), codecFor(t, newKeys(t), true))
	names, datas := pushFake(t, r, 3)

	own := fakePGData(t, testSysid)
	must(t, StageSegments(ctx, r, own, names[1:], 2))
	for i, name := range names[1:] {
		got, err := os.ReadFile(filepath.Join(own, "pg_wal", name))
		must(t, err)
		if !bytes.Equal(got, datas[i+1]) {
			t.Fatalf("staged %s differs from the archived segment", name)
		}
	}
	assertNoTemp(t, filepath.Join(own, "pg_wal"))

	other := fakePGData(t, testSysid+1) // the data directory of another system
	err := StageSegments(ctx, r, other, names, 2)
	if !errors.Is(err, ErrForeignSegment) {
		t.Fatalf("staging into another system's pg_wal: %v, want ErrForeignSegment", err)
	}
	t.Log(err)
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(other, "pg_wal", name)); !os.IsNotExist(err) {
			t.Fatalf("a segment of another system reached pg_wal: %s (%v)", name, err)
		}
	}
	assertNoTemp(t, filepath.Join(other, "pg_wal"))

	missing := Segment{1, 9}.name(testSegSize)
	if err := StageSegments(ctx, r, own, []string{missing}, 1); !errors.Is(err, ErrSegmentMissing) {
		t.Fatalf("staging a segment the archive lacks: %v, want ErrSegmentMissing", err)
	}
	if err := StageSegments(ctx, r, own, []string{"00000002.history"}, 1); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("staging a history file: %v, want ErrInvalidName", err)
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range ents {
		if len(e.Name()) > 0 && e.Name()[0] == '.' {
			t.Errorf("temp file left in %s: %s", dir, e.Name())
		}
	}
}
