//go:build cgo

package codec

/*
#include <stddef.h>
#include <stdint.h>

// libzstd's API, as its zstd.h declares it; the library is the one github.com/valyala/gozstd
// links into the binary.
typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct ZSTD_inBuffer_s { const void* src; size_t size; size_t pos; } ZSTD_inBuffer;
typedef struct ZSTD_outBuffer_s { void* dst; size_t size; size_t pos; } ZSTD_outBuffer;
ZSTD_CCtx* ZSTD_createCCtx(void);
size_t ZSTD_freeCCtx(ZSTD_CCtx* cctx);
size_t ZSTD_CCtx_setParameter(ZSTD_CCtx* cctx, int param, int value);
size_t ZSTD_CCtx_reset(ZSTD_CCtx* cctx, int reset);
size_t ZSTD_compressStream2(ZSTD_CCtx* cctx, ZSTD_outBuffer* output, ZSTD_inBuffer* input, int endOp);
unsigned ZSTD_isError(size_t code);
const char* ZSTD_getErrorName(size_t code);

// pgh_zstd_end continues a frame that ends with the input (ZSTD_e_end), writing what fits
// of it from dst[*dst_pos:dst_cap]; it returns what is left to flush (0: the frame is
// complete) or an error code.
static size_t pgh_zstd_end(uintptr_t cctx, uintptr_t dst, size_t dst_cap, size_t* dst_pos, uintptr_t src, size_t src_size, size_t* src_pos) {
	ZSTD_outBuffer out = { (void*)dst, dst_cap, *dst_pos };
	ZSTD_inBuffer in = { (const void*)src, src_size, *src_pos };
	size_t r = ZSTD_compressStream2((ZSTD_CCtx*)cctx, &out, &in, 2);
	*dst_pos = out.pos;
	*src_pos = in.pos;
	return r;
}
*/
import "C"

import (
	"fmt"
	"io"
	"runtime"
	"unsafe"

	_ "github.com/valyala/gozstd" // links libzstd (a static build of the reference library)
)

// haveCZstd says this binary has the C encoder.
const haveCZstd = true

// libzstd's parameters (zstd.h).
const (
	zstdCompressionLevel = 100
	zstdWindowLog        = 101
	zstdChecksumFlag     = 201
	zstdStableInBuffer   = 1006 // ZSTD_c_experimentalParam9, for a static build
	zstdResetSessionOnly = 1
)

// cDataEncoder is a libzstd compression context, kept from payload to payload: its tables
// live in C memory, allocated once. It compresses each payload where it lies
// (ZSTD_c_stableInBuffer): libzstd's streaming API otherwise copies its input, in the
// caller's pieces, into a window buffer of its own, and then compresses most blocks against
// that buffer's other end, in its slower "external dictionary" mode. The frame has the
// window it is given, and its header records the payload's size; the compressed output goes
// out in pieces of cEncoderOut.
type cDataEncoder struct {
	cctx *C.ZSTD_CCtx
	out  []byte
}

const cEncoderOut = 128 << 10

func newCDataEncoder(level, windowLog int) (dataEncoder, error) {
	if level < 1 || level > 22 {
		return nil, fmt.Errorf("%w: zstd level %d (want 1..22)", ErrConfig, level)
	}
	cctx := C.ZSTD_createCCtx()
	if cctx == nil {
		return nil, fmt.Errorf("libzstd: cannot create a compression context")
	}
	e := &cDataEncoder{cctx: cctx}
	for _, p := range [][2]int{{zstdCompressionLevel, level}, {zstdWindowLog, windowLog}, {zstdChecksumFlag, 0}, {zstdStableInBuffer, 1}} {
		if r := C.ZSTD_CCtx_setParameter(cctx, C.int(p[0]), C.int(p[1])); C.ZSTD_isError(r) != 0 {
			e.close()
			return nil, fmt.Errorf("libzstd: parameter %d = %d: %s", p[0], p[1], C.GoString(C.ZSTD_getErrorName(r)))
		}
	}
	return e, nil
}

func (e *cDataEncoder) encode(w io.Writer, plain []byte) error {
	if e.out == nil {
		e.out = make([]byte, cEncoderOut)
	}
	if r := C.ZSTD_CCtx_reset(e.cctx, zstdResetSessionOnly); C.ZSTD_isError(r) != 0 {
		return fmt.Errorf("libzstd: reset: %s", C.GoString(C.ZSTD_getErrorName(r)))
	}
	src := plain
	if len(src) == 0 {
		src = []byte{0} // a valid address for an empty input
	}
	// libzstd keeps the input's address from call to call until the frame ends, and both
	// buffers go to C as addresses: the garbage collector must not move or free them before.
	var pin runtime.Pinner
	pin.Pin(&src[0])
	pin.Pin(&e.out[0])
	defer pin.Unpin()
	var srcPos C.size_t
	for {
		var dstPos C.size_t
		left := C.pgh_zstd_end(C.uintptr_t(uintptr(unsafe.Pointer(e.cctx))),
			C.uintptr_t(uintptr(unsafe.Pointer(&e.out[0]))), C.size_t(len(e.out)), &dstPos,
			C.uintptr_t(uintptr(unsafe.Pointer(&src[0]))), C.size_t(len(plain)), &srcPos)
		if C.ZSTD_isError(left) != 0 {
			return fmt.Errorf("libzstd: %s", C.GoString(C.ZSTD_getErrorName(left)))
		}
		if _, err := w.Write(e.out[:dstPos]); err != nil {
			return err
		}
		if left == 0 {
			return nil
		}
	}
}

func (e *cDataEncoder) close() {
	if e.cctx != nil {
		C.ZSTD_freeCCtx(e.cctx)
		e.cctx = nil
	}
}
