package wal

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
)

// Dir is the directory of the WAL archive inside a cluster's prefix.
const Dir = "wal"

// ObjectPath returns where an archived WAL file lives below the cluster prefix (pass the
// result to repo.Repo.Key):
//
//	segment          wal/<timeline+log, 16 hex>/<segment>
//	partial          wal/<timeline+log>/<segment>.partial
//	backup history   wal/<timeline+log>/<segment>.<offset>.backup
//	streamed piece   wal/<timeline+log>/<segment>.<from>-<to>.stream
//	timeline history wal/<timeline>.history
//
// The directory level keeps listings of one timeline and log short on every store.
func ObjectPath(name string) (string, error) {
	switch Classify(name) {
	case KindSegment, KindPartial, KindBackupHistory, KindStream:
		return path.Join(Dir, name[:16], name), nil
	case KindHistory:
		return path.Join(Dir, name), nil
	}
	return "", fmt.Errorf("%w: %q is not a WAL segment, .partial, .history or .backup file name", ErrInvalidName, name)
}

// SegmentKey is ObjectPath restricted to segment names.
func SegmentKey(name string) (string, error) {
	if !IsSegmentName(name) {
		return "", fmt.Errorf("%w: %q is not a WAL segment name", ErrInvalidName, name)
	}
	return ObjectPath(name)
}

// HistoryKey returns the path of timeline tli's history file below the cluster prefix.
func HistoryKey(tli TimelineID) string { return path.Join(Dir, HistoryFileName(tli)) }

// Archive summarises the WAL archive of a cluster.
type Archive struct {
	// SegmentSize is the size used to number segments (from the identity, else the default).
	SegmentSize int64 `json:"segment_size"`
	// Timelines, ascending.
	Timelines []TimelineArchive `json:"timelines"`
	// Objects and StoredBytes count every archive object (sealed sizes).
	Objects     int   `json:"objects"`
	StoredBytes int64 `json:"stored_bytes"`
	// Newest is the modification time of the most recent object (zero when empty).
	Newest time.Time `json:"newest,omitzero"`
	// Warnings say what could not be taken into account (e.g. history files that cannot be
	// decrypted without an identity: gaps are then computed per timeline only).
	Warnings []string `json:"warnings,omitempty"`
}

// TimelineArchive is what the archive holds for one timeline.
type TimelineArchive struct {
	TLI TimelineID `json:"timeline"`
	// Segments are the numbers of the complete segments, ascending.
	Segments []uint64 `json:"-"`
	// First and Last name the lowest and highest complete segment ("" when none).
	First string `json:"first,omitempty"`
	Last  string `json:"last,omitempty"`
	Count int    `json:"count"`
	// Partial lists the names of .partial segments.
	Partial []string `json:"partial,omitempty"`
	// BackupHistory lists the names of .backup files.
	BackupHistory []string `json:"backup_history,omitempty"`
	// Streamed lists the pieces `wal receive` stored of segments it has not completed yet.
	Streamed []string `json:"streamed,omitempty"`
	// StreamedEnd is where the WAL the receiver stored after the last complete segment ends
	// (zero when there is none).
	StreamedEnd LSN `json:"streamed_end,omitzero"`
	// HasHistory is true when <TLI>.history is archived; History is its content when it
	// could be read.
	HasHistory bool     `json:"has_history"`
	History    *History `json:"history,omitempty"`
	// Gaps are runs of missing segments recovery along this timeline would need.
	Gaps []Gap `json:"gaps,omitempty"`
}

// Gap is a run of missing segments, From to To inclusive.
type Gap struct {
	TLI   TimelineID `json:"timeline"`
	From  string     `json:"from"`
	To    string     `json:"to"`
	Count uint64     `json:"count"`
}

