package backup

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
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

// pageHasher holds the chain's page key (Manifest.PageKey).
type pageHasher struct {
	key []byte
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
	return &pageHasher{key: key}, nil
}

// pageDigestSize is the length of one page's digest in a page tree.
const pageDigestSize = sha256.Size

// pageDigests appends to dst the SHA-256 of each whole page of buf. They are the one pass of
// SHA-256 over a relation file's bytes: the extent's digest (pageTree) and its keyed page
// hashes (keyed) are both computed from them.
func pageDigests(dst, buf []byte) []byte {
	for off := 0; off+PageSize <= len(buf); off += PageSize {
		d := sha256.Sum256(buf[off : off+PageSize])
		dst = append(dst, d[:]...)
	}
	return dst
}

// keyed returns the PageHashSize-byte keyed page hash of each page digest in ds: the first
// bytes of SHA-256(key ‖ SHA-256(page)). The key keeps a writer of table data from aiming
// two different pages at the same truncated hash; hashing the page's digest instead of the
// page itself loses nothing of that (different pages have different digests) and costs 64
// bytes of hashing per page.
func (ph *pageHasher) keyed(ds []byte) []byte {
	out := make([]byte, 0, len(ds)/pageDigestSize*PageHashSize)
	var in [pageKeySize + pageDigestSize]byte
	copy(in[:], ph.key)
	for off := 0; off+pageDigestSize <= len(ds); off += pageDigestSize {
		copy(in[pageKeySize:], ds[off:off+pageDigestSize])
		h := sha256.Sum256(in[:])
		out = append(out, h[:PageHashSize]...)
	}
	return out
}

// pageTree is the digest of a piece made of whole pages whose page digests are ds: the
// SHA-256 of the pages' SHA-256s, in order (Extent.PageTree).
func pageTree(ds []byte) Digest { return sha256.Sum256(ds) }

// PieceDigest is the digest a piece's bytes data must have to match the extent e
// (Extent.SHA256): the SHA-256 of the bytes, or for an extent with PageTree the SHA-256 of
// its pages' SHA-256s. Data that is not whole pages never matches a page tree.
func PieceDigest(e Extent, data []byte) Digest {
	if !e.PageTree {
		return sha256.Sum256(data)
	}
	if len(data)%PageSize != 0 {
		return Digest{}
	}
	h := sha256.New()
	var d [sha256.Size]byte
	for off := 0; off < len(data); off += PageSize {
		d = sha256.Sum256(data[off : off+PageSize])
		h.Write(d[:])
	}
	var out Digest
	h.Sum(out[:0])
	return out
}

// pieceHash computes PieceDigest of a piece written to it in parts of any size.
type pieceHash struct {
	tree bool
	h    hash.Hash
	page []byte // the part of a page written so far (tree only)
}

func newPieceHash() *pieceHash { return &pieceHash{h: sha256.New()} }

// reset starts the digest of a piece of extent e.
func (ph *pieceHash) reset(e Extent) {
	ph.tree = e.PageTree
	ph.h.Reset()
	ph.page = ph.page[:0]
}

func (ph *pieceHash) Write(b []byte) (int, error) {
	if !ph.tree {
		return ph.h.Write(b)
	}
	n := len(b)
	for len(b) > 0 {
		if len(ph.page) == 0 && len(b) >= PageSize {
			d := sha256.Sum256(b[:PageSize])
			ph.h.Write(d[:])
			b = b[PageSize:]
			continue
		}
		if ph.page == nil {
			ph.page = make([]byte, 0, PageSize)
		}
		k := copy(ph.page[len(ph.page):PageSize], b)
		ph.page, b = ph.page[:len(ph.page)+k], b[k:]
		if len(ph.page) == PageSize {
			d := sha256.Sum256(ph.page)
			ph.h.Write(d[:])
			ph.page = ph.page[:0]
		}
	}
	return n, nil
}

