package fs

import (
	"os"

	"golang.org/x/sys/unix"
)

// dropCached tells the kernel that f, now on disk, need not stay in the page cache (a hint).
func dropCached(f *os.File) { _ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED) }
