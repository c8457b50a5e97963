package restore

import (
	"context"
	"io"
	"math"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/pgharbor/pgharbor/backup"
)

// Phases are the seconds a restore spent in each of its steps, for --output json and the
// debug log: a slow rebuild says whether reading the old copy, fetching or syncing cost it.
type Phases struct {
	// Layout includes Compare: reading and hashing the files already on disk (delta).
	Layout     float64 `json:"layout_s"`
	Compare    float64 `json:"compare_s,omitempty"`
	FetchWrite float64 `json:"fetch_write_s"`
	FinishSync float64 `json:"finish_sync_s"`
}

func seconds(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

// diskCopy is what a delta restore found of a file on disk: for each of the manifest's
// extents, whether the disk holds exactly its bytes (nil: nothing usable).
type diskCopy struct {
	kept  []bool
	sized bool // the file on disk has the recorded size
}

// same reports whether the file on disk is exactly the recorded one: it is kept as it is.
func (d diskCopy) same() bool {
	if d.kept == nil || !d.sized {
		return false
	}
	for _, k := range d.kept {
		if !k {
			return false
		}
	}
	return true
}

// compareUnit is how many bytes of a file one compare job reads at once: large enough that
// the read is one long sequential request, small enough that the big relation segments,
// which hold almost all the bytes, are spread over every worker instead of leaving one
// core to hash a whole segment alone, and that a run read into the buffer is still in the
// core's cache when it is hashed (with runs of several MiB the hash reads it from memory
// again).
const compareUnit = 2 << 20

// compareJob is a run of whole extents of one file, read with one pread and hashed.
type compareJob struct {
	k      int // index into compare's result
	path   string
	exts   []backup.Extent
	first  int   // index of exts[0] among the file's extents
	off    int64 // where exts[0] starts in the file
	length int64
}

// compare reads, for each of the regular files idx, the copy already on disk in a delta
// restore and hashes it extent by extent against the SHA-256 the manifest recorded: a file
// whose extents all match is kept, one where some match is patched (only the others are
// written). The decision is by content only. Files are cut into runs of extents that
// workers read and hash in parallel, more workers than cores so that reads are in flight
// while the others hash.
func (x *executor) compare(ctx context.Context, idx []int) ([]diskCopy, error) {
	out := make([]diskCopy, len(idx))
	if !x.o.Delta {
		return out, nil
	}
	workers := max(x.o.Workers, 2*runtime.NumCPU())
	next := make(chan compareJob)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for j := range next {
				if int64(cap(buf)) < j.length {
					buf = make([]byte, max(j.length, compareUnit))
				}
				compareRun(j, buf[:j.length], out[j.k].kept)
			}
		}()
	}
	// Files are planned one at a time as the workers take their runs: a file's extents are
	// made in backup.Extent's form only while its runs are compared.
	var err error
	var jobs []compareJob
feed:
	for k, i := range idx {
		f := x.m.FileList[i]
		if alwaysWritten(f) {
			continue
		}
		f.Extents = x.ps.Extents(i)
		out[k], jobs = planCompare(k, x.filePath(f), f, jobs[:0])
		for _, j := range jobs {
			select {
			case next <- j:
			case <-ctx.Done():
				err = ctx.Err()
				break feed
			}
		}
	}
	close(next)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	for k := range out {
		out[k] = usable(out[k])
	}
	return out, nil
}

// planCompare appends to jobs the runs of f's extents to read from the file at p (job index
// k) and returns the diskCopy they fill in. Extents past the end of the file on disk are
// written; the others are read in runs of about compareUnit bytes. Nothing is usable when
// the file is missing or not regular, or when the manifest has no hashes.
func planCompare(k int, p string, f backup.File, jobs []compareJob) (diskCopy, []compareJob) {
	st, err := os.Lstat(p)
	if err != nil || !st.Mode().IsRegular() || !hashed(f) {
		return diskCopy{}, jobs
	}
	if len(f.Extents) == 0 {
		if st.Size() != 0 {
			return diskCopy{}, jobs // an empty file in the backup: truncate by rewriting
		}
		return diskCopy{kept: []bool{}, sized: f.Size == 0}, jobs
	}
	d := diskCopy{kept: make([]bool, len(f.Extents)), sized: st.Size() == f.Size}
	var off, runOff, runLen int64
	first := 0
	for j, e := range f.Extents {
		if off+e.Length > st.Size() {
			break
		}
		if runLen > 0 && runLen+e.Length > compareUnit {
			jobs = append(jobs, compareJob{k: k, path: p, exts: f.Extents[first:j], first: first, off: runOff, length: runLen})
			first, runOff, runLen = j, off, 0
		}
		runLen += e.Length
		off += e.Length
		if j == len(f.Extents)-1 || off+f.Extents[j+1].Length > st.Size() {
			jobs = append(jobs, compareJob{k: k, path: p, exts: f.Extents[first : j+1], first: first, off: runOff, length: runLen})
			break
		}
	}
	return d, jobs
}

// usable turns a file none of whose extents matched into "nothing usable": it is rewritten
// whole rather than patched piece by piece.
func usable(d diskCopy) diskCopy {
	if len(d.kept) == 0 {
		return d
	}
	for _, k := range d.kept {
		if k {
			return d
		}
	}
	return diskCopy{}
}

// compareContent compares one file, reading it run after run: compare does the same for
// many files at once.
func compareContent(p string, f backup.File) diskCopy {
	d, jobs := planCompare(0, p, f, nil)
	var buf []byte
	for _, j := range jobs {
		if int64(cap(buf)) < j.length {
			buf = make([]byte, j.length)
		}
		compareRun(j, buf[:j.length], d.kept)
	}
	return usable(d)
}

// hashed says whether every extent of f has its SHA-256 (manifests written before they were
// recorded have none, and a CRC cannot prove two pieces equal).
func hashed(f backup.File) bool {
	for _, e := range f.Extents {
		if e.SHA256.IsZero() {
			return false
		}
	}
	return true
}

// compareRun reads the run j into buf and sets kept for each of its extents whose bytes hash
// to the recorded SHA-256. A run that cannot be read keeps nothing: its extents are written.
func compareRun(j compareJob, buf []byte, kept []bool) {
	fh, err := os.Open(j.path)
	if err != nil {
		return
	}
	n, err := fh.ReadAt(buf, j.off)
	fh.Close()
	if err != nil && err != io.EOF {
		return
	}
	var off int64
	for i, e := range j.exts {
		if off+e.Length > int64(n) {
			return
		}
		if backup.PieceDigest(e, buf[off:off+e.Length]) == e.SHA256 {
			kept[j.first+i] = true
		}
		off += e.Length
	}
}
