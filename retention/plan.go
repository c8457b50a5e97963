package retention

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgharbor/pgharbor/wal"
)

// Policy is a retention policy. Zero fields turn a rule off; at least one of FullCount,
// KeepYoungerThan and Window must be set.
type Policy struct {
	// FullCount keeps the newest N full backups.
	FullCount int `json:"full_count,omitempty"`
	// KeepYoungerThan keeps every backup that stopped less than this long ago.
	KeepYoungerThan time.Duration `json:"keep_younger_than,omitempty"`
	// Window keeps every moment of the last Window restorable: the backups that stopped
	// inside it and the newest one that stopped at or before its start.
	Window time.Duration `json:"window,omitempty"`
	// MinCount is the number of backups never crossed, whatever the other rules say
	// (at least 1: expire never deletes the last backup).
	MinCount int `json:"min_count,omitempty"`
}

// ErrNoPolicy means no rule is configured: expiring with none would delete everything.
var ErrNoPolicy = errors.New("no retention rule configured: set retention.full_count, retention.keep_younger_than or retention.window")

// Validate checks the policy.
func (p Policy) Validate() error {
	if p.FullCount < 0 || p.MinCount < 0 || p.KeepYoungerThan < 0 || p.Window < 0 {
		return fmt.Errorf("retention policy %s: counts and durations must not be negative", p)
	}
	if p.FullCount == 0 && p.KeepYoungerThan == 0 && p.Window == 0 {
		return ErrNoPolicy
	}
	return nil
}

func (p Policy) minCount() int { return max(p.MinCount, 1) }

// String renders the policy for logs and reports.
func (p Policy) String() string {
	var parts []string
	if p.FullCount > 0 {
		parts = append(parts, fmt.Sprintf("full_count=%d", p.FullCount))
	}
	if p.KeepYoungerThan > 0 {
		parts = append(parts, "keep_younger_than="+FormatDuration(p.KeepYoungerThan))
	}
	if p.Window > 0 {
		parts = append(parts, "window="+FormatDuration(p.Window))
	}
	parts = append(parts, fmt.Sprintf("min_count=%d", p.minCount()))
	return strings.Join(parts, " ")
}

// Backup is what Plan needs to know of a complete backup.
type Backup struct {
	Label string
	Type  string // full, diff or incr ("" in summaries written before types: full)
	// Parent is the backup a diff or incr backup was compared with; References every
	// backup whose bundles hold pieces of this one. A kept backup keeps its References.
	Parent     string
	References []string
	StartTime  time.Time
	StopTime   time.Time
	StartLSN   wal.LSN
	StopLSN    wal.LSN
	Timeline   wal.TimelineID
	Pinned     bool
}

// WALFile is one object of the WAL archive.
type WALFile struct {
	Name string // file name: segment, .partial, .backup or .history
	Key  string // storage key
	Size int64
}

// Archive is the WAL archive as Plan sees it.
type Archive struct {
	SegmentSize int64
	Files       []WALFile
	// Histories are the parsed timeline history files, by timeline. A timeline above 1
	// whose history is missing or unreadable keeps all its WAL (its ancestry is unknown).
	Histories map[wal.TimelineID]wal.History
}

// BackupDecision is the fate of one backup.
type BackupDecision struct {
	Label    string         `json:"label"`
	Keep     bool           `json:"keep"`
	Reason   string         `json:"reason"`          // "kept: newest 3 full; recovery window", "dropped: …"
	Rules    []string       `json:"rules,omitempty"` // the rules that kept it
	StopTime time.Time      `json:"stop_time"`
	Timeline wal.TimelineID `json:"timeline"`
	StartLSN wal.LSN        `json:"start_lsn"`
	Pinned   bool           `json:"pinned,omitempty"`
}

