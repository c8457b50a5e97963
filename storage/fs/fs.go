// Package fs is the filesystem storage.Backend: a directory tree whose files are objects.
//
// Writes go to a new file in the target directory, are fsynced, then named (for
// IfNotExists by a hard link: link(2) fails atomically when the name exists, so concurrent
// writers from any process cannot both win; else by a rename over the key), and the
// directory is fsynced. On Linux the new file has no name until then (O_TMPFILE), so a
// process killed mid-write leaves nothing; elsewhere, or on a filesystem without unnamed
// files, it is a temp file, which List never shows.
//
// When running as root, new files and directories take the owner of the repository root, so
// that an archive_command running as the postgres user and a backup running as root can share
// one repository.
package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgharbor/pgharbor/storage"
)

const tmpPrefix = ".pgharbor-tmp-"

// Backend stores objects as files under Root.
type Backend struct {
	root     string
	uid, gid int // owner for new entries, -1 to leave as created
	// copyBufs holds Put's copy buffers (*[]byte of copyBufSize).
	copyBufs sync.Pool
	probe    sync.Once
	unnamed  bool // Put writes unnamed files (unnamedOK)
}

// copyBufSize is Put's copy buffer: large enough for a sealed object's 64 KiB encryption
// chunks, which a streamed body delivers one write at a time, to go to the file in one
// system call each.
const copyBufSize = 128 << 10

var _ storage.Backend = (*Backend)(nil)

// New opens (and creates, if missing) the directory root as a backend.
func New(root string) (*Backend, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("repository path %s: %w", root, err)
	}
	if err := mkdirLikeParent(abs); err != nil {
		return nil, storage.Permanent(fmt.Errorf("create repository directory %s: %w", abs, err))
	}
	b := &Backend{root: abs, uid: -1, gid: -1}
	if os.Geteuid() == 0 {
		st, err := os.Stat(abs)
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", abs, err)
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
			b.uid, b.gid = int(sys.Uid), int(sys.Gid)
		}
	}
	return b, nil
}

// mkdirLikeParent creates dir and its missing parents. Run as root, it gives the new
// directories the owner of the nearest existing parent: a repository that root creates
// first (`pgharbor info` or `check` before `repo init`) under a directory of the postgres
// user must stay writable by archive_command, which runs as that user.
func mkdirLikeParent(dir string) error {
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirLikeParent(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if os.Geteuid() != 0 {
		return nil
	}
	st, err := os.Stat(parent)
	if err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
		return os.Lchown(dir, int(sys.Uid), int(sys.Gid))
	}
	return nil
}

// Location implements storage.Backend.
func (b *Backend) Location() string { return "file://" + b.root }

// Close implements storage.Backend.
func (b *Backend) Close() error { return nil }

func (b *Backend) path(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", err
	}
	for _, el := range strings.Split(key, "/") {
		if strings.HasPrefix(el, tmpPrefix) {
			return "", storage.Permanent(fmt.Errorf("invalid object key %q: reserved name", key))
		}
	}
	return filepath.Join(b.root, filepath.FromSlash(key)), nil
}

func (b *Backend) own(path string) error {
	if b.uid < 0 {
		return nil
	}
	return os.Lchown(path, b.uid, b.gid)
}

// mkdirAll creates dir and its missing parents, giving each new one the root's owner.
func (b *Backend) mkdirAll(dir string) error {
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	if dir != b.root {
		if err := b.mkdirAll(filepath.Dir(dir)); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return b.own(dir)
}

// StreamsPuts implements storage.Streamer: Put copies its body to a temporary file as it
// reads it.
func (b *Backend) StreamsPuts() bool { return true }

// Put implements storage.Backend.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) (err error) {
	path, err := b.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := b.mkdirAll(dir); err != nil {
		return fmt.Errorf("put %s: create directory: %w", key, err)
	}
	// The body goes to a file without a name where the filesystem has them, else to a
	// temporary name that List skips; either way the key appears only once the file is
	// complete and on disk.
	var f *os.File
	tmp := "" // the temporary name, removed on the way out (after a rename or link, the name only)
	if b.unnamedOK() {
		f, err = openUnnamed(dir, 0o640)
		if err != nil && !errors.Is(err, errors.ErrUnsupported) {
			return fmt.Errorf("put %s: %w", key, err)
		}
	}
	if f == nil {
		tmp = b.tempName(dir)
		if f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640); err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if tmp != "" {
			os.Remove(tmp)
		}
	}()
	if err := b.copyTo(ctx, f, r); err != nil {
		return fmt.Errorf("put %s: write: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %s: fsync: %w", key, err)
	}
	// The object is on disk: drop it from the page cache (a hint; the pages are clean now).
	// A repository is written far more than it is read, and what it holds is read back days
	// later if ever, so caching it only pushes out what the host had cached: on a database
	// host, PostgreSQL's own data. It also keeps a backup from growing the page cache, which
	// is costly on virtual machines that back guest memory lazily: a 2.3 GB backup spent
	// 2-3 s of system time more with the cache growing (bench/backup, 7.1 s against 9.2 s,
	// medians of 3 alternating runs).
	dropCached(f)
	if b.uid >= 0 {
		if err := f.Chown(b.uid, b.gid); err != nil {
			return fmt.Errorf("put %s: chown: %w", key, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	unnamed := tmp == ""
	if unnamed {
		// It has to be open to be linked: under the key when it must not replace an
		// object, else under a temporary name that is then renamed over the key.
		target := path
		if !opts.IfNotExists {
			target = b.tempName(dir)
		}
		if err := linkUnnamed(f, target); err != nil {
			if opts.IfNotExists && errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("put %s: %w", key, storage.ErrExists)
			}
			return fmt.Errorf("put %s: %w", key, err)
		}
		if !opts.IfNotExists {
			tmp = target
		}
	}
	err = f.Close()
	f = nil
	if err != nil {
		return fmt.Errorf("put %s: close: %w", key, err)
	}
	switch {
	case unnamed && opts.IfNotExists: // linked under the key above
	case opts.IfNotExists:
		if err := os.Link(tmp, path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("put %s: %w", key, storage.ErrExists)
			}
			return fmt.Errorf("put %s: link: %w", key, err)
		}
	default:
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("put %s: rename: %w", key, err)
		}
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("put %s: fsync directory: %w", key, err)
	}
	return nil
}

