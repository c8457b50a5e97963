package restore

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestFlusherSyncsAndReportsAFailedFlush(t *testing.T) {
	nop := func(string, ...any) {}

	ok := startFlusher([]string{t.TempDir()}, DefaultFlushAfter, nop)
	ok.wrote("/nonexistent/a", 0, DefaultFlushAfter)
	ok.wrote("/nonexistent/b", 0, 1)
	if err := ok.stop(); err != nil {
		t.Fatalf("flush of a working directory: %v", err)
	}

	gone := filepath.Join(t.TempDir(), "gone")
	bad := startFlusher([]string{gone}, DefaultFlushAfter, nop)
	bad.wrote("/nonexistent/a", 0, DefaultFlushAfter-1)
	bad.wrote("/nonexistent/a", DefaultFlushAfter-1, 1) // reaches DefaultFlushAfter: the flush runs and fails
	err := bad.stop()
	if err == nil || !strings.Contains(err.Error(), gone) {
		t.Fatalf("a flush that failed must fail the restore and name the directory, got %v", err)
	}
}

func TestInterleaveKeepsEveryBundleOnce(t *testing.T) {
	for n := 1; n <= 5; n++ {
		for size := 0; size <= 23; size++ {
			in := make([]int, size)
			for i := range in {
				in[i] = i * 10
			}
			out := interleave(in, n)
			seen := map[int]bool{}
			for _, b := range out {
				if seen[b] {
					t.Fatalf("n=%d size=%d: bundle %d twice in %v", n, size, b, out)
				}
				seen[b] = true
			}
			if len(out) != size {
				t.Fatalf("n=%d size=%d: got %d bundles: %v", n, size, len(out), out)
			}
			if n > 1 && size > n && out[1]-out[0] < 10*(size/n) {
				t.Fatalf("n=%d size=%d: neighbours %d and %d are not a stretch apart", n, size, out[0], out[1])
			}
		}
	}
}
