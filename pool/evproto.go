package pool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// What the event loop does with what it reads: a client's messages (readClient, consume,
// query), getting and attaching a server connection (acquire, grant, attach) or parking for a
// primary during a failover, the server's answers (readServer, serverData, readyForQuery),
// and the ends of attachments and sessions (endAttachment, rollback, retryFirst, serverLost,
// kill, clientGone). The loop's own mechanics (waiting, batches, pump, writes, timeouts) are
// in evloop.go, the batched reads and writes in evbatch.go, and the moves between the loop
// and goroutines in evhandover.go.

// readClient handles what the client sent; false when nothing moved.
func (l *evLoop) readClient(s *session) bool {
	ls := s.ev
	moved := false
	for {
		if len(ls.in) > 0 {
			before := len(ls.in)
			l.consume(s)
			if ls.ended || ls.closed {
				return true
			}
			moved = moved || len(ls.in) != before
			if !l.takesInput(s) {
				return moved
			}
		}
		if !ls.rdReady {
			return moved
		}
		n, errno := rawRead(ls.fd, l.buf)
		if errno == syscall.EAGAIN {
			ls.rdReady = false
			return moved
		}
		if errno != 0 || n == 0 {
			l.clientGone(s)
			return true
		}
		moved = true
		ls.lastIn = l.now
		if n < len(l.buf) {
			ls.rdReady = false // a short read emptied the socket; new data brings a new edge
		}
		ls.in = append(ls.in, l.buf[:n]...)
	}
}

// consume handles the complete client messages at the start of ls.in.
func (l *evLoop) consume(s *session) {
	ls := s.ev
	data := ls.in
	off := 0
	defer func() {
		if ls.in == nil || ls.ended {
			return
		}
		rest := copy(ls.in, data[off:])
		ls.in = ls.in[:rest]
		if cap(ls.in) > 4*loopReadSize && rest < loopReadSize {
			ls.in = append([]byte(nil), ls.in...)
		}
	}()
	for off < len(data) && !ls.closed && l.takesInput(s) {
		es := l.server(s)
		if ls.crem > 0 {
			k := min(ls.crem, len(data)-off)
			if es != nil {
				es.out = append(es.out, data[off:off+k]...)
			}
			ls.crem -= k
			off += k
			continue
		}
		if len(data)-off < 5 {
			return
		}
		typ := data[off]
		n := int(int32(binary.BigEndian.Uint32(data[off+1 : off+5])))
		if n < 4 || n-4 > maxMessageLen {
			l.kill(s, fatal(sqlstateProtocolViolation, "%v: message %q with length %d", errProtocol, typ, n))
			return
		}
		total := 1 + n
		if es != nil && (ls.copyIn || typ == 'd' || typ == 'c' || typ == 'f') {
			// COPY data, and whatever a COPY FROM STDIN sends: forwarded as it comes
			k := min(total, len(data)-off)
			es.out = append(es.out, data[off:off+k]...)
			ls.crem = total - k
			off += k
			continue
		}
		if total > len(data)-off {
			if total > loopMaxMsg {
				ls.demote = true
			}
			return
		}
		msg := data[off : off+total]
		switch typ {
		case 'X':
			off = len(data)
			l.clientGone(s)
			return
		case 'Q', 'F', 'P', 'B', 'D', 'E', 'C', 'S', 'H':
			// a FunctionCall (fastpath, large objects) is answered like a Query
			if !l.query(s, msg) {
				return
			}
			off += total
		default:
			ls.demote = true // the rest: a session goroutine (which refuses what it does not know)
			return
		}
	}
}

