package backup

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
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

// PageSize is PostgreSQL's block size: a changed chunk of a relation file is compared and
// stored page by page.
const PageSize = 8 << 10

// PageHashSize is how many bytes of each page's keyed hash a manifest keeps (Extent.Pages).
// The hash only tells which pages to compare further: a reference to a parent's page always
// carries the SHA-256 of the bytes it stands for (see storeChanged).
const PageHashSize = 8

// pageKeySize is the length of a chain's page key.
const pageKeySize = 32

// pageHasher computes the keyed page hashes of Extent.Pages: the first PageHashSize bytes of
// SHA-256(key ‖ page). Used by the single reader goroutine only.
type pageHasher struct {
	key     []byte
	h       hash.Hash
	scratch []byte
}

// newPageHasher takes the parent's page key, or draws a new one for a full backup (or a
// parent written without one).
func newPageHasher(b *base) (*pageHasher, error) {
	key := make([]byte, pageKeySize)
	if b != nil && len(b.pageKey) == pageKeySize {
		copy(key, b.pageKey)
	} else if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("draw a page key: %w", err)
	}
	return &pageHasher{key: key, h: sha256.New()}, nil
}

// sum returns the page hashes of buf, whose length is a multiple of PageSize.
func (ph *pageHasher) sum(buf []byte) []byte {
	out := make([]byte, 0, len(buf)/PageSize*PageHashSize)
	for off := 0; off+PageSize <= len(buf); off += PageSize {
		ph.h.Reset()
		ph.h.Write(ph.key)
		ph.h.Write(buf[off : off+PageSize])
		ph.scratch = ph.h.Sum(ph.scratch[:0])
		out = append(out, ph.scratch[:PageHashSize]...)
	}
	return out
}

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
	// pageKey keys the parent's page hashes (Manifest.PageKey); nil if it has none.
	pageKey []byte
}

func newBase(m *Manifest, trustMtime bool) *base {
	b := &base{label: m.Label, start: m.StartTime, files: make(map[fileKey]*File, len(m.FileList)), trustMtime: trustMtime, pageKey: m.PageKey}
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
// the chunk size. With a parent, a chunk whose SHA-256 equals the parent's extent at the same
// offset is not stored again: the extent points at the parent's bytes. A changed chunk of a
// relation file whose parent pieces carry page hashes is compared page by page
// (storeChanged): only the runs of changed pages are stored, the runs of unchanged pages point
// into the parent's pieces. It returns the bytes read, fewer than f.Size only when r ended
// early; f.Extents and f.Chunk describe those bytes (the caller decides whether that is an
// error).
func (p *pipeline) readFile(r io.Reader, f *File) (int64, error) {
	chunk := p.chunkSize()
	var prev []placed
	if p.base != nil {
		if pf := p.base.files[fileKey{f.Tablespace, f.Path}]; pf != nil && pf.Chunk == chunk {
			prev = place(pf.Extents)
		}
	}
	paged := p.pages != nil && checksummedFile(*f) && chunk%PageSize == 0
	f.Chunk, f.Extents = chunk, nil
	var done int64
	for done < f.Size {
		n := int(min(f.Size-done, chunk))
		buf, err := p.reserve(n)
		if err != nil {
			return done, err
		}
		got, rerr := io.ReadFull(r, buf)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return done, rerr
		}
		off := done
		done += int64(got)
		buf = buf[:got]
		var pages []byte
		if got == n && prev != nil {
			ps := piecesIn(prev, off, int64(n))
			if len(ps) == 1 && ps[0].e.Length == int64(n) && !ps[0].e.SHA256.IsZero() && Digest(sha256.Sum256(buf)) == ps[0].e.SHA256 {
				// The bytes just read stay in the free tail and are overwritten next.
				e := p.base.ref(ps[0].e)
				if paged && len(e.Pages) == 0 && n%PageSize == 0 {
					e.Pages = p.pages.sum(buf) // a parent written before page hashes
				}
				f.Extents = append(f.Extents, e)
				p.reused.Add(int64(n))
				continue
			}
			if paged && n%PageSize == 0 && len(ps) > 0 {
				var stored bool
				if f.Extents, pages, stored, err = p.storeChanged(f.Extents, buf, off, ps); err != nil {
					return done, err
				}
				if stored {
					continue
				}
			}
		}
		if paged && got > 0 && got%PageSize == 0 && pages == nil {
			pages = p.pages.sum(buf)
		}
		if f.Extents, err = p.commit(got, f.Extents, false); err != nil {
			return done, err
		}
		if got > 0 && pages != nil {
			f.Extents[len(f.Extents)-1].Pages = pages
		}
		if got < n {
			break
		}
	}
	f.CRC = extentsCRC(f.Extents)
	return done, nil
}

