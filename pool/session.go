package pool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// session is one client connection after login.
//
// The client loop (run) reads client messages and writes them to the attached server
// connection, attaching one first when needed. Exactly one reader forwards the server's
// answers at any time: in transaction mode usually the client loop itself, right after a
// Sync or Query (pumpInline); a serverLoop goroutine when the client keeps sending while
// answers flow (pipelining, Flush, COPY FROM STDIN) and always in session mode (so
// notifications reach idle LISTENers).
//
// The attachment ends only at a safe point: a ReadyForQuery with status idle when no Sync or
// Query is outstanding and no batch is half sent (transaction mode), or at the end of the
// session. The client loop claims the attachment (inBatch) before it writes, under mu, so
// the reader cannot hand the connection back between the check and the write; wmu covers the
// write itself. State transitions happen under mu, in attach (client loop) and detachLocked
// (the reader, or cleanup).
type session struct {
	srv  *Server
	id   uint64
	conn net.Conn
	mr   msgReader
	cwMu sync.Mutex // guards cw: both loops write to the client
	// wmu is held by the client loop while it writes to the attached server connection; the
	// server loop takes it before handing the connection back, so a write that is still
	// returning (its bytes already answered) never overlaps the next owner's.
	wmu sync.Mutex
	cw  *bufio.Writer

	user, db    string
	tgt         target
	params      map[string]string // settings the client asked for (lower-case names)
	startup     map[string]string // the settings it gave at startup, which RESET gives back
	pid, secret uint32
	sessionRO   bool // all traffic of this session is read-only (load-balanced)
	addr        string
	tls         bool
	started     time.Time
	stmts       map[string]*stmt // named prepared statements (transaction mode)
	poolCache   *serverPool      // the pool last used (client loop only)
	wait        waitSlot         // reused by every wait for a server connection (client loop only)
	virt        virtualState     // SHOW POOL_NODES over the extended protocol
	// ev is the session's state in the event loop, nil when a goroutine runs it (evloop.go);
	// inLoop says which, for other goroutines.
	ev     *loopSess
	inLoop atomic.Bool

	mu        sync.Mutex
	sc        *serverConn
	node      int  // node id of sc
	roAttach  bool // sc was chosen for a read-only route (statement level)
	pending   int  // Syncs and Queries sent whose ReadyForQuery has not come
	inBatch   bool // extended-protocol messages sent since the last Sync
	syncSeq   uint64
	rfqSeq    uint64
	parseQ    []parseEntry
	txStatus  byte
	detached  chan struct{} // closed when the current attachment ends
	detachReq bool          // the client is gone: finish at the next safe point
	reader    bool          // a serverLoop goroutine reads sc (else the client loop does, inline)
	// clientDead is set by the current reader when writing to the client failed.
	clientDead bool
	// copyIn is set while the server waits for COPY data (goroutine engine; the event
	// loop keeps its own in loopSess).
	copyIn    bool
	waiting   bool
	xactStart time.Time
	lastQuery time.Time
	// RESET of startup settings (see noteReset): what the statements sent reset, whether
	// an error came back since, and whether the attached connection's settings must be
	// made the client's again before its next message.
	resetNames []string
	resetAll   bool
	// setPending are session SETs sent (name, value as SQL text) whose transaction has not
	// ended; setUndone says a ROLLBACK or ABORT was sent since (setsOpen: any pending).
	setPending [][2]string
	setUndone  bool
	setsOpen   atomic.Bool
	resetErr   bool
	needSync   bool
	syncPre    []byte // a sync Query ensureAttached decided on, written before the message
	// swallowZ counts answers to the pool's own sync queries the reader drops (goroutine
	// engine; the event loop counts them in loopServer.swallow).
	swallowZ atomic.Int32
}

// parseEntry is a ParseComplete or CloseComplete the server owes us, in order.
type parseEntry struct {
	seq     uint64 // the Sync it belongs to
	kind    byte   // '1' or '3'
	swallow bool   // injected by the pool: the client must not see it
	id      uint64 // statement id being prepared (0: none)
}

// trackedParams are reported settings a client may change and expects to keep across
// transactions; the pool re-applies them when it attaches another server connection.
var trackedParams = map[string]bool{
	"client_encoding": true, "datestyle": true, "intervalstyle": true, "timezone": true,
	"standard_conforming_strings": true, "application_name": true, "search_path": true,
	"extra_float_digits": true, "default_transaction_read_only": true,
}

// run is the client loop. It returns when the client leaves or the session fails.
func (s *session) run(ctx context.Context) {
	defer s.cleanup()
	idleArmed := false
	for {
		if to := positive(s.srv.config().ClientIdleTimeout); to > 0 {
			s.mu.Lock()
			idle := s.sc == nil || (s.pending == 0 && !s.inBatch && s.txStatus == 'I')
			s.mu.Unlock()
			if idle && s.mr.r.Buffered() == 0 {
				_ = s.conn.SetReadDeadline(time.Now().Add(to))
				idleArmed = true
			} else if idleArmed {
				_ = s.conn.SetReadDeadline(time.Time{})
				idleArmed = false
			}
		}
		typ, n, err := s.mr.header()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && idleArmed {
				s.writeClient((&pgError{Severity: "FATAL", Code: sqlstateAdminShutdown, Message: "client_idle_timeout: closing idle connection"}).encode(nil), true)
			} else if errors.Is(err, errProtocol) {
				s.writeClient(fatal(sqlstateProtocolViolation, "%v", err).encode(nil), true)
			}
			return
		}
		if err := s.handle(ctx, typ, n); err != nil {
			var pe *pgError
			if errors.As(err, &pe) && pe.Severity == "ERROR" {
				// No server could be had (query_wait_timeout, paused, no primary): the
				// session goes on. Like PostgreSQL after an error, skip to the next Sync.
				if err := s.recoverFromError(typ, pe); err != nil {
					return
				}
				continue
			}
			if errors.As(err, &pe) {
				s.writeClient(pe.encode(nil), true)
			} else if !errors.Is(err, errClientGone) {
				s.srv.log.Debug("client session ended", "client", s.addr, "err", err)
			}
			return
		}
	}
}

var errClientGone = errors.New("client left")