// TimelineDecision is the WAL horizon of one timeline.
type TimelineDecision struct {
	Timeline wal.TimelineID `json:"timeline"`
	// KeepAll is set when no horizon applies: the timeline's ancestry is unknown.
	KeepAll bool `json:"keep_all,omitempty"`
	// Reachable is false when no kept backup can reach this timeline: all its WAL goes.
	Reachable bool `json:"reachable"`
	// Horizon is the first position kept (when Reachable); FirstKept names its segment.
	Horizon   wal.LSN `json:"horizon,omitempty"`
	FirstKept string  `json:"first_kept,omitempty"`
	// By is the kept backup that sets the horizon.
	By      string `json:"by,omitempty"`
	Reason  string `json:"reason"`
	Dropped int    `json:"dropped"`
	Kept    int    `json:"kept"`
	// DropFirst and DropLast name the first and last dropped object (in name order).
	DropFirst string `json:"drop_first,omitempty"`
	DropLast  string `json:"drop_last,omitempty"`
}

// Decision is Plan's answer.
type Decision struct {
	Policy string    `json:"policy"`
	Now    time.Time `json:"now"`
	// WindowStart is now minus the window (zero without a window rule).
	WindowStart time.Time `json:"window_start,omitzero"`
	// Backups in stop-time order, oldest first.
	Backups   []BackupDecision   `json:"backups"`
	Timelines []TimelineDecision `json:"timelines"`
	// DropWAL are the WAL objects to delete, in archive order.
	DropWAL []WALFile `json:"-"`
	// Notes say what the plan could not do (a window reaching before the oldest backup).
	Notes []string `json:"notes,omitempty"`
}

// Dropped returns the labels of the backups to delete, oldest first.
func (d *Decision) Dropped() []string {
	var out []string
	for _, b := range d.Backups {
		if !b.Keep {
			out = append(out, b.Label)
		}
	}
	return out
}

// Plan decides, without I/O, which backups and which WAL objects the policy keeps at now.
// backups are the complete backups in any order: they are ordered by stop time, never by
// label. With no backup at all no WAL is dropped (there is nothing to measure it against).
func Plan(p Policy, backups []Backup, arch Archive, now time.Time) (*Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if arch.SegmentSize == 0 {
		arch.SegmentSize = wal.DefaultSegmentSize
	}
	if err := wal.CheckSegmentSize(arch.SegmentSize); err != nil {
		return nil, err
	}
	bs := byStopTime(backups)
	d := &Decision{Policy: p.String(), Now: now.UTC(), Backups: make([]BackupDecision, len(bs)), Timelines: []TimelineDecision{}}
	for i, b := range bs {
		d.Backups[i] = BackupDecision{Label: b.Label, StopTime: b.StopTime.UTC(), Timeline: b.Timeline, StartLSN: b.StartLSN, Pinned: b.Pinned}
	}
	keep := func(i int, rule string) { d.Backups[i].Rules = append(d.Backups[i].Rules, rule) }

	// Newest first for the count rules. A diff or incr backup lives as long as the full
	// backup it descends from (pgBackRest's rule).
	if p.FullCount > 0 {
		n := 0
		keptFull := map[string]bool{}
		for i := len(bs) - 1; i >= 0 && n < p.FullCount; i-- {
			if isFull(bs[i]) {
				keep(i, fmt.Sprintf("newest %d full", p.FullCount))
				keptFull[bs[i].Label] = true
				n++
			}
		}
		for i, b := range bs {
			if f := fullOf(bs, b); !isFull(b) && keptFull[f] {
				keep(i, fmt.Sprintf("descends from %s, one of the newest %d full", f, p.FullCount))
			}
		}
	}
	if p.KeepYoungerThan > 0 {
		limit := now.Add(-p.KeepYoungerThan)
		for i, b := range bs {
			if b.StopTime.After(limit) {
				keep(i, "younger than "+FormatDuration(p.KeepYoungerThan))
			}
		}
	}
	if p.Window > 0 {
		start := now.Add(-p.Window)
		d.WindowStart = start.UTC()
		base := -1
		for i, b := range bs {
			if b.StopTime.After(start) {
				keep(i, "recovery window")
			} else {
				base = i
			}
		}
		if base >= 0 {
			keep(base, "recovery window (base for its start "+start.UTC().Format(time.RFC3339)+")")
		} else if len(bs) > 0 {
			d.Notes = append(d.Notes, fmt.Sprintf("the %s window starts at %s, before the oldest backup stopped (%s): the repository cannot restore that far back yet",
				FormatDuration(p.Window), start.UTC().Format(time.RFC3339), bs[0].StopTime.UTC().Format(time.RFC3339)))
		}
	}
	for i, b := range bs {
		if b.Pinned {
			keep(i, "pinned")
		}
	}
	keepReferenced(d, bs)
	kept := 0
	for _, b := range d.Backups {
		if len(b.Rules) > 0 {
			kept++
		}
	}
	for i := len(bs) - 1; i >= 0 && kept < p.minCount(); i-- {
		if len(d.Backups[i].Rules) == 0 {
			keep(i, fmt.Sprintf("minimum count %d", p.minCount()))
			kept++
		}
	}
	keepReferenced(d, bs)
	for i := range d.Backups {
		b := &d.Backups[i]
		b.Keep = len(b.Rules) > 0
		if b.Keep {
			b.Reason = "kept: " + strings.Join(b.Rules, "; ")
		} else {
			b.Reason = "dropped: " + dropReason(p, now, d.WindowStart)
		}
	}
	planWAL(d, bs, arch)
	return d, nil
}

