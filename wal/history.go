package wal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrBadHistory means a timeline history file does not parse.
var ErrBadHistory = errors.New("invalid timeline history file")

// HistoryEntry is one line of a history file: timeline TLI ended at Switch (the first LSN
// that belongs to the next timeline on the path).
type HistoryEntry struct {
	TLI    TimelineID `json:"timeline"`
	Switch LSN        `json:"switch_lsn"`
	Reason string     `json:"reason,omitempty"`
}

// History is the path from timeline 1 to TLI: the ancestors in Entries, oldest first.
// Timeline 1 (which has no history file) has no entries.
type History struct {
	TLI     TimelineID     `json:"timeline"`
	Entries []HistoryEntry `json:"entries"`
}

// maxHistoryLine bounds one line of a history file (the reason is free text).
const maxHistoryLine = 64 << 10

// ParseHistory parses the content of timeline tli's history file ("0000000T.history") the
// way PostgreSQL's readTimeLineHistory does: "parentTLI<TAB>X/X<TAB>reason" lines, '#'
// comments and blank lines ignored. Timelines must increase and stay below tli, and switch
// points must not go backwards.
func ParseHistory(tli TimelineID, data []byte) ([]HistoryEntry, error) {
	if tli == 0 {
		return nil, fmt.Errorf("%w: timeline 0 does not exist", ErrBadHistory)
	}
	var out []HistoryEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxHistoryLine)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimLeft(sc.Text(), " \t\r")
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.SplitN(line, "\t", 3)
		if len(fields) < 2 {
			return nil, fmt.Errorf("%w: %s line %d: expected \"timeline<TAB>switch LSN<TAB>reason\"", ErrBadHistory, HistoryFileName(tli), lineNo)
		}
		t, err := strconv.ParseUint(strings.TrimSpace(fields[0]), 10, 32)
		if err != nil || t == 0 {
			return nil, fmt.Errorf("%w: %s line %d: bad timeline %q", ErrBadHistory, HistoryFileName(tli), lineNo, fields[0])
		}
		lsn, err := ParseLSN(strings.TrimSpace(fields[1]))
		if err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %w", ErrBadHistory, HistoryFileName(tli), lineNo, err)
		}
		e := HistoryEntry{TLI: TimelineID(t), Switch: lsn}
		if len(fields) == 3 {
			e.Reason = strings.TrimSpace(fields[2])
		}
		if e.TLI >= tli {
			return nil, fmt.Errorf("%w: %s line %d: timeline %d is not an ancestor of %d", ErrBadHistory, HistoryFileName(tli), lineNo, e.TLI, tli)
		}
		if n := len(out); n > 0 {
			if e.TLI <= out[n-1].TLI {
				return nil, fmt.Errorf("%w: %s line %d: timelines must increase", ErrBadHistory, HistoryFileName(tli), lineNo)
			}
			if e.Switch < out[n-1].Switch {
				return nil, fmt.Errorf("%w: %s line %d: switch point %s is before the previous one %s", ErrBadHistory, HistoryFileName(tli), lineNo, e.Switch, out[n-1].Switch)
			}
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadHistory, HistoryFileName(tli), err)
	}
	return out, nil
}

// NewHistory parses timeline tli's history file into a History.
func NewHistory(tli TimelineID, data []byte) (History, error) {
	entries, err := ParseHistory(tli, data)
	if err != nil {
		return History{}, err
	}
	return History{TLI: tli, Entries: entries}, nil
}

// bounds returns where timeline t begins and ends on the path (end 0 = open), and
// whether t is on the path at all.
func (h History) bounds(t TimelineID) (begin, end LSN, ok bool) {
	for i, e := range h.Entries {
		if e.TLI == t {
			if i > 0 {
				begin = h.Entries[i-1].Switch
			}
			return begin, e.Switch, true
		}
	}
	if t == h.TLI {
		if n := len(h.Entries); n > 0 {
			begin = h.Entries[n-1].Switch
		}
		return begin, 0, true
	}
	return 0, 0, false
}

// SwitchPoint returns the LSN at which the path to h.TLI leaves timeline t, and false when
// t is h.TLI itself (never left) or not on the path.
func (h History) SwitchPoint(t TimelineID) (LSN, bool) {
	_, end, ok := h.bounds(t)
	if !ok || t == h.TLI {
		return 0, false
	}
	return end, true
}

// Contains reports whether position x of timeline t lies on the path to h.TLI: t is
// h.TLI or an ancestor, and x is between where the path entered t and where it left it.
func (h History) Contains(t TimelineID, x LSN) bool {
	begin, end, ok := h.bounds(t)
	if !ok || x < begin {
		return false
	}
	return t == h.TLI || x < end
}

// TimelineOf returns the timeline whose WAL holds position x on the path to h.TLI.
func (h History) TimelineOf(x LSN) TimelineID {
	for _, e := range h.Entries {
		if x < e.Switch {
			return e.TLI
		}
	}
	return h.TLI
}

// Begin returns the LSN where the path enters timeline t (0 for the first timeline), and
// false when t is not on the path.
func (h History) Begin(t TimelineID) (LSN, bool) {
	begin, _, ok := h.bounds(t)
	return begin, ok
}
