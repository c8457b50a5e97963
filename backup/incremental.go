package backup

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// Backup types.
const (
	// TypeFull stores every file.
	TypeFull = "full"
	// TypeDiff stores what changed since the newest full backup.
	TypeDiff = "diff"
	// TypeIncr stores what changed since the newest backup of any type.
	TypeIncr = "incr"
)

// ChunkSize is the granularity at which files are cut into extents and compared with the
// parent backup: 16 pages of 8 KiB. Smaller chunks store less after scattered updates but
// make the manifest larger (one extent, with its SHA-256, per chunk).
const ChunkSize = 128 << 10

// mtimeMargin is how much older than the parent's start a file's modification time must be
// for a local incremental to trust size and mtime alone: file systems keep times at a
// coarser grain than the writes they record, and the manifest keeps whole seconds.
const mtimeMargin = 2 * time.Second

// fileKey identifies a file across backups.
type fileKey struct {
	ts   uint32
	path string
}

// base is the backup a diff or incr backup compares its files with.
type base struct {
	label string
	start time.Time
	files map[fileKey]*File
	// trustMtime lets a local backup reuse a file's extents without reading it when size and
	// modification time equal the parent's (false with ChecksumAll).
	trustMtime bool
}

func newBase(m *Manifest, trustMtime bool) *base {
	b := &base{label: m.Label, start: m.StartTime, files: make(map[fileKey]*File, len(m.FileList)), trustMtime: trustMtime}
	for i := range m.FileList {
		f := &m.FileList[i]
		if f.Type == "file" {
			b.files[fileKey{f.Tablespace, f.Path}] = f
		}
	}
	return b
}

// ref is the parent's extent e as a child backup points at it: it names the backup that
// stored the bytes, so restores never walk a chain.
func (b *base) ref(e Extent) Extent {
	if e.Backup == "" {
		e.Backup = b.label
	}
	return e
}

// unchanged returns the parent's copy of f when a local backup may take it without reading
// the file: same size and modification time, and a modification time safely before the
// parent started (a write during or after the parent's read would have moved it). Never for
// pg_control, which PostgreSQL rewrites in place.
func (b *base) unchanged(f *File) *File {
	if b == nil || !b.trustMtime || (f.Tablespace == 0 && f.Path == "global/pg_control") {
		return nil
	}
	prev := b.files[fileKey{f.Tablespace, f.Path}]
	if prev == nil || prev.Size != f.Size || !prev.ModTime.Equal(f.ModTime) || !f.ModTime.Before(b.start.Add(-mtimeMargin)) {
		return nil
	}
	return prev
}

// reuse fills f from the parent's copy prev.
func (p *pipeline) reuse(f *File, prev *File) {
	f.Extents = make([]Extent, len(prev.Extents))
	for i, e := range prev.Extents {
		f.Extents[i] = p.base.ref(e)
	}
	f.CRC, f.Chunk, f.PageErrors = prev.CRC, prev.Chunk, prev.PageErrors
	p.reused.Add(f.Size)
}

// chunkSize is the chunk size files are cut at: ChunkSize, or the bundle size if smaller.
func (p *pipeline) chunkSize() int64 { return min(int64(ChunkSize), int64(p.size)) }

// readFile stores f.Size bytes of the file f from r, cut into chunks at every multiple of
// the chunk size, each chunk an extent of its own. With a parent, a chunk whose SHA-256
// equals the parent's extent at the same offset is not stored again: the extent points at
// the parent's bytes. It returns the bytes read, fewer than f.Size only when r ended early;
// f.Extents and f.Chunk describe those bytes (the caller decides whether that is an error).
func (p *pipeline) readFile(r io.Reader, f *File) (int64, error) {
	chunk := p.chunkSize()
	var prev *File
	if p.base != nil {
		if pf := p.base.files[fileKey{f.Tablespace, f.Path}]; pf != nil && pf.Chunk == chunk {
			prev = pf
		}
	}
	f.Chunk, f.Extents = chunk, nil
	var done int64
	for i := 0; done < f.Size; i++ {
		n := int(min(f.Size-done, chunk))
		buf, err := p.reserve(n)
		if err != nil {
			return done, err
		}
		got, rerr := io.ReadFull(r, buf)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return done, rerr
		}
		done += int64(got)
		if prev != nil && got == n && i < len(prev.Extents) {
			if pe := prev.Extents[i]; pe.Length == int64(n) && !pe.SHA256.IsZero() && Digest(sha256.Sum256(buf)) == pe.SHA256 {
				// The bytes just read stay in the free tail and are overwritten next.
				f.Extents = append(f.Extents, p.base.ref(pe))
				p.reused.Add(int64(n))
				continue
			}
		}
		if f.Extents, err = p.commit(got, f.Extents, false); err != nil {
			return done, err
		}
		if got < n {
			break
		}
	}
	f.CRC = extentsCRC(f.Extents)
	return done, nil
}

