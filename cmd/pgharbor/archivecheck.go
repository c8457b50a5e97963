package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/wal"
)

// archiveCheck returns the backup's check that the WAL from start to stop is archived,
// waiting up to timeout for the archiver (the server switched to a new segment at the end
// of the backup, so the last one is on its way).
func (a *app) archiveCheck(r *repo.Repo, timeout time.Duration) func(ctx context.Context, tli uint32, start, stop string, segSize int64) error {
	return func(ctx context.Context, tli uint32, start, stop string, segSize int64) error {
		segs, err := segmentsBetween(tli, start, stop, segSize)
		if err != nil {
			return err
		}
		begin := time.Now()
		deadline := begin.Add(timeout)
		// The segment usually arrives a moment after the server switched WAL (the archiver
		// starts archive_command, which stores it): look every 20 ms for the first seconds,
		// when a longer interval would be most of a small backup's wait, then less often.
		for _, seg := range segs {
			name, err := seg.SegmentName(segSize)
			if err != nil {
				return err
			}
			key, err := wal.SegmentKey(name)
			if err != nil {
				return err
			}
			for {
				ok, err := storage.Exists(ctx, r.Backend(), r.Key(key))
				if err != nil {
					return fmt.Errorf("check %s: %w", r.Location(r.Key(key)), err)
				}
				if ok {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("segment %s is not in %s after %s: is archive_command = 'pgharbor wal push %%p' set and working (see pg_stat_archiver)?",
						name, r.Location(r.Key(wal.Dir)), timeout)
				}
				wait := 20 * time.Millisecond
				if time.Since(begin) > 3*time.Second {
					wait = 200 * time.Millisecond
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(wait):
				}
			}
		}
		return nil
	}
}

// segmentsBetween lists the segments holding WAL from start up to (not including) stop.
func segmentsBetween(tli uint32, start, stop string, segSize int64) ([]wal.Segment, error) {
	s, err := wal.ParseLSN(start)
	if err != nil {
		return nil, err
	}
	e, err := wal.ParseLSN(stop)
	if err != nil {
		return nil, err
	}
	if e > s {
		e--
	}
	first := wal.SegmentOf(s, wal.TimelineID(tli), segSize)
	last := wal.SegmentOf(e, wal.TimelineID(tli), segSize)
	var out []wal.Segment
	for seg := first; seg.No <= last.No; seg = seg.Next() {
		out = append(out, seg)
	}
	return out, nil
}
