package fs

import (
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// dropCached tells the kernel that f, now on disk, need not stay in the page cache (a hint).
func dropCached(f *os.File) { _ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED) }

// openUnnamed opens a new file in dir that has no name (O_TMPFILE): if the process dies
// before linkUnnamed names it, the filesystem frees it and nothing is left in the
// repository. errors.ErrUnsupported when dir's filesystem cannot make such files.
func openUnnamed(dir string, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		// EOPNOTSUPP: the filesystem has no unnamed files; EISDIR, EINVAL: the kernel
		// does not know O_TMPFILE (before Linux 3.11).
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
			return nil, errors.ErrUnsupported
		}
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// linkUnnamed gives f, from openUnnamed, the name path. It fails (fs.ErrExist) when path
// exists, as link(2) does. The link goes through /proc/self/fd, the way open(2) documents
// for unprivileged processes (AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH).
func linkUnnamed(f *os.File, path string) error {
	fd := int(f.Fd())
	if err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW); err != nil {
		return &os.LinkError{Op: "link", Old: f.Name() + " (unnamed)", New: path, Err: err}
	}
	return nil
}
