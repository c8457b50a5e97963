package pool

import (
	"encoding/binary"
	"strconv"
	"sync"
)

// Protocol-level prepared statements in transaction mode.
//
// A client's named statement may be used on any server connection, so the pool renames it:
// every distinct (query, parameter types) gets a pool-wide id and the server-side name
// "pgharbor_<id>". Each server connection remembers which ids it has prepared. When a
// client's Bind or Describe names a statement the current server connection has not seen,
// the pool sends the Parse first and swallows its ParseComplete. A client Parse of a
// statement the server already has becomes a no-op Parse+Close pair, so the client still
// gets its ParseComplete in order.

// noopStmt is a statement name used for no-op Parse/Close pairs.
const noopStmt = "pgharbor_noop"

// stmtRegistry maps Parse contents (query and parameter types) to ids. Safe for concurrent
// use. Ids are never reused; when the map reaches maxRegistered entries (an application that
// prepares ever new query texts) it starts over, so memory stays bounded: statements seen
// again get new ids and are prepared once more on the servers, where the old ones age out
// under max_prepared_statements.
type stmtRegistry struct {
	mu   sync.RWMutex
	ids  map[string]uint64
	last uint64
	// parsed holds the ids a server has answered a Parse of with ParseComplete.
	parsed map[uint64]bool
}

const maxRegistered = 100_000

func (r *stmtRegistry) id(key []byte) uint64 {
	r.mu.RLock()
	id, ok := r.ids[string(key)]
	r.mu.RUnlock()
	if ok {
		return id
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if id, ok := r.ids[string(key)]; ok {
		return id
	}
	if len(r.ids) >= maxRegistered {
		r.ids = make(map[string]uint64)
		r.parsed = nil
	}
	r.last++
	id = r.last
	r.ids[string(key)] = id
	return id
}

// markParsed records that a server accepted the Parse of statement id.
func (r *stmtRegistry) markParsed(id uint64) {
	r.mu.RLock()
	done := r.parsed[id]
	r.mu.RUnlock()
	if done {
		return
	}
	r.mu.Lock()
	if r.parsed == nil {
		r.parsed = map[uint64]bool{}
	}
	r.parsed[id] = true
	r.mu.Unlock()
}

// wasParsed reports whether a server accepted a Parse of statement id before.
func (r *stmtRegistry) wasParsed(id uint64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.parsed[id]
}

// stmt is a client's named prepared statement.
type stmt struct {
	id    uint64
	query string
	rest  []byte // Parse body after the name: query, parameter count and types
	role  bool   // the query may run SET ROLE (textRole)
}

func serverStmtName(id uint64) string { return "pgharbor_" + strconv.FormatUint(id, 10) }

// parseMsg decodes a Parse body: statement name, query and the rest after the name.
func parseMsg(body []byte) (name, query string, rest []byte, ok bool) {
	name, rest, ok = cstring(body)
	if !ok {
		return "", "", nil, false
	}
	query, tail, ok := cstring(rest)
	if !ok || len(tail) < 2 {
		return "", "", nil, false
	}
	n := int(binary.BigEndian.Uint16(tail))
	if len(tail) != 2+4*n {
		return "", "", nil, false
	}
	return name, query, rest, true
}

// encodeParse builds a Parse message for name with a body rest (query, types).
func encodeParse(dst []byte, name string, rest []byte) []byte {
	dst, at := beginMsg(dst, 'P')
	dst = appendCString(dst, name)
	dst = append(dst, rest...)
	return finishMsg(dst, at)
}

// encodeClose builds Close('S', name).
func encodeClose(dst []byte, name string) []byte {
	dst, at := beginMsg(dst, 'C')
	dst = append(dst, 'S')
	dst = appendCString(dst, name)
	return finishMsg(dst, at)
}

// bindStmt splits a Bind body into portal, statement name and the rest.
func bindStmt(body []byte) (portal, name string, rest []byte, ok bool) {
	portal, rest, ok = cstring(body)
	if !ok {
		return "", "", nil, false
	}
	name, rest, ok = cstring(rest)
	return portal, name, rest, ok
}

func encodeBind(dst []byte, portal, name string, rest []byte) []byte {
	dst, at := beginMsg(dst, 'B')
	dst = appendCString(dst, portal)
	dst = appendCString(dst, name)
	dst = append(dst, rest...)
	return finishMsg(dst, at)
}

func encodeDescribeStmt(dst []byte, name string) []byte {
	dst, at := beginMsg(dst, 'D')
	dst = append(dst, 'S')
	dst = appendCString(dst, name)
	return finishMsg(dst, at)
}
