package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
)

// DefaultFetchPrefetch is how many segments after a fetched one are downloaded ahead.
const DefaultFetchPrefetch = 8

// ErrSegmentMissing means the archive has no such WAL file. For restore_command it is the
// normal end of the archive (and history files of future timelines are always missing);
// every other fetch error must stop recovery instead.
var ErrSegmentMissing = errors.New("WAL file not in the archive")

// FetchOptions tune Fetch.
type FetchOptions struct {
	// SpoolDir is the root of the spools, which hold prefetched segments; default
	// DefaultSpoolRoot(). Each repository and cluster has its own spool in it.
	SpoolDir string
	// RepoID names the repository's spool (SpoolID); default SpoolID of the backend's
	// location and the cluster.
	RepoID string
	// Prefetch is how many following segments of the same timeline to have downloaded
	// ahead: 0 means DefaultFetchPrefetch, a negative value turns prefetching off.
	Prefetch int
	// StartPrefetcher starts a process that runs Prefetch with PrefetchOptions.SpoolDir =
	// root and the same RepoID, and returns without waiting for it; dir is the repository's
	// spool (for the prefetcher's log). Fetch calls it when segments ahead are missing from
	// the spool and no prefetcher runs. Nil turns prefetching off.
	StartPrefetcher func(root, dir string) error
	// Logger receives warnings about prefetching (nil: discarded).
	Logger *slog.Logger
}

// Fetch writes the archived WAL file name (a segment, .partial, .history or .backup file)
// to dest, for restore_command = 'pgharbor wal fetch %f %p'. dest appears atomically
// (temp file and rename in its directory). A file the archive does not hold is an error
// wrapping ErrSegmentMissing; any other error means the archive could not be read.
//
// A segment already downloaded by the prefetcher is moved into place without a download.
// After a segment, Fetch makes sure the next opts.Prefetch ones are being downloaded.
//
// Every segment handed over is checked first: its header must name the position its name
// says and the database system being recovered (the system identifier in pg_control next
// to dest's pg_wal, or else the repository's). A segment of another system is refused with
// an error naming it: PostgreSQL given such a segment ends recovery there and promotes, and
// everything after it is silently lost.
func Fetch(ctx context.Context, r *repo.Repo, name, dest string, opts FetchOptions) error {
	kind := Classify(name)
	if kind == KindUnknown {
		return fmt.Errorf("fetch %q: %w (restore_command must be 'pgharbor wal fetch %%f %%p')", name, ErrInvalidName)
	}
	p, err := ObjectPath(name)
	if err != nil {
		return err
	}
	key := r.Key(p)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	prefetch := opts.Prefetch
	if prefetch == 0 {
		prefetch = DefaultFetchPrefetch
	}
	var check func(head []byte) error
	if kind == KindSegment {
		check = func(head []byte) error {
			sysid, from, err := expectedSystem(ctx, r, dest)
			if err != nil {
				return err
			}
			return checkFetched(name, head, sysid, from)
		}
	}
	var spool string
	if kind == KindSegment && prefetch > 0 && opts.StartPrefetcher != nil {
		if spool, err = openSpool(opts.SpoolDir, repoSpoolID(r, opts.RepoID), "prefetch"); err != nil {
			log.Warn("prefetch off", "err", err)
			spool = ""
		}
	}
	var size int64
	if spool != "" {
		size, err = takePrefetched(filepath.Join(spool, name), dest, check)
		if err != nil {
			log.Warn("prefetched segment unusable; downloading it", "segment", name, "err", err)
		}
	}
	if size == 0 {
		size, err = download(ctx, r, key, name, dest, check)
		if errors.Is(err, ErrSegmentMissing) && kind == KindSegment {
			// The segment being written when the primary was lost: what `wal receive`
			// stored of it.
			var serr error
			if size, serr = fetchStreamed(ctx, r, name, dest, check); serr == nil {
				log.Info("restored the streamed part of a segment", "segment", name, "bytes", size)
				return nil // not a full segment: nothing after it to prefetch
			} else if !errors.Is(serr, ErrSegmentMissing) {
				return serr
			}
		}
		if err != nil {
			return err
		}
	}
	if spool != "" {
		start := func() error { return opts.StartPrefetcher(opts.SpoolDir, filepath.Dir(spool)) }
		if err := schedulePrefetch(spool, name, size, prefetch, start); err != nil {
			log.Warn("prefetch not started", "err", err)
		}
	}
	return nil
}

