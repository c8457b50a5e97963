package backup

import "io"

// blockPipeDepth is how many sealed blocks may wait between a sealer and its upload: enough
// that the sealer goes on sealing while the upload writes, without holding the bundle.
const blockPipeDepth = 4

// blockPipe carries a sealed bundle from the sealer that seals it to the upload that stores
// it, in blocks of sealBlockSize from the pipeline's free list. Unlike io.Pipe, a write does
// not wait for the reader to take it: the sealer fills a block and hands it over, and waits
// only when blockPipeDepth blocks are already waiting. The writer calls Write and
// closeWrite, the reader Read and closeRead, each from one goroutine.
type blockPipe struct {
	free   chan []byte   // the pipeline's free blocks
	filled chan []byte   // sealed blocks, in order
	stop   chan struct{} // closed by closeRead
	cur    []byte        // the block the writer fills
	rdBlk  []byte        // the block the reader took
	rd     []byte        // what is left to read of it
	n      int64         // bytes read
	werr   error         // why the writer ended early; the reader sees it once filled is closed
	rerr   error         // why the reader ended early; the writer sees it once stop is closed
}

func newBlockPipe(free chan []byte) *blockPipe {
	return &blockPipe{free: free, filled: make(chan []byte, blockPipeDepth), stop: make(chan struct{})}
}

func (p *blockPipe) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		if p.cur == nil {
			p.cur = takeBlock(p.free)
		}
		m := copy(p.cur[len(p.cur):cap(p.cur)], b)
		p.cur = p.cur[:len(p.cur)+m]
		b, written = b[m:], written+m
		if len(p.cur) == cap(p.cur) {
			if err := p.send(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

func (p *blockPipe) send() error {
	select {
	case p.filled <- p.cur:
		p.cur = nil
		return nil
	case <-p.stop:
		return p.rerr
	}
}

// closeWrite ends the body: complete when err is nil, else the reader's next Read returns
// err. It returns why the last block could not be handed over (the reader stopped).
func (p *blockPipe) closeWrite(err error) error {
	if err == nil && len(p.cur) > 0 {
		err = p.send()
	}
	p.werr = err
	close(p.filled)
	return err
}

// next makes sure p.rd holds bytes to read, taking the next block when it is empty; false
// means the writer has closed the pipe (with p.werr, nil when the body is complete).
func (p *blockPipe) next() bool {
	if len(p.rd) > 0 {
		return true
	}
	p.giveBack()
	blk, ok := <-p.filled
	p.rdBlk, p.rd = blk, blk
	return ok
}

func (p *blockPipe) Read(b []byte) (int, error) {
	if !p.next() {
		if p.werr != nil {
			return 0, p.werr
		}
		return 0, io.EOF
	}
	n := copy(b, p.rd)
	p.rd = p.rd[n:]
	p.n += int64(n)
	return n, nil
}

// WriteTo writes the blocks to w as they come, without copying them first.
func (p *blockPipe) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for p.next() {
		n, err := w.Write(p.rd)
		p.rd = p.rd[n:]
		p.n += int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	return total, p.werr
}

func (p *blockPipe) giveBack() {
	if p.rdBlk != nil {
		giveBlock(p.free, p.rdBlk)
		p.rdBlk = nil
	}
}

// closeRead ends the reading: a writer still writing gets err (io.ErrClosedPipe when nil)
// from its next hand-over.
func (p *blockPipe) closeRead(err error) {
	if err == nil {
		err = io.ErrClosedPipe
	}
	p.rerr = err
	close(p.stop)
	p.giveBack()
	p.rd = nil
}
