package pool

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
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
	// key is params in one string (paramsKey), keyOK while it is current: every change to
	// params clears keyOK (paramsChanged).
	key   string
	keyOK bool
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
	// fresh: the attachment (transaction mode, failover on) has had no answer yet, and
	// retryQ is the Query it began with: when the server's first answer says it closed the
	// connection before reading it, the Query goes to another server connection (see
	// retryableFirst). The event loop keeps its own copy of the Query (loopSess.retryQ).
	fresh  atomic.Bool
	retryQ []byte
	ctx    context.Context // run's (goroutine engine)
	// flushErr is the last failed flush to a server (client loop only).
	flushErr error
}

// parseEntry is a ParseComplete or CloseComplete the server owes us, in order.
type parseEntry struct {
	seq     uint64 // the Sync it belongs to
	kind    byte   // '1' or '3'
	swallow bool   // injected by the pool: the client must not see it
	id      uint64 // statement id being prepared (0: none)
}

// run is the client loop. It returns when the client leaves or the session fails.
func (s *session) run(ctx context.Context) {
	s.ctx = ctx
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
// it discards messages up to and including the next Sync, then sends ReadyForQuery (at once
// for a Query or a FunctionCall).
func (s *session) recoverFromError(typ byte, pe *pgError) error {
	s.mu.Lock()
	st := orIdle(s.txStatus)
	if s.sc == nil {
		s.inBatch = false
	}
	s.mu.Unlock()
	if typ == 'F' {
		// a FunctionCall is answered like a Query, with no Sync to wait for; forward left
		// it unread
		_, n, err := s.mr.header()
		if err != nil {
			return err
		}
		if _, err := s.mr.r.Discard(5 + n); err != nil {
			return err
		}
	}
	if typ != 'Q' && typ != 'F' {
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
	if typ == 'Q' || typ == 'F' {
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
	if s.fresh.Load() {
		s.mu.Lock()
		if s.sc == sc && typ == 'Q' && s.pending == 0 {
			s.retryQ = msg // valid until the client loop reads again, after the answer
		} else {
			s.fresh.Store(false)
			s.retryQ = nil
		}
		s.mu.Unlock()
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
		if typ == 'Q' && s.fresh.Load() && unsentReset(s.flushErr) && s.firstAnswer() {
			// the server closed the connection before the transaction's first query
			// reached it
			s.mu.Lock()
			done := s.detached
			s.mu.Unlock()
			return s.retryFirst(sc, done)
		}
		return err
	}
	return s.afterWrite(sc, typ)
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
			s.flushErr = err
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
	if err := checkStmtMsg(typ, msg[5:]); err != nil {
		return err
	}
	if typ == 'P' && s.parseLocal(msg) {
		s.writeClient(appendMsg(nil, &pgproto3.ParseComplete{}), false)
		return nil
	}
	sc, err := s.ensureAttached(ctx, typ, msg)
	if err != nil {
		return err
	}
	return s.send(sc, typ, s.rewriteStmt(sc, msg, nil))
}

// parseLocally reports whether a Parse of statement id can be answered by the pool: the
// session holds no server connection and owes the client nothing, and a server accepted the
// same statement before.
func (s *session) parseLocally(id uint64) bool {
	s.mu.Lock()
	between := s.sc == nil && s.pending == 0 && !s.inBatch && orIdle(s.txStatus) == 'I'
	s.mu.Unlock()
	return between && s.srv.stmts.wasParsed(id)
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
	// With a failover monitor on the cluster, a transaction that finds no reachable primary
	// waits for one up to failover.client_wait (failwait.go) instead of failing.
	fo := s.srv.failoverOpts()
	primaryWait := waitCtx
	var foStart time.Time
	var foCtx context.Context
	var sub <-chan struct{}
	defer func() {
		if sub != nil {
			s.srv.cl.Unsubscribe(sub)
		}
	}()
	foBegin := func() time.Time {
		if foStart.IsZero() {
			foStart = time.Now()
			s.mu.Lock()
			s.waiting = true
			s.mu.Unlock()
			sub = s.srv.cl.Subscribe()
		}
		return foStart.Add(fo.ClientWait)
	}
	if fo != nil {
		foCancel := context.CancelFunc(func() {})
		primaryWait = func() context.Context {
			if foCtx == nil {
				foCtx, foCancel = context.WithDeadline(ctx, foBegin())
			}
			return foCtx
		}
		defer func() {
			foCancel()
			if !foStart.IsZero() {
				s.mu.Lock()
				s.waiting = false
				s.mu.Unlock()
			}
		}()
	}
	for attempt := 0; ; attempt++ {
		p, nodeID, isReader, err := s.srv.poolFor(primaryWait, s, readOnly)
		if err != nil {
			if fo != nil && ctx.Err() == nil {
				return nil, s.srv.clientWaitError(fo.ClientWait)
			}
			return nil, err
		}
		if fo != nil && !isReader && s.srv.recentlyDown(nodeID) {
			// another session just found this primary unreachable: wait with it
			if werr := s.srv.waitForPrimary(ctx, sub, foBegin()); werr != nil {
				return nil, s.attachWaitErr(fo, werr)
			}
			continue
		}
		sc := p.tryIdle(time.Now())
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
				s.waiting = !foStart.IsZero()
				s.mu.Unlock()
			}
		}
		if err != nil {
			if isReader && attempt == 0 && serverUnreachable(err) {
				s.srv.log.Warn("reader unreachable, using the primary", "node", nodeID, "err", err)
				readOnly = false
				continue
			}
			if fo != nil && serverUnreachable(err) && !isReader {
				// the primary is down and not yet replaced: wait for the failover
				s.srv.notePrimaryUnreachable(nodeID, err)
				if werr := s.srv.waitForPrimary(ctx, sub, foBegin()); werr != nil {
					return nil, s.attachWaitErr(fo, werr)
				}
				continue
			}
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
		if !foStart.IsZero() {
			s.srv.noteReachable(nodeID)
		}
		if sc.ev != nil { // last used by the event loop
			if err := sc.leaveLoop(); err != nil {
				p.drop(sc)
				return nil, fatal(sqlstateConnFailure, "server connection lost: %v", err)
			}
		}
		if err := s.syncParams(sc); err != nil {
			p.drop(sc)
			if fo != nil && serverUnreachable(err) {
				// the idle connection's server went away as it was taken: try another
				if !isReader {
					s.srv.notePrimaryUnreachable(nodeID, err)
				}
				continue
			}
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
		s.fresh.Store(fo != nil && s.tgt.mode == ModeTransaction)
		s.retryQ = nil
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

// attachWaitErr is attach's error when waiting for a primary ended with err.
func (s *session) attachWaitErr(fo *FailoverOptions, err error) error {
	if errors.Is(err, context.Canceled) {
		return fatal(sqlstateAdminShutdown, "pgharbor pool is shutting down")
	}
	return s.srv.clientWaitError(fo.ClientWait)
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

// setWaiting sets whether s waits for a server connection or a primary (SHOW POOLS, SHOW
// CLIENTS, pgharbor_pool_clients).
func (s *session) setWaiting(w bool) {
	s.mu.Lock()
	s.waiting = w
	s.mu.Unlock()
}