// sum returns the digest of what was written since reset.
func (ph *pieceHash) sum() Digest {
	if ph.tree && len(ph.page) != 0 {
		return Digest{}
	}
	var out Digest
	ph.h.Sum(out[:0])
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
//
// The parent's extents, each with its digest and page hashes, come to about 1.5 MiB per GB of
// relation files: gigabytes for a cluster of terabytes. So base keeps in memory only each
// file without its extents, and the extents in a Spill (memory, then a temporary file) in a
// compact binary form, read back one file at a time as the backup reaches it.
type base struct {
	label string
	start time.Time
	files map[fileKey]baseFile
	// extents holds each file's extents, encoded by appendExtents, where its baseFile says.
	extents *repo.Spill
	// trustMtime lets a local backup reuse a file's extents without reading it when size and
	// modification time equal the parent's (false with ChecksumAll).
	trustMtime bool
	// pageKey keys the parent's page hashes (Manifest.PageKey); nil if it has none.
	pageKey []byte
	// labels interns the backup labels of extents read back: the same few, over and over.
	labels map[string]string
	buf    []byte
}

// baseFile is a file of the parent without its extents, and where they are in base.extents.
type baseFile struct {
	File
	off int64
	n   int
}

// emptyBase returns a base that keeps up to spill bytes of extents in memory.
func emptyBase(trustMtime bool, spill int) *base {
	return &base{files: map[fileKey]baseFile{}, extents: repo.NewSpill(spill), trustMtime: trustMtime, labels: map[string]string{}}
}

// setParent records what base needs of the parent's manifest beside its files.
func (b *base) setParent(m *Manifest) {
	b.label, b.start, b.pageKey = m.Label, m.StartTime, m.PageKey
}

// add records f, a file of the parent, and sets its extents aside.
func (b *base) add(f *File) error {
	if f.Type != "file" {
		return nil
	}
	b.buf = appendExtents(b.buf[:0], f.Extents)
	off := b.extents.Size()
	if _, err := b.extents.Write(b.buf); err != nil {
		return fmt.Errorf("set the parent's extents aside: %w", err)
	}
	lean := *f
	lean.Extents = nil
	b.files[fileKey{f.Tablespace, f.Path}] = baseFile{File: lean, off: off, n: len(b.buf)}
	return nil
}

// file returns the parent's copy of the file at k, with its extents; nil if it has none.
func (b *base) file(k fileKey) (*File, error) {
	bf, ok := b.files[k]
	if !ok {
		return nil, nil
	}
	return b.load(bf)
}

func (b *base) load(bf baseFile) (*File, error) {
	buf := make([]byte, bf.n)
	if _, err := b.extents.ReadAt(buf, bf.off); err != nil {
		return nil, fmt.Errorf("read back the parent's extents of %s: %w", bf.Path, err)
	}
	f := bf.File
	var err error
	if f.Extents, err = b.decodeExtents(buf); err != nil {
		return nil, fmt.Errorf("read back the parent's extents of %s: %w", bf.Path, err)
	}
	return &f, nil
}

// close lets go of the temporary file of the parent's extents, if there is one.
func (b *base) close() {
	if b != nil {
		b.extents.Close()
	}
}

// appendExtents appends es to buf in base's binary form: a count, then per extent its owning
// backup's label, bundle, offset, length, CRC, digest, page tree flag and page hashes.
func appendExtents(buf []byte, es []Extent) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(es)))
	for _, e := range es {
		buf = binary.AppendUvarint(buf, uint64(len(e.Backup)))
		buf = append(buf, e.Backup...)
		buf = binary.AppendVarint(buf, int64(e.Bundle))
		buf = binary.AppendVarint(buf, e.Offset)
		buf = binary.AppendVarint(buf, e.Length)
		buf = binary.LittleEndian.AppendUint32(buf, e.CRC)
		buf = append(buf, e.SHA256[:]...)
		var tree byte
		if e.PageTree {
			tree = 1
		}
		buf = append(buf, tree)
		buf = binary.AppendUvarint(buf, uint64(len(e.Pages)))
		buf = append(buf, e.Pages...)
	}
	return buf
}