// recoverFromError reports an ERROR for the message of type typ; for the extended protocol
// it discards messages up to and including the next Sync, then sends ReadyForQuery.
func (s *session) recoverFromError(typ byte, pe *pgError) error {
	s.mu.Lock()
	st := orIdle(s.txStatus)
	if s.sc == nil {
		s.inBatch = false
	}
	s.mu.Unlock()
	if typ != 'Q' {
		s.writeClient(pe.encode(nil), true)
		for {
			t, n, err := s.mr.header()
			if err != nil {
				return err
			}
			if _, err := s.mr.r.Discard(5 + n); err != nil {
				return err
			}
			if t == 'S' {
				break
			}
			if t == 'X' {
				return errClientGone
			}
		}
	}
	var out []byte
	if typ == 'Q' {
		out = pe.encode(nil)
	}
	s.writeClient(appendMsg(out, &pgproto3.ReadyForQuery{TxStatus: st}), true)
	return nil
}

// handle processes one client message (type typ, body length n, not yet consumed).
func (s *session) handle(ctx context.Context, typ byte, n int) error {
	txn := s.tgt.mode == ModeTransaction
	if !s.virt.active && ((typ == 'P' && n < 128) || ((typ == 'B' || typ == 'D') && len(s.virt.stmts) > 0)) && s.mr.fits(n) {
		b, err := s.mr.r.Peek(5 + n)
		if err != nil {
			return noEOF(err)
		}
		if (typ != 'P' || mentionsNodes(b)) && s.startsVirtual(typ, b) && s.batchStart() {
			s.waitQuiet()
			s.virt.active = true
		}
	}
	if s.virt.active {
		if typ != 'X' {
			msg, err := s.mr.whole(n)
			if err != nil {
				return err
			}
			return s.handleVirtual(typ, msg)
		}
	}
	switch typ {
	case 'X':
		return errClientGone
	case 'Q':
		msg, err := s.mr.whole(n)
		if err != nil {
			return err
		}
		if len(msg) < 6 || msg[len(msg)-1] != 0 {
			return fatal(sqlstateProtocolViolation, "malformed Query message")
		}
		if q := msg[5 : len(msg)-1]; len(q) < 64 && mentionsNodes(q) && isShowPoolNodes(string(q)) {
			s.waitQuiet()
			s.mu.Lock()
			st := s.txStatus
			s.mu.Unlock()
			s.writeClient(s.srv.poolNodesResponse(nil, st), true)
			return nil
		}
		if txn && mentionsDealloc(msg[5:len(msg)-1]) {
			q := string(msg[5 : len(msg)-1])
			if tag, ok := s.deallocate(q); ok {
				s.waitQuiet()
				s.mu.Lock()
				st := orIdle(s.txStatus)
				s.mu.Unlock()
				s.writeClient(appendMsg(nil, &pgproto3.CommandComplete{CommandTag: []byte(tag)}, &pgproto3.ReadyForQuery{TxStatus: st}), true)
				return nil
			}
			sc, err := s.ensureAttached(ctx, typ, msg)
			if err != nil {
				return err
			}
			s.mu.Lock()
			clear(sc.prepared) // DISCARD ALL / DEALLOCATE ALL on the server: re-prepare later
			s.mu.Unlock()
			return s.send(sc, typ, msg)
		}
		sc, err := s.ensureAttached(ctx, typ, msg)
		if err != nil {
			return err
		}
		return s.send(sc, typ, msg)
	case 'P', 'B', 'D', 'C':
		if !txn && !s.mr.fits(n) {
			return s.forward(ctx, typ, n) // big and untouched in session mode: stream it
		}
		msg, err := s.mr.whole(n)
		if err != nil {
			return err
		}
		if txn {
			return s.handleStmtMsg(ctx, typ, msg)
		}
		sc, err := s.ensureAttached(ctx, typ, msg)
		if err != nil {
			return err
		}
		return s.send(sc, typ, msg)
	case 'S':
		s.mu.Lock()
		sc := s.sc
		st := s.txStatus
		s.mu.Unlock()
		if sc == nil {
			msg, err := s.mr.whole(n)
			if err != nil {
				return err
			}
			_ = msg
			s.writeClient(appendMsg(nil, &pgproto3.ReadyForQuery{TxStatus: orIdle(st)}), true)
			return nil
		}
		return s.forward(ctx, typ, n)
	case 'H', 'd', 'c', 'f':
		s.mu.Lock()
		sc := s.sc
		s.mu.Unlock()
		if sc == nil {
			_, err := s.mr.r.Discard(5 + n)
			if typ == 'H' {
				s.writeClient(nil, true)
			}
			return err
		}
		return s.forward(ctx, typ, n)
	case 'E':
		return s.forward(ctx, typ, n)
	case 'F':
		return s.forward(ctx, typ, n)
	default:
		return fatal(sqlstateProtocolViolation, "invalid frontend message type %q", typ)
	}
}

func completionOf(typ byte) byte {
	if typ == 'P' {
		return '1'
	}
	return '3'
}

func orIdle(b byte) byte {
	if b == 0 {
		return 'I'
	}
	return b
}

// forward attaches a server if needed and copies the next message to it unchanged.
func (s *session) forward(ctx context.Context, typ byte, n int) error {
	var first []byte
	if s.mr.fits(n) {
		// Peek without consuming so ensureAttached can classify the batch.
		b, err := s.mr.r.Peek(5 + n)
		if err != nil {
			return noEOF(err)
		}
		first = b
	}
	sc, err := s.ensureAttached(ctx, typ, first)
	if err != nil {
		return err
	}
	if typ == 'F' && s.tgt.mode == ModeTransaction && (first == nil || callsSetConfig(first)) {
		s.markRoleReset(sc)
	}
	s.wmu.Lock()
	if pre := s.account(sc, typ); pre != nil {
		_, _ = sc.w.Write(pre) // an error shows at the next write or flush
	}
	if err := s.mr.copyTo(sc.w, n); err != nil {
		s.wmu.Unlock()
		return s.serverWriteErr(sc, err)
	}
	err = s.maybeFlush(sc, typ)
	s.wmu.Unlock()
	if err != nil {
		return err
	}
	return s.afterWrite(sc, typ)
}

