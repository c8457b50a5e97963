package restore

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestFlusherSyncsAndReportsAFailedFlush(t *testing.T) {
	nop := func(string, ...any) {}

	ok := startFlusher([]string{t.TempDir()}, nop)
	ok.wrote(flushEvery)
	ok.wrote(1)
	if err := ok.stop(); err != nil {
		t.Fatalf("flush of a working directory: %v", err)
	}

	gone := filepath.Join(t.TempDir(), "gone")
	bad := startFlusher([]string{gone}, nop)
	bad.wrote(flushEvery - 1)
	bad.wrote(1) // reaches flushEvery: the flush runs and fails
	err := bad.stop()
	if err == nil || !strings.Contains(err.Error(), gone) {
		t.Fatalf("a flush that failed must fail the restore and name the directory, got %v", err)
	}
}
