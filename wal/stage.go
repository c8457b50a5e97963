package wal

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// StageRange returns the names of the archived segments of timeline tli from the one
// holding from onwards, as far as they follow each other without a hole, at most max of
// them. complete says the run reaches the newest segment the archive holds on tli: a
// server given these segments can replay everything archived and then needs only what its
// primary streams. An archive without the first segment gives nothing.
func StageRange(arch Archive, tli TimelineID, from LSN, max int) (names []string, complete bool) {
	size := arch.SegmentSize
	if CheckSegmentSize(size) != nil || max <= 0 {
		return nil, false
	}
	var segs []uint64
	for _, t := range arch.Timelines {
		if t.TLI == tli {
			segs = t.Segments
		}
	}
	first := SegmentOf(from, tli, size)
	i, ok := slices.BinarySearch(segs, first.No)
	if !ok {
		return nil, false
	}
	for s := first; i < len(segs) && segs[i] == s.No; i, s = i+1, s.Next() {
		if len(names) == max {
			return names, false
		}
		names = append(names, s.name(size))
	}
	return names, i == len(segs)
}

// StageSegments writes the archived segments names into pgdata's pg_wal before the server
// starts, so that its recovery reads them there instead of asking restore_command for each.
// Every segment is handed over as Fetch hands one over: decoded whole (the codec
// authenticates the object before EOF), written to a temp file and renamed into place only
// after its header named this segment's position and the system identifier in pgdata's
// global/pg_control (else the repository's). A segment of another system, or one that
// cannot be read, is not written and its error returned; the ones already written stay
// (they are this system's, and recovery reads them as it would read what restore_command
// gave it). parallel downloads run at once (at least one).
func StageSegments(ctx context.Context, r *repo.Repo, pgdata string, names []string, parallel int) error {
	dir := filepath.Join(pgdata, "pg_wal")
	sysid, from, err := expectedSystem(ctx, r, filepath.Join(dir, "RECOVERYXLOG"))
	if err != nil {
		return err
	}
	keys := make([]string, len(names))
	for i, name := range names {
		if Classify(name) != KindSegment {
			return fmt.Errorf("stage %q: %w", name, ErrInvalidName)
		}
		p, err := ObjectPath(name)
		if err != nil {
			return err
		}
		keys[i] = r.Key(p)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for i, name := range names {
		g.Go(func() error {
			check := func(head []byte) error { return checkFetched(name, head, sysid, from) }
			if _, err := download(gctx, r, keys[i], name, filepath.Join(dir, name), check); err != nil {
				return fmt.Errorf("stage WAL into %s: %w", dir, err)
			}
			return nil
		})
	}
	return g.Wait()
}