// send writes one whole client message to sc.
func (s *session) send(sc *serverConn, typ byte, msg []byte) error {
	if typ == 'Q' || typ == 'P' {
		// the statement text: a Query's, or a Parse's as the client sent it (a named
		// statement's rewritten Parse starts with a Close: handleStmtMsg looked at it)
		if q := stmtText(msg); len(q) > 0 {
			f := scanText(q)
			if f&textRole != 0 && s.tgt.mode == ModeTransaction {
				s.markRoleReset(sc)
			}
			s.noteText(q, f)
		}
	}
	s.wmu.Lock()
	if pre := s.account(sc, typ); pre != nil {
		_, _ = sc.w.Write(pre)
	}
	if _, err := sc.w.Write(msg); err != nil {
		s.wmu.Unlock()
		return s.serverWriteErr(sc, err)
	}
	err := s.maybeFlush(sc, typ)
	s.wmu.Unlock()
	if err != nil {
		return err
	}
	return s.afterWrite(sc, typ)
}

// noteReset records which of the client's startup settings the query q (a Query or Parse
// body) may put back to the session default. A server connection's session defaults are
// the server's (it logged in without the client's settings): when the answer came without
// an error, the pool gives the client its startup values again (resetDoneLocked).
func (s *session) noteReset(q string) {
	names, all := resetTargets(q)
	if len(names) == 0 && !all {
		return
	}
	s.mu.Lock()
	s.resetNames = append(s.resetNames, names...)
	s.resetAll = s.resetAll || all
	s.mu.Unlock()
}

// noteText notes the RESETs (noteReset) and session SETs (noteSets) of a statement text
// whose scanText flags are f, making a string of it only when they say one may be there.
func (s *session) noteText(q []byte, f int) {
	if f&textReset != 0 {
		s.noteReset(string(q))
	}
	if f&textSet != 0 && s.tgt.mode == ModeTransaction {
		s.noteSets(string(q))
	}
	if f&textRollback != 0 && s.setsOpen.Load() {
		s.mu.Lock()
		s.setUndone = true
		s.mu.Unlock()
	}
}

// stmtText returns the statement text of a Query or Parse message (header included)
// without copying; nil for other messages.
func stmtText(msg []byte) []byte {
	if len(msg) < 6 {
		return nil
	}
	switch msg[0] {
	case 'Q':
		return msg[5 : len(msg)-1]
	case 'P':
		b := msg[5:]
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return nil
		}
		b = b[i+1:]
		if j := bytes.IndexByte(b, 0); j >= 0 {
			return b[:j]
		}
	}
	return nil
}

// noteSets records the session-level SETs of the query q in transaction mode: when the
// answer comes without an error, the setting follows the client to its next server
// connections like one it gave at startup, and another client of this one gets it RESET.
func (s *session) noteSets(q string) {
	sets := sessionSets(q)
	if len(sets) == 0 {
		return
	}
	s.mu.Lock()
	s.setPending = append(s.setPending, sets...)
	s.setsOpen.Store(true)
	s.mu.Unlock()
}

// rawValue marks a value in session.params and serverConn.params that is SQL text as the
// client wrote it (noteSets), sent unquoted.
const rawValue = "\x00sql:"

// resetDoneLocked runs at each ReadyForQuery (status) on sc: after RESETs noted by
// noteReset that raised no error, the reset startup settings are the client's again and sc
// must get them before the client's next statement (needSync; at the next attach when sc
// is released now). Caller holds mu.
func (s *session) resetDoneLocked(sc *serverConn, status byte) {
	failed := s.resetErr || status == 'E'
	s.resetErr = false
	if len(s.setPending) > 0 && (failed || status == 'I') {
		// the SETs' transaction ended: they stay unless it failed or was rolled back (a
		// ROLLBACK TO SAVEPOINT counts too: the pool does not follow savepoints)
		if !failed && !s.setUndone {
			for _, kv := range s.setPending {
				v := rawValue + kv[1]
				s.params[kv[0]] = v
				sc.params[kv[0]] = v
				sc.dirty[kv[0]] = true
			}
		}
		s.setPending, s.setUndone = s.setPending[:0], false
		s.setsOpen.Store(false)
	}
	if (len(s.resetNames) == 0 && !s.resetAll) || failed {
		s.resetNames, s.resetAll = s.resetNames[:0], false
		return
	}
	apply := func(k string) {
		if v, ok := s.startup[k]; ok {
			s.params[k] = v
			delete(sc.params, k) // the server's value is its default now, or unknown
			s.needSync = true
		} else if v, ok := s.params[k]; ok && strings.HasPrefix(v, rawValue) {
			delete(s.params, k) // a session SET undone: the server's default is right
			delete(sc.params, k)
		}
	}
	if s.resetAll {
		for k, v := range s.params {
			if strings.HasPrefix(v, rawValue) {
				apply(k)
			}
		}
		for k := range s.startup {
			apply(k)
		}
	}
	for _, k := range s.resetNames {
		apply(k)
	}
	s.resetNames, s.resetAll = s.resetNames[:0], false
}

// syncLocked returns a Query that makes the attached sc's settings the client's again after
// a RESET (needSync), when that can go first now: nothing outstanding and no failed
// transaction block. Caller holds mu.
func (s *session) syncLocked(sc *serverConn) []byte {
	if !s.needSync || s.pending != 0 || s.inBatch || s.txStatus == 'E' {
		return nil
	}
	s.needSync = false
	if s.paramsMatch(sc) {
		return nil
	}
	q := s.paramSQL(sc)
	if q == "" {
		return nil
	}
	s.paramsApplied(sc)
	return appendMsg(nil, &pgproto3.Query{String: q})
}

// markRoleReset notes that the client may have changed sc's role: sc is reset before
// another client gets it (session mode resets with DISCARD ALL anyway).
func (s *session) markRoleReset(sc *serverConn) {
	s.mu.Lock()
	sc.resetRole = true
	s.mu.Unlock()
}

// afterWrite decides who reads the answers in transaction mode: the client loop itself
// (pumpInline) after a Sync or Query with nothing more from the client buffered, or a
// serverLoop goroutine when the client keeps sending or waits on a Flush.
func (s *session) afterWrite(sc *serverConn, typ byte) error {
	if typ != 'S' && typ != 'Q' && typ != 'H' && typ != 'F' {
		return nil
	}
	s.mu.Lock()
	if s.reader || s.sc != sc {
		s.mu.Unlock()
		return nil
	}
	done := s.detached
	if typ != 'H' && s.mr.r.Buffered() == 0 {
		s.mu.Unlock()
		return s.pumpInline(sc, done)
	}
	s.reader = true
	s.mu.Unlock()
	go s.serverLoop(sc, done)
	return nil
}