// ListArchive lists the archive of r's cluster. History files are decoded when r's codec
// can (they tell where a timeline begins and where its successors left it); without an
// identity the gaps are computed per timeline only and Warnings says so.
func ListArchive(ctx context.Context, r *repo.Repo) (Archive, error) {
	a := Archive{SegmentSize: DefaultSegmentSize}
	id, err := r.ReadIdentity(ctx)
	if err != nil && !errors.Is(err, repo.ErrNotInitialized) {
		return a, err
	}
	if id.WALSegmentSize != 0 {
		if err := CheckSegmentSize(id.WALSegmentSize); err != nil {
			return a, fmt.Errorf("%s: %w", r.Location(r.Key(repo.IdentityKey)), err)
		}
		a.SegmentSize = id.WALSegmentSize
	}
	size := a.SegmentSize
	tls := map[TimelineID]*TimelineArchive{}
	get := func(t TimelineID) *TimelineArchive {
		if tl, ok := tls[t]; ok {
			return tl
		}
		tl := &TimelineArchive{TLI: t}
		tls[t] = tl
		return tl
	}
	prefix := r.Key(Dir) + "/"
	err = r.Backend().List(ctx, prefix, func(o storage.ObjectInfo) error {
		name := path.Base(o.Key)
		a.Objects++
		a.StoredBytes += o.Size
		if o.ModTime.After(a.Newest) {
			a.Newest = o.ModTime
		}
		switch Classify(name) {
		case KindSegment:
			seg, err := ParseSegmentName(name, size)
			if err != nil {
				a.Warnings = append(a.Warnings, fmt.Sprintf("%s: %v", o.Key, err))
				return nil
			}
			tl := get(seg.TLI)
			tl.Segments = append(tl.Segments, seg.No)
		case KindPartial:
			tli, _ := ParseTimelineID(name[:8])
			if tli != 0 {
				get(tli).Partial = append(get(tli).Partial, name)
			}
		case KindBackupHistory:
			tli, _ := ParseTimelineID(name[:8])
			if tli != 0 {
				get(tli).BackupHistory = append(get(tli).BackupHistory, name)
			}
		case KindHistory:
			tli, _ := ParseTimelineID(name[:8])
			if tli != 0 {
				get(tli).HasHistory = true
			}
		case KindStream:
			tli, _ := ParseTimelineID(name[:8])
			if tli != 0 {
				get(tli).Streamed = append(get(tli).Streamed, name)
			}
		default:
			a.Warnings = append(a.Warnings, fmt.Sprintf("%s: not a WAL file name", o.Key))
		}
		return nil
	})
	if err != nil {
		return a, fmt.Errorf("list %s: %w", r.Location(prefix), err)
	}
	var histories []History
	for _, tl := range tls {
		if !tl.HasHistory {
			continue
		}
		h, err := ReadHistory(ctx, r, tl.TLI)
		if err != nil {
			if errors.Is(err, codec.ErrNoIdentity) || errors.Is(err, codec.ErrWrongKey) {
				a.Warnings = append(a.Warnings, fmt.Sprintf("history file %s not readable without the identity: gaps at timeline switches not checked", HistoryFileName(tl.TLI)))
				continue
			}
			return a, err
		}
		tl.History = &h
		histories = append(histories, h)
	}
	for _, tl := range tls {
		slices.Sort(tl.Segments)
		tl.Segments = slices.Compact(tl.Segments)
		tl.Count = len(tl.Segments)
		if n := len(tl.Segments); n > 0 {
			tl.First = Segment{tl.TLI, tl.Segments[0]}.name(size)
			tl.Last = Segment{tl.TLI, tl.Segments[n-1]}.name(size)
		}
	}
	for _, tl := range tls {
		var parent []uint64
		if tl.History != nil && len(tl.History.Entries) > 0 {
			if p := tls[tl.History.Entries[len(tl.History.Entries)-1].TLI]; p != nil {
				parent = p.Segments
			}
		}
		tl.Gaps = findGaps(tl.TLI, tl.Segments, tl.History, histories, parent, size)
		tl.StreamedEnd = streamedEnd(tl.Streamed, tl.Segments, size)
		a.Timelines = append(a.Timelines, *tl)
	}
	sort.Slice(a.Timelines, func(i, j int) bool { return a.Timelines[i].TLI < a.Timelines[j].TLI })
	return a, nil
}