// expectedSystem returns the system identifier the segments fetched into dest must carry,
// and where it was read: pg_control of the data directory whose pg_wal holds dest
// (restore_command runs there), else (and when dest is empty) the repository's identity.
func expectedSystem(ctx context.Context, r *repo.Repo, dest string) (uint64, string, error) {
	if abs, err := filepath.Abs(dest); dest != "" && err == nil && filepath.Base(filepath.Dir(abs)) == "pg_wal" {
		pgdata := filepath.Dir(filepath.Dir(abs))
		if sysid, err := ControlSystemIdentifier(pgdata); err == nil && sysid != 0 {
			return sysid, filepath.Join(pgdata, "global", "pg_control"), nil
		}
	}
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		return 0, "", err
	}
	if id.SystemIdentifier == "" {
		return 0, "", nil // nothing archived through pgharbor has named the system yet
	}
	sysid, err := strconv.ParseUint(id.SystemIdentifier, 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("%s: system identifier %q: %w", r.Location(r.Key(repo.IdentityKey)), id.SystemIdentifier, err)
	}
	return sysid, r.Location(r.Key(repo.IdentityKey)), nil
}

// ErrForeignSegment means a WAL segment belongs to another database system, or its header
// does not match its name.
var ErrForeignSegment = errors.New("WAL segment does not belong here")

// checkFetched checks the long page header at the start of segment name (sysid 0: any
// system).
func checkFetched(name string, head []byte, sysid uint64, from string) error {
	h, err := ParseSegmentHeader(head)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrForeignSegment, name, err)
	}
	if sysid != 0 && h.SystemIdentifier != sysid {
		return fmt.Errorf("%w: %s belongs to database system %d, but %s says this cluster is %d", ErrForeignSegment, name, h.SystemIdentifier, from, sysid)
	}
	seg, err := ParseSegmentName(name, h.SegmentSize)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrForeignSegment, name, err)
	}
	if h.PageAddr != seg.StartLSN(h.SegmentSize) {
		return fmt.Errorf("%w: %s starts at %s by its header, but its name says %s", ErrForeignSegment, name, h.PageAddr, seg.StartLSN(h.SegmentSize))
	}
	return nil
}

// headReader keeps the first bytes that pass through it.
type headReader struct {
	r    io.Reader
	head []byte
}

func (h *headReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if k := min(n, longHeaderSize-len(h.head)); k > 0 {
		h.head = append(h.head, p[:k]...)
	}
	return n, err
}

// download decodes key into dest through a temp file in dest's directory, and returns the
// payload size. check, when set, sees the first bytes before dest appears.
func download(ctx context.Context, r *repo.Repo, key, name, dest string, check func(head []byte) error) (int64, error) {
	rc, err := r.GetStream(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, fmt.Errorf("%w: %s (looked for %s)", ErrSegmentMissing, name, r.Location(key))
	}
	if err != nil {
		return 0, fmt.Errorf("fetch %s from %s: %w", name, r.Location(key), err)
	}
	f, err := os.CreateTemp(filepath.Dir(dest), ".pgharbor-fetch-"+name+"-")
	if err != nil {
		rc.Close()
		return 0, fmt.Errorf("fetch %s: %w", name, err)
	}
	hr := &headReader{r: rc}
	n, err := io.Copy(f, hr) // the codec verifies the whole object before EOF
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err == nil && check != nil {
		if err = check(hr.head); err != nil {
			os.Remove(f.Name())
			return 0, fmt.Errorf("%s: %w (run `pgharbor verify`)", r.Location(key), err)
		}
	}
	if err == nil {
		// No fsync: PostgreSQL fetches again after a crash, and makes durable what it keeps.
		err = os.Rename(f.Name(), dest)
	}
	if err != nil {
		os.Remove(f.Name())
		return 0, fmt.Errorf("fetch %s: %w", name, err)
	}
	return n, nil
}

// takePrefetched moves a prefetched segment to dest and returns its size (0 when there is
// none). Prefetched files were fully decoded and checked before they became visible; check
// is run again on the header here, and a segment that fails it is removed, not handed over.
func takePrefetched(src, dest string, check func(head []byte) error) (int64, error) {
	st, err := os.Stat(src)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if check != nil {
		head := make([]byte, longHeaderSize)
		f, err := os.Open(src)
		if err != nil {
			return 0, err
		}
		_, err = io.ReadFull(f, head)
		f.Close()
		if err == nil {
			err = check(head)
		}
		if err != nil {
			os.Remove(src)
			return 0, err
		}
	}
	if err := os.Rename(src, dest); err == nil {
		return st.Size(), nil
	} else if !errors.Is(err, syscall.EXDEV) {
		return 0, err
	}
	// The spool is on another filesystem: copy next to dest, then rename.
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dest), ".pgharbor-fetch-")
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != st.Size() {
		err = fmt.Errorf("%s: copied %d of %d bytes", src, n, st.Size())
	}
	if err == nil {
		err = os.Rename(out.Name(), dest)
	}
	if err != nil {
		os.Remove(out.Name())
		return 0, err
	}
	os.Remove(src)
	return n, nil
}

// want is the prefetch window a fetch asks for: count segments after After.
type want struct {
	After Segment
	Size  int64
	Count int
}