// account updates the batch state before a message goes to the server, and returns a sync
// Query (syncPre) to write before it.
func (s *session) account(sc *serverConn, typ byte) []byte {
	s.mu.Lock()
	pre := s.syncPre
	s.syncPre = nil
	switch typ {
	case 'S', 'Q', 'F': // each gets its ReadyForQuery
		s.sentLocked(sc, time.Now())
	case 'd', 'c', 'f':
	default:
		s.inBatch = true
	}
	s.mu.Unlock()
	return pre
}

func (s *session) maybeFlush(sc *serverConn, typ byte) error {
	if typ == 'S' || typ == 'Q' || typ == 'F' || typ == 'H' || typ == 'c' || typ == 'f' || !s.mr.complete() {
		if err := sc.w.Flush(); err != nil {
			return s.serverWriteErr(sc, err)
		}
	}
	return nil
}

func (s *session) serverWriteErr(sc *serverConn, err error) error {
	_ = sc.conn.Close() // the server loop sees it and ends the attachment
	return fatal(sqlstateConnFailure, "server connection lost: %v", err)
}

// handleStmtMsg rewrites Parse/Bind/Describe/Close of named statements in transaction mode.
func (s *session) handleStmtMsg(ctx context.Context, typ byte, msg []byte) error {
	body := msg[5:]
	var out []byte
	switch typ {
	case 'P':
		name, _, rest, ok := parseMsg(body)
		if !ok {
			return fatal(sqlstateProtocolViolation, "malformed Parse message")
		}
		if name == "" {
			break
		}
		sc, err := s.ensureAttached(ctx, typ, msg)
		if err != nil {
			return err
		}
		st := &stmt{id: s.srv.stmts.id(rest), rest: append([]byte(nil), rest...)}
		st.query, _, _ = cstring(rest)
		f := scanText([]byte(st.query))
		st.role = f&textRole != 0
		s.noteText([]byte(st.query), f)
		if st.role {
			s.markRoleReset(sc)
		}
		s.stmts[name] = st
		s.mu.Lock()
		seq := s.syncSeq + 1
		if _, ok := sc.prepared[st.id]; ok {
			sc.prepared[st.id] = sc.batch
			out = encodeParse(nil, noopStmt, []byte{0, 0, 0})
			out = encodeClose(out, noopStmt)
			s.parseQ = append(s.parseQ, parseEntry{seq: seq, kind: '1'}, parseEntry{seq: seq, kind: '3', swallow: true})
		} else {
			// Close first: harmless when absent, and right if a DISCARD or DEALLOCATE we
			// could not see through left our bookkeeping behind the server's.
			out = s.evictLocked(sc, nil, seq)
			out = encodeClose(out, serverStmtName(st.id))
			out = encodeParse(out, serverStmtName(st.id), st.rest)
			sc.prepared[st.id] = sc.batch
			s.parseQ = append(s.parseQ, parseEntry{seq: seq, kind: '3', swallow: true}, parseEntry{seq: seq, kind: '1', id: st.id})
		}
		s.mu.Unlock()
		return s.send(sc, typ, out)
	case 'B':
		portal, name, rest, ok := bindStmt(body)
		if !ok {
			return fatal(sqlstateProtocolViolation, "malformed Bind message")
		}
		st := s.stmts[name]
		if name == "" || st == nil {
			break
		}
		sc, err := s.ensureAttached(ctx, typ, msg)
		if err != nil {
			return err
		}
		if st.role {
			s.markRoleReset(sc)
		}
		out = s.reprepare(sc, st, nil)
		out = encodeBind(out, portal, serverStmtName(st.id), rest)
		return s.send(sc, typ, out)
	case 'D':
		if len(body) < 2 || body[0] != 'S' {
			break
		}
		name, _, ok := cstring(body[1:])
		if !ok {
			return fatal(sqlstateProtocolViolation, "malformed Describe message")
		}
		st := s.stmts[name]
		if name == "" || st == nil {
			break
		}
		sc, err := s.ensureAttached(ctx, typ, msg)
		if err != nil {
			return err
		}
		out = s.reprepare(sc, st, nil)
		out = encodeDescribeStmt(out, serverStmtName(st.id))
		return s.send(sc, typ, out)
	case 'C':
		if len(body) < 2 || body[0] != 'S' {
			break
		}
		name, _, ok := cstring(body[1:])
		if !ok {
			return fatal(sqlstateProtocolViolation, "malformed Close message")
		}
		if name == "" {
			break
		}
		delete(s.stmts, name)
		sc, err := s.ensureAttached(ctx, typ, msg)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.parseQ = append(s.parseQ, parseEntry{seq: s.syncSeq + 1, kind: '3'})
		s.mu.Unlock()
		return s.send(sc, typ, encodeClose(nil, noopStmt))
	}
	sc, err := s.ensureAttached(ctx, typ, msg)
	if err != nil {
		return err
	}
	if typ == 'P' || typ == 'C' {
		// unnamed statements still produce completions that must stay in order
		s.mu.Lock()
		s.parseQ = append(s.parseQ, parseEntry{seq: s.syncSeq + 1, kind: completionOf(typ)})
		s.mu.Unlock()
	}
	return s.send(sc, typ, msg)
}

// reprepare returns dst with a Parse of st prepended when sc has not prepared it yet.
func (s *session) reprepare(sc *serverConn, st *stmt, dst []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := sc.prepared[st.id]; ok {
		sc.prepared[st.id] = sc.batch
		return dst
	}
	seq := s.syncSeq + 1
	dst = s.evictLocked(sc, dst, seq)
	sc.prepared[st.id] = sc.batch
	s.parseQ = append(s.parseQ, parseEntry{seq: seq, kind: '3', swallow: true}, parseEntry{seq: seq, kind: '1', swallow: true, id: st.id})
	dst = encodeClose(dst, serverStmtName(st.id))
	return encodeParse(dst, serverStmtName(st.id), st.rest)
}

