package backup

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"

	"golang.org/x/sync/errgroup"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// probe sorts bundles by how well they compress, by compressing a few page-sized samples
// with zstd's fastest level:
//   - incompressible bundles (random bytes, data the application compressed or encrypted)
//     are stored without compression, which saves zstd's work at backup and at restore and
//     loses nothing;
//   - dense bundles, which shrink by less than half (pages of incompressible values beside
//     their tuple headers), are compressed at the dense level (compression.dense_level):
//     what is left to remove in them is the headers' redundancy, which the fastest levels
//     find, and higher levels spend much more CPU for a percent or two more;
//   - the rest get the configured level.
type probe struct {
	enc *zstd.Encoder
}

const (
	probeSamples    = 8
	probeSampleSize = 8 << 10
	// A bundle whose samples shrink by less than 3% is not worth compressing.
	probeThreshold = 0.97
	// A bundle whose samples keep more than half their size is dense.
	denseThreshold = 0.5
)

func newProbe() (*probe, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false), zstd.WithWindowSize(1<<17))
	if err != nil {
		return nil, err
	}
	return &probe{enc: enc}, nil
}

// mode tells how data should be sealed; scratch holds the compressed samples and is
// returned for the caller's next call. It may be called from several goroutines at once
// (each with its own scratch): they take turns with the one encoder, and a probe is short.
func (pr *probe) mode(data, scratch []byte) ([]byte, codec.SealMode) {
	if len(data) < probeSamples*probeSampleSize*2 {
		return scratch, codec.SealCompressed
	}
	step := len(data) / probeSamples
	in, out := 0, 0
	for i := 0; i < probeSamples; i++ {
		sample := data[i*step : i*step+probeSampleSize]
		scratch = pr.enc.EncodeAll(sample, scratch[:0])
		in, out = in+len(sample), out+len(scratch)
	}
	switch {
	case float64(out) >= probeThreshold*float64(in):
		return scratch, codec.SealStored
	case float64(out) > denseThreshold*float64(in):
		return scratch, codec.SealDense
	}
	return scratch, codec.SealCompressed
}

func (pr *probe) Close() { pr.enc.Close() }

// pipeline cuts file bytes into bundles and seals and uploads them with bounded memory:
// at most rawBundles(workers) raw bundles and workers+uploads sealed bundles exist at
// once, the sealed ones in blocks as large as their sealed size. When the backend streams
// (a local filesystem) no sealed bundle is held: each sealer hands the blocks of what it
// seals to an upload as it fills them (blockPipe).
type pipeline struct {
	r            *repo.Repo
	label        string
	size         int
	g            *errgroup.Group
	ctx          context.Context
	free         chan []byte     // raw buffers ready for reuse
	toSeal       chan rawBundle  // filled bundles
	toPut        chan sealedBlob // sealed bundles
	cur          []byte          // bundle being filled
	starts       []int64         // where extents begin in cur
	kinds        []extentKind    // what the sealers hash of each extent in cur
	ds           []byte          // the reader's page digests of a chunk
	next         int             // number of the bundle being filled
	stored       atomic.Int64    // sealed bytes uploaded
	uncompressed atomic.Int64    // bundles stored without compression
	dense        atomic.Int64    // bundles compressed at the dense level
	// endSealOnce closes toSeal once; sealing (set only by the producer, which alone calls
	// flush, wait and close) says it is no longer open.
	endSealOnce sync.Once
	sealEnded   bool
	// blocks holds the blocks sealed bundles are written into, for reuse. A channel, not a
	// sync.Pool: the garbage collector empties a sync.Pool, and under the soft memory limit
	// it runs often enough that every bundle would take fresh, zeroed, page-faulted memory.
	blocks chan []byte
	// probe is shared by the sealers: its encoder's tables are not small, and a probe is short.
	probe *probe
	// base, for a diff or incr backup, is the backup files are compared with; nil for a
	// full backup. reused counts the file bytes taken from it instead of stored.
	base   *base
	reused atomic.Int64
	// stream says the backend's Put streams (storage.Streamer): the sealers hand each
	// bundle to an upload while they seal it, instead of holding it sealed until one is free.
	stream bool
	// pages hashes the pages of relation files for page-level incrementals (incremental.go).
	pages *pageHasher
	// sums holds, by bundle number, the digest (and page hashes) of each extent the sealers
	// hashed, in the order of the bundle's extents, until the files they belong to take them
	// (entries.go). The sealers compute them in parallel, beside the compression, rather than
	// the single reader on its way through. A bundle is here from when the sealers are done
	// with it until its last sum is taken.
	mu   sync.Mutex
	sums map[int]*bundleSums
	// files are the entries of the files read so far (entries.go); only the producer uses it.
	files fileEntries
}

