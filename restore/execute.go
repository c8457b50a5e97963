package restore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Options configure the executor.
type Options struct {
	PGData string
	// TablespaceMap maps a tablespace's old location (or its OID) to a new location.
	TablespaceMap map[string]string
	// Delta reuses a non-empty data directory: files whose size and content (the SHA-256 of
	// each piece, recorded at backup time) match the backup are kept, others are rewritten,
	// files the backup does not have are removed. pg_control, pg_filenode.map, backup_label
	// and tablespace_map are always rewritten, pg_control last.
	Delta bool
	// Workers download and write bundles in parallel (default 4).
	Workers int
	// RestoreCommand is written as restore_command; empty leaves it out (the caller then
	// provides WAL another way).
	RestoreCommand string
	// StandbyMode writes standby.signal instead of recovery.signal.
	StandbyMode bool
	// ArchiveOff writes archive_mode = off, so that a copy (a refreshed test database) never
	// pushes its WAL into the repository it came from.
	ArchiveOff bool
	// NoSync skips flushing the restored files to disk (no write-back hints, no syncfs):
	// faster, for throwaway copies; a crash soon after can leave the copy damaged.
	NoSync bool
	// DBInclude, when not empty, restores only these user databases (names, or OIDs) whole:
	// the relation files of the other user databases become sparse files of their size,
	// full of zeros, so that recovery still runs; drop those databases afterwards. The
	// built-in databases (template0, template1, postgres) are always restored.
	DBInclude []string
	// FlushAfter is how many bytes are written between two background flushes (syncfs, then
	// the flushed pages leave the page cache); 0 means DefaultFlushAfter, negative flushes
	// only at the end.
	FlushAfter int64
	Logger     *slog.Logger
	// Progress, when set, is called with bytes written so far and the total to write.
	Progress func(done, total int64)
}

// Result says what the executor did.
type Result struct {
	Files        int `json:"files"`
	FilesWritten int `json:"files_written"`
	FilesKept    int `json:"files_kept"`
	// FilesPatched counts the files of FilesWritten of which a delta restore rewrote only
	// the pieces whose content differed, keeping the rest in place.
	FilesPatched int `json:"files_patched"`
	FilesRemoved int `json:"files_removed"`
	// FilesZeroed counts the relation files of databases left out by DBInclude, created
	// as sparse zeroed files instead of being fetched.
	FilesZeroed int `json:"files_zeroed,omitempty"`
	// Excluded are the user databases DBInclude left out (Name empty when the backup has no
	// database list): they exist in the restored cluster but cannot be used; drop them.
	Excluded []backup.Database `json:"databases_excluded,omitempty"`
	Bytes    int64             `json:"bytes_written"`
	Bundles  int               `json:"bundles_fetched"`
	// Phases says where the time went (a delta restore's compare is part of layout).
	Phases Phases `json:"phases"`
}

// Execute writes the plan's backup into opts.PGData and configures recovery.
func Execute(ctx context.Context, r *repo.Repo, plan *Plan, o Options) (*Result, error) {
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	m, ps, err := readPieces(ctx, r, plan.Backup.Label, o.Delta)
	if err != nil {
		return nil, err
	}
	pgManifest, err := backup.ReadPGManifest(ctx, r, plan.Backup.Label)
	if err != nil {
		return nil, fmt.Errorf("backup %s: read backup_manifest: %w", plan.Backup.Label, err)
	}
	roots, err := tablespaceRoots(o, m.Tablespaces)
	if err != nil {
		return nil, err
	}
	if err := validatePieces(m, roots, ps); err != nil {
		return nil, err
	}
	excluded, err := excludedDatabases(m, o.DBInclude)
	if err != nil {
		return nil, err
	}
	owner, err := OwnerFor(o.PGData)
	if err != nil {
		return nil, err
	}
	for _, root := range roots {
		if err := prepareDir(root, o.Delta, owner); err != nil {
			return nil, err
		}
	}
	x := &executor{r: r, m: m, ps: ps, o: o, roots: roots, owner: owner, excluded: excluded}
	x.res.Excluded = excludedList(m, excluded)
	t0 := time.Now()
	if err := x.layout(ctx); err != nil {
		return nil, err
	}
	t1 := time.Now()
	if !o.NoSync {
		dirs := make([]string, 0, len(roots))
		for _, root := range roots {
			dirs = append(dirs, root)
		}
		sort.Strings(dirs)
		every := o.FlushAfter
		if every == 0 {
			every = DefaultFlushAfter
		}
		x.flush = startFlusher(dirs, every, o.Logger.Debug)
	}
	err = x.fetch(ctx)
	if x.flush != nil {
		if ferr := x.flush.stop(); err == nil {
			err = ferr
		}
	}
	if err != nil {
		return nil, err
	}
	t2 := time.Now()
	if err := x.finish(ctx, pgManifest, plan); err != nil {
		return nil, err
	}
	x.res.Phases.Layout, x.res.Phases.FetchWrite, x.res.Phases.FinishSync = seconds(t1.Sub(t0)), seconds(t2.Sub(t1)), seconds(time.Since(t2))
	o.Logger.Debug("restore phases", "layout", t1.Sub(t0), "compare", time.Duration(x.res.Phases.Compare*float64(time.Second)), "fetch_and_write", t2.Sub(t1), "finish_and_sync", time.Since(t2))
	return &x.res, nil
}