// evictLocked makes room for one more statement on sc when it holds max_prepared_statements:
// it appends Closes of the least recently used ones (their CloseCompletes swallowed) to dst.
// Only when that is safe: nothing outstanding and no transaction block open (so no portal
// can still depend on a statement), and never a statement this batch already used. When
// nothing qualifies the connection keeps one more for now. Caller holds s.mu.
func (s *session) evictLocked(sc *serverConn, dst []byte, seq uint64) []byte {
	max := s.srv.config().MaxPreparedStatements
	if max <= 0 || len(sc.prepared) < max || s.pending > 0 || orIdle(s.txStatus) != 'I' {
		return dst
	}
	for len(sc.prepared) >= max { // more than one after a transaction block ran over the cap
		var victim, oldest uint64
		found := false
		for id, used := range sc.prepared {
			if used < sc.batch && (!found || used < oldest || (used == oldest && id < victim)) {
				victim, oldest, found = id, used, true
			}
		}
		if !found {
			break
		}
		delete(sc.prepared, victim)
		s.parseQ = append(s.parseQ, parseEntry{seq: seq, kind: '3', swallow: true})
		dst = encodeClose(dst, serverStmtName(victim))
	}
	return dst
}

// ensureAttached returns the attached server connection, attaching one when there is none.
// msg is the message that needs it (whole, for classification; nil if unknown).
//
// It claims the attachment for the message about to be written (inBatch = true under mu),
// so the server loop cannot release the connection between this check and the write.
// Copy messages do not claim: they only flow while a Query or Execute is outstanding.
func (s *session) ensureAttached(ctx context.Context, typ byte, msg []byte) (*serverConn, error) {
	claim := typ != 'd' && typ != 'c' && typ != 'f'
	for {
		s.mu.Lock()
		sc := s.sc
		if sc != nil && s.roAttach && !s.inBatch {
			// A new batch pipelined on a read-only attachment must itself be read-only.
			s.mu.Unlock()
			if !s.classify(typ, msg) {
				s.mu.Lock()
				inline := s.sc == sc && !s.reader
				s.mu.Unlock()
				if inline {
					// nothing outstanding and nobody reading: the read-only attachment
					// is idle in a transaction; keep using it
					s.mu.Lock()
					if s.sc == sc && claim {
						s.inBatch = true
					}
					s.mu.Unlock()
					return sc, nil
				}
				s.waitDetached()
				continue
			}
			s.mu.Lock()
			if s.sc != sc {
				s.mu.Unlock()
				continue
			}
		}
		if sc != nil {
			if claim {
				if pre := s.syncLocked(sc); pre != nil {
					// answered before the message: its ReadyForQuery is dropped (swallowZ)
					s.syncPre = pre
					s.pending++
					s.syncSeq++
					sc.batch++
					s.swallowZ.Add(1)
				}
				s.inBatch = true
			}
			s.mu.Unlock()
			return sc, nil
		}
		s.mu.Unlock()
		sc, err := s.attach(ctx, s.classify(typ, msg))
		if err != nil {
			return nil, err
		}
		if claim {
			s.mu.Lock()
			s.inBatch = true
			s.mu.Unlock()
		}
		return sc, nil
	}
}

// waitDetached waits until the current attachment ends.
func (s *session) waitDetached() {
	s.mu.Lock()
	ch := s.detached
	has := s.sc != nil
	s.mu.Unlock()
	if has && ch != nil {
		<-ch
	}
}

// deallocate handles `DEALLOCATE [PREPARE] name|ALL` for the client's protocol-level
// statements in transaction mode (they exist on the server under other names). It returns
// the command tag, or false when the server must run the statement: a name that is not
// one of them, and ALL (after forgetting the client's statements).
func (s *session) deallocate(q string) (string, bool) {
	f := strings.Fields(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(q), ";")))
	if len(f) >= 2 && strings.EqualFold(f[1], "prepare") {
		f = append(f[:1], f[2:]...)
	}
	if len(f) != 2 || !strings.EqualFold(f[0], "deallocate") {
		return "", false
	}
	if strings.EqualFold(f[1], "all") {
		// also the server's business: SQL-level PREPAREd statements go too (the caller
		// sends it on and forgets what the server connection had prepared)
		clear(s.stmts)
		return "", false
	}
	name := f[1]
	if len(name) > 1 && name[0] == '"' && name[len(name)-1] == '"' {
		name = strings.ReplaceAll(name[1:len(name)-1], `""`, `"`)
	} else {
		name = strings.ToLower(name)
	}
	if _, ok := s.stmts[name]; !ok {
		return "", false // an SQL-level PREPAREd statement: the server's business
	}
	delete(s.stmts, name)
	return "DEALLOCATE", true
}

// batchStart says whether the next message starts a new extended-protocol batch.
func (s *session) batchStart() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.inBatch
}