// placed is a parent's extent and where it starts in its file.
type placed struct {
	off int64
	e   Extent
}

func place(extents []Extent) []placed {
	out := make([]placed, len(extents))
	var off int64
	for i, e := range extents {
		out[i] = placed{off, e}
		off += e.Length
	}
	return out
}

// piecesIn returns the parent's pieces that make up exactly the bytes [off, off+n) of the
// file, or nil when they do not (a parent cut differently, or shorter).
func piecesIn(prev []placed, off, n int64) []placed {
	i, _ := slices.BinarySearchFunc(prev, off, func(p placed, off int64) int { return cmp.Compare(p.off, off) })
	j := i
	for j < len(prev) && prev[j].off < off+n {
		j++
	}
	if i == len(prev) || prev[i].off != off || j == i || prev[j-1].off+prev[j-1].e.Length != off+n {
		return nil
	}
	return prev[i:j]
}

// storeChanged compares a changed chunk buf, at offset off of its file, page by page with the
// parent's pieces ps that hold the same bytes of the file, and appends its extents to
// extents: runs of pages whose keyed hash equals the parent's point into the parent's pieces,
// runs of changed pages are stored. It returns stored false, and the chunk's page hashes,
// when nothing of the chunk can be taken from the parent (the caller stores it whole).
//
// A page hash that matches although the page changed would make a reference point at
// stale bytes. It cannot make a restore wrong unnoticed: the reference carries the CRC-32C
// and SHA-256 of the bytes read now, so restore (CRC-32C) and verify (both) fail on the
// parent's different bytes, naming the object. The hash is keyed with the chain's secret
// page key (Manifest.PageKey), so no writer of table data can aim for such a match.
func (p *pipeline) storeChanged(extents []Extent, buf []byte, off int64, ps []placed) (_ []Extent, pages []byte, stored bool, err error) {
	for _, pc := range ps {
		if pc.e.Length%PageSize != 0 || int64(len(pc.e.Pages)) != pc.e.Length/PageSize*PageHashSize {
			return extents, nil, false, nil
		}
	}
	pages = p.pages.sum(buf)
	// A run is a stretch of pages that are all changed (from < 0) or all unchanged and in the
	// same parent piece (from is its index in ps).
	type run struct{ first, end, from int }
	var runs []run
	k, same := 0, 0
	for i := 0; i < len(buf)/PageSize; i++ {
		at := off + int64(i)*PageSize
		for at >= ps[k].off+ps[k].e.Length {
			k++
		}
		j := int((at - ps[k].off) / PageSize)
		from := -1
		if string(pages[i*PageHashSize:(i+1)*PageHashSize]) == string(ps[k].e.Pages[j*PageHashSize:(j+1)*PageHashSize]) {
			from = k
			same++
		}
		if n := len(runs); n > 0 && runs[n-1].from == from && runs[n-1].end == i {
			runs[n-1].end++
		} else {
			runs = append(runs, run{i, i + 1, from})
		}
	}
	if same == 0 || len(runs) == 1 && runs[0].from >= 0 && len(ps) == 1 {
		// Nothing to take, or every page hash matched one piece whose SHA-256 did not (the
		// caller compared it): store the chunk whole.
		return extents, pages, false, nil
	}
	// The references are made first: committing the stored runs moves their bytes to the
	// front of the free tail, over the bytes of runs already done, and may hand the bundle
	// to the sealers.
	refs := make([]Extent, len(runs))
	for i, r := range runs {
		if r.from < 0 {
			continue
		}
		pc := ps[r.from]
		data := buf[r.first*PageSize : r.end*PageSize]
		e := p.base.ref(pc.e)
		e.Offset += off + int64(r.first)*PageSize - pc.off
		e.Length = int64(len(data))
		e.CRC = crc32.Checksum(data, castagnoli)
		e.SHA256 = sha256.Sum256(data)
		e.Pages = slices.Clone(pages[r.first*PageHashSize : r.end*PageHashSize])
		refs[i] = e
		p.reused.Add(e.Length)
	}
	var moved int
	for i, r := range runs {
		if r.from >= 0 {
			extents = append(extents, refs[i])
			continue
		}
		n := copy(buf[moved:], buf[r.first*PageSize:r.end*PageSize])
		if extents, err = p.commit(n, extents, false); err != nil {
			return extents, nil, true, err
		}
		moved += n
		extents[len(extents)-1].Pages = slices.Clone(pages[r.first*PageHashSize : r.end*PageHashSize])
	}
	return extents, nil, true, nil
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