// extentKind says what the sealers compute for an extent.
type extentKind uint8

const (
	// extentPlain: the SHA-256 of its bytes.
	extentPlain extentKind = iota
	// extentPaged: whole pages of a relation file: the page digests, and from them the page
	// tree and the keyed page hashes (Extent.PageTree).
	extentPaged
	// extentKnown: nothing, the reader has set the extent's digest already.
	extentKnown
)

// extentSum is what the sealers computed for an extent.
type extentSum struct {
	digest Digest
	pages  []byte // keyed page hashes, for extentPaged
}

// rawBundles is the number of raw bundle buffers: one per sealer, and one more for the
// reader to fill while every sealer works when there is a core for it to run on. Without
// one the reader takes its time from the sealers anyway, and the extra buffer only waits.
func rawBundles(workers int) int {
	if runtime.GOMAXPROCS(0) > workers {
		return workers + 1
	}
	return max(workers, 2)
}

// bundleSums is what the sealers computed for a bundle: sums[i] for the extent at starts[i],
// unless kinds[i] is extentKnown.
type bundleSums struct {
	starts []int64
	kinds  []extentKind
	sums   []extentSum
	left   int // extents whose sum no file has taken yet
}

type rawBundle struct {
	n      int
	data   []byte
	starts []int64 // offsets where extents begin, ascending; an extent runs to the next
	kinds  []extentKind
}

// sealedBlob is a sealed bundle for an upload: held whole in buf, or, when the backend
// streams, coming through pipe from the sealer that is sealing it.
type sealedBlob struct {
	n    int
	buf  *blockBuf
	pipe *blockPipe
}

func newPipeline(ctx context.Context, r *repo.Repo, label string, bundleSize, workers, uploads int) *pipeline {
	g, gctx := errgroup.WithContext(ctx)
	p := &pipeline{
		r: r, label: label, size: bundleSize, g: g, ctx: gctx,
		free:   make(chan []byte, rawBundles(workers)),
		toSeal: make(chan rawBundle),
		toPut:  make(chan sealedBlob),
		blocks: make(chan []byte, (workers+uploads)*(bundleSize/sealBlockSize+2)),
		sums:   map[int]*bundleSums{},
		stream: storage.StreamsPuts(r.Backend()),
	}
	if p.stream {
		// Each sealer is joined to an upload while it seals, and an upload then makes its
		// object durable (for a file, an fsync) after the sealer has moved on: enough
		// uploads that the sealers need not wait for one.
		uploads += workers
	}
	for i := 0; i < rawBundles(workers); i++ {
		p.free <- make([]byte, 0, bundleSize)
	}
	probe, err := newProbe()
	p.probe = probe
	var sealers sync.WaitGroup
	for i := 0; i < workers; i++ {
		sealers.Add(1)
		g.Go(func() error {
			defer sealers.Done()
			if err != nil {
				return err
			}
			return p.sealLoop()
		})
	}
	g.Go(func() error {
		sealers.Wait()
		if probe != nil {
			probe.Close()
		}
		close(p.toPut)
		return nil
	})
	for i := 0; i < uploads; i++ {
		g.Go(p.putLoop)
	}
	return p
}

func (p *pipeline) sealLoop() error {
	sealer, err := p.r.Codec().NewDataSealer()
	if err != nil {
		return err
	}
	defer sealer.Close()
	var probeOut, ds []byte
	for b := range p.toSeal {
		ds = p.hashExtents(b, ds)
		mode := codec.SealStored // the codec compresses nothing
		if p.r.Codec().Compresses() {
			probeOut, mode = p.probe.mode(b.data, probeOut)
			switch mode {
			case codec.SealStored:
				p.uncompressed.Add(1)
			case codec.SealDense:
				p.dense.Add(1)
			}
		}
		if p.stream {
			if err := p.sealStreamed(sealer, b, mode); err != nil {
				return err
			}
			continue
		}
		buf := &blockBuf{free: p.blocks}
		if err := sealer.Seal(buf, b.data, mode); err != nil {
			buf.release()
			return fmt.Errorf("seal bundle %d: %w", b.n, err)
		}
		p.free <- b.data[:0]
		select {
		case p.toPut <- sealedBlob{n: b.n, buf: buf}:
		case <-p.ctx.Done():
			buf.release()
			return p.ctx.Err()
		}
	}
	return nil
}

