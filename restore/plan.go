// Package restore brings a cluster back from a repository: a pure planner chooses the backup
// and the recovery settings for a target, an executor writes the data directory in parallel.
//
// Glossary:
//   - target: where recovery stops: a time, an LSN, a transaction id, a named restore point,
//     "immediate" (the end of the backup) or "latest" (the end of the archived WAL).
//   - window: the recoverable window, from the earliest backup's end to the newest archived WAL.
//   - delta: reusing a non-empty data directory, writing only the pieces whose content differs
//     (SHA-256 per piece) and always the files PostgreSQL reads specially.
package restore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/wal"
)

// ErrOutsideWindow means the target cannot be reached with what the repository holds.
var ErrOutsideWindow = errors.New("target outside the recoverable window")

// Target kinds.
const (
	TargetLatest    = "latest"
	TargetImmediate = "immediate"
	TargetTime      = "time"
	TargetLSN       = "lsn"
	TargetXID       = "xid"
	TargetName      = "name"
)

// Target says where recovery stops.
type Target struct {
	Kind string
	Time time.Time
	LSN  wal.LSN
	XID  uint64
	Name string
	// Timeline is recovery_target_timeline: "" (PostgreSQL's default, latest), "current",
	// "latest" or a number.
	Timeline string
	// Action is recovery_target_action: promote, pause (PostgreSQL's default) or shutdown.
	Action string
	// Exclusive stops just before the target instead of just after it.
	Exclusive bool
}

// Validate checks the combination of settings.
func (t Target) Validate() error {
	switch t.Kind {
	case TargetLatest, TargetImmediate, TargetTime, TargetLSN, TargetXID, TargetName:
	default:
		return fmt.Errorf("unknown target kind %q", t.Kind)
	}
	switch t.Action {
	case "", "promote", "pause", "shutdown":
	default:
		return fmt.Errorf("--target-action %q: want promote, pause or shutdown", t.Action)
	}
	if t.Kind == TargetLatest && t.Action != "" {
		return errors.New("--target-action needs a target (time, lsn, xid, name or immediate): recovery to the latest WAL always promotes")
	}
	switch t.Timeline {
	case "", "current", "latest":
	default:
		if _, err := strconv.ParseUint(t.Timeline, 10, 32); err != nil {
			return fmt.Errorf("--target-timeline %q: want current, latest or a timeline number", t.Timeline)
		}
	}
	return nil
}

// Window is the recoverable window.
type Window struct {
	Earliest time.Time `json:"earliest"` // end of the oldest backup
	Latest   time.Time `json:"latest"`   // newest archived WAL (or newest backup end)
}

func (w Window) String() string {
	if w.Earliest.IsZero() {
		return "empty (no backup)"
	}
	return fmt.Sprintf("%s .. %s", w.Earliest.UTC().Format(time.RFC3339), w.Latest.UTC().Format(time.RFC3339))
}

// ComputeWindow derives the window from the backups and the newest archived WAL time.
func ComputeWindow(backups []backup.Summary, newestWAL time.Time) Window {
	var w Window
	for _, b := range backups {
		if w.Earliest.IsZero() || b.StopTime.Before(w.Earliest) {
			w.Earliest = b.StopTime
		}
		if b.StopTime.After(w.Latest) {
			w.Latest = b.StopTime
		}
	}
	if !w.Earliest.IsZero() && newestWAL.After(w.Latest) {
		w.Latest = newestWAL
	}
	return w
}

// Plan is the planner's decision.
type Plan struct {
	Backup backup.Summary
	Target Target
	Window Window
	// Settings are the recovery parameters for postgresql.auto.conf (restore_command is
	// added by the executor).
	Settings map[string]string
	// EndAtLeast is, for a recovery to the latest WAL, the start of the newest archived
	// segment on the timeline recovery follows: recovery that promotes before it stopped
	// early (WAL it could not apply), however normal its end looked. Zero: not checked.
	EndAtLeast wal.LSN `json:"end_at_least,omitzero"`
}

// Usable returns the backups whose WAL, from start to stop, is all in the archive: only
// those can be made consistent.
func Usable(backups []backup.Summary, arch wal.Archive) []backup.Summary {
	have := map[wal.TimelineID]map[uint64]bool{}
	for _, t := range arch.Timelines {
		m := make(map[uint64]bool, len(t.Segments))
		for _, n := range t.Segments {
			m[n] = true
		}
		have[t.TLI] = m
	}
	var out []backup.Summary
	for _, b := range backups {
		first, last, ok := backupSegments(b)
		if !ok {
			continue
		}
		complete := true
		for n := first; n <= last; n++ {
			if !have[wal.TimelineID(b.Timeline)][n] {
				complete = false
				break
			}
		}
		if complete {
			out = append(out, b)
		}
	}
	return out
}