// query handles a Query or FunctionCall message, or one of the extended protocol; false
// when it stays unconsumed (waiting, or the session goes to a goroutine or ended).
func (l *evLoop) query(s *session, msg []byte) bool {
	ls := s.ev
	switch msg[0] {
	case 'Q':
		if len(msg) < 6 || msg[len(msg)-1] != 0 {
			l.kill(s, fatal(sqlstateProtocolViolation, "malformed Query message"))
			return false
		}
		if q := msg[5 : len(msg)-1]; (len(q) < 64 && mentionsNodes(q)) || mentionsDealloc(q) {
			ls.demote = true
			return false
		}
	case 'F':
	default:
		if !l.extendedHere(s, msg) {
			ls.demote = true
			return false
		}
		if err := checkStmtMsg(msg[0], msg[5:]); err != nil {
			var pe *pgError
			errors.As(err, &pe)
			l.kill(s, pe)
			return false
		}
		if s.sc == nil {
			// what needs no server connection is answered here, as by a goroutine
			switch msg[0] {
			case 'S':
				ls.out = appendMsg(ls.out, &pgproto3.ReadyForQuery{TxStatus: orIdle(s.txStatus)})
				return true
			case 'H':
				return true
			case 'P':
				if s.parseLocal(msg) {
					ls.out = append(ls.out, '1', 0, 0, 0, 4)
					return true
				}
			}
		}
	}
	if sc := s.sc; sc != nil {
		if s.roAttach && s.pending > 0 {
			// the next transaction may not be read-only: decide once this one ends
			ls.stalled = true
			return false
		}
		if s.needSync {
			s.mu.Lock()
			pre := s.syncLocked(sc)
			s.mu.Unlock()
			if pre != nil { // after a RESET inside a transaction block
				sc.ev.out = append(sc.ev.out, pre...)
				sc.ev.swallow++
			}
		}
		l.send(s, sc, msg)
		return true
	}
	srv := s.srv
	if srv.isPaused() {
		ls.demote = true // a goroutine waits for RESUME (query_wait_timeout)
		return false
	}
	req := attachReq{readOnly: s.classify(msg[0], msg)}
	if req.readOnly {
		if n, ok := srv.cl.PickReader(uint64(s.id)); ok {
			req.p, req.node, req.reader = srv.sessionPool(s, n), n.ID, true
		}
	}
	if req.p == nil {
		n, ok := srv.cl.Primary()
		fo := srv.failoverOpts()
		if !ok && fo == nil {
			ls.demote = true // a goroutine waits for a primary (query_wait_timeout)
			return false
		}
		if !ok || (fo != nil && srv.recentlyDown(n.ID)) {
			l.park(s, fo)
			return false
		}
		req.p, req.node = srv.sessionPool(s, n), n.ID
	}
	return l.acquire(s, req, msg)
}

// acquire gets a server connection for req and sends msg; false when msg waits.
func (l *evLoop) acquire(s *session, req attachReq, msg []byte) bool {
	ls := s.ev
	ls.want = req
	sc, st := req.p.acquireLoop(s, l.now)
	switch st {
	case acqClosed:
		l.kill(s, fatal(sqlstateAdminShutdown, "pgharbor pool is shutting down"))
		return false
	case acqPending:
		ls.waitPool = req.p
		ls.waitStart = l.now
		l.waiting[s] = struct{}{}
		s.setWaiting(true)
		return false
	}
	if !l.attach(s, sc) {
		return false
	}
	l.send(s, sc, msg)
	return true
}

// attach makes sc the session's server connection; false when the session must move to a
// goroutine for it (a TLS server connection) or it failed.
func (l *evLoop) attach(s *session, sc *serverConn) bool {
	ls := s.ev
	req := ls.want
	if sc.ev == nil {
		if err := l.enterLoop(sc); err != nil {
			if errors.Is(err, errNotSocket) {
				req.p.release(sc)
				ls.demote = true
				return false
			}
			req.p.drop(sc)
			l.kill(s, fatal(sqlstateConnFailure, "server connection lost: %v", err))
			return false
		}
	}
	es := sc.ev
	if !s.paramsMatch(sc) {
		if q := s.paramSQL(sc); q != "" {
			es.out = appendMsg(es.out, &pgproto3.Query{String: q})
			es.swallow++
			s.paramsApplied(sc)
		}
	}
	if req.reader {
		s.srv.cl.CountSelect(req.node)
	}
	req.p.mu.Lock()
	sc.client = s
	req.p.mu.Unlock()
	s.mu.Lock()
	s.attachLocked(sc, req.node, req.readOnly, l.now)
	s.detached = nil
	s.mu.Unlock()
	s.srv.attached.Add(1)
	es.ls = s
	ls.fresh = s.srv.failoverOpts() != nil
	if !ls.parkUntil.IsZero() {
		ls.parkUntil = time.Time{}
		if !req.reader {
			s.srv.noteReachable(req.node)
		}
	}
	return true
}

