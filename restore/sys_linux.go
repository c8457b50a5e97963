package restore

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFS flushes the whole file system holding dir: one call instead of an fsync per file.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// startWriteback asks the kernel to begin writing a range of f to disk without waiting for
// it (sync_file_range with SYNC_FILE_RANGE_WRITE). Only a hint: durability still comes from
// the syncfs at the end, so an error (a file system without the call) is ignored.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// adviseDontNeed tells the kernel the range of f that is on disk need not stay in the page
// cache (a hint).
func adviseDontNeed(f *os.File, off, n int64) {
	_ = unix.Fadvise(int(f.Fd()), off, n, unix.FADV_DONTNEED)
}
