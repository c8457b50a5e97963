package backup

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/fs"
)

// BenchmarkPiecesHeld measures the live heap a reader that keeps every extent of a full
// backup holds, per GB of relation files (8 and 32 GB, syntheticManifest): "manifest" is the
// manifest's own form without page hashes (what restore and verify held before Pieces),
// "pieces" Pieces without SHA-256s (a restore), "pieces-sha" Pieces with every SHA-256 (a
// verify, a delta restore). peak-B/GB is the largest live heap while the manifest is read,
// held-B/GB what stays once it is read.
func BenchmarkPiecesHeld(b *testing.B) {
	ctx := context.Background()
	for _, gb := range []int{8, 32} {
		r, label := syntheticRepo(b, gb)
		for _, form := range []string{"manifest", "pieces", "pieces-sha"} {
			b.Run(fmt.Sprintf("%dGB-%s", gb, form), func(b *testing.B) {
				var peak, held uint64
				for b.Loop() {
					base := liveHeap()
					stop := livePeak()
					var keep any
					var err error
					if form == "manifest" {
						keep, err = ReadManifestWithoutPageHashes(ctx, r, label)
					} else {
						sha := form == "pieces-sha"
						_, keep, err = ReadManifestPieces(ctx, r, label, func(*File) bool { return sha })
					}
					if err != nil {
						b.Fatal(err)
					}
					peak = max(peak, stop())
					if live := liveHeap(); live > base {
						held = max(held, live-base)
					}
					runtime.KeepAlive(keep)
				}
				b.ReportMetric(float64(peak)/float64(gb), "peak-B/GB")
				b.ReportMetric(float64(held)/float64(gb), "held-B/GB")
			})
		}
	}
}

// syntheticRepo stores the manifest of syntheticManifest(gb) in a filesystem repository (a
// memory backend would hold what was stored in the heap) and returns the repository and the
// backup's label.
func syntheticRepo(b *testing.B, gb int) (*repo.Repo, string) {
	be, err := fs.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	r := repoOn(b, be)
	m := syntheticManifest(gb)
	if err := writeManifestTo(context.Background(), r, m); err != nil {
		b.Fatal(err)
	}
	return r, m.Label
}