// extendedHere says whether the loop runs an extended-protocol message msg itself: not
// when the batch may go to a reader (statement-level load balancing decides on the whole
// batch, which a goroutine reads ahead) or it is SHOW POOL_NODES (answered by the pool).
func (l *evLoop) extendedHere(s *session, msg []byte) bool {
	if s.virt.active || len(s.virt.stmts) > 0 || (msg[0] == 'P' && mentionsNodes(msg)) {
		return false
	}
	cfg := s.srv.config()
	return !cfg.LoadBalance || !cfg.StatementLevelLoadBalance || s.sessionRO || s.tgt.route == "primary"
}

// send forwards one message to sc (written when pump gets to it).
func (l *evLoop) send(s *session, sc *serverConn, msg []byte) {
	switch msg[0] {
	case 'Q', 'F':
	default:
		l.sendExtended(s, sc, msg)
		return
	}
	f := 0
	if q := stmtText(msg); len(q) > 0 {
		f = scanText(q)
		s.noteText(q, f)
	}
	s.mu.Lock()
	if f&textRole != 0 || (msg[0] == 'F' && callsSetConfig(msg)) {
		sc.resetRole = true
	}
	first := s.pending == 0
	s.sentLocked(sc, l.now)
	s.mu.Unlock()
	if ls := s.ev; ls.fresh {
		if first && msg[0] == 'Q' {
			ls.retryQ = append(ls.retryQ[:0], msg...)
		} else {
			ls.fresh = false
		}
	}
	sc.ev.out = append(sc.ev.out, msg...)
}

// sendExtended forwards an extended-protocol message, its named statements rewritten
// (rewriteStmt), and keeps the batch state: a Sync owes a ReadyForQuery, anything else
// keeps the batch open.
func (l *evLoop) sendExtended(s *session, sc *serverConn, msg []byte) {
	s.ev.fresh = false // only a simple Query is sent again (retryFirst)
	es := sc.ev
	typ := msg[0]
	switch typ {
	case 'P', 'B', 'D', 'C':
		if typ == 'P' {
			if q := stmtText(msg); len(q) > 0 { // the unnamed statement's text
				f := scanText(q)
				s.noteText(q, f)
				if f&textRole != 0 {
					s.markRoleReset(sc)
				}
			}
		}
		es.out = s.rewriteStmt(sc, msg, es.out)
	default:
		es.out = append(es.out, msg...)
	}
	s.mu.Lock()
	if typ == 'S' {
		s.sentLocked(sc, l.now)
	} else {
		s.inBatch = true
	}
	s.mu.Unlock()
}

