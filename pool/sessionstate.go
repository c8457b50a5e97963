package pool

import "time"

// The session state both engines share (goroutine sessions in session.go, the event loop in
// evloop.go): what a message sent to the server, a ReadyForQuery, an attachment and a client
// that left do to a session's protocol state. The engines do the I/O; the transitions are
// made here, once, so that a rule (when a server connection goes back, what a departed
// client's query gets) cannot differ between them. All of it runs with session.mu held.

// sentLocked records that a Sync, Query or FunctionCall went to sc: one more ReadyForQuery
// is owed, and the extended-protocol batch, if any, is complete.
func (s *session) sentLocked(sc *serverConn, now time.Time) {
	s.pending++
	s.syncSeq++
	sc.batch++
	s.inBatch = false
	s.lastQuery = now
}

// readyLocked records a ReadyForQuery with status from sc at now. quiet: no answer is
// outstanding any more; end: the attachment ends here (the transaction ended in transaction
// mode, or the client is gone), so sc is the caller's to hand back (detached already).
func (s *session) readyLocked(sc *serverConn, status byte, now time.Time) (quiet, end bool) {
	s.pending--
	s.rfqSeq++
	s.txStatus = status
	s.copyIn = false
	s.resetDoneLocked(sc, status)
	// completions of this Sync that never came: their statements were not prepared
	i := 0
	for ; i < len(s.parseQ) && s.parseQ[i].seq <= s.rfqSeq; i++ {
		if id := s.parseQ[i].id; id != 0 {
			delete(sc.prepared, id)
		}
	}
	s.parseQ = s.parseQ[i:]
	quiet = s.pending <= 0 && !s.inBatch
	if quiet {
		s.pending = 0
	}
	st := &sc.pool.stats
	st.queries.Add(1)
	if !s.lastQuery.IsZero() {
		st.queryTime.Add(int64(now.Sub(s.lastQuery)))
	}
	end = quiet && ((status == 'I' && s.tgt.mode == ModeTransaction) || s.detachReq)
	if end {
		st.xacts.Add(1)
		st.xactTime.Add(int64(now.Sub(s.xactStart)))
		s.detachLocked()
	}
	return quiet, end
}

// attachLocked makes sc, taken from the pool of node for this session, the session's
// server connection at now; readOnly says it was chosen for a read-only transaction.
func (s *session) attachLocked(sc *serverConn, node int, readOnly bool, now time.Time) {
	s.sc = sc
	s.needSync = false // the caller made sc's settings the client's
	s.node = node
	s.roAttach = readOnly && s.tgt.mode == ModeTransaction && !s.sessionRO
	s.pending, s.inBatch = 0, false
	s.xactStart = now
}

// What to do with the attached server connection when the client left (goneAction).
const (
	goneIdle     = iota // nothing outstanding: hand it back (after a rollback when in a transaction)
	goneCopyFail        // the server waits for COPY data: end the COPY with CopyFail, then as below
	goneCancel          // a query runs: cancel it, and hand the connection back at its ReadyForQuery
	goneClose           // a batch is half sent: the connection cannot be used again
)

// goneActionLocked decides what a client that left leaves its server connection to.
func (s *session) goneActionLocked(copyIn bool) int {
	switch {
	case s.inBatch:
		return goneClose
	case s.pending > 0 && copyIn:
		return goneCopyFail
	case s.pending > 0:
		return goneCancel
	}
	return goneIdle
}

// detachLocked ends the attachment (caller holds mu).
func (s *session) detachLocked() {
	s.sc = nil
	s.roAttach = false
	s.reader = false
}

// completion takes the ParseComplete or CloseComplete (typ '1' or '3') a server sent off the
// queue of those owed (parseQ), notes a statement the server accepted, and says whether the
// pool asked for it (the client must not see it).
func (s *session) completion(typ byte) (swallow bool) {
	s.mu.Lock()
	var e parseEntry
	if len(s.parseQ) > 0 && s.parseQ[0].kind == typ {
		e = s.parseQ[0]
		s.parseQ = s.parseQ[1:]
	}
	s.mu.Unlock()
	if typ == '1' && e.id != 0 {
		s.srv.stmts.markParsed(e.id)
	}
	return e.swallow
}