type executor struct {
	r     *repo.Repo
	m     *backup.Manifest // its FileList without extents: they are in ps
	ps    *backup.Pieces
	o     Options
	roots map[uint32]string // tablespace OID (0 = data directory) -> directory
	owner *syscall.Credential
	need  []bool // per file: must be written
	// kept, per file a delta restore patches in place: which of its extents are already on
	// disk with the recorded content (nil: the whole file is written)
	kept [][]bool
	// control is the index of global/pg_control among the files (-1: none), which finish
	// writes after everything else is durable.
	control int
	res     Result
	done    atomic.Int64
	total   int64
	flush   *flusher // nil with NoSync
	// excluded are the databases left out by DBInclude (nil: every database is restored).
	excluded map[uint32]bool
}

// OwnerFor says who must own a restored data directory. When running as root: the owner of
// the data directory, or of its nearest existing parent; when that is root too, the
// "postgres" OS user (PostgreSQL refuses to run as root, so a root-owned data directory is
// never what is wanted). Otherwise nil: files belong to the current user.
func OwnerFor(pgdata string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for dir := filepath.Clean(pgdata); ; dir = filepath.Dir(dir) {
		if st, err := os.Stat(dir); err == nil {
			if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 {
				return &syscall.Credential{Uid: sys.Uid, Gid: sys.Gid}, nil
			}
			break
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, %s would belong to root, which PostgreSQL refuses, and there is no postgres OS user: create the directory owned by the server's user first", pgdata)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (x *executor) chown(p string) error {
	if x.owner == nil {
		return nil
	}
	return os.Lchown(p, int(x.owner.Uid), int(x.owner.Gid))
}

func tablespaceRoots(o Options, ts []backup.Tablespace) (map[uint32]string, error) {
	roots := map[uint32]string{0: filepath.Clean(o.PGData)}
	used := map[string]bool{}
	for _, t := range ts {
		loc := t.Location
		for _, key := range []string{t.Location, strconv.FormatUint(uint64(t.OID), 10)} {
			if n, ok := o.TablespaceMap[key]; ok {
				loc, used[key] = n, true
			}
		}
		if !filepath.IsAbs(loc) {
			return nil, fmt.Errorf("tablespace %d: location %q is not absolute", t.OID, loc)
		}
		roots[t.OID] = filepath.Clean(loc)
	}
	for k := range o.TablespaceMap {
		if !used[k] {
			return nil, fmt.Errorf("--tablespace-map %s: the backup has no tablespace with that location or OID", k)
		}
	}
	return roots, nil
}

// prepareDir creates dir, or checks it is empty (or reusable with delta).
func prepareDir(dir string, delta bool, owner *syscall.Credential) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Missing parents must stay traversable by the server's user; the directory itself
		// is private, as PostgreSQL wants.
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		if owner != nil {
			return os.Chown(dir, int(owner.Uid), int(owner.Gid))
		}
		return nil
	case err != nil:
		return fmt.Errorf("read %s: %w", dir, err)
	}
	if len(entries) == 0 {
		return nil
	}
	if !delta {
		return fmt.Errorf("%s is not empty: restore into an empty directory, or use --delta to reuse it", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err == nil {
		return fmt.Errorf("%s has postmaster.pid: stop the server before a delta restore", dir)
	}
	return nil
}

func (x *executor) filePath(f backup.File) string {
	return filepath.Join(x.roots[f.Tablespace], filepath.FromSlash(f.Path))
}

// controlFile is the file PostgreSQL reads first to know where recovery starts. It is
// written last, once everything else is durable (as pg_basebackup and pg_rewind do), and a
// delta restore removes the old one before it changes anything: a restore that is killed
// halfway leaves a directory PostgreSQL refuses to start, never one that starts from the
// old pg_control over new files.
const controlFile = "global/pg_control"

// isControl says whether f is the data directory's pg_control.
func isControl(f backup.File) bool { return f.Tablespace == 0 && f.Path == controlFile }

// alwaysWritten says whether a delta restore must rewrite the file whatever its content:
// the files PostgreSQL treats specially at startup.
// A database whose default tablespace is another one keeps its pg_filenode.map there.
func alwaysWritten(f backup.File) bool {
	if path.Base(f.Path) == "pg_filenode.map" {
		return true
	}
	if f.Tablespace != 0 {
		return false
	}
	switch f.Path {
	case controlFile, "backup_label", "tablespace_map", "backup_manifest":
		return true
	}
	return false
}

// layout creates directories and symlinks, decides which files need writing (delta) and
// sizes them, and removes files the backup does not have (delta).
func (x *executor) layout(ctx context.Context) error {
	files := x.m.FileList
	x.need = make([]bool, len(files))
	x.kept = make([][]bool, len(files))
	x.control = -1
	order := make([]int, len(files))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return files[order[a]].Path < files[order[b]].Path })
	keep := map[string]bool{}
	for _, root := range x.roots {
		keep[root] = true
	}
	if x.o.Delta {
		if err := removeDurably(filepath.Join(x.roots[0], filepath.FromSlash(controlFile))); err != nil {
			return err
		}
	}
	var regular []int
	for _, i := range order {
		f := files[i]
		p := x.filePath(f)
		keep[p] = true
		switch f.Type {
		case "dir":
			if err := os.MkdirAll(p, 0o700); err != nil {
				return fmt.Errorf("create directory %s: %w", p, err)
			}
			if err := os.Chmod(p, f.Mode.Perm()); err != nil {
				return err
			}
			if err := x.chown(p); err != nil {
				return err
			}
		case "symlink":
			link := f.Link
			// pg_tblspc/<oid> points at the tablespace's (possibly remapped) location.
			if dir, base := path.Split(f.Path); f.Tablespace == 0 && dir == "pg_tblspc/" {
				if oid, err := strconv.ParseUint(base, 10, 32); err == nil {
					if root, ok := x.roots[uint32(oid)]; ok {
						link = root
					}
				}
			}
			if cur, err := os.Readlink(p); err == nil && cur == link {
				continue
			}
			os.RemoveAll(p)
			if err := os.Symlink(link, p); err != nil {
				return fmt.Errorf("create symlink %s: %w", p, err)
			}
			if err := x.chown(p); err != nil {
				return err
			}
		case "file":
			if x.zeroed(f) {
				if err := x.zeroFile(p, f); err != nil {
					return err
				}
				continue
			}
			regular = append(regular, i)
		}
	}
	tc := time.Now()
	onDisk, err := x.compare(ctx, regular)
	if x.o.Delta {
		x.res.Phases.Compare = seconds(time.Since(tc))
	}
	if err != nil {
		return err
	}
	for k, i := range regular {
		f := files[i]
		p := x.filePath(f)
		x.res.Files++
		if onDisk[k].same() {
			x.res.FilesKept++
			continue
		}
		x.need[i] = true
		x.res.FilesWritten++
		if kept := onDisk[k].kept; kept != nil {
			// Patched in place: only the pieces that differ are written, the file takes
			// its recorded size (cut or extended) first.
			x.kept[i] = kept
			x.res.FilesPatched++
			for j, e := range x.ps.File(i) {
				if !kept[j] {
					x.total += e.Length
				}
			}
			if err := os.Truncate(p, f.Size); err != nil {
				return fmt.Errorf("size %s: %w", p, err)
			}
			continue
		}
		x.total += f.Size
		if isControl(f) {
			x.control = i // written by finish, last
			continue
		}
		if err := x.createSized(p, f); err != nil {
			return err
		}
	}
	if x.o.Delta {
		if err := x.removeExtra(x.roots[0], keep); err != nil {
			return err
		}
		// In a tablespace's directory only the version directories (PG_…) the backup has
		// are PostgreSQL's; whatever else is there is left alone.
		for _, f := range files {
			if f.Tablespace != 0 && f.Type == "dir" && !strings.Contains(f.Path, "/") {
				if err := x.removeExtra(x.filePath(f), keep); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// zeroFile creates p as a sparse file of f's size, full of zeros (a relation file of a
// database left out by DBInclude).
func (x *executor) zeroFile(p string, f backup.File) error {
	x.res.Files++
	x.res.FilesZeroed++
	return x.createSized(p, f)
}

// createSized creates (or empties) p as a sparse file of f's size, to be written piece by
// piece, and gives it the data directory's owner.
func (x *executor) createSized(p string, f backup.File) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	if st, err := os.Lstat(p); err == nil && !st.Mode().IsRegular() {
		// A delta over a directory where something else stands in the file's place:
		// never write through a symlink, never into a directory.
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("replace %s: %w", p, err)
		}
	}
	fh, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, f.Mode.Perm()|0o200)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	err = fh.Truncate(f.Size)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("size %s: %w", p, err)
	}
	return x.chown(p)
}