// reserve returns n free bytes at the end of the current bundle, handing the bundle to the
// sealers first when fewer are left, so that a chunk never straddles two bundles.
func (p *pipeline) reserve(n int) ([]byte, error) {
	if p.cur != nil && p.size-len(p.cur) < n {
		if err := p.flush(); err != nil {
			return nil, err
		}
	}
	return p.tail(n)
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// chooseBase finds the parent of a backup of type typ and reads its manifest. It returns
// nil (a full backup) for TypeFull, and, with a warning, when no backup can serve as the
// parent: then the backup is taken full, as pgBackRest does.
//
// With fullAfter set, a diff or incr backup is taken full when the newest full backup
// started more than fullAfter before now (one schedule of incrementals that renews its
// full backup every week, say).
func chooseBase(ctx context.Context, r *repo.Repo, typ string, facts serverFacts, checksumAll bool, fullAfter time.Duration, now time.Time, log *slog.Logger) (*base, error) {
	switch typ {
	case TypeFull, "":
		return nil, nil
	case TypeDiff, TypeIncr:
	default:
		return nil, fmt.Errorf("backup type %q: want full, diff or incr", typ)
	}
	cat, err := LoadCatalog(ctx, r)
	if err != nil {
		return nil, err
	}
	var parent *Summary
	for i := len(cat.Backups) - 1; i >= 0; i-- {
		b := &cat.Backups[i]
		if slices.Contains(cat.Expiring, b.Label) {
			continue // an interrupted expire is deleting it
		}
		if typ == TypeIncr || b.Type == TypeFull || b.Type == "" {
			parent = b
			break
		}
	}
	if fullAfter > 0 {
		var newestFull *Summary
		for i := len(cat.Backups) - 1; i >= 0; i-- {
			if b := &cat.Backups[i]; b.Type == TypeFull || b.Type == "" {
				newestFull = b
				break
			}
		}
		if newestFull != nil && newestFull.StartTime.Before(now.Add(-fullAfter)) {
			log.Info(fmt.Sprintf("the newest full backup %s started more than %s ago (backup.full_after): taking a full backup instead of %s", newestFull.Label, fullAfter, typ))
			return nil, nil
		}
	}
	want := "backup"
	if typ == TypeDiff {
		want = "full backup"
	}
	switch {
	case parent == nil:
		log.Warn(fmt.Sprintf("no %s to compare with: taking a full backup instead of %s", want, typ))
		return nil, nil
	case parent.SystemIdentifier != facts.systemID:
		return nil, fmt.Errorf("the newest %s %s belongs to system identifier %s, the server has %s: take a full backup (--type full)", want, parent.Label, parent.SystemIdentifier, facts.systemID)
	case parent.PGVersion/10000 != facts.version/10000:
		log.Warn(fmt.Sprintf("the newest %s %s is of PostgreSQL %d, the server runs %d: taking a full backup instead of %s", want, parent.Label, parent.PGVersion/10000, facts.version/10000, typ))
		return nil, nil
	}
	m, err := ReadManifest(ctx, r, parent.Label)
	if err != nil {
		return nil, fmt.Errorf("read the parent backup: %w", err)
	}
	return newBase(m, !checksumAll), nil
}

// references lists the other backups files' extents point into, oldest (by label) first.
func references(files []File) []string {
	seen := map[string]bool{}
	var out []string
	for _, f := range files {
		for _, e := range f.Extents {
			if e.Backup != "" && !seen[e.Backup] {
				seen[e.Backup] = true
				out = append(out, e.Backup)
			}
		}
	}
	slices.Sort(out)
	return out
}
