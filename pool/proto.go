package pool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Protocol limits. PostgreSQL itself refuses startup packets over 10,000 bytes and most
// messages over 1 GB.
const (
	maxStartupLen = 10000
	maxMessageLen = 1 << 30
	bufSize       = 32 * 1024
)

// Startup packet codes.
const (
	codeProtocol3  = 3 << 16
	codeCancel     = 80877102
	codeSSLRequest = 80877103
	codeGSSENC     = 80877104
)

// errProtocol marks malformed input from a peer.
var errProtocol = errors.New("protocol violation")

// msgReader reads framed protocol messages from a buffered connection.
// Slices it returns are valid until the next call on the same reader.
type msgReader struct {
	r   *bufio.Reader
	big []byte
}

// header returns the next message's type and body length without consuming anything.
func (m *msgReader) header() (byte, int, error) {
	h, err := m.r.Peek(5)
	if err != nil {
		if len(h) > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	n := int(int32(binary.BigEndian.Uint32(h[1:5]))) - 4
	if n < 0 || n > maxMessageLen {
		return 0, 0, fmt.Errorf("%w: message %q with length %d", errProtocol, h[0], n+4)
	}
	return h[0], n, nil
}

// whole consumes and returns the next message (header included), whose body length is n.
func (m *msgReader) whole(n int) ([]byte, error) {
	total := 5 + n
	if total <= m.r.Size() {
		b, err := m.r.Peek(total)
		if err != nil {
			return nil, noEOF(err)
		}
		_, _ = m.r.Discard(total)
		return b, nil
	}
	// The length is the peer's claim: the buffer grows with the bytes that arrive, so a
	// header announcing a gigabyte costs memory only once the gigabyte is sent.
	b := m.big[:0]
	if cap(b) > 4*maxSmallKeep && total <= maxSmallKeep {
		b = nil
	}
	for len(b) < total {
		step := min(total-len(b), max(len(b), bufSize))
		b = slices.Grow(b, step)
		n, err := io.ReadFull(m.r, b[len(b):len(b)+step])
		b = b[:len(b)+n]
		if err != nil {
			m.big = b[:0]
			return nil, noEOF(err)
		}
	}
	m.big = b
	return b, nil
}

const maxSmallKeep = 1 << 20

// fits says whether a message of body length n can be returned by whole without copying.
func (m *msgReader) fits(n int) bool { return 5+n <= m.r.Size() }

// copyTo forwards the next message (body length n) to w without keeping it.
func (m *msgReader) copyTo(w io.Writer, n int) error {
	if m.fits(n) {
		b, err := m.whole(n)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	h, err := m.r.Peek(5)
	if err != nil {
		return noEOF(err)
	}
	if _, err := w.Write(h); err != nil {
		return err
	}
	_, _ = m.r.Discard(5)
	if _, err := io.CopyN(w, m.r, int64(n)); err != nil {
		return noEOF(err)
	}
	return nil
}

// complete says whether a whole message is already buffered (so reading it will not block).
func (m *msgReader) complete() bool {
	b := m.r.Buffered()
	if b < 5 {
		return false
	}
	h, _ := m.r.Peek(5)
	n := int(binary.BigEndian.Uint32(h[1:5])) + 1
	return n <= b
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readStartup reads one startup-phase packet (length-prefixed, no type byte) and returns
// its code and the bytes after the length.
func readStartup(r io.Reader) (uint32, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > maxStartupLen {
		return 0, nil, fmt.Errorf("%w: startup packet length %d", errProtocol, n)
	}
	buf := make([]byte, n-4)
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, noEOF(err)
	}
	return binary.BigEndian.Uint32(buf[:4]), buf, nil
}

// parseStartupParams decodes the key/value pairs of a protocol-3 startup message (buf starts
// with the 4-byte protocol version).
func parseStartupParams(buf []byte) (map[string]string, error) {
	var sm pgproto3.StartupMessage
	if err := sm.Decode(buf); err != nil {
		return nil, fmt.Errorf("%w: startup message: %v", errProtocol, err)
	}
	for k := range sm.Parameters {
		if k == "" {
			return nil, fmt.Errorf("%w: startup message: empty parameter name", errProtocol)
		}
	}
	return sm.Parameters, nil
}

type encoder interface {
	Encode(dst []byte) ([]byte, error)
}

// appendMsg encodes msgs after dst; encoding our own well-formed messages does not fail.
func appendMsg(dst []byte, msgs ...encoder) []byte {
	for _, m := range msgs {
		out, err := m.Encode(dst)
		if err == nil {
			dst = out
		}
	}
	return dst
}

// pgError is an error sent to a client as an ErrorResponse.
type pgError struct {
	Severity string // ERROR or FATAL
	Code     string // SQLSTATE
	Message  string
	Detail   string
	Hint     string
}

func (e *pgError) Error() string { return e.Message }

func (e *pgError) encode(dst []byte) []byte {
	return appendMsg(dst, &pgproto3.ErrorResponse{Severity: e.Severity, SeverityUnlocalized: e.Severity, Code: e.Code, Message: e.Message, Detail: e.Detail, Hint: e.Hint})
}

func fatal(code, format string, args ...any) *pgError {
	return &pgError{Severity: "FATAL", Code: code, Message: fmt.Sprintf(format, args...)}
}

// SQLSTATEs the pool produces.
const (
	sqlstateProtocolViolation = "08P01"
	sqlstateInvalidPassword   = "28P01"
	sqlstateInvalidAuth       = "28000"
	sqlstateTooManyConns      = "53300"
	sqlstateConnFailure       = "08006"
	sqlstateCannotConnect     = "08001"
	sqlstateAdminShutdown     = "57P01"
	sqlstateQueryCanceled     = "57014"
	sqlstateFeatureNotSupp    = "0A000"
	sqlstateSyntaxError       = "42601"
	sqlstateInsufficientPriv  = "42501"
)

// cstring reads a NUL-terminated string from b, returning it and the rest.
func cstring(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

func u32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }

// beginMsg starts a message of type t; finishMsg fills in its length.
func beginMsg(dst []byte, t byte) ([]byte, int) {
	dst = append(dst, t, 0, 0, 0, 0)
	return dst, len(dst) - 4
}

func finishMsg(dst []byte, at int) []byte {
	binary.BigEndian.PutUint32(dst[at:], uint32(len(dst)-at))
	return dst
}

func appendCString(dst []byte, s string) []byte { return append(append(dst, s...), 0) }