func isFull(b Backup) bool { return b.Type == "" || b.Type == "full" }

// fullOf returns the label of the full backup b descends from through its parents ("" when
// the chain is broken).
func fullOf(bs []Backup, b Backup) string {
	byLabel := make(map[string]Backup, len(bs))
	for _, x := range bs {
		byLabel[x.Label] = x
	}
	for range len(bs) + 1 {
		if isFull(b) {
			return b.Label
		}
		parent, ok := byLabel[b.Parent]
		if !ok {
			return ""
		}
		b = parent
	}
	return ""
}

// keepReferenced keeps every backup whose bundles a kept backup's pieces live in, until
// nothing more changes: "kept: parent of X" or "kept: referenced by X".
func keepReferenced(d *Decision, bs []Backup) {
	index := make(map[string]int, len(bs))
	for i, b := range bs {
		index[b.Label] = i
	}
	for changed := true; changed; {
		changed = false
		for i := len(bs) - 1; i >= 0; i-- {
			if len(d.Backups[i].Rules) == 0 {
				continue
			}
			for _, ref := range bs[i].References {
				j, ok := index[ref]
				if !ok {
					continue
				}
				rule := "referenced by " + bs[i].Label
				if ref == bs[i].Parent {
					rule = "parent of " + bs[i].Label
				}
				if !slices.Contains(d.Backups[j].Rules, rule) {
					if len(d.Backups[j].Rules) == 0 {
						changed = true
					}
					d.Backups[j].Rules = append(d.Backups[j].Rules, rule)
				}
			}
		}
	}
}

// byStopTime returns a copy of backups ordered by stop time (then start time, stop LSN).
func byStopTime(backups []Backup) []Backup {
	bs := append([]Backup(nil), backups...)
	sort.SliceStable(bs, func(i, j int) bool {
		a, b := bs[i], bs[j]
		if !a.StopTime.Equal(b.StopTime) {
			return a.StopTime.Before(b.StopTime)
		}
		if !a.StartTime.Equal(b.StartTime) {
			return a.StartTime.Before(b.StartTime)
		}
		return a.StopLSN < b.StopLSN
	})
	return bs
}

// keepAlso turns dropped backups into kept ones (for rule) and recomputes the WAL decision
// from the new kept set. backups and arch are Plan's input.
func (d *Decision) keepAlso(labels []string, rule string, backups []Backup, arch Archive) {
	for i := range d.Backups {
		b := &d.Backups[i]
		if !b.Keep && slices.Contains(labels, b.Label) {
			b.Keep, b.Rules, b.Reason = true, append(b.Rules, rule), "kept: "+rule
		}
	}
	bs := byStopTime(backups)
	keepReferenced(d, bs)
	for i := range d.Backups {
		b := &d.Backups[i]
		if !b.Keep && len(b.Rules) > 0 {
			b.Keep, b.Reason = true, "kept: "+strings.Join(b.Rules, "; ")
		}
	}
	if arch.SegmentSize == 0 {
		arch.SegmentSize = wal.DefaultSegmentSize
	}
	d.DropWAL, d.Timelines = nil, []TimelineDecision{}
	planWAL(d, byStopTime(backups), arch)
}