// waitQuiet waits until no answer from the server is outstanding.
func (s *session) waitQuiet() {
	for {
		s.mu.Lock()
		quiet := s.sc == nil || (s.pending == 0 && !s.inBatch)
		s.mu.Unlock()
		if quiet {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// classify says whether the transaction starting with msg may run on a reader.
func (s *session) classify(typ byte, msg []byte) bool {
	cfg := s.srv.config()
	if !cfg.LoadBalance || s.tgt.route == "primary" {
		return false
	}
	if s.sessionRO {
		return true
	}
	if !cfg.StatementLevelLoadBalance || s.tgt.mode != ModeTransaction || msg == nil {
		return false
	}
	s.mu.Lock()
	inTx := s.txStatus == 'T' || s.txStatus == 'E'
	s.mu.Unlock()
	if inTx {
		return false
	}
	switch typ {
	case 'Q':
		q, _, ok := cstring(msg[5:])
		return ok && isReadOnlyQuery(q, cfg.WriteFunctions)
	case 'P', 'B':
		if !s.roMessage(typ, msg[5:], cfg.WriteFunctions) {
			return false
		}
		// The rest of the batch (up to Sync) must be buffered and read-only too.
		buf, _ := s.mr.r.Peek(s.mr.r.Buffered())
		if typ == 'B' || typ == 'P' {
			// forward() peeks without consuming: skip the message itself
			if len(buf) >= len(msg) && string(buf[:len(msg)]) == string(msg) {
				buf = buf[len(msg):]
			}
		}
		for len(buf) >= 5 {
			t := buf[0]
			l := int(binary.BigEndian.Uint32(buf[1:5])) + 1
			if l < 5 || l > len(buf) {
				return false
			}
			switch t {
			case 'S':
				return true
			case 'P', 'B':
				if !s.roMessage(t, buf[5:l], cfg.WriteFunctions) {
					return false
				}
			case 'D', 'E':
			default:
				return false
			}
			buf = buf[l:]
		}
		return false
	}
	return false
}

func (s *session) roMessage(typ byte, body []byte, extra []string) bool {
	switch typ {
	case 'P':
		_, q, _, ok := parseMsg(body)
		return ok && isReadOnlyQuery(q, extra)
	case 'B':
		_, name, _, ok := bindStmt(body)
		if !ok || name == "" {
			return true // the unnamed statement was parsed in this batch and checked there
		}
		st := s.stmts[name]
		return st != nil && isReadOnlyQuery(st.query, extra)
	}
	return false
}

// attach acquires a server connection for the next transaction (or the session).
func (s *session) attach(ctx context.Context, readOnly bool) (*serverConn, error) {
	// The wait context (query_wait_timeout) is made only when something has to wait: the
	// common case takes an idle connection at once.
	wait := positive(s.srv.config().QueryWaitTimeout)
	var actx context.Context
	cancel := context.CancelFunc(func() {})
	defer func() { cancel() }()
	waitCtx := func() context.Context {
		if actx == nil {
			actx = ctx
			if wait > 0 {
				actx, cancel = context.WithTimeout(ctx, wait)
			}
			s.mu.Lock()
			s.waiting = true
			s.mu.Unlock()
		}
		return actx
	}
	defer func() {
		if actx != nil {
			s.mu.Lock()
			s.waiting = false
			s.mu.Unlock()
		}
	}()
	if s.srv.isPaused() {
		if err := s.srv.waitResumed(waitCtx()); err != nil {
			return nil, &pgError{Severity: "ERROR", Code: sqlstateCannotConnect, Message: "query_wait_timeout: the pool is paused"}
		}
	}
	for attempt := 0; ; attempt++ {
		p, nodeID, isReader, err := s.srv.poolFor(waitCtx, s, readOnly)
		if err != nil {
			return nil, err
		}
		sc := p.tryIdle()
		if sc == nil {
			if actx != nil { // already waited (pause, no primary): same deadline
				sc, err = p.acquire(actx)
			} else {
				s.mu.Lock()
				s.waiting = true
				s.mu.Unlock()
				if s.wait.ch == nil {
					s.wait.ch = make(chan *serverConn, 1)
				}
				sc, err = p.acquireWait(ctx, &s.wait, wait)
				s.mu.Lock()
				s.waiting = false
				s.mu.Unlock()
			}
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, &pgError{Severity: "ERROR", Code: sqlstateCannotConnect, Message: "query_wait_timeout: no server connection became free in time"}
			}
			if errors.Is(err, context.Canceled) || errors.Is(err, errPoolClosed) {
				return nil, fatal(sqlstateAdminShutdown, "pgharbor pool is shutting down")
			}
			var pe *pgError
			if errors.As(err, &pe) {
				return nil, pe
			}
			if isReader && attempt == 0 {
				// a reader that cannot be reached: fall back to the primary
				s.srv.log.Warn("reader unreachable, using the primary", "node", nodeID, "err", err)
				readOnly = false
				continue
			}
			return nil, fatal(sqlstateCannotConnect, "cannot connect to server: %v", err)
		}
		if sc.ev != nil { // last used by the event loop
			if err := sc.leaveLoop(); err != nil {
				p.drop(sc)
				return nil, fatal(sqlstateConnFailure, "server connection lost: %v", err)
			}
		}
		if err := s.syncParams(sc); err != nil {
			p.drop(sc)
			var pe *pgError
			if errors.As(err, &pe) {
				return nil, pe
			}
			return nil, fatal(sqlstateConnFailure, "server connection lost: %v", err)
		}
		if isReader {
			s.srv.cl.CountSelect(nodeID)
		}
		p.mu.Lock()
		sc.client = s
		p.mu.Unlock()
		s.mu.Lock()
		s.attachLocked(sc, nodeID, readOnly, time.Now())
		s.detached = make(chan struct{})
		done := s.detached
		s.mu.Unlock()
		s.srv.attached.Add(1)
		if s.tgt.mode == ModeSession {
			s.mu.Lock()
			s.reader = true
			s.mu.Unlock()
			go s.serverLoop(sc, done)
		}
		return sc, nil
	}
}

// syncParams makes the server connection's settings match what the client asked for.
func (s *session) syncParams(sc *serverConn) error {
	if s.paramsMatch(sc) {
		return nil // the usual case: nothing to send, and no builder allocated per attach
	}
	q := s.paramSQL(sc)
	if q == "" {
		return nil
	}
	// the client sees what the server reports: after a RESET it saw the server's default
	var reported []byte
	err := sc.simpleQuery(q, func(name, value string) {
		reported = appendMsg(reported, &pgproto3.ParameterStatus{Name: name, Value: value})
	})
	if len(reported) > 0 {
		s.writeClient(reported, false)
	}
	if err != nil {
		return err
	}
	s.paramsApplied(sc)
	return nil
}

// paramSQL returns the SET and RESET commands that make sc's settings the client's.
func (s *session) paramSQL(sc *serverConn) string {
	var b strings.Builder
	for k, v := range s.params {
		if cur, ok := sc.params[k]; ok && cur == v {
			continue
		}
		if !validGUC(k) {
			continue
		}
		if raw, ok := strings.CutPrefix(v, rawValue); ok {
			fmt.Fprintf(&b, "SET %s TO %s;", k, raw)
			continue
		}
		fmt.Fprintf(&b, "SET %s TO %s;", k, quoteLiteral(v))
	}
	for k := range sc.dirty {
		if _, ok := s.params[k]; !ok && validGUC(k) {
			fmt.Fprintf(&b, "RESET %s;", k)
		}
	}
	return b.String()
}

// paramsApplied records that paramSQL's commands ran on sc.
func (s *session) paramsApplied(sc *serverConn) {
	for k := range sc.dirty {
		if _, ok := s.params[k]; !ok {
			delete(sc.dirty, k)
			if !sc.reported[k] {
				delete(sc.params, k)
			}
		}
	}
	for k, v := range s.params {
		sc.params[k] = v
		sc.dirty[k] = true
	}
}

// paramsMatch says whether syncParams has nothing to send to sc (the same checks, no SQL).
func (s *session) paramsMatch(sc *serverConn) bool {
	for k, v := range s.params {
		if cur, ok := sc.params[k]; ok && cur == v {
			continue
		}
		if validGUC(k) {
			return false
		}
	}
	for k := range sc.dirty {
		if _, ok := s.params[k]; !ok && validGUC(k) {
			return false
		}
	}
	return true
}

func validGUC(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '_' || c == '.' || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
			return false
		}
	}
	return true
}

