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

	"github.com/pgharbor/pgharbor/internal/repo"
)

// DefaultSpoolRoot holds the spools when the configuration names no spool directory:
// $TMPDIR/pgharbor-spool.
func DefaultSpoolRoot() string { return filepath.Join(os.TempDir(), "pgharbor-spool") }

// SpoolID names the spool of one cluster in one repository: the cluster's name (for people)
// and a hash of where the repository is. Two clusters of the same name in different
// repositories, or one cluster moved to another repository, never share a spool: a marker
// saying "pushed" or a prefetched segment is only true of the repository it came from.
// location must name the repository completely (URL and endpoint).
func SpoolID(location, cluster string) string {
	h := sha256.Sum256([]byte(location + "\x00" + cluster))
	return cluster + "-" + hex.EncodeToString(h[:8])
}

// repoSpoolID is the SpoolID of r unless the caller gave one.
func repoSpoolID(r *repo.Repo, id string) string {
	if id != "" {
		return id
	}
	return SpoolID(r.Backend().Location(), r.Cluster())
}

// openSpool returns root/id/sub (creating it), 0700 and owned by the running user. The
// default root is shared by every user of the host, so it is made world-writable with the
// sticky bit (like /tmp) and the repository's directory in it must be ours and not a
// symlink.
func openSpool(root, id, sub string) (string, error) {
	shared := root == ""
	if shared {
		root = DefaultSpoolRoot()
	}
	dir := filepath.Join(root, id)
	if shared {
		parent := root
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

// ClearPrefetched removes what an earlier recovery left in the prefetch spool of the
// repository id names under root (empty: the default root): segments it fetched ahead and
// never used, and the window it asked for. A restore calls it so that it starts from the
// repository alone.
func ClearPrefetched(root, id string) error {
	if root == "" {
		root = DefaultSpoolRoot()
	}
	dir := filepath.Join(root, id, "prefetch")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if IsSegmentName(name) || name == wantFile || strings.HasPrefix(name, ".pgharbor-fetch-") {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}
