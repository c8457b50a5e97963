package wal

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultSegmentSize is initdb's default WAL segment size. It is only a fallback for
// repositories whose identity does not record the size yet; code that knows the server's
// or the repository's size passes it explicitly.
const DefaultSegmentSize int64 = 16 << 20

// ErrInvalidName means a string is not a WAL file name of the expected kind.
var ErrInvalidName = errors.New("invalid WAL file name")

// LSN is a WAL position (a byte offset in the WAL stream since initdb).
type LSN uint64

// ParseLSN parses PostgreSQL's "16/B374D848" notation (two hex numbers of up to 8 digits).
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || !isHex(hi, 1, 8) || !isHex(lo, 1, 8) {
		return 0, fmt.Errorf("invalid LSN %q: want two hex numbers like 16/B374D848", s)
	}
	h, _ := strconv.ParseUint(hi, 16, 32)
	l, _ := strconv.ParseUint(lo, 16, 32)
	return LSN(h<<32 | l), nil
}

// String renders the LSN as PostgreSQL does ("16/B374D848").
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// MarshalText renders the LSN for JSON and YAML.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses the "16/B374D848" form.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// TimelineID identifies a timeline; the first is 1, 0 is never valid.
type TimelineID uint32

// String renders the timeline as the 8 hex digits file names use.
func (t TimelineID) String() string { return fmt.Sprintf("%08X", uint32(t)) }

// ParseTimelineID parses 8 hex digits ("00000002").
func ParseTimelineID(s string) (TimelineID, error) {
	if !isUpperHex(s, 8) {
		return 0, fmt.Errorf("%w: timeline %q: want 8 upper-case hex digits", ErrInvalidName, s)
	}
	v, _ := strconv.ParseUint(s, 16, 32)
	if v == 0 {
		return 0, fmt.Errorf("%w: timeline 0 does not exist", ErrInvalidName)
	}
	return TimelineID(v), nil
}

// Segment is one WAL segment: a timeline and a segment number (LSN / segment size).
type Segment struct {
	TLI TimelineID
	No  uint64
}

// CheckSegmentSize reports whether size is one PostgreSQL allows (a power of two from
// 1 MiB to 1 GiB).
func CheckSegmentSize(size int64) error {
	if size < 1<<20 || size > 1<<30 || size&(size-1) != 0 {
		return fmt.Errorf("invalid WAL segment size %d: must be a power of two between 1 MiB and 1 GiB", size)
	}
	return nil
}

// segmentsPerID is how many segments one "xlogid" (the middle 8 hex digits) holds.
func segmentsPerID(size int64) uint64 { return (1 << 32) / uint64(size) }

// SegmentOf returns the segment of tli that holds lsn.
func SegmentOf(lsn LSN, tli TimelineID, size int64) Segment {
	return Segment{TLI: tli, No: uint64(lsn) / uint64(size)}
}

// name formats the file name; size must have passed CheckSegmentSize.
func (s Segment) name(size int64) string {
	per := segmentsPerID(size)
	return fmt.Sprintf("%08X%08X%08X", uint32(s.TLI), s.No/per, s.No%per)
}

// SegmentName returns the segment's 24-character file name.
func (s Segment) SegmentName(size int64) (string, error) {
	if err := CheckSegmentSize(size); err != nil {
		return "", err
	}
	return s.name(size), nil
}

// StartLSN returns the LSN of the segment's first byte.
func (s Segment) StartLSN(size int64) LSN { return LSN(s.No * uint64(size)) }

// Next returns the following segment on the same timeline.
func (s Segment) Next() Segment { return Segment{TLI: s.TLI, No: s.No + 1} }

// ParseSegmentName parses a 24-character segment file name for the given segment size.
func ParseSegmentName(name string, size int64) (Segment, error) {
	if err := CheckSegmentSize(size); err != nil {
		return Segment{}, err
	}
	if !IsSegmentName(name) {
		return Segment{}, fmt.Errorf("%w: %q is not a WAL segment name (24 upper-case hex digits)", ErrInvalidName, name)
	}
	tli, err := ParseTimelineID(name[:8])
	if err != nil {
		return Segment{}, fmt.Errorf("%w: %q: timeline 0", ErrInvalidName, name)
	}
	id, _ := strconv.ParseUint(name[8:16], 16, 32)
	seg, _ := strconv.ParseUint(name[16:24], 16, 32)
	per := segmentsPerID(size)
	if seg >= per {
		return Segment{}, fmt.Errorf("%w: %q: segment part %08X is too large for %d-byte segments", ErrInvalidName, name, seg, size)
	}
	return Segment{TLI: tli, No: id*per + seg}, nil
}