// grant handles a pool's answer to a waiting session: a connection, a wake-up (nil) or a
// failed login.
func (l *evLoop) grant(s *session, sc *serverConn, err error) {
	ls := s.ev
	var p *serverPool
	if ls != nil {
		p = ls.waitPool
	}
	if ls == nil || ls.ended || ls.closed || p == nil {
		// the session left while the connection was on its way: pass it on
		switch {
		case sc != nil:
			sc.pool.release(sc)
		case err == nil && p != nil:
			p.mu.Lock()
			p.wakeOneLocked()
			p.mu.Unlock()
		}
		if ls != nil && ls.closed && !ls.ended {
			l.endWait(s)
			l.forget(s)
		}
		return
	}
	l.endWait(s)
	if sc == nil && err == nil {
		l.pump(s) // capacity freed: try again
		return
	}
	p.stats.waits.Add(1)
	p.stats.waitTime.Add(int64(l.now.Sub(ls.waitStart)))
	if err != nil {
		p.stats.loginErrors.Add(1)
		if ls.want.reader && !ls.want.retried && (serverUnreachable(err) || !errors.As(err, new(*pgError))) {
			s.srv.log.Warn("reader unreachable, using the primary", "node", ls.want.node, "err", err)
			if n, ok := s.srv.cl.Primary(); ok {
				req := attachReq{p: s.srv.sessionPool(s, n), node: n.ID, retried: true}
				if msg := firstMsg(ls.in); msg != nil && l.acquire(s, req, msg) {
					ls.in = ls.in[:copy(ls.in, ls.in[len(msg):])]
				}
				l.pump(s)
				return
			}
		}
		if fo := s.srv.failoverOpts(); fo != nil && serverUnreachable(err) {
			// the primary is down and not yet replaced: wait for the failover
			if !ls.want.reader {
				s.srv.notePrimaryUnreachable(ls.want.node, err)
			}
			l.park(s, fo)
			return
		}
		var pe *pgError
		if !errors.As(err, &pe) {
			pe = fatal(sqlstateCannotConnect, "cannot connect to server: %v", err)
		}
		l.failQuery(s, pe)
		l.pump(s)
		return
	}
	if l.attach(s, sc) {
		if msg := firstMsg(ls.in); msg != nil {
			l.send(s, sc, msg)
			ls.in = ls.in[:copy(ls.in, ls.in[len(msg):])]
		}
	}
	l.pump(s)
}

// park holds s's next Query until the cluster changes (msgCluster) or failoverRetry passed
// (tick), up to failover.client_wait from the first park of this transaction, without
// blocking the loop: the session has no server connection and reads nothing meanwhile.
func (l *evLoop) park(s *session, fo *FailoverOptions) {
	ls := s.ev
	if ls.parkUntil.IsZero() {
		ls.parkUntil = l.now.Add(fo.ClientWait)
	}
	ls.parkRetry = l.now.Add(failoverRetry)
	ls.parked = true
	l.parked[s] = struct{}{}
	s.setWaiting(true)
}

// unpark lets s take input again.
func (l *evLoop) unpark(s *session) {
	s.ev.parked = false
	delete(l.parked, s)
	s.setWaiting(false)
}

// unparkAll retries every parked session after a change of the cluster.
func (l *evLoop) unparkAll() {
	for _, s := range l.parkedList() {
		l.unpark(s)
		if ls := s.ev; ls != nil && !ls.ended && !ls.closed {
			l.pump(s)
		}
	}
}

// parkedList copies the parked sessions: retrying one may park it again.
func (l *evLoop) parkedList() []*session {
	if len(l.parked) == 0 {
		return nil
	}
	out := make([]*session, 0, len(l.parked))
	for s := range l.parked {
		out = append(out, s)
	}
	return out
}

// cfgWait is failover.client_wait as the pool has it now (0 when failover is off).
func cfgWait(srv *Server) time.Duration {
	if fo := srv.failoverOpts(); fo != nil {
		return fo.ClientWait
	}
	return 0
}

// endWait takes s off the loop's waiting list.
func (l *evLoop) endWait(s *session) {
	s.ev.waitPool = nil
	delete(l.waiting, s)
	s.setWaiting(false)
}

// firstMsg returns the complete message at the start of b, or nil.
func firstMsg(b []byte) []byte {
	if len(b) < 5 {
		return nil
	}
	n := 1 + int(binary.BigEndian.Uint32(b[1:5]))
	if n < 5 || n > len(b) {
		return nil
	}
	return b[:n]
}