// dropReason says which limits a dropped backup is beyond (every active rule let it go).
func dropReason(p Policy, now, windowStart time.Time) string {
	var why []string
	if p.FullCount > 0 {
		why = append(why, fmt.Sprintf("older than the newest %d full", p.FullCount))
	}
	if p.KeepYoungerThan > 0 {
		why = append(why, "older than "+FormatDuration(p.KeepYoungerThan)+" (stopped before "+now.Add(-p.KeepYoungerThan).UTC().Format(time.RFC3339)+")")
	}
	if p.Window > 0 {
		why = append(why, "older than the base backup of the "+FormatDuration(p.Window)+" recovery window (starting "+windowStart.Format(time.RFC3339)+")")
	}
	return strings.Join(why, ", ")
}

// planWAL sets the horizon of every timeline in the archive and lists the WAL to drop.
//
// A kept backup B (timeline T, start S) needs, on a timeline U, the WAL from max(S, where U
// begins) onward when U is T itself or when U's history shows that U branched off T's
// path at or after S; recovery from B can then follow U. WAL before that position, and all
// WAL of timelines no kept backup reaches, goes. History files always stay.
func planWAL(d *Decision, bs []Backup, arch Archive) {
	size := arch.SegmentSize
	type tlFiles struct {
		files []WALFile
		segs  []uint64 // segment number of each file (unused for history files)
	}
	byTL := map[wal.TimelineID]*tlFiles{}
	var order []wal.TimelineID
	for _, f := range arch.Files {
		kind := wal.Classify(f.Name)
		if kind == wal.KindHistory || kind == wal.KindUnknown {
			continue // history files always stay; unknown names are never touched
		}
		seg, err := wal.ParseSegmentName(f.Name[:24], size)
		if err != nil {
			continue
		}
		t := byTL[seg.TLI]
		if t == nil {
			t = &tlFiles{}
			byTL[seg.TLI] = t
			order = append(order, seg.TLI)
		}
		t.files = append(t.files, f)
		t.segs = append(t.segs, seg.No)
	}
	sort.Slice(order, func(i, j int) bool { return order[i] < order[j] })
	var keptBackups []Backup
	for i, b := range bs {
		if d.Backups[i].Keep {
			keptBackups = append(keptBackups, b)
		}
	}
	for _, tli := range order {
		t := byTL[tli]
		td := TimelineDecision{Timeline: tli}
		var hist wal.History
		haveHist := true
		if tli > 1 {
			hist, haveHist = arch.Histories[tli]
		} else {
			hist = wal.History{TLI: 1}
		}
		why := ""
		switch {
		case len(keptBackups) == 0:
			td.KeepAll, td.Reason = true, "no backup in the repository: WAL left alone"
		case !haveHist:
			td.KeepAll, td.Reason = true, fmt.Sprintf("history file %s missing or unreadable: the timeline's ancestry is unknown, all its WAL kept", wal.HistoryFileName(tli))
		default:
			for _, b := range keptBackups {
				if b.Timeline != tli && !hist.Contains(b.Timeline, b.StartLSN) {
					continue
				}
				from, atBegin := b.StartLSN, false
				if begin, ok := hist.Begin(tli); ok && begin > from {
					from, atBegin = begin, true
				}
				if !td.Reachable || from < td.Horizon {
					td.Reachable, td.Horizon, td.By = true, from, b.Label
					why = "the start of kept backup " + b.Label
					if atBegin {
						why = "where this timeline begins; kept backup " + b.Label + " reaches it through the history files"
					}
				}
			}
			if td.Reachable {
				td.FirstKept = segName(wal.SegmentOf(td.Horizon, tli, size), size)
				td.Reason = fmt.Sprintf("kept from %s (segment %s): %s", td.Horizon, td.FirstKept, why)
			} else {
				td.Reason = "no kept backup can reach this timeline: all its WAL dropped"
			}
		}
		first := wal.SegmentOf(td.Horizon, tli, size).No
		for i, f := range t.files {
			if td.KeepAll || (td.Reachable && t.segs[i] >= first) {
				td.Kept++
				continue
			}
			td.Dropped++
			d.DropWAL = append(d.DropWAL, f)
			if td.DropFirst == "" || f.Name < td.DropFirst {
				td.DropFirst = f.Name
			}
			if f.Name > td.DropLast {
				td.DropLast = f.Name
			}
		}
		d.Timelines = append(d.Timelines, td)
	}
}