func quoteLiteral(v string) string {
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// writeClient writes b to the client, flushing when asked.
func (s *session) writeClient(b []byte, flush bool) {
	s.cwMu.Lock()
	defer s.cwMu.Unlock()
	if len(b) > 0 {
		_, _ = s.cw.Write(b)
	}
	if flush {
		_ = s.cw.Flush()
	}
}

// Results of serverStep.
const (
	stepMore   = iota // keep reading
	stepQuiet         // a ReadyForQuery left nothing outstanding; the attachment is still held
	stepEnded         // the attachment ended (released or dropped): sc is no longer ours
	stepCopyIn        // the server waits for COPY data from the client
)

// serverLoop forwards the server's messages to the client until the attachment ends. It runs
// as its own goroutine in session mode, and in transaction mode when the client needs
// answers while it keeps sending (Flush, pipelining, COPY FROM STDIN).
func (s *session) serverLoop(sc *serverConn, done chan struct{}) {
	for s.serverStep(sc, done) != stepEnded {
	}
}

// pumpInline reads the server's answers on the client's goroutine until nothing is
// outstanding (transaction mode, after a Sync or Query with no further client input): the
// common request/response round trip then needs no second goroutine. A COPY FROM STDIN
// hands reading over to a serverLoop goroutine, since the client must be read meanwhile.
func (s *session) pumpInline(sc *serverConn, done chan struct{}) error {
	for {
		switch s.serverStep(sc, done) {
		case stepMore:
		case stepQuiet:
			return nil
		case stepEnded:
			s.mu.Lock()
			dead := s.clientDead
			s.mu.Unlock()
			if dead {
				return errClientGone
			}
			return nil
		case stepCopyIn:
			s.mu.Lock()
			if s.sc == sc {
				s.reader = true
				go s.serverLoop(sc, done)
			}
			s.mu.Unlock()
			return nil
		}
	}
}

// clientWrite runs f on the client writer; after a failure the client is gone and later
// output is dropped.
func (s *session) clientWrite(f func() error) {
	if s.clientDead {
		return
	}
	s.cwMu.Lock()
	err := f()
	s.cwMu.Unlock()
	if err != nil {
		s.mu.Lock()
		s.clientDead = true
		s.detachReq = true
		s.mu.Unlock()
		_ = s.conn.Close()
	}
}

func (s *session) clientWriteMsg(msg []byte) {
	if s.clientDead {
		return
	}
	s.cwMu.Lock()
	_, err := s.cw.Write(msg)
	s.cwMu.Unlock()
	if err != nil {
		s.clientWrite(func() error { return err })
	}
}

func (s *session) clientFlush() {
	if s.clientDead {
		return
	}
	s.cwMu.Lock()
	err := s.cw.Flush()
	s.cwMu.Unlock()
	if err != nil {
		s.clientWrite(func() error { return err })
	}
}

// serverStep reads and handles one server message. Only the session's current reader
// (serverLoop goroutine or the client loop in pumpInline) calls it.
func (s *session) serverStep(sc *serverConn, done chan struct{}) int {
	typ, n, err := sc.mr.header()
	if err != nil {
		s.serverGone(sc, done, err)
		return stepEnded
	}
	if s.swallowZ.Load() > 0 {
		return s.swallowStep(sc, done, typ, n)
	}
	result := stepMore
	switch typ {
	case 'Z':
		msg, err := sc.mr.whole(n)
		if err != nil || n != 1 {
			s.serverGone(sc, done, fmt.Errorf("bad ReadyForQuery: %v", err))
			return stepEnded
		}
		status := msg[5]
		// Buffered now, flushed below: after the connection went back to the pool when
		// this ends the transaction, so the next client's query can start on it while
		// this client's answer is being written.
		s.clientWriteMsg(msg)
		s.mu.Lock()
		quiet, end := s.readyLocked(sc, status, time.Now())
		if quiet {
			result = stepQuiet
		}
		reset := sc.needsReset()
		s.mu.Unlock()
		if end {
			if reset {
				s.clientFlush() // the client need not wait for the reset
			}
			s.finishServer(sc, done, status)
			s.clientFlush()
			return stepEnded
		}
		s.clientFlush()
		return result
	case '1', '3':
		s.mu.Lock()
		var e parseEntry
		if len(s.parseQ) > 0 && s.parseQ[0].kind == typ {
			e = s.parseQ[0]
			s.parseQ = s.parseQ[1:]
		}
		s.mu.Unlock()
		msg, err := sc.mr.whole(n)
		if err != nil {
			s.serverGone(sc, done, err)
			return stepEnded
		}
		if !e.swallow {
			s.clientWriteMsg(msg)
		}
	case 'S':
		msg, err := sc.mr.whole(n)
		if err != nil {
			s.serverGone(sc, done, err)
			return stepEnded
		}
		s.serverParam(sc, msg[5:])
		s.clientWriteMsg(msg)
	default:
		if typ == 'G' || typ == 'W' {
			result = stepCopyIn
			s.mu.Lock()
			s.copyIn = true
			s.mu.Unlock()
		}
		if typ == 'E' {
			s.mu.Lock()
			s.resetErr = true
			s.mu.Unlock()
		}
		if s.clientDead {
			if _, err := sc.mr.r.Discard(5 + n); err != nil {
				s.serverGone(sc, done, err)
				return stepEnded
			}
			break
		}
		if sc.mr.fits(n) {
			msg, err := sc.mr.whole(n)
			if err != nil {
				s.serverGone(sc, done, err)
				return stepEnded
			}
			s.clientWriteMsg(msg)
			break
		}
		s.cwMu.Lock()
		werr := sc.mr.copyTo(s.cw, n)
		s.cwMu.Unlock()
		if werr != nil { // reading or writing failed mid-message: neither side is usable
			s.mu.Lock()
			s.clientDead = true
			s.mu.Unlock()
			_ = s.conn.Close()
			s.serverGone(sc, done, werr)
			return stepEnded
		}
	}
	if sc.mr.r.Buffered() == 0 || result == stepCopyIn {
		s.clientFlush()
	}
	return result
}

// swallowStep reads one message of the answer to a sync Query the pool sent (syncLocked):
// the client gets only its ParameterStatus messages, which correct what the RESET reported.
func (s *session) swallowStep(sc *serverConn, done chan struct{}, typ byte, n int) int {
	msg, err := sc.mr.whole(n)
	if err != nil {
		s.serverGone(sc, done, err)
		return stepEnded
	}
	switch typ {
	case 'Z':
		s.mu.Lock()
		s.pending--
		s.rfqSeq++
		s.mu.Unlock()
		s.swallowZ.Add(-1)
	case 'S':
		s.serverParam(sc, msg[5:])
		s.clientWriteMsg(msg)
	case 'E':
		s.srv.log.Warn("restoring a client's settings after RESET", "pool", sc.pool.name(), "err", decodeServerError(msg[5:]))
	}
	return stepMore
}

// serverParam records a ParameterStatus (body) the server sent on sc while s held it: a
// tracked setting the client changed follows the client to its next server connection.
func (s *session) serverParam(sc *serverConn, body []byte) {
	var ps pgproto3.ParameterStatus
	if ps.Decode(body) != nil {
		return
	}
	k := strings.ToLower(ps.Name)
	s.mu.Lock()
	sc.setParam(k, ps.Value)
	if trackedParams[k] {
		s.params[k] = ps.Value
		sc.dirty[k] = true
	}
	s.mu.Unlock()
}

// detachLocked ends the attachment (caller holds mu).
func (s *session) detachLocked() {
	s.sc = nil
	s.roAttach = false
	s.reader = false
}

// finishServer returns sc to its pool after the attachment ended at ReadyForQuery; when the
// client is gone it first rolls back and (session mode) resets the connection.
func (s *session) finishServer(sc *serverConn, done chan struct{}, status byte) {
	defer s.srv.attached.Add(-1)
	defer close(done)
	s.wmu.Lock() // wait for a write still returning
	s.wmu.Unlock()
	s.mu.Lock()
	gone := s.detachReq
	reset := sc.needsReset()
	s.mu.Unlock()
	if gone || reset {
		_ = sc.conn.SetReadDeadline(time.Time{})
		if err := s.resetServer(sc, status); err != nil {
			sc.pool.drop(sc)
			return
		}
	}
	sc.pool.release(sc)
}

// resetServer rolls back an open transaction and, in session mode, runs DISCARD ALL; it
// also resets a changed role or session authorization (see serverConn.cleanUp).
func (s *session) resetServer(sc *serverConn, status byte) error {
	_ = sc.conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer sc.conn.SetDeadline(time.Time{})
	return sc.cleanUp(status, s.tgt.mode == ModeSession)
}

// serverGone handles a read error on the attached server connection.
func (s *session) serverGone(sc *serverConn, done chan struct{}, err error) {
	s.mu.Lock()
	s.srv.log.Debug("server loop ended", "client", s.addr, "err", err, "pending", s.pending, "inBatch", s.inBatch, "detachReq", s.detachReq)
	req := s.detachReq
	clean := s.pending == 0 && !s.inBatch && sc.mr.r.Buffered() == 0
	status := s.txStatus
	if s.sc == sc {
		s.detachLocked()
	}
	s.mu.Unlock()
	var ne net.Error
	if req && clean && errors.As(err, &ne) && ne.Timeout() {
		// woken by cleanup at a safe point: reset and keep the connection
		s.finishServer(sc, done, status)
		return
	}
	defer s.srv.attached.Add(-1)
	defer close(done)
	sc.pool.drop(sc)
	if !req {
		s.srv.log.Warn("server connection lost", "client", s.addr, "pool", sc.pool.name(), "err", err)
		s.writeClient(fatal(sqlstateConnFailure, "server connection lost").encode(nil), true)
		_ = s.conn.Close()
	}
}

// cleanup runs when the client loop ends: the attachment, if any, is finished at the next
// safe point (or dropped), and the session is forgotten.
func (s *session) cleanup() {
	var sc *serverConn
	var done chan struct{}
	for tries := 0; ; tries++ {
		s.mu.Lock()
		s.detachReq = true
		sc, done = s.sc, s.detached
		if sc != nil && !s.inBatch && s.pending > 0 && tries < 10 {
			// Usually the answer is already on its way (the client left right after
			// reading ReadyForQuery, before the server loop counted it): wait a little.
			s.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			continue
		}
		break
	}
	if sc != nil && !s.reader {
		// No goroutine reads sc: the answers were all read inline. Finish here.
		status, half := s.txStatus, s.inBatch || s.pending > 0
		s.detachLocked()
		s.mu.Unlock()
		if half {
			s.srv.attached.Add(-1)
			close(done)
			sc.pool.drop(sc)
		} else {
			s.finishServer(sc, done, status)
		}
		_ = s.conn.Close()
		s.srv.forget(s)
		return
	}
	// Acting on sc under mu: the server loop cannot release it meanwhile.
	if sc != nil {
		switch s.goneActionLocked(s.copyIn) {
		case goneClose:
			_ = sc.conn.Close() // a half-sent batch: the connection cannot be reused
		case goneCopyFail:
			// the COPY fails at once; the reset follows at its ReadyForQuery
			s.wmu.Lock()
			_, err := sc.w.Write(appendMsg(nil, &pgproto3.CopyFail{Message: "client disconnected"}))
			if err == nil {
				err = sc.w.Flush()
			}
			s.wmu.Unlock()
			if err != nil {
				_ = sc.conn.Close()
			} else {
				_ = sc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			}
		case goneCancel:
			// cancel what runs, then reset at ReadyForQuery
			if sc.pid != 0 {
				cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = cancelServer(cctx, sc.pool.key.host, sc.pool.key.port, sc.pid, sc.secret)
				cancel()
			}
			_ = sc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		default:
			_ = sc.conn.SetReadDeadline(time.Now())
		}
	}
	s.srv.log.Debug("client gone", "client", s.addr, "attached", sc != nil, "pending", s.pending, "inBatch", s.inBatch)
	s.mu.Unlock()
	if sc != nil {
		<-done
	}
	_ = s.conn.Close()
	s.srv.forget(s)
}