// tempName is a new temporary name in dir, which List skips and keys cannot take.
func (b *Backend) tempName(dir string) string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	return filepath.Join(dir, tmpPrefix+hex.EncodeToString(rnd[:]))
}

// unnamedOK reports whether Put writes unnamed files (openUnnamed), found out once by
// making one in the root and linking it under a temporary name: a filesystem can have
// them and the link still fail (no /proc), which Put must know before it writes a body.
func (b *Backend) unnamedOK() bool {
	b.probe.Do(func() {
		f, err := openUnnamed(b.root, 0o640)
		if err != nil {
			return
		}
		defer f.Close()
		name := b.tempName(b.root)
		if linkUnnamed(f, name) == nil {
			_ = os.Remove(name)
			b.unnamed = true
		}
	})
	return b.unnamed
}

// RemoveTemp implements storage.TempRemover: it removes the temporary files, anywhere under
// the root, last written to before cutoff. A Put leaves one behind only when its process
// dies between creating and renaming it, and only where files cannot be unnamed
// (openUnnamed): on another system, a filesystem without them, or from a version of
// pgharbor before unnamed files.
func (b *Backend) RemoveTemp(ctx context.Context, cutoff time.Time) (storage.TempRemoved, error) {
	var n storage.TempRemoved
	err := walk(ctx, b.root, func(path string, d fs.DirEntry) error {
		if d.IsDir() || !strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		info, ok, err := entryInfo(d)
		if !ok || !info.ModTime().Before(cutoff) {
			return err
		}
		if err := os.Remove(path); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return fmt.Errorf("remove temporary file %s: %w", path, err)
		}
		n.Count++
		n.Bytes += info.Size()
		return nil
	})
	return n, err
}

// walk is filepath.WalkDir from start, skipping entries removed during the walk and ending
// when ctx does.
func walk(ctx context.Context, start string, fn func(path string, d fs.DirEntry) error) error {
	return filepath.WalkDir(start, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		return fn(path, d)
	})
}

// entryInfo is the info of d, from a walk; ok is false when d was removed since (err nil)
// or the info cannot be read (err set).
func entryInfo(d fs.DirEntry) (info fs.FileInfo, ok bool, err error) {
	info, err = d.Info()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	return info, err == nil, err
}

// copyTo copies r to f: straight from r's own buffers when it has them (io.WriterTo),
// else through a buffer of copyBufSize, stopping when ctx ends.
func (b *Backend) copyTo(ctx context.Context, f *os.File, r io.Reader) error {
	if wt, ok := r.(io.WriterTo); ok {
		_, err := wt.WriteTo(ctxWriter{ctx, f})
		return err
	}
	buf, _ := b.copyBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
		*buf = make([]byte, copyBufSize)
	}
	defer b.copyBufs.Put(buf)
	// Through the buffer: os.File's ReadFrom would copy through a new 32 KiB one.
	_, err := io.CopyBuffer(struct{ io.Writer }{f}, ctxReader{ctx, r}, *buf)
	return err
}

type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

func notFound(op, key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%s %s: %w", op, key, storage.ErrNotFound)
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	path, err := b.path(key)
	if err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, storage.Permanent(fmt.Errorf("get %s: negative offset %d", key, offset))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, notFound("get", key, err)
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, storage.ErrNotFound)
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("get %s: seek: %w", key, err)
		}
	}
	if length < 0 {
		return f, nil
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(f, length), f}, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	path, err := b.path(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return storage.ObjectInfo{}, notFound("stat", key, err)
	}
	if st.IsDir() {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, storage.ErrNotFound)
	}
	return storage.ObjectInfo{Key: key, Size: st.Size(), ModTime: st.ModTime()}, nil
}

// List implements storage.Backend. It walks only the directories that can hold keys with
// the prefix, and sorts the keys (a directory walk is not in key order: "a/b-x" < "a/b/c").
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	start := b.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(b.root, filepath.FromSlash(prefix[:i]))
	}
	var infos []storage.ObjectInfo
	err := walk(ctx, start, func(path string, d fs.DirEntry) error {
		rel, _ := filepath.Rel(b.root, path)
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if path != start && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), tmpPrefix) || !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, ok, err := entryInfo(d)
		if !ok {
			return err
		}
		infos = append(infos, storage.ObjectInfo{Key: key, Size: info.Size(), ModTime: info.ModTime()})
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %s/%s: %w", b.Location(), prefix, err)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements storage.Backend. Empty parent directories are left in place (cheap,
// and removing them would race with concurrent writers).
func (b *Backend) Delete(ctx context.Context, key string) error {
	path, err := b.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}