// removeDurably removes p if it exists and makes the removal durable.
func removeDurably(p string) error {
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return syncDir(filepath.Dir(p))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// removeExtra deletes what the backup does not have below root (delta restore).
func (x *executor) removeExtra(root string, keep map[string]bool) error {
	var extra []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if keep[p] {
			return nil
		}
		extra = append(extra, p)
		if d.IsDir() {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("scan %s: %w", root, err)
	}
	for _, p := range extra {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		x.res.FilesRemoved++
	}
	return nil
}

// piece is the extent ext of file file of the manifest (indexes, not a copy: a restore of a
// large cluster holds millions), which starts at off in its file.
type piece struct {
	file, ext int32
	off       int64
}

// extent is the manifest's extent pc names.
func (x *executor) extent(pc piece) *backup.Piece {
	return &x.ps.File(int(pc.file))[pc.ext]
}

// bundleRef names a bundle: the backup that stored it and its number. A diff or incr
// backup's pieces live in its own bundles and in those of the backups it references.
type bundleRef struct {
	label string
	n     int
}

// fetch downloads every bundle that holds bytes of a file to write, in parallel, and writes
// the pieces in place, checking each piece's CRC-32C. Every bundle is read once, whichever
// backup it belongs to: a restore of an incremental backup is one pass, never a full
// restore followed by increments.
func (x *executor) fetch(ctx context.Context) error {
	byBundle := map[bundleRef][]piece{}
	for i := range x.ps.Len() {
		xs := x.ps.File(i)
		if !x.need[i] || i == x.control {
			continue
		}
		var off int64
		for j, e := range xs {
			if x.kept[i] == nil || !x.kept[i][j] {
				k := bundleRef{x.ps.Owner(e), int(e.Bundle)}
				byBundle[k] = append(byBundle[k], piece{file: int32(i), ext: int32(j), off: off})
			}
			off += e.Length
		}
	}
	bundles := make([]bundleRef, 0, len(byBundle))
	for b := range byBundle {
		bundles = append(bundles, b)
	}
	sort.Slice(bundles, func(i, j int) bool {
		if bundles[i].label != bundles[j].label {
			return bundles[i].label < bundles[j].label
		}
		return bundles[i].n < bundles[j].n
	})
	x.res.Bundles = len(bundles)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(x.o.Workers)
	for _, b := range interleave(bundles, x.o.Workers) {
		pieces := byBundle[b]
		sort.Slice(pieces, func(i, j int) bool { return x.extent(pieces[i]).Offset < x.extent(pieces[j]).Offset })
		g.Go(func() error { return x.writeBundle(gctx, b, pieces) })
	}
	return g.Wait()
}

// ownerNote says which backup an object belongs to when it is not the one restored.
func (x *executor) ownerNote(label string) string {
	if label == x.m.Label {
		return ""
	}
	return fmt.Sprintf(" (an object of backup %s, which backup %s references)", label, x.m.Label)
}

// interleave orders bundles so that the ones written at the same time lie far apart: the
// list is cut into n stretches and they take turns. Consecutive bundles usually hold
// consecutive pieces of one large file, and writers of one file queue on its inode lock
// (perf showed the kernel spinning on it for 3-4% of a restore's CPU).
func interleave[T any](bundles []T, n int) []T {
	if n <= 1 || len(bundles) <= n {
		return bundles
	}
	stretch := (len(bundles) + n - 1) / n
	out := make([]T, 0, len(bundles))
	for i := range stretch {
		for j := i; j < len(bundles); j += stretch {
			out = append(out, bundles[j])
		}
	}
	return out
}

func (x *executor) writeBundle(ctx context.Context, b bundleRef, pieces []piece) error {
	key := backup.BundleKey(x.r, b.label, b.n)
	rc, err := x.r.GetData(ctx, key)
	if err != nil {
		return fmt.Errorf("backup %s: %w%s", x.m.Label, err, x.ownerNote(b.label))
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 256<<10)
	var pos int64
	buf := make([]byte, 256<<10)
	// Consecutive pieces of a bundle are mostly consecutive chunks of one file: it stays
	// open from one to the next.
	var fh *os.File
	var open string
	defer func() {
		if fh != nil {
			fh.Close()
		}
	}()
	for _, pc := range pieces {
		e := x.extent(pc)
		if e.Offset < pos {
			return fmt.Errorf("backup %s: bundle %d of backup %s: overlapping pieces in the manifest", x.m.Label, b.n, b.label)
		}
		if _, err := br.Discard(int(e.Offset - pos)); err != nil {
			return fmt.Errorf("read %s%s: %w", x.r.Location(key), x.ownerNote(b.label), err)
		}
		pos = e.Offset
		f := x.m.FileList[pc.file]
		p := x.filePath(f)
		if p != open {
			if fh != nil {
				err := fh.Close()
				fh = nil
				if err != nil {
					return fmt.Errorf("close %s: %w", open, err)
				}
			}
			if fh, err = os.OpenFile(p, os.O_WRONLY|unix.O_NOFOLLOW, 0); err != nil {
				return fmt.Errorf("open %s: %w", p, err)
			}
			open = p
		}
		fileOff := pc.off
		pieceOff := fileOff
		crc := uint32(0)
		left := e.Length
		for left > 0 {
			chunk := buf[:min(int64(len(buf)), left)]
			if _, err := io.ReadFull(br, chunk); err != nil {
				return fmt.Errorf("read %s%s (piece of %s): %w", x.r.Location(key), x.ownerNote(b.label), f.Path, err)
			}
			crc = crc32.Update(crc, castagnoli, chunk)
			if _, err := fh.WriteAt(chunk, fileOff); err != nil {
				// err names the file already ("write <path>: ...")
				if errors.Is(err, syscall.ENOSPC) {
					return fmt.Errorf("%w: the filesystem is full; make room and run the same restore with --delta, which keeps the files already written", err)
				}
				return err
			}
			fileOff += int64(len(chunk))
			left -= int64(len(chunk))
			x.progress(int64(len(chunk)))
		}
		// Start writing the piece back to disk now: the final syncfs then waits only for
		// the tail, instead of for every byte written (with a large page cache nothing
		// reaches the disk on its own until long after the restore wrote it).
		if x.flush != nil {
			startWriteback(fh, pieceOff, e.Length)
			x.flush.wrote(p, pieceOff, e.Length)
		}
		if crc != e.CRC {
			return fmt.Errorf("backup %s: %s: checksum mismatch in a piece from %s%s: the object is damaged (run `pgharbor verify --backup %s`)", x.m.Label, f.Path, x.r.Location(key), x.ownerNote(b.label), x.m.Label)
		}
		pos += e.Length
	}
	if fh != nil {
		err := fh.Close()
		fh = nil
		if err != nil {
			return fmt.Errorf("close %s: %w", open, err)
		}
	}
	return nil
}

func (x *executor) progress(n int64) {
	done := x.done.Add(n)
	x.res.Bytes = done
	if x.o.Progress != nil {
		x.o.Progress(done, x.total)
	}
}

// finish writes backup_manifest and the
// recovery configuration, and makes everything durable with one syncfs per file system.
func (x *executor) finish(ctx context.Context, pgManifest []byte, plan *Plan) error {
	pgdata := x.roots[0]
	// A restore that left databases out differs from the backup on purpose:
	// pg_verifybackup against the backup's manifest would report every zeroed file.
	if len(x.excluded) == 0 {
		if err := x.writeFile(filepath.Join(pgdata, "backup_manifest"), pgManifest, 0o600); err != nil {
			return err
		}
	} else if err := removeDurably(filepath.Join(pgdata, "backup_manifest")); err != nil {
		return err
	}
	signal := "recovery.signal"
	if x.o.StandbyMode {
		signal = "standby.signal"
	}
	if err := x.writeFile(filepath.Join(pgdata, signal), nil, 0o600); err != nil {
		return err
	}
	autoConf := filepath.Join(pgdata, "postgresql.auto.conf")
	old, err := os.ReadFile(autoConf)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", autoConf, err)
	}
	var conf strings.Builder
	conf.WriteString(stripRecoverySettings(string(old)))
	conf.WriteString("# recovery settings written by pgharbor restore of backup " + x.m.Label + "\n")
	if x.o.RestoreCommand != "" {
		fmt.Fprintf(&conf, "restore_command = %s\n", QuoteConf(x.o.RestoreCommand))
	}
	if x.o.ArchiveOff {
		conf.WriteString("archive_mode = 'off'\n")
	}
	keys := make([]string, 0, len(plan.Settings))
	for k := range plan.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&conf, "%s = %s\n", k, QuoteConf(plan.Settings[k]))
	}
	if err := x.writeFile(autoConf, []byte(conf.String()), 0o600); err != nil {
		return err
	}
	for _, root := range x.roots {
		if x.o.NoSync {
			break
		}
		if err := syncFS(root); err != nil {
			return fmt.Errorf("sync %s: %w", root, err)
		}
	}
	return x.writeControl(ctx)
}