// failQuery answers the Query at the start of ls.in with pe (ERROR: and ReadyForQuery) or
// ends the session (FATAL).
func (l *evLoop) failQuery(s *session, pe *pgError) {
	ls := s.ev
	if pe.Severity != "ERROR" {
		l.kill(s, pe)
		return
	}
	if msg := firstMsg(ls.in); msg != nil {
		ls.in = ls.in[:copy(ls.in, ls.in[len(msg):])]
	}
	s.mu.Lock()
	st := orIdle(s.txStatus)
	s.mu.Unlock()
	ls.out = appendMsg(pe.encode(ls.out), &pgproto3.ReadyForQuery{TxStatus: st})
}

// readServer reads and forwards what the server sent.
func (l *evLoop) readServer(s *session, es *loopServer) {
	ls := s.ev
	for es.readable() && len(ls.out) < loopOutHigh {
		var data []byte // nil: the bytes readAhead read, at the end of es.part
		if es.ahead {
			es.ahead = false
		} else {
			var n int
			var errno syscall.Errno
			if es.aheadErr != 0 {
				errno, es.aheadErr = es.aheadErr, 0
			} else {
				n, errno = rawRead(es.fd, l.buf)
			}
			if errno == syscall.EAGAIN {
				es.rdReady = false
				return
			}
			// (es.part may hold what the server sent while the connection was idle, such as
			// its FATAL read together with the last transaction's ReadyForQuery: from before
			// the Query, so no sign that the server read it)
			if ls.fresh && resetBeforeRead(errnoErr(errno), l.now.Sub(s.lastQuery)) {
				ls.fresh = false
				l.retryFirst(s)
				return
			}
			if errno != 0 || n == 0 {
				err := error(io.EOF)
				if errno != 0 {
					err = os.NewSyscallError("read", errno)
				}
				l.serverLost(s, err)
				return
			}
			if n < len(l.buf) {
				es.rdReady = false
			}
			data = l.buf[:n]
		}
		l.serverData(s, es, data)
		if len(ls.out) > 0 && !ls.deferred && !ls.closed && s.txStatus == 'I' {
			// an answer that ended the transaction: written at the batch's end
			ls.deferred = true
			l.flushList = append(l.flushList, s)
		}
		if es.ls != s {
			return // released at ReadyForQuery (or lost): the rest is not this session's
		}
	}
}

// readable says whether readServer has something to do: the socket may have data, or
// readAhead left bytes or an error.
func (es *loopServer) readable() bool {
	return es.rdReady || es.ahead || es.aheadErr != 0
}