// decodeExtents reads what appendExtents wrote. The page hashes point into buf.
func (b *base) decodeExtents(buf []byte) ([]Extent, error) {
	bad := errors.New("damaged extent list")
	uvarint := func() (uint64, bool) {
		v, n := binary.Uvarint(buf)
		if n <= 0 {
			return 0, false
		}
		buf = buf[n:]
		return v, true
	}
	varint := func() (int64, bool) {
		v, n := binary.Varint(buf)
		if n <= 0 {
			return 0, false
		}
		buf = buf[n:]
		return v, true
	}
	bytesOf := func(n uint64) ([]byte, bool) {
		if n > uint64(len(buf)) {
			return nil, false
		}
		v := buf[:n:n]
		buf = buf[n:]
		return v, true
	}
	count, ok := uvarint()
	if !ok || count > uint64(len(buf)) {
		return nil, bad
	}
	var es []Extent
	if count > 0 {
		es = make([]Extent, count)
	}
	for i := range es {
		e := &es[i]
		n, ok := uvarint()
		if !ok {
			return nil, bad
		}
		label, ok := bytesOf(n)
		if !ok {
			return nil, bad
		}
		if len(label) > 0 {
			l, seen := b.labels[string(label)]
			if !seen {
				l = string(label)
				b.labels[l] = l
			}
			e.Backup = l
		}
		bundle, ok1 := varint()
		off, ok2 := varint()
		length, ok3 := varint()
		if !ok1 || !ok2 || !ok3 || len(buf) < 4+len(e.SHA256)+1 {
			return nil, bad
		}
		e.Bundle, e.Offset, e.Length = int(bundle), off, length
		e.CRC = binary.LittleEndian.Uint32(buf)
		copy(e.SHA256[:], buf[4:])
		e.PageTree = buf[4+len(e.SHA256)] == 1
		buf = buf[4+len(e.SHA256)+1:]
		if n, ok = uvarint(); !ok {
			return nil, bad
		}
		if n > 0 {
			if e.Pages, ok = bytesOf(n); !ok {
				return nil, bad
			}
		}
	}
	if len(buf) != 0 {
		return nil, bad
	}
	return es, nil
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
func (b *base) unchanged(f *File) (*File, error) {
	if b == nil || !b.trustMtime || (f.Tablespace == 0 && f.Path == "global/pg_control") {
		return nil, nil
	}
	prev, ok := b.files[fileKey{f.Tablespace, f.Path}]
	if !ok || prev.Size != f.Size || !prev.ModTime.Equal(f.ModTime) || !f.ModTime.Before(b.start.Add(-mtimeMargin)) {
		return nil, nil
	}
	return b.load(prev)
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
// the chunk size. With a parent, a chunk whose digest equals the parent's extent at the same
// offset is not stored again: the extent points at the parent's bytes. A changed chunk of a
// relation file whose parent pieces carry page hashes is compared page by page
// (storeChanged): only the runs of changed pages are stored, the runs of unchanged pages point
// into the parent's pieces. It returns the bytes read, fewer than f.Size only when r ended
// early; f.Extents and f.Chunk describe those bytes (the caller decides whether that is an
// error).
//
// The digests of a relation file's pages are computed once per byte: by the reader when it
// compares with a parent, otherwise by the sealers, in parallel (extentPaged).
func (p *pipeline) readFile(r io.Reader, f *File) (int64, error) {
	chunk := p.chunkSize()
	var prev []placed
	if p.base != nil {
		pf, err := p.base.file(fileKey{f.Tablespace, f.Path})
		if err != nil {
			return 0, err
		}
		if pf != nil && pf.Chunk == chunk {
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
		var ds []byte // the chunk's page digests, when the reader computed them
		if got == n && prev != nil {
			ps := piecesIn(prev, off, int64(n))
			if paged && n%PageSize == 0 && len(ps) > 0 {
				ds = pageDigests(p.ds[:0], buf)
				p.ds = ds
			}
			if len(ps) == 1 && ps[0].e.Length == int64(n) && !ps[0].e.SHA256.IsZero() && p.matches(ps[0].e, buf, ds) {
				// The bytes just read stay in the free tail and are overwritten next.
				e := p.base.ref(ps[0].e)
				if ds != nil && !e.PageTree {
					// A parent written before page trees: the reference gets this backup's
					// kind of digest and page hashes, which the next backup compares with.
					e.SHA256, e.Pages, e.PageTree = pageTree(ds), p.pages.keyed(ds), true
				}
				f.Extents = append(f.Extents, e)
				p.reused.Add(int64(n))
				continue
			}
			if ds != nil {
				var stored bool
				if f.Extents, stored, err = p.storeChanged(f.Extents, buf, off, ps, ds); err != nil {
					return done, err
				}
				if stored {
					continue
				}
			}
		}
		kind := extentPlain
		switch {
		case ds != nil:
			kind = extentKnown
		case paged && got > 0 && got%PageSize == 0:
			kind = extentPaged
		}
		if f.Extents, err = p.commit(got, f.Extents, false, kind); err != nil {
			return done, err
		}
		if kind == extentKnown {
			e := &f.Extents[len(f.Extents)-1]
			e.SHA256, e.Pages, e.PageTree = pageTree(ds), p.pages.keyed(ds), true
		}
		if got < n {
			break
		}
	}
	f.CRC = extentsCRC(f.Extents)
	return done, nil
}

// matches tells whether buf, whose page digests are ds (nil if not computed), is the piece of
// the parent's extent e.
func (p *pipeline) matches(e Extent, buf, ds []byte) bool {
	if e.PageTree && ds != nil {
		return pageTree(ds) == e.SHA256
	}
	return PieceDigest(e, buf) == e.SHA256
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
// runs of changed pages are stored. ds holds the chunk's page digests. It returns stored
// false when nothing of the chunk can be taken from the parent (the caller stores it whole).
//
// A page hash that matches although the page changed would make a reference point at
// stale bytes. It cannot make a restore wrong unnoticed: the reference carries the CRC-32C
// and digest of the bytes read now, so restore (CRC-32C) and verify (both) fail on the
// parent's different bytes, naming the object. The hash is keyed with the chain's secret
// page key (Manifest.PageKey), so no writer of table data can aim for such a match.
func (p *pipeline) storeChanged(extents []Extent, buf []byte, off int64, ps []placed, ds []byte) (_ []Extent, stored bool, err error) {
	for _, pc := range ps {
		// Page hashes of a parent written before page trees hash the pages themselves, not
		// their digests: they never compare with this backup's.
		if !pc.e.PageTree || pc.e.Length%PageSize != 0 || int64(len(pc.e.Pages)) != pc.e.Length/PageSize*PageHashSize {
			return extents, false, nil
		}
	}
	pages := p.pages.keyed(ds)
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
		// Nothing to take, or every page hash matched one piece whose digest did not (the
		// caller compared it): store the chunk whole.
		return extents, false, nil
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
		e.SHA256 = pageTree(ds[r.first*pageDigestSize : r.end*pageDigestSize])
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
		if extents, err = p.commit(n, extents, false, extentKnown); err != nil {
			return extents, true, err
		}
		moved += n
		e := &extents[len(extents)-1]
		e.SHA256 = pageTree(ds[r.first*pageDigestSize : r.end*pageDigestSize])
		e.Pages = slices.Clone(pages[r.first*PageHashSize : r.end*PageHashSize])
		e.PageTree = true
	}
	return extents, true, nil
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
func chooseBase(ctx context.Context, r *repo.Repo, typ string, facts serverFacts, checksumAll bool, fullAfter time.Duration, now time.Time, spill int, log *slog.Logger) (*base, error) {
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
	b := emptyBase(!checksumAll, spill)
	m, err := readManifestFiles(ctx, r, parent.Label, true, b.add)
	if err != nil {
		b.close()
		return nil, fmt.Errorf("read the parent backup: %w", err)
	}
	b.setParent(m)
	log.Debug("parent's extents set aside", "parent", parent.Label, "bytes", b.extents.Size(), "temporary_file", b.extents.OnDisk())
	return b, nil
}