// ReadHistory fetches and parses timeline tli's archived history file. A missing file
// yields an error wrapping ErrSegmentMissing.
func ReadHistory(ctx context.Context, r *repo.Repo, tli TimelineID) (History, error) {
	key := r.Key(HistoryKey(tli))
	data, err := r.GetBytes(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return History{}, fmt.Errorf("%w: %s", ErrSegmentMissing, r.Location(key))
	}
	if err != nil {
		return History{}, fmt.Errorf("read %s: %w", r.Location(key), err)
	}
	h, err := NewHistory(tli, data)
	if err != nil {
		return History{}, fmt.Errorf("%s: %w", r.Location(key), err)
	}
	return h, nil
}

// findGaps returns the missing segments of timeline t that recovery would need:
//   - between the first and the last archived segment of t;
//   - from the segment holding t's own switch point (where t begins, known from its
//     history file) up to its first archived segment, when the timeline t branched from
//     (parent, its sorted archived segments) still has WAL up to the switch: only then can
//     recovery arrive at t's beginning. After expire deleted the parent's WAL, recovery
//     starts on t from a backup taken on t, and t's first segments are not needed;
//
// but not beyond the last segment any successor timeline's path needs from t (the one
// before the switch point's segment, which recovery reads from the successor), when t has
// successors: WAL an old primary wrote after a standby was promoted is not on any path
// but t's own, and its end is normally lost (see docs/wal.md).
func findGaps(t TimelineID, segs []uint64, own *History, all []History, parent []uint64, size int64) []Gap {
	if len(segs) == 0 {
		return nil
	}
	lo, hi := segs[0], segs[len(segs)-1]
	if own != nil {
		if begin, ok := own.Begin(t); ok && begin > 0 {
			if sw := uint64(begin) / uint64(size); len(parent) > 0 && parent[0] <= sw {
				lo = min(lo, sw)
			}
		}
	}
	limit, limited := uint64(0), false
	for _, h := range all {
		if h.TLI == t {
			continue
		}
		// Recovery reads the segment holding the switch point from the new timeline (its
		// first segment copies the old one up to there), so t is needed up to the one before.
		if sw, ok := h.SwitchPoint(t); ok && uint64(sw)/uint64(size) > 0 {
			need := uint64(sw)/uint64(size) - 1
			if !limited || need > limit {
				limit, limited = need, true
			}
		}
	}
	if limited && limit < hi {
		hi = max(limit, lo)
	}
	var gaps []Gap
	next := lo
	add := func(from, to uint64) {
		gaps = append(gaps, Gap{TLI: t, From: Segment{t, from}.name(size), To: Segment{t, to}.name(size), Count: to - from + 1})
	}
	for _, s := range segs {
		if s < lo {
			continue
		}
		if s > hi {
			break
		}
		if s > next {
			add(next, s-1)
		}
		next = s + 1
	}
	if next <= hi {
		add(next, hi)
	}
	return gaps
}

// streamedEnd returns where the contiguous streamed WAL of the first segment after the last
// complete one ends (zero when there is none).
func streamedEnd(pieces []string, complete []uint64, size int64) LSN {
	var next uint64
	if n := len(complete); n > 0 {
		next = complete[n-1] + 1
	}
	var best LSN
	bySeg := map[string][]string{}
	for _, p := range pieces {
		bySeg[p[:24]] = append(bySeg[p[:24]], p)
	}
	for name, ps := range bySeg {
		seg, err := ParseSegmentName(name, size)
		if err != nil || (len(complete) > 0 && seg.No < next) {
			continue
		}
		if n := contiguous(ps); n > 0 {
			if end := seg.StartLSN(size) + LSN(n); end > best {
				best = end
			}
		}
	}
	return best
}

// contiguous returns how many bytes from the segment's start the pieces cover without a
// hole, and the pieces that do (in order).
func contiguous(pieces []string) int64 {
	n, _ := coverFromStart(pieces)
	return n
}

// coverFromStart chooses, among pieces of one segment, a chain covering its bytes from
// offset 0 as far as they reach, each piece reaching furthest from where the last ended.
func coverFromStart(pieces []string) (int64, []string) {
	var at int64
	var chain []string
	for {
		best, bestTo := "", at
		for _, p := range pieces {
			_, from, to, err := ParseStreamName(p)
			if err == nil && from <= at && to > bestTo {
				best, bestTo = p, to
			}
		}
		if best == "" {
			return at, chain
		}
		chain = append(chain, best)
		at = bestTo
	}
}