// serverData forwards server bytes to the client, acting on ReadyForQuery and
// ParameterStatus; an incomplete message start is kept in es.part.
func (l *evLoop) serverData(s *session, es *loopServer, data []byte) {
	ls := s.ev
	sc := es.sc
	if len(es.part) > 0 {
		es.part = append(es.part, data...)
		data = es.part
	}
	keep := func(rest []byte) {
		es.part = append(es.part[:0], rest...)
	}
	for len(data) > 0 {
		if es.rem > 0 {
			k := min(es.rem, len(data))
			if es.swallow == 0 && !ls.closed {
				ls.out = append(ls.out, data[:k]...)
			}
			es.rem -= k
			data = data[k:]
			continue
		}
		if len(data) < 5 {
			keep(data)
			return
		}
		typ := data[0]
		n := int(int32(binary.BigEndian.Uint32(data[1:5])))
		if n < 4 || n-4 > maxMessageLen {
			l.serverLost(s, fmt.Errorf("%w: server message %q with length %d", errProtocol, typ, n))
			return
		}
		total := 1 + n
		whole := typ == 'Z' || typ == 'S' || typ == '1' || typ == '3' || ((es.swallow > 0 || ls.fresh) && typ == 'E')
		if whole && total > len(data) {
			keep(data)
			return
		}
		if ls.fresh {
			ls.fresh = false
			if typ == 'E' && retryableFirst(data[5:total]) {
				l.retryFirst(s)
				return
			}
		}
		if es.swallow > 0 {
			switch typ {
			case 'Z':
				es.swallow--
			case 'S':
				var ps pgproto3.ParameterStatus
				if ps.Decode(data[5:total]) == nil {
					sc.setParam(strings.ToLower(ps.Name), ps.Value)
				}
				if !ls.closed {
					// the client's view of the setting: after a RESET it saw the
					// server's default reported, which this corrects
					ls.out = append(ls.out, data[:total]...)
				}
			case 'E':
				s.srv.log.Warn("restoring a client's settings on a server connection", "pool", sc.pool.name(), "err", decodeServerError(data[5:total]))
			}
			k := min(total, len(data))
			es.rem = total - k
			data = data[k:]
			continue
		}
		switch typ {
		case 'Z':
			if n != 5 {
				l.serverLost(s, fmt.Errorf("%w: bad ReadyForQuery", errProtocol))
				return
			}
			end, status := l.readyForQuery(s, es, data[:6])
			data = data[6:]
			if end {
				// what follows is kept before the connection goes back to its pool:
				// its next owner may be a goroutine that reads es.part at once
				keep(data)
				l.endAttachment(s, sc, status)
				return
			}
			if es.ls != s {
				keep(data)
				return
			}
			continue
		case 'S':
			s.serverParam(sc, data[5:total])
		case '1', '3':
			if s.completion(typ) {
				data = data[total:]
				continue
			}
		case 'G', 'W':
			ls.copyIn = true
		case 'E':
			s.mu.Lock()
			s.resetErr = true // a RESET in this answer may not have happened
			s.mu.Unlock()
		}
		k := min(total, len(data))
		if !ls.closed {
			ls.out = append(ls.out, data[:k]...)
		}
		es.rem = total - k
		data = data[k:]
	}
	es.part = es.part[:0]
}

// readyForQuery ends an answer; at the end of a transaction the connection goes back to
// the pool (to the next waiting session) before the answer is written at the batch's end.
// It returns true when the attachment ended: the caller then calls endAttachment.
func (l *evLoop) readyForQuery(s *session, es *loopServer, msg []byte) (bool, byte) {
	ls := s.ev
	sc := es.sc
	status := msg[5]
	if !ls.closed {
		ls.out = append(ls.out, msg...)
	}
	ls.copyIn = false
	s.mu.Lock()
	quiet, end := s.readyLocked(sc, status, l.now)
	s.mu.Unlock()
	if quiet {
		ls.stalled = false
	}
	if end {
		es.ls = nil
	}
	return end, status
}

// endAttachment hands sc back after readyForQuery ended s's attachment (status: the last
// ReadyForQuery's).
func (l *evLoop) endAttachment(s *session, sc *serverConn, status byte) {
	ls := s.ev
	s.srv.attached.Add(-1)
	if status == 'I' && !sc.needsReset() {
		sc.pool.releaseAt(sc, l.now)
	} else {
		l.rollback(sc, status)
	}
	if ls.closed {
		l.forget(s)
	}
}

// rollback ends the transaction a departed client left open and resets a changed role or
// session authorization (serverConn.cleanUp), off the loop thread, and returns the
// connection to its pool.
func (l *evLoop) rollback(sc *serverConn, status byte) {
	if err := sc.leaveLoop(); err != nil {
		sc.pool.drop(sc)
		return
	}
	go func() {
		_ = sc.conn.SetDeadline(time.Now().Add(10 * time.Second))
		if err := sc.w.Flush(); err == nil && sc.cleanUp(status, false) == nil {
			_ = sc.conn.SetDeadline(time.Time{})
			sc.pool.release(sc)
			return
		}
		sc.pool.drop(sc)
	}()
}