// sealStreamed seals bundle b through a pipe into an upload.
func (p *pipeline) sealStreamed(sealer *codec.DataSealer, b rawBundle, mode codec.SealMode) error {
	pipe := newBlockPipe(p.blocks)
	select {
	case p.toPut <- sealedBlob{n: b.n, pipe: pipe}:
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
	// A failed seal fails the upload's read, and the backend stores nothing.
	if err := pipe.closeWrite(sealer.Seal(pipe, b.data, mode)); err != nil {
		return fmt.Errorf("seal bundle %d: %w", b.n, err)
	}
	p.free <- b.data[:0]
	return nil
}

// hashExtents records the digest of every extent in bundle b that the reader did not hash;
// ds is scratch space for page digests, returned for the next call.
func (p *pipeline) hashExtents(b rawBundle, ds []byte) []byte {
	sums := make([]extentSum, len(b.starts))
	left := 0 // extents whose sum a file will take
	for i, off := range b.starts {
		end := int64(len(b.data))
		if i+1 < len(b.starts) {
			end = b.starts[i+1]
		}
		switch b.kinds[i] {
		case extentKnown:
			continue
		case extentPaged:
			ds = pageDigests(ds[:0], b.data[off:end])
			sums[i] = extentSum{digest: pageTree(ds), pages: p.pages.keyed(ds)}
		default:
			sums[i].digest = sha256.Sum256(b.data[off:end])
		}
		left++
	}
	p.mu.Lock()
	if left > 0 {
		p.sums[b.n] = &bundleSums{starts: b.starts, kinds: b.kinds, sums: sums, left: left}
	}
	p.mu.Unlock()
	return ds
}

func (p *pipeline) putLoop() error {
	for s := range p.toPut {
		key := BundleKey(p.r, p.label, s.n)
		if s.pipe != nil {
			err := p.r.Backend().Put(p.ctx, key, s.pipe, storage.PutOptions{Size: -1})
			if err != nil {
				err = fmt.Errorf("store %s: %w", p.r.Location(key), err)
			}
			// A Put that returned before the end of the body lets the sealer go, with the
			// reason it stopped.
			s.pipe.closeRead(err)
			if err != nil {
				return err
			}
			p.stored.Add(s.pipe.n)
			continue
		}
		// What Repo.PutSealed does with a byte slice, from the blocks.
		err := p.r.Backend().Put(p.ctx, key, &blockReader{b: s.buf}, storage.PutOptions{Size: s.buf.n})
		n := s.buf.n
		s.buf.release()
		if err != nil {
			return fmt.Errorf("store %s: %w", p.r.Location(key), err)
		}
		p.stored.Add(n)
	}
	return nil
}

// sealBlockSize is the size of the blocks sealed bundles are held in.
const sealBlockSize = 128 << 10

// blockBuf holds a sealed bundle in fixed-size blocks from a shared free list: its memory
// follows the sealed size (a compressed bundle needs a fraction of a stored one), and no
// buffer is ever grown by copying.
type blockBuf struct {
	free   chan []byte
	blocks [][]byte
	n      int64
}

func (b *blockBuf) Write(p []byte) (int, error) {
	written := len(p)
	for len(p) > 0 {
		k := len(b.blocks) - 1
		if k < 0 || len(b.blocks[k]) == cap(b.blocks[k]) {
			b.blocks = append(b.blocks, takeBlock(b.free))
			k++
		}
		blk := b.blocks[k]
		m := copy(blk[len(blk):cap(blk)], p)
		b.blocks[k] = blk[:len(blk)+m]
		p = p[m:]
	}
	b.n += int64(written)
	return written, nil
}

// release gives the blocks back to the free list; b must not be used after.
func (b *blockBuf) release() {
	for _, blk := range b.blocks {
		giveBlock(b.free, blk)
	}
	b.blocks, b.n = nil, 0
}

// takeBlock returns an empty block of sealBlockSize from the free list, or a new one.
func takeBlock(free chan []byte) []byte {
	select {
	case blk := <-free:
		return blk
	default:
		return make([]byte, 0, sealBlockSize)
	}
}

// giveBlock puts blk back on the free list, unless the list is full.
func giveBlock(free chan []byte, blk []byte) {
	select {
	case free <- blk[:0]:
	default:
	}
}

// blockReader reads a blockBuf; it seeks, so that a failed upload can be sent again.
type blockReader struct {
	b   *blockBuf
	off int64
}

func (r *blockReader) Read(p []byte) (int, error) {
	if r.off >= r.b.n {
		return 0, io.EOF
	}
	blk := r.b.blocks[r.off/sealBlockSize]
	n := copy(p, blk[r.off%sealBlockSize:])
	r.off += int64(n)
	return n, nil
}

func (r *blockReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.off < r.b.n {
		blk := r.b.blocks[r.off/sealBlockSize]
		n, err := w.Write(blk[r.off%sealBlockSize:])
		r.off += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (r *blockReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.b.n
	default:
		return 0, errors.New("blockReader.Seek: invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("blockReader.Seek: negative position")
	}
	r.off = offset
	return offset, nil
}

// write appends file bytes to the current bundle and returns the extents they landed in.
func (p *pipeline) write(data []byte, extents []Extent) ([]Extent, error) {
	for len(data) > 0 {
		tail, err := p.tail(len(data))
		if err != nil {
			return extents, err
		}
		n := copy(tail, data)
		data = data[n:]
		if extents, err = p.commit(n, extents, true, extentPlain); err != nil {
			return extents, err
		}
	}
	return extents, nil
}

// readFrom appends up to size bytes read from r to the bundles, reading straight into the
// bundle buffer (no copy). It returns the extents and the bytes read (fewer than size only
// when r ended early).
func (p *pipeline) readFrom(r io.Reader, size int64, extents []Extent) ([]Extent, int64, error) {
	var done int64
	for done < size {
		tail, err := p.tail(int(min(size-done, int64(p.size))))
		if err != nil {
			return extents, done, err
		}
		n, rerr := io.ReadFull(r, tail)
		done += int64(n)
		if extents, err = p.commit(n, extents, true, extentPlain); err != nil {
			return extents, done, err
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return extents, done, rerr
		}
	}
	return extents, done, nil
}

// tail returns the free end of the current bundle, at most max bytes; commit records how
// many of them were filled.
func (p *pipeline) tail(max int) ([]byte, error) {
	if p.cur == nil {
		select {
		case p.cur = <-p.free:
		case <-p.ctx.Done():
			return nil, p.wait()
		}
	}
	off := len(p.cur)
	return p.cur[off : off+min(p.size-off, max)], nil
}

// commit takes n bytes written into the tail into the current bundle and the extents. With
// merge, bytes that continue the last extent in the same bundle extend it; without, they
// start an extent of their own (a chunk of a chunked file), which the sealers hash as kind
// says.
func (p *pipeline) commit(n int, extents []Extent, merge bool, kind extentKind) ([]Extent, error) {
	if n == 0 {
		return extents, nil
	}
	off := int64(len(p.cur))
	p.cur = p.cur[:len(p.cur)+n]
	chunk := p.cur[off:]
	// CRC-32C updates incrementally: an extent that grows continues its checksum.
	if k := len(extents) - 1; merge && k >= 0 && extents[k].Backup == "" && extents[k].Bundle == p.next && extents[k].Offset+extents[k].Length == off {
		extents[k].CRC = crc32.Update(extents[k].CRC, castagnoli, chunk)
		extents[k].Length += int64(n)
	} else {
		extents = append(extents, Extent{Bundle: p.next, Offset: off, Length: int64(n), CRC: crc32.Update(0, castagnoli, chunk)})
		p.starts = append(p.starts, off)
		p.kinds = append(p.kinds, kind)
	}
	if len(p.cur) == p.size {
		return extents, p.flush()
	}
	return extents, nil
}

// flush hands the current bundle to the sealers.
func (p *pipeline) flush() error {
	if len(p.cur) == 0 {
		return nil
	}
	if p.sealEnded {
		return p.wait()
	}
	select {
	case p.toSeal <- rawBundle{n: p.next, data: p.cur, starts: p.starts, kinds: p.kinds}:
	case <-p.ctx.Done():
		return p.wait()
	}
	p.cur, p.starts, p.kinds = nil, nil, nil
	p.next++
	return nil
}

// close flushes the last bundle and waits for all uploads. It returns the bundle count.
func (p *pipeline) close() (int, error) {
	err := p.flush()
	p.endSeal()
	werr := p.g.Wait()
	p.release()
	if werr != nil {
		return 0, werr
	}
	return p.next, err
}

// release lets the garbage collector have the buffers once every goroutine has stopped: the
// rest of the backup (manifests, waiting for WAL) does not need them.
func (p *pipeline) release() {
	p.cur, p.starts, p.kinds = nil, nil, nil
	for {
		select {
		case <-p.free:
		case <-p.blocks:
		default:
			return
		}
	}
}

// endSeal tells the sealers no bundle will come: idle sealers wait for bundles, not for the
// context, so a pipeline whose context ends must close toSeal before waiting for its group.
func (p *pipeline) endSeal() {
	p.endSealOnce.Do(func() {
		close(p.toSeal)
		p.sealEnded = true
	})
}

// wait stops the pipeline after its context ended (a failure inside it, or a cancellation
// from outside) and returns why.
func (p *pipeline) wait() error {
	p.endSeal()
	if err := p.g.Wait(); err != nil {
		return err
	}
	return p.ctx.Err()
}
