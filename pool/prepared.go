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

// Both engines run the rewriting below: checkStmtMsg before a server connection is
// attached (a malformed message ends the session without taking one), parseLocal for a
// Parse that needs no server connection, and rewriteStmt once one is attached.

// checkStmtMsg checks the framing of a Parse, Bind, Describe or Close (transaction mode).
func checkStmtMsg(typ byte, body []byte) error {
	switch typ {
	case 'P':
		if _, _, _, ok := parseMsg(body); !ok {
			return fatal(sqlstateProtocolViolation, "malformed Parse message")
		}
	case 'B':
		if _, _, _, ok := bindStmt(body); !ok {
			return fatal(sqlstateProtocolViolation, "malformed Bind message")
		}
	case 'D', 'C':
		if len(body) >= 2 && body[0] == 'S' {
			if _, _, ok := cstring(body[1:]); !ok {
				if typ == 'D' {
					return fatal(sqlstateProtocolViolation, "malformed Describe message")
				}
				return fatal(sqlstateProtocolViolation, "malformed Close message")
			}
		}
	}
	return nil
}

// parseLocal answers a named Parse without a server connection when parseLocally allows
// it: the statement is recorded and the caller writes the ParseComplete. A statement a
// server has parsed before, named between transactions, is prepared on whichever server
// connection the client's next Bind or Describe gets (reprepare). A client that prepares
// synchronously (PQprepare: Parse, Sync) then needs no server connection, so it cannot
// wait for one while its own open transactions elsewhere hold them all (pgbench -M
// prepared with more clients than servers).
func (s *session) parseLocal(msg []byte) bool {
	name, query, rest, ok := parseMsg(msg[5:])
	if !ok || name == "" || scanText([]byte(query)) != 0 {
		return false
	}
	id := s.srv.stmts.id(rest)
	if !s.parseLocally(id) {
		return false
	}
	s.stmts[name] = &stmt{id: id, query: query, rest: append([]byte(nil), rest...)}
	return true
}

// rewriteStmt appends to dst what goes to sc for the client's Parse, Bind, Describe or
// Close msg (transaction mode, checked by checkStmtMsg): named statements get their
// server-side names, a Parse of a statement sc has becomes a no-op pair, a Bind or Describe
// of one sc lacks gets its Parse first, and every ParseComplete and CloseComplete owed is
// queued (parseQ) so the reader passes on or drops it in order.
func (s *session) rewriteStmt(sc *serverConn, msg, dst []byte) []byte {
	typ, body := msg[0], msg[5:]
	switch typ {
	case 'P':
		name, query, rest, ok := parseMsg(body)
		if !ok || name == "" {
			break
		}
		st := &stmt{id: s.srv.stmts.id(rest), query: query, rest: append([]byte(nil), rest...)}
		f := scanText([]byte(query))
		st.role = f&textRole != 0
		s.noteText([]byte(query), f)
		s.stmts[name] = st
		s.mu.Lock()
		defer s.mu.Unlock()
		if st.role {
			sc.resetRole = true
		}
		seq := s.syncSeq + 1
		if _, ok := sc.prepared[st.id]; ok {
			sc.prepared[st.id] = sc.batch
			s.parseQ = append(s.parseQ, parseEntry{seq: seq, kind: '1'}, parseEntry{seq: seq, kind: '3', swallow: true})
			dst = encodeParse(dst, noopStmt, []byte{0, 0, 0})
			return encodeClose(dst, noopStmt)
		}
		// Close first: harmless when absent, and right if a DISCARD or DEALLOCATE we
		// could not see through left our bookkeeping behind the server's.
		dst = s.evictLocked(sc, dst, seq)
		dst = encodeClose(dst, serverStmtName(st.id))
		dst = encodeParse(dst, serverStmtName(st.id), st.rest)
		sc.prepared[st.id] = sc.batch
		s.parseQ = append(s.parseQ, parseEntry{seq: seq, kind: '3', swallow: true}, parseEntry{seq: seq, kind: '1', id: st.id})
		return dst
	case 'B':
		// byte-slice names: a Bind per query, and the map lookup does not copy them
		portal, rest, ok := cbytes(body)
		if !ok {
			break
		}
		name, rest, ok := cbytes(rest)
		if !ok || len(name) == 0 {
			break
		}
		st := s.stmts[string(name)]
		if st == nil {
			break
		}
		if st.role {
			s.markRoleReset(sc)
		}
		var at int
		dst, at = beginMsg(s.reprepare(sc, st, dst), 'B')
		dst = append(append(dst, portal...), 0)
		dst = strconv.AppendUint(append(dst, "pgharbor_"...), st.id, 10)
		dst = append(append(dst, 0), rest...)
		return finishMsg(dst, at)
	case 'D':
		if len(body) < 2 || body[0] != 'S' {
			break
		}
		name, _, ok := cbytes(body[1:])
		if !ok || len(name) == 0 {
			break
		}
		st := s.stmts[string(name)]
		if st == nil {
			break
		}
		dst = s.reprepare(sc, st, dst)
		return encodeDescribeStmt(dst, serverStmtName(st.id))
	case 'C':
		if len(body) < 2 || body[0] != 'S' {
			break
		}
		name, _, ok := cstring(body[1:])
		if !ok || name == "" {
			break
		}
		delete(s.stmts, name)
		s.mu.Lock()
		s.parseQ = append(s.parseQ, parseEntry{seq: s.syncSeq + 1, kind: '3'})
		s.mu.Unlock()
		return encodeClose(dst, noopStmt)
	}
	if typ == 'P' || typ == 'C' {
		// unnamed statements still produce completions that must stay in order
		s.mu.Lock()
		s.parseQ = append(s.parseQ, parseEntry{seq: s.syncSeq + 1, kind: completionOf(typ)})
		s.mu.Unlock()
	}
	return append(dst, msg...)
}

// cbytes splits a C string off b without copying it.
func cbytes(b []byte) ([]byte, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}
