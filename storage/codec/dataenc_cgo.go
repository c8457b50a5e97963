//go:build cgo

package codec

import (
	"fmt"
	"io"

	"github.com/valyala/gozstd"
)

// haveCZstd says this binary has the C encoder.
const haveCZstd = true

// cDataEncoder is libzstd's streaming encoder, kept from payload to payload: its tables and
// buffers live in C memory, allocated once.
type cDataEncoder struct {
	w      *gozstd.Writer
	params gozstd.WriterParams
}

func newCDataEncoder(level, windowLog int) (dataEncoder, error) {
	if level < 1 || level > 22 {
		return nil, fmt.Errorf("%w: zstd level %d (want 1..22)", ErrConfig, level)
	}
	e := &cDataEncoder{params: gozstd.WriterParams{CompressionLevel: level, WindowLog: windowLog}}
	e.w = gozstd.NewWriterParams(io.Discard, &e.params)
	return e, nil
}

func (e *cDataEncoder) encode(w io.Writer, plain []byte) (err error) {
	// gozstd panics on what it takes for a bug in itself (an error code from libzstd, such
	// as a failed allocation): a backup reports it as an error instead.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("libzstd: %v", r)
		}
	}()
	e.w.ResetWriterParams(w, &e.params)
	defer e.w.ResetWriterParams(io.Discard, &e.params) // drop the reference to w
	if _, err := e.w.Write(plain); err != nil {
		return err
	}
	return e.w.Close()
}

func (e *cDataEncoder) close() { e.w.Release() }