func backupSegments(b backup.Summary) (first, last uint64, ok bool) {
	start, err1 := wal.ParseLSN(b.StartLSN)
	stop, err2 := wal.ParseLSN(b.StopLSN)
	if err1 != nil || err2 != nil || b.WALSegmentSize <= 0 {
		return 0, 0, false
	}
	if stop > start {
		stop--
	}
	return wal.SegmentOf(start, wal.TimelineID(b.Timeline), b.WALSegmentSize).No, wal.SegmentOf(stop, wal.TimelineID(b.Timeline), b.WALSegmentSize).No, true
}

// MakePlan chooses the backup for the target (or checks the one given by label) and the
// recovery settings. It does no I/O. backups are complete backups, oldest first; arch is the
// WAL archive: backups whose WAL is missing are not used, and a gap in the WAL after the
// chosen backup that recovery would have to cross is refused instead of silently ending
// recovery early.
func MakePlan(all []backup.Summary, arch wal.Archive, t Target, label string) (*Plan, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	backups := Usable(all, arch)
	newestWAL := arch.Newest
	w := ComputeWindow(backups, newestWAL)
	if len(backups) == 0 {
		if len(all) > 0 {
			return nil, fmt.Errorf("%w: none of the %d complete backups has all the WAL it needs in the archive (run `pgharbor verify`)", ErrOutsideWindow, len(all))
		}
		return nil, fmt.Errorf("%w: the repository holds no complete backup", ErrOutsideWindow)
	}
	var chosen *backup.Summary
	if label != "" {
		for i := range backups {
			if backups[i].Label == label {
				chosen = &backups[i]
			}
		}
		if chosen == nil {
			return nil, fmt.Errorf("no complete backup %q (see `pgharbor info`)", label)
		}
	}
	switch t.Kind {
	case TargetTime:
		if t.Time.After(w.Latest) {
			return nil, fmt.Errorf("%w: %s is after the newest archived WAL; window %s", ErrOutsideWindow, t.Time.UTC().Format(time.RFC3339Nano), w)
		}
		if chosen == nil {
			chosen = latestWhere(backups, func(b backup.Summary) bool { return !b.StopTime.After(t.Time) })
		}
		if chosen == nil || chosen.StopTime.After(t.Time) {
			return nil, fmt.Errorf("%w: %s is before the end of the oldest usable backup; window %s", ErrOutsideWindow, t.Time.UTC().Format(time.RFC3339Nano), w)
		}
	case TargetLSN:
		if chosen == nil {
			chosen = latestWhere(backups, func(b backup.Summary) bool { return lsnOf(b.StopLSN) <= t.LSN })
		}
		if chosen == nil || lsnOf(chosen.StopLSN) > t.LSN {
			return nil, fmt.Errorf("%w: LSN %s is before the end of the oldest usable backup (%s); window %s", ErrOutsideWindow, t.LSN, backups[0].StopLSN, w)
		}
	case TargetXID:
		if chosen == nil {
			chosen = latestWhere(backups, func(b backup.Summary) bool { return b.StopNextXID <= t.XID })
		}
		if chosen == nil || chosen.StopNextXID > t.XID {
			return nil, fmt.Errorf("%w: transaction %d had started before the oldest backup ended (its next xid was %d); choose an older target or --backup", ErrOutsideWindow, t.XID, backups[0].StopNextXID)
		}
	default: // latest, immediate, name: the newest backup unless one was named
		if chosen == nil {
			chosen = &backups[len(backups)-1]
		}
	}
	if err := checkGaps(*chosen, arch, t); err != nil {
		return nil, err
	}
	s := settings(t)
	if t.Timeline == "" {
		// PostgreSQL follows the newest timeline by default, and fails ("requested timeline
		// is not a child of this server's history") when that timeline forked off before
		// the backup, e.g. after an old restore was promoted. Name the newest timeline that
		// descends from the backup instead.
		if tl, newest := timelineFor(*chosen, arch); tl != 0 && tl != newest {
			s["recovery_target_timeline"] = strconv.FormatUint(uint64(tl), 10)
		}
	}
	p := &Plan{Backup: *chosen, Target: t, Window: w, Settings: s}
	if t.Kind == TargetLatest {
		p.EndAtLeast = latestEnd(*chosen, arch, t.Timeline, s["recovery_target_timeline"])
	}
	return p, nil
}

