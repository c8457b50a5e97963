package wal

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DefaultSpoolDir is the spool of cluster when the configuration names none:
// $TMPDIR/pgharbor-spool/<cluster>.
func DefaultSpoolDir(cluster string) string {
	return filepath.Join(os.TempDir(), "pgharbor-spool", cluster)
}

// openSpool returns the spool directory (and creates sub inside it), 0700 and owned by the
// running user. A default spool lives in a shared temp dir, so its parent is made
// world-writable with the sticky bit (like /tmp) and the cluster's directory must be ours
// and not a symlink.
func openSpool(dir, cluster, sub string) (string, error) {
	shared := dir == ""
	if shared {
		dir = DefaultSpoolDir(cluster)
		parent := filepath.Dir(dir)
		if err := os.Mkdir(parent, 0o700); err == nil {
			if err := os.Chmod(parent, 0o777|os.ModeSticky); err != nil {
				return "", fmt.Errorf("spool %s: %w", parent, err)
			}
		} else if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("spool %s: %w", parent, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("spool directory %s: %w (set wal.spool_dir)", dir, err)
	}
	if shared {
		st, err := os.Lstat(dir)
		if err != nil {
			return "", fmt.Errorf("spool directory %s: %w", dir, err)
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !st.IsDir() || (ok && int(sys.Uid) != os.Geteuid()) {
			return "", fmt.Errorf("spool directory %s is not a directory owned by uid %d: set wal.spool_dir to a private directory", dir, os.Geteuid())
		}
	}
	full := filepath.Join(dir, sub)
	if err := os.MkdirAll(full, 0o700); err != nil {
		return "", fmt.Errorf("spool directory %s: %w", full, err)
	}
	return full, nil
}

// marker is what the push spool remembers of a segment pushed ahead of its archive_command
// call: its size and SHA-256.
type marker struct {
	size   int64
	digest [32]byte
}

func (m marker) String() string { return fmt.Sprintf("%x %d\n", m.digest, m.size) }

func parseMarker(b []byte) (marker, bool) {
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return marker{}, false
	}
	d, err := hex.DecodeString(f[0])
	if err != nil || len(d) != 32 {
		return marker{}, false
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || n < 0 {
		return marker{}, false
	}
	var m marker
	m.size = n
	copy(m.digest[:], d)
	return m, true
}

// writeFileAtomic writes data to dir/name through a temp file and a rename. No fsync: spool
// files are hints; losing one costs a repeated upload or download, never data.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, ".tmp-"+name+"-")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// takeMarker reports whether walPath was already pushed by an earlier call, as a marker in
// dir says, and the file still has the size and content it had then. The marker is removed
// either way: it is used once.
func takeMarker(dir, name, walPath string) (bool, error) {
	mp := filepath.Join(dir, name)
	b, err := os.ReadFile(mp)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer os.Remove(mp)
	m, ok := parseMarker(b)
	if !ok {
		return false, nil
	}
	f, err := os.Open(walPath)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() != m.size {
		return false, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum == m.digest, nil
}