// writeControl writes global/pg_control from the backup, through a temp file and a rename,
// once every other file is on disk.
func (x *executor) writeControl(ctx context.Context) error {
	if x.control < 0 {
		return nil
	}
	f := x.m.FileList[x.control]
	data := make([]byte, 0, f.Size)
	for _, e := range x.ps.Extents(x.control) {
		piece, err := x.readPiece(ctx, f, e)
		if err != nil {
			return err
		}
		data = append(data, piece...)
	}
	if int64(len(data)) != f.Size {
		return fmt.Errorf("backup %s: %s has %d bytes in its pieces, the manifest says %d", x.m.Label, f.Path, len(data), f.Size)
	}
	p := x.filePath(f)
	tmp := p + ".pgharbor-tmp"
	os.Remove(tmp)
	fh, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, f.Mode.Perm()|0o200)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	_, err = fh.Write(data)
	if err == nil && !x.o.NoSync {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = x.chown(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", p, err)
	}
	x.progress(f.Size)
	if x.o.NoSync {
		return nil
	}
	return syncDir(filepath.Dir(p))
}

// readPiece returns the bytes of one extent, checked against its CRC-32C and SHA-256.
func (x *executor) readPiece(ctx context.Context, f backup.File, e backup.Extent) ([]byte, error) {
	owner := e.Owner(x.m.Label)
	key := backup.BundleKey(x.r, owner, e.Bundle)
	rc, err := x.r.GetData(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w%s", x.m.Label, err, x.ownerNote(owner))
	}
	defer rc.Close()
	if _, err := io.CopyN(io.Discard, rc, e.Offset); err != nil {
		return nil, fmt.Errorf("read %s%s: %w", x.r.Location(key), x.ownerNote(owner), err)
	}
	buf := make([]byte, e.Length)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("read %s%s (piece of %s): %w", x.r.Location(key), x.ownerNote(owner), f.Path, err)
	}
	if crc32.Checksum(buf, castagnoli) != e.CRC || (!e.SHA256.IsZero() && backup.PieceDigest(e, buf) != e.SHA256) {
		return nil, fmt.Errorf("backup %s: %s: checksum mismatch in a piece from %s%s: the object is damaged (run `pgharbor verify --backup %s`)", x.m.Label, f.Path, x.r.Location(key), x.ownerNote(owner), x.m.Label)
	}
	return buf, nil
}

func (x *executor) writeFile(p string, data []byte, mode fs.FileMode) error {
	if err := os.WriteFile(p, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return x.chown(p)
}

// stripRecoverySettings removes what an earlier restore wrote into postgresql.auto.conf (a
// backup of a restored cluster carries it): a stale recovery_target_time would silently
// stop the next recovery at the old target.
func stripRecoverySettings(conf string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(conf, "\n") {
		trimmed := strings.TrimSpace(line)
		key, _, _ := strings.Cut(trimmed, "=")
		key = strings.TrimSpace(key)
		if key == "restore_command" || key == "recovery_target" || strings.HasPrefix(key, "recovery_target_") ||
			strings.HasPrefix(trimmed, "# recovery settings written by pgharbor") {
			continue
		}
		b.WriteString(line)
	}
	out := b.String()
	if out != "" && !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	return out
}