const wantFile = "want"
const lockFile = ".lock"

func (w want) names() []string {
	out := make([]string, 0, w.Count)
	s := w.After
	for range w.Count {
		s = s.Next()
		out = append(out, s.name(w.Size))
	}
	return out
}

func readWant(dir string) (want, error) {
	b, err := os.ReadFile(filepath.Join(dir, wantFile))
	if err != nil {
		return want{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return want{}, fmt.Errorf("%s: malformed", wantFile)
	}
	size, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return want{}, err
	}
	seg, err := ParseSegmentName(f[0], size)
	if err != nil {
		return want{}, err
	}
	n, err := strconv.Atoi(f[2])
	if err != nil || n < 1 || n > 1024 {
		return want{}, fmt.Errorf("%s: bad count %q", wantFile, f[2])
	}
	return want{After: seg, Size: size, Count: n}, nil
}

// schedulePrefetch records the window after name and starts a prefetcher unless the
// window is already in the spool or one is running (it reads the window again when done).
func schedulePrefetch(dir, name string, size int64, n int, start func() error) error {
	seg, err := ParseSegmentName(name, size)
	if err != nil {
		return fmt.Errorf("fetched %s has %d bytes: %w", name, size, err)
	}
	w := want{After: seg, Size: size, Count: n}
	if err := writeFileAtomic(dir, wantFile, fmt.Appendf(nil, "%s %d %d\n", name, size, n)); err != nil {
		return err
	}
	complete := true
	for _, nm := range w.names() {
		if _, err := os.Stat(filepath.Join(dir, nm)); err != nil {
			complete = false
			break
		}
	}
	if complete {
		return nil
	}
	lock, err := tryLock(dir)
	if err != nil {
		return err
	}
	if lock == nil {
		return nil // a prefetcher runs and will see the new window
	}
	lock.Close() // the child takes it
	return start()
}

// tryLock takes the prefetcher lock of dir; nil, nil when another process holds it. The
// lock dies with its process, so a killed prefetcher never blocks the next one.
func tryLock(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return f, nil
}

// PrefetchOptions tune Prefetch.
type PrefetchOptions struct {
	// SpoolDir and RepoID as in FetchOptions.
	SpoolDir string
	RepoID   string
	// Parallel downloads (default 4).
	Parallel int
	// Logger receives one line per failed download (nil: discarded).
	Logger *slog.Logger
}

// prefetchMaxAge is how long an unused prefetched segment is kept.
const prefetchMaxAge = time.Hour

// Prefetch is the body of the background prefetcher: it downloads the window the last
// fetch asked for into the spool, each segment decoded completely into a temp file before
// it is renamed into view, and repeats while fetches move the window. It returns at once
// when another prefetcher holds the spool's lock.
func Prefetch(ctx context.Context, r *repo.Repo, opts PrefetchOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := openSpool(opts.SpoolDir, repoSpoolID(r, opts.RepoID), "prefetch")
	if err != nil {
		return err
	}
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	var sysid uint64 // 0 until a push names the system
	if id.SystemIdentifier != "" {
		if sysid, err = strconv.ParseUint(id.SystemIdentifier, 10, 64); err != nil {
			return fmt.Errorf("prefetch: system identifier %q: %w", id.SystemIdentifier, err)
		}
	}
	lock, err := tryLock(dir)
	if err != nil || lock == nil {
		return err
	}
	defer func() { lock.Close() }()
	_ = lock.Truncate(0)
	_, _ = lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	parallel := opts.Parallel
	if parallel <= 0 {
		parallel = 4
	}
	var last want
	for {
		w, err := readWant(dir)
		if err != nil {
			return fmt.Errorf("prefetch: %w", err)
		}
		if w == last {
			// Let go, then look once more: a fetch that saw the lock held while we were
			// finishing did not start a prefetcher, so its window is ours to serve.
			lock.Close()
			if w, err = readWant(dir); err != nil || w == last {
				return err
			}
			if lock, err = tryLock(dir); err != nil || lock == nil {
				return err
			}
		}
		last = w
		prune(dir, w)
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		for _, name := range w.names() {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				continue
			}
			if ctx.Err() != nil {
				break
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := prefetchOne(ctx, r, dir, name, w.Size, sysid); err != nil && !errors.Is(err, ErrSegmentMissing) {
					log.Warn("prefetch failed", "segment", name, "err", err)
				}
			})
		}
		wg.Wait()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

func prefetchOne(ctx context.Context, r *repo.Repo, dir, name string, size int64, sysid uint64) error {
	p, err := ObjectPath(name)
	if err != nil {
		return err
	}
	// download renames into place only after the object decoded completely and its header
	// named this repository's system.
	from := r.Location(r.Key(repo.IdentityKey))
	n, err := download(ctx, r, r.Key(p), name, filepath.Join(dir, name), func(head []byte) error { return checkFetched(name, head, sysid, from) })
	if err != nil {
		return err
	}
	if n != size {
		os.Remove(filepath.Join(dir, name))
		return fmt.Errorf("%s: %d bytes, segments are %d", r.Location(r.Key(p)), n, size)
	}
	return nil
}

// prune removes prefetched segments the window has passed and any older than prefetchMaxAge.
func prune(dir string, w want) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !IsSegmentName(name) {
			if strings.HasPrefix(name, ".tmp-") || strings.HasPrefix(name, ".pgharbor-fetch-") {
				if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > prefetchMaxAge {
					os.Remove(filepath.Join(dir, name))
				}
			}
			continue
		}
		seg, err := ParseSegmentName(name, w.Size)
		stale := err != nil || (seg.TLI == w.After.TLI && seg.No <= w.After.No)
		if info, ierr := e.Info(); ierr == nil && time.Since(info.ModTime()) > prefetchMaxAge {
			stale = true
		}
		if stale {
			os.Remove(filepath.Join(dir, name))
		}
	}
}

// fetchStreamed assembles segment name from the pieces `wal receive` stored of it, from its
// start as far as they reach without a hole, pads it with zeros to the segment size (where
// PostgreSQL's recovery finds the end of the WAL) and writes it to dest. It returns the bytes
// that came from the repository; ErrSegmentMissing when there are none.
func fetchStreamed(ctx context.Context, r *repo.Repo, name, dest string, check func(head []byte) error) (int64, error) {
	dir := r.Key(Dir, name[:16]) + "/"
	var pieces []string
	err := r.Backend().List(ctx, dir+name+".", func(o storage.ObjectInfo) error {
		if n := path.Base(o.Key); IsStreamName(n) {
			pieces = append(pieces, n)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("fetch %s: list %s: %w", name, r.Location(dir), err)
	}
	end, chain := coverFromStart(pieces)
	if end == 0 {
		return 0, fmt.Errorf("%w: %s (no complete segment and no streamed piece of it in %s)", ErrSegmentMissing, name, r.Location(dir))
	}
	buf := make([]byte, 0, end)
	for _, p := range chain {
		_, from, _, _ := ParseStreamName(p)
		data, err := r.GetBytes(ctx, dir+p)
		if err != nil {
			return 0, fmt.Errorf("fetch %s: %w", name, err)
		}
		skip := int64(len(buf)) - from
		if skip < 0 || skip > int64(len(data)) {
			return 0, fmt.Errorf("fetch %s: streamed piece %s does not continue the ones before it", name, r.Location(dir+p))
		}
		buf = append(buf, data[skip:]...)
	}
	h, err := ParseSegmentHeader(buf)
	if err != nil {
		return 0, fmt.Errorf("fetch %s: streamed pieces: %w", name, err)
	}
	if err := CheckSegmentSize(h.SegmentSize); err != nil || int64(len(buf)) > h.SegmentSize {
		return 0, fmt.Errorf("fetch %s: streamed pieces hold %d bytes of a segment of %d", name, len(buf), h.SegmentSize)
	}
	if check != nil {
		if err := check(buf); err != nil {
			return 0, fmt.Errorf("%s: %w", r.Location(dir+chain[0]), err)
		}
	}
	f, err := os.CreateTemp(filepath.Dir(dest), ".pgharbor-fetch-"+name+"-")
	if err != nil {
		return 0, fmt.Errorf("fetch %s: %w", name, err)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Truncate(h.SegmentSize) // the rest reads as zeros: the end of the WAL
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), dest)
	}
	if err != nil {
		os.Remove(f.Name())
		return 0, fmt.Errorf("fetch %s: %w", name, err)
	}
	return int64(len(buf)), nil
}

// VerifySegment reads the archived segment name whole, as a fetch would, without writing
// it anywhere: it must decrypt and decompress, carry a valid signature when verify keys are
// configured, and start with a page header naming this segment and the repository's system.
func VerifySegment(ctx context.Context, r *repo.Repo, name string) error {
	p, err := ObjectPath(name)
	if err != nil {
		return err
	}
	key := r.Key(p)
	rc, err := r.GetStream(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%w: %s (looked for %s)", ErrSegmentMissing, name, r.Location(key))
	}
	if err != nil {
		return fmt.Errorf("segment %s: %w", name, err) // err names the object
	}
	hr := &headReader{r: rc}
	_, err = io.Copy(io.Discard, hr) // the codec checks the whole object before EOF
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("segment %s: %w", name, err)
	}
	sysid, from, err := expectedSystem(ctx, r, "")
	if err != nil {
		return err
	}
	if err := checkFetched(name, hr.head, sysid, from); err != nil {
		return fmt.Errorf("%s: %w", r.Location(key), err)
	}
	return nil
}
