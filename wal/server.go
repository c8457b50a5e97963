package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// SegmentHeader is what the long page header at the start of every WAL segment says
// (XLogLongPageHeaderData). It ties a segment file to its server.
type SegmentHeader struct {
	Magic            uint16
	TLI              TimelineID // timeline of the first page (an older one in a new timeline's first segment)
	PageAddr         LSN        // LSN of the segment's first byte
	SystemIdentifier uint64
	SegmentSize      int64
	BlockSize        int
}

const (
	longHeaderSize = 40
	xlpLongHeader  = 0x0002
)

// ParseSegmentHeader decodes the long page header at the start of a segment (PostgreSQL
// writes it in the machine's byte order).
func ParseSegmentHeader(b []byte) (SegmentHeader, error) {
	if len(b) < longHeaderSize {
		return SegmentHeader{}, fmt.Errorf("WAL segment shorter than its %d-byte header", longHeaderSize)
	}
	e := binary.NativeEndian
	info := e.Uint16(b[2:])
	if info&xlpLongHeader == 0 {
		return SegmentHeader{}, errors.New("no long page header at the start of the WAL segment")
	}
	return SegmentHeader{
		Magic:            e.Uint16(b[0:]),
		TLI:              TimelineID(e.Uint32(b[4:])),
		PageAddr:         LSN(e.Uint64(b[8:])),
		SystemIdentifier: e.Uint64(b[24:]),
		SegmentSize:      int64(e.Uint32(b[32:])),
		BlockSize:        int(e.Uint32(b[36:])),
	}, nil
}

// AppendSegmentHeader writes a long page header; tests use it to build segment files.
func AppendSegmentHeader(b []byte, h SegmentHeader) []byte {
	e := binary.NativeEndian
	var hdr [longHeaderSize]byte
	e.PutUint16(hdr[0:], h.Magic)
	e.PutUint16(hdr[2:], xlpLongHeader)
	e.PutUint32(hdr[4:], uint32(h.TLI))
	e.PutUint64(hdr[8:], uint64(h.PageAddr))
	e.PutUint64(hdr[24:], h.SystemIdentifier)
	e.PutUint32(hdr[32:], uint32(h.SegmentSize))
	e.PutUint32(hdr[36:], uint32(h.BlockSize))
	return append(b, hdr[:]...)
}

// checkSegment verifies that data is the complete segment name claims to be: its size is
// the one its header records, and the header's page address is the segment's start.
func checkSegment(name string, kind Kind, data []byte) (SegmentHeader, error) {
	h, err := ParseSegmentHeader(data)
	if err != nil {
		return h, fmt.Errorf("%s: %w", name, err)
	}
	if err := CheckSegmentSize(h.SegmentSize); err != nil {
		return h, fmt.Errorf("%s: header: %w", name, err)
	}
	if kind == KindSegment && int64(len(data)) != h.SegmentSize {
		return h, fmt.Errorf("%s: %d bytes, but its header says segments are %d bytes: not a complete WAL segment", name, len(data), h.SegmentSize)
	}
	seg, err := ParseSegmentName(name[:24], h.SegmentSize)
	if err != nil {
		return h, err
	}
	if h.PageAddr != seg.StartLSN(h.SegmentSize) {
		return h, fmt.Errorf("%s: its header says it starts at %s, but the name says %s: refusing to archive it under this name", name, h.PageAddr, seg.StartLSN(h.SegmentSize))
	}
	return h, nil
}

// ControlSystemIdentifier reads the system identifier from PGDATA/global/pg_control (its
// first 8 bytes, machine byte order).
func ControlSystemIdentifier(pgdata string) (uint64, error) {
	f, err := os.Open(filepath.Join(pgdata, "global", "pg_control"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return 0, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// DataDirVersion reads PGDATA/PG_VERSION ("15") as a server_version_num-like number (150000).
func DataDirVersion(pgdata string) (int, error) {
	b, err := os.ReadFile(filepath.Join(pgdata, "PG_VERSION"))
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	major, minor, _ := strings.Cut(s, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0, fmt.Errorf("PG_VERSION %q: %w", s, err)
	}
	if n < 10 { // 9.6 → 90600
		m, _ := strconv.Atoi(minor)
		return n*10000 + m*100, nil
	}
	return n * 10000, nil
}