// Kind tells what a file in pg_wal (or in the archive) is.
type Kind int

// Kinds of WAL files.
const (
	KindUnknown       Kind = iota
	KindSegment            // 000000010000000000000001
	KindPartial            // 000000010000000000000001.partial
	KindHistory            // 00000002.history
	KindBackupHistory      // 000000010000000000000001.00000028.backup
	KindStream             // 000000010000000000000001.00000000-0001A000.stream
)

// String names the kind for messages.
func (k Kind) String() string {
	switch k {
	case KindSegment:
		return "segment"
	case KindPartial:
		return "partial"
	case KindHistory:
		return "history"
	case KindBackupHistory:
		return "backup history"
	case KindStream:
		return "streamed piece"
	}
	return "unknown"
}

// Classify tells which kind of WAL file name is; it does not need the segment size.
func Classify(name string) Kind {
	switch {
	case IsSegmentName(name):
		return KindSegment
	case IsPartialName(name):
		return KindPartial
	case IsHistoryName(name):
		return KindHistory
	case IsBackupHistoryName(name):
		return KindBackupHistory
	case IsStreamName(name):
		return KindStream
	}
	return KindUnknown
}

// IsStreamName reports whether name names a piece of a segment that `wal receive` stored
// while the segment was being written: "<segment>.<from>-<to>.stream", from and to being
// byte offsets in the segment (8 hex digits each).
func IsStreamName(name string) bool {
	base, ok := strings.CutSuffix(name, ".stream")
	return ok && len(base) == 42 && base[24] == '.' && base[33] == '-' && IsSegmentName(base[:24]) &&
		isUpperHex(base[25:33], 8) && isUpperHex(base[34:], 8)
}

// StreamName names the piece of segment seg holding its bytes from..to.
func StreamName(seg string, from, to int64) string {
	return fmt.Sprintf("%s.%08X-%08X.stream", seg, from, to)
}

// ParseStreamName splits a streamed piece's name into its segment and byte range.
func ParseStreamName(name string) (seg string, from, to int64, err error) {
	if !IsStreamName(name) {
		return "", 0, 0, fmt.Errorf("%w: %q is not a streamed piece name", ErrInvalidName, name)
	}
	f, _ := strconv.ParseUint(name[25:33], 16, 32)
	t, _ := strconv.ParseUint(name[34:42], 16, 32)
	if t <= f {
		return "", 0, 0, fmt.Errorf("%w: %q ends before it starts", ErrInvalidName, name)
	}
	return name[:24], int64(f), int64(t), nil
}

// IsSegmentName reports whether name is 24 upper-case hex digits (PostgreSQL's
// IsXLogFileName).
func IsSegmentName(name string) bool { return isUpperHex(name, 24) }

// IsPartialName reports whether name is a segment name followed by ".partial".
func IsPartialName(name string) bool {
	base, ok := strings.CutSuffix(name, ".partial")
	return ok && IsSegmentName(base)
}

// IsHistoryName reports whether name is a timeline history file name ("00000002.history").
func IsHistoryName(name string) bool {
	base, ok := strings.CutSuffix(name, ".history")
	return ok && isUpperHex(base, 8)
}

// IsBackupHistoryName reports whether name is a backup history file name
// ("000000010000000000000002.00000028.backup").
func IsBackupHistoryName(name string) bool {
	base, ok := strings.CutSuffix(name, ".backup")
	return ok && len(base) == 33 && base[24] == '.' && IsSegmentName(base[:24]) && isUpperHex(base[25:], 8)
}

// HistoryFileName returns the name of timeline tli's history file.
func HistoryFileName(tli TimelineID) string { return tli.String() + ".history" }

func isUpperHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func isHex(s string, min, max int) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'F' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