// latestEnd returns where the newest archived segment of the timeline that recovery to the
// latest WAL follows begins (0 when that cannot be told).
func latestEnd(b backup.Summary, arch wal.Archive, asked, set string) wal.LSN {
	best, newest := timelineFor(b, arch)
	follow := best
	switch {
	case asked == "current":
		follow = wal.TimelineID(b.Timeline)
	case asked == "latest":
		follow = newest
	case asked != "":
		n, _ := strconv.ParseUint(asked, 10, 32)
		follow = wal.TimelineID(n)
	case set != "":
		n, _ := strconv.ParseUint(set, 10, 32)
		follow = wal.TimelineID(n)
	}
	for _, tl := range arch.Timelines {
		if tl.TLI != follow || tl.Last == "" {
			continue
		}
		seg, err := wal.ParseSegmentName(tl.Last, b.WALSegmentSize)
		if err != nil {
			return 0
		}
		return seg.StartLSN(b.WALSegmentSize)
	}
	return 0
}

// timelineFor returns the newest archived timeline whose history passes through the end of
// backup b (0 when none can be told), and the newest archived timeline.
func timelineFor(b backup.Summary, arch wal.Archive) (best, newest wal.TimelineID) {
	stop, err := wal.ParseLSN(b.StopLSN)
	if err != nil {
		return 0, 0
	}
	for _, tl := range arch.Timelines {
		newest = max(newest, tl.TLI)
	}
	for i := len(arch.Timelines) - 1; i >= 0; i-- {
		tl := arch.Timelines[i]
		switch {
		case tl.TLI == wal.TimelineID(b.Timeline):
			return tl.TLI, newest
		case tl.TLI < wal.TimelineID(b.Timeline):
			continue
		case tl.History != nil && tl.History.Contains(wal.TimelineID(b.Timeline), stop):
			return tl.TLI, newest
		}
	}
	return wal.TimelineID(b.Timeline), newest
}

// checkGaps refuses targets that lie beyond a hole in the archived WAL after the backup:
// recovery to "latest" would stop at the hole and promote as if it were the end.
func checkGaps(b backup.Summary, arch wal.Archive, t Target) error {
	_, last, ok := backupSegments(b)
	if !ok {
		return nil
	}
	for _, tl := range arch.Timelines {
		for _, g := range tl.Gaps {
			from, err := wal.ParseSegmentName(g.From, b.WALSegmentSize)
			if err != nil {
				continue
			}
			if tl.TLI < wal.TimelineID(b.Timeline) || tl.TLI == wal.TimelineID(b.Timeline) && from.No <= last {
				continue // older history, or before the backup ended: not on the way
			}
			beyond := false
			switch t.Kind {
			case TargetLatest:
				beyond = true
			case TargetLSN:
				beyond = from.StartLSN(b.WALSegmentSize) <= t.LSN
			}
			if beyond {
				return fmt.Errorf("%w: the archived WAL has a gap (%d segments %s .. %s) between backup %s and the target; recovery would stop there. Restore to a target before %s, or find the missing segments",
					ErrOutsideWindow, g.Count, g.From, g.To, b.Label, g.From)
			}
		}
	}
	return nil
}

func lsnOf(s string) wal.LSN {
	l, err := wal.ParseLSN(s)
	if err != nil {
		return ^wal.LSN(0)
	}
	return l
}

func latestWhere(backups []backup.Summary, ok func(backup.Summary) bool) *backup.Summary {
	for i := len(backups) - 1; i >= 0; i-- {
		if ok(backups[i]) {
			return &backups[i]
		}
	}
	return nil
}

// settings renders the recovery parameters for a target.
func settings(t Target) map[string]string {
	s := map[string]string{}
	switch t.Kind {
	case TargetImmediate:
		s["recovery_target"] = "immediate"
	case TargetTime:
		s["recovery_target_time"] = t.Time.UTC().Format("2006-01-02 15:04:05.999999") + "+00"
	case TargetLSN:
		s["recovery_target_lsn"] = t.LSN.String()
	case TargetXID:
		s["recovery_target_xid"] = strconv.FormatUint(t.XID, 10)
	case TargetName:
		s["recovery_target_name"] = t.Name
	}
	if t.Kind != TargetLatest && t.Kind != TargetImmediate && t.Exclusive {
		s["recovery_target_inclusive"] = "off"
	}
	if t.Action != "" {
		s["recovery_target_action"] = t.Action
	}
	if t.Timeline != "" {
		s["recovery_target_timeline"] = t.Timeline
	}
	return s
}

// QuoteConf quotes a value for postgresql.conf.
func QuoteConf(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }
