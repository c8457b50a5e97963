package backup

import (
	"strings"
	"testing"
)

func TestStandbyStopRefusesTimelineChangeAndStopBeforeStart(t *testing.T) {
	cases := []struct {
		name string
		src  source
		want string // "" for accepted
	}{
		{"same timeline", source{startTLI: 2, stopTLI: 2, startLSN: "0/4000028", stopLSN: "0/69B3AE0"}, ""},
		{"stop at start", source{startTLI: 1, stopTLI: 1, startLSN: "0/4000028", stopLSN: "0/4000028"}, ""},
		{"timeline moved", source{startTLI: 1, stopTLI: 2, startLSN: "0/4000028", stopLSN: "0/69B3AE0"}, "moved from timeline 1 to 2 during the backup"},
		{"stop before start", source{startTLI: 1, stopTLI: 1, startLSN: "0/5000028", stopLSN: "0/4000000"}, "minimum recovery point 0/4000000 is before the backup's start 0/5000028"},
		{"bad lsn", source{startTLI: 1, stopTLI: 1, startLSN: "0/5000028", stopLSN: "x"}, "stop position"},
	}
	for _, c := range cases {
		err := standbyStop(&c.src)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: error %v, want one with %q", c.name, err, c.want)
		}
	}
}

func TestLastSegmentIsTheOneBeforeTheStopPosition(t *testing.T) {
	const seg = 16 << 20
	cases := []struct{ start, stop, want string }{
		{"0/4000028", "0/69B3AE0", "000000010000000000000006"},
		{"0/4000028", "0/7000000", "000000010000000000000006"}, // stop at a boundary: nothing in segment 7
		{"0/4000028", "0/4000028", "000000010000000000000004"},
		{"1/FF000028", "2/00000010", "000000010000000200000000"},
	}
	for _, c := range cases {
		_, name, err := lastSegment(1, c.start, c.stop, seg)
		if err != nil || name != c.want {
			t.Errorf("lastSegment(%s, %s) = %s, %v; want %s", c.start, c.stop, name, err, c.want)
		}
	}
}

// BASE_BACKUP from a standby sends standby.signal; the backup leaves it out, and the check
// against the server's manifest must accept that and nothing else.
func TestCrossCheckAcceptsOnlyTheSignalFilesLeftOut(t *testing.T) {
	manifest := []byte(`{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [
		{"Path": "standby.signal", "Size": 0, "Checksum-Algorithm": "CRC32C", "Checksum": "00000000"},
		{"Path": "PG_VERSION", "Size": 3, "Checksum-Algorithm": "NONE", "Checksum": ""}]}`)
	if err := crossCheck([]File{{Path: "PG_VERSION", Type: "file", Size: 3}}, manifest); err != nil {
		t.Fatalf("standby.signal left out: %v", err)
	}
	if err := crossCheck(nil, manifest); err == nil || !strings.Contains(err.Error(), "read 1 files, the server's manifest lists 2") {
		t.Fatalf("a data file missing: %v", err)
	}
}