// FormatDuration renders a duration in days when it is a whole number of them ("7d"),
// otherwise as Go does ("36h0m0s").
func FormatDuration(x time.Duration) string {
	if x > 0 && x%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", x/(24*time.Hour))
	}
	return x.String()
}

// ParseDuration parses Go durations ("36h", "90m") and whole or fractional days ("7d",
// "1.5d"), as the retention settings are written.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 || n > 1e5 {
			return 0, fmt.Errorf("invalid duration %q: want e.g. 7d, 36h or 90m", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	x, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want e.g. 7d, 36h or 90m", s)
	}
	return x, nil
}

// segName names a segment; size has passed wal.CheckSegmentSize in Plan.
func segName(s wal.Segment, size int64) string {
	n, _ := s.SegmentName(size)
	return n
}

// PlanSet decides the expiry of one named backup and every backup that depends on it (an
// incremental or differential whose pieces live in its bundles, directly or through
// another): `expire --set LABEL`, for a backup known to be bad or no longer wanted. Every
// other backup is kept whatever the policy says; the WAL that no kept backup reaches goes,
// as with Plan. It refuses a label it does not know, a pinned backup among those it would
// delete, and deleting every backup.
func PlanSet(label string, backups []Backup, arch Archive, now time.Time) (*Decision, error) {
	if arch.SegmentSize == 0 {
		arch.SegmentSize = wal.DefaultSegmentSize
	}
	if err := wal.CheckSegmentSize(arch.SegmentSize); err != nil {
		return nil, err
	}
	bs := byStopTime(backups)
	idx := slices.IndexFunc(bs, func(b Backup) bool { return b.Label == label })
	if idx < 0 {
		return nil, fmt.Errorf("expire --set %s: no complete backup has that label (`pgharbor info` lists them)", label)
	}
	// The set: label, and whatever references something in the set, until it stops growing.
	set := map[string]string{label: "dropped: named by --set " + label}
	for changed := true; changed; {
		changed = false
		for _, b := range bs {
			if _, in := set[b.Label]; in {
				continue
			}
			for _, ref := range append([]string{b.Parent}, b.References...) {
				if _, in := set[ref]; in && ref != "" {
					set[b.Label] = fmt.Sprintf("dropped: depends on %s (--set %s)", ref, label)
					changed = true
					break
				}
			}
		}
	}
	if len(set) == len(bs) {
		return nil, fmt.Errorf("expire --set %s: it would delete every backup of the cluster (%d with the ones that depend on it); take a new backup first", label, len(set))
	}
	d := &Decision{Policy: "set=" + label, Now: now.UTC(), Backups: make([]BackupDecision, len(bs)), Timelines: []TimelineDecision{}}
	for i, b := range bs {
		d.Backups[i] = BackupDecision{Label: b.Label, StopTime: b.StopTime.UTC(), Timeline: b.Timeline, StartLSN: b.StartLSN, Pinned: b.Pinned}
		why, drop := set[b.Label]
		switch {
		case drop && b.Pinned:
			return nil, fmt.Errorf("expire --set %s: backup %s is pinned; unpin it first (`pgharbor backup unpin %s`) to delete it (%s)", label, b.Label, b.Label, strings.TrimPrefix(why, "dropped: "))
		case drop:
			d.Backups[i].Reason = why
		default:
			d.Backups[i].Keep, d.Backups[i].Rules, d.Backups[i].Reason = true, []string{"not named by --set"}, "kept: not named by --set"
		}
	}
	planWAL(d, bs, arch)
	return d, nil
}
