package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"

	"golang.org/x/sync/errgroup"

	"github.com/pgharbor/pgharbor/internal/repo"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// probe tells compressible bundles from incompressible ones (random bytes, data the
// application compressed or encrypted) by compressing a few page-sized samples with zstd's
// fastest level: incompressible bundles are stored without compression, which saves zstd's
// work at backup and at restore and loses nothing.
type probe struct {
	enc *zstd.Encoder
	out []byte
}

const (
	probeSamples    = 8
	probeSampleSize = 8 << 10
	// A bundle whose samples shrink by less than 3% is not worth compressing.
	probeThreshold = 0.97
)

func newProbe() (*probe, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false), zstd.WithWindowSize(1<<17))
	if err != nil {
		return nil, err
	}
	return &probe{enc: enc}, nil
}

func (pr *probe) compressible(data []byte) bool {
	if len(data) < probeSamples*probeSampleSize*2 {
		return true
	}
	step := len(data) / probeSamples
	in, out := 0, 0
	for i := 0; i < probeSamples; i++ {
		sample := data[i*step : i*step+probeSampleSize]
		pr.out = pr.enc.EncodeAll(sample, pr.out[:0])
		in, out = in+len(sample), out+len(pr.out)
	}
	return float64(out) < probeThreshold*float64(in)
}

func (pr *probe) Close() { pr.enc.Close() }

// pipeline cuts file bytes into bundles and seals and uploads them with bounded memory:
// at most workers+1 raw bundles and workers+uploads sealed bundles exist at once.
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
	next         int             // number of the bundle being filled
	stored       atomic.Int64    // sealed bytes uploaded
	uncompressed atomic.Int64    // bundles stored without compression
	// endSealOnce closes toSeal once; sealing (set only by the producer, which alone calls
	// flush, wait and close) says it is no longer open.
	endSealOnce sync.Once
	sealEnded   bool
	// sealed holds sealed-bundle buffers for reuse. A channel, not a sync.Pool: the garbage
	// collector empties a sync.Pool, and under the soft memory limit it runs often enough
	// that every bundle grew a fresh buffer (zeroed, page-faulted: ~10% of backup CPU).
	sealed chan *bytes.Buffer
	// base, for a diff or incr backup, is the backup files are compared with; nil for a
	// full backup. reused counts the file bytes taken from it instead of stored.
	base   *base
	reused atomic.Int64
	// pages hashes the pages of relation files for page-level incrementals (incremental.go).
	pages *pageHasher
	// digests holds each extent's SHA-256 by bundle and offset. The sealers compute them in
	// parallel, beside the compression, rather than the single reader on its way through.
	mu      sync.Mutex
	digests map[extentAt]Digest
}

type extentAt struct {
	bundle int
	offset int64
}

type rawBundle struct {
	n      int
	data   []byte
	starts []int64 // offsets where extents begin, ascending; an extent runs to the next
}

type sealedBlob struct {
	n   int
	buf *bytes.Buffer
}

func newPipeline(ctx context.Context, r *repo.Repo, label string, bundleSize, workers, uploads int) *pipeline {
	g, gctx := errgroup.WithContext(ctx)
	p := &pipeline{
		r: r, label: label, size: bundleSize, g: g, ctx: gctx,
		free:    make(chan []byte, workers+1),
		toSeal:  make(chan rawBundle),
		toPut:   make(chan sealedBlob),
		sealed:  make(chan *bytes.Buffer, workers+uploads),
		digests: map[extentAt]Digest{},
	}
	for i := 0; i < workers+1; i++ {
		p.free <- make([]byte, 0, bundleSize)
	}
	var sealers sync.WaitGroup
	for i := 0; i < workers; i++ {
		sealers.Add(1)
		g.Go(func() error {
			defer sealers.Done()
			return p.sealLoop()
		})
	}
	g.Go(func() error { sealers.Wait(); close(p.toPut); return nil })
	for i := 0; i < uploads; i++ {
		g.Go(p.putLoop)
	}
	return p
}

func (p *pipeline) sealLoop() error {
	probe, err := newProbe()
	if err != nil {
		return err
	}
	defer probe.Close()
	var scratch []byte // compressed payload, reused
	for b := range p.toSeal {
		p.hashExtents(b)
		var buf *bytes.Buffer
		select {
		case buf = <-p.sealed:
			buf.Reset()
		default:
			buf = new(bytes.Buffer)
		}
		buf.Grow(len(b.data) + len(b.data)/64 + 4096) // worst case: incompressible, plus framing
		stored := p.r.Codec().Compresses() && !probe.compressible(b.data)
		if stored {
			p.uncompressed.Add(1)
		}
		scratch, err = p.r.Codec().SealAll(buf, b.data, stored, scratch)
		if err != nil {
			return fmt.Errorf("seal bundle %d: %w", b.n, err)
		}
		p.free <- b.data[:0]
		select {
		case p.toPut <- sealedBlob{n: b.n, buf: buf}:
		case <-p.ctx.Done():
			return p.ctx.Err()
		}
	}
	return nil
}

// hashExtents records the SHA-256 of every extent in bundle b.
func (p *pipeline) hashExtents(b rawBundle) {
	sums := make([]Digest, len(b.starts))
	for i, off := range b.starts {
		end := int64(len(b.data))
		if i+1 < len(b.starts) {
			end = b.starts[i+1]
		}
		sums[i] = sha256.Sum256(b.data[off:end])
	}
	p.mu.Lock()
	for i, off := range b.starts {
		p.digests[extentAt{b.n, off}] = sums[i]
	}
	p.mu.Unlock()
}

// setDigests fills in the SHA-256 of every extent of files; call it after close.
func (p *pipeline) setDigests(files []File) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range files {
		for j := range files[i].Extents {
			e := &files[i].Extents[j]
			if e.Backup != "" {
				continue // taken from an earlier backup, hash and all
			}
			d, ok := p.digests[extentAt{e.Bundle, e.Offset}]
			if !ok {
				return fmt.Errorf("no SHA-256 for %s at bundle %d offset %d", files[i].Path, e.Bundle, e.Offset)
			}
			e.SHA256 = d
		}
	}
	return nil
}

func (p *pipeline) putLoop() error {
	for s := range p.toPut {
		key := BundleKey(p.r, p.label, s.n)
		if err := p.r.PutSealed(p.ctx, key, s.buf.Bytes(), false); err != nil {
			return fmt.Errorf("store %s: %w", p.r.Location(key), err)
		}
		p.stored.Add(int64(s.buf.Len()))
		if s.buf.Cap() <= 2*p.size {
			select {
			case p.sealed <- s.buf:
			default:
			}
		}
	}
	return nil
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
		if extents, err = p.commit(n, extents, true); err != nil {
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
		if extents, err = p.commit(n, extents, true); err != nil {
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
// start an extent of their own (a chunk of a chunked file).
func (p *pipeline) commit(n int, extents []Extent, merge bool) ([]Extent, error) {
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
	case p.toSeal <- rawBundle{n: p.next, data: p.cur, starts: p.starts}:
	case <-p.ctx.Done():
		return p.wait()
	}
	p.cur, p.starts = nil, nil
	p.next++
	return nil
}

// close flushes the last bundle and waits for all uploads. It returns the bundle count.
func (p *pipeline) close() (int, error) {
	err := p.flush()
	p.endSeal()
	if werr := p.g.Wait(); werr != nil {
		return 0, werr
	}
	return p.next, err
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