// retryFirst drops s's server connection, whose server ended it before reading the Query
// the attachment began with, and puts that Query back in front of the client's input: the
// next pass acquires another connection (parking for a reachable primary) and sends it.
func (l *evLoop) retryFirst(s *session) {
	ls := s.ev
	reader := s.roAttach || s.sessionRO
	sc := l.detach(s)
	sc.ev.part = sc.ev.part[:0]
	sc.pool.drop(sc)
	s.srv.log.Info("server connection closed before the transaction's first query was read; sending it again", "client", s.addr, "node", sc.pool.key.nodeID)
	if !reader {
		// its siblings in the pool are going too: wait for the node or the new primary
		// rather than take the next one
		s.srv.notePrimaryUnreachable(sc.pool.key.nodeID, errClosedUnread)
	}
	if ls.closed {
		l.forget(s)
		return
	}
	in := make([]byte, 0, len(ls.retryQ)+len(ls.in))
	ls.in = append(append(in, ls.retryQ...), ls.in...)
	ls.retryQ = ls.retryQ[:0]
}

// serverLost handles a server connection that failed while s held it.
func (l *evLoop) serverLost(s *session, err error) {
	ls := s.ev
	node, reader := s.node, s.roAttach || s.sessionRO
	sc := l.detach(s)
	sc.pool.drop(sc)
	if ls.closed {
		l.forget(s)
		return
	}
	s.srv.log.Warn("server connection lost", "client", s.addr, "pool", sc.pool.name(), "err", err,
		"first_answer", ls.fresh, "since_sent", l.now.Sub(s.lastQuery))
	l.kill(s, s.srv.lostError(node, reader))
}

// kill sends pe to the client and ends the session.
func (l *evLoop) kill(s *session, pe *pgError) {
	ls := s.ev
	if ls.closed {
		return
	}
	ls.out = pe.encode(ls.out)
	l.writeClient(s)
	l.clientGone(s)
}

// clientGone closes the client socket. A server connection the session holds goes back to
// its pool: at once between transactions, after a rollback inside one, and after the
// answer's ReadyForQuery while a query runs (it is cancelled).
func (l *evLoop) clientGone(s *session) {
	ls := s.ev
	if ls.closed {
		return
	}
	ls.closed = true
	ls.out, ls.in = nil, nil
	l.setEntry(ls.fd, loopEntry{})
	_ = syscall.Close(ls.fd)
	if ls.parked {
		ls.parked = false
		delete(l.parked, s)
	}
	if p := ls.waitPool; p != nil {
		if !p.unwait(s) {
			return // a connection or a wake-up is on its way: grant passes it on and forgets s
		}
		l.endWait(s)
	}
	s.mu.Lock()
	s.detachReq = true
	s.clientDead = true
	sc, status := s.sc, s.txStatus
	act := s.goneActionLocked(ls.copyIn)
	s.mu.Unlock()
	if sc == nil {
		l.forget(s)
		return
	}
	es := sc.ev
	if ls.crem > 0 {
		act = goneClose // a message half forwarded: nothing can follow it
	}
	switch act {
	case goneClose:
		sc.pool.drop(l.detach(s))
		l.forget(s)
		return
	case goneCopyFail, goneCancel:
		if act == goneCopyFail {
			es.out = appendMsg(es.out, &pgproto3.CopyFail{Message: "client disconnected"})
		} else if sc.pid != 0 {
			host, port, pid, secret := sc.pool.key.host, sc.pool.key.port, sc.pid, sc.secret
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = cancelServer(ctx, host, port, pid, secret)
			}()
		}
		return // readyForQuery finishes
	}
	l.rollback(l.detach(s), status)
	l.forget(s)
}

// detach ends s's hold on its server connection and returns the connection (nil: none).
func (l *evLoop) detach(s *session) *serverConn {
	sc := s.sc
	if sc == nil {
		return nil
	}
	s.mu.Lock()
	s.detachLocked()
	s.mu.Unlock()
	if sc.ev != nil {
		sc.ev.ls = nil
	}
	s.srv.attached.Add(-1)
	return sc
}

func (l *evLoop) forget(s *session) {
	s.ev.ended = true
	delete(l.sessions, s)
	delete(l.waiting, s)
	delete(l.parked, s)
	s.srv.forget(s)
}
