package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The goroutine engine's server side: reading a server connection's answers for a session
// (inline on the client's goroutine, or on a serverLoop goroutine), handing the connection
// back at the end of an attachment, and what happens when the client or the server goes.

// Results of serverStep.
const (
	stepMore   = iota // keep reading
	stepQuiet         // a ReadyForQuery left nothing outstanding; the attachment is still held
	stepEnded         // the attachment ended (released or dropped): sc is no longer ours
	stepCopyIn        // the server waits for COPY data from the client
	stepRetry         // the server closed the connection before reading the attachment's first Query (retryableFirst)
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
		case stepRetry:
			return s.retryFirst(sc, done)
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
		if s.fresh.Load() && s.firstAnswer() && resetBeforeRead(err, time.Since(s.sentAt())) {
			return stepRetry
		}
		s.serverGone(sc, done, err)
		return stepEnded
	}
	if s.fresh.Load() && s.firstAnswer() && typ == 'E' && sc.mr.fits(n) {
		if b, err := sc.mr.r.Peek(5 + n); err == nil && retryableFirst(b[5:]) {
			return stepRetry
		}
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
		swallow := s.completion(typ)
		msg, err := sc.mr.whole(n)
		if err != nil {
			s.serverGone(sc, done, err)
			return stepEnded
		}
		if !swallow {
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

// firstAnswer ends the attachment's fresh state and says whether its first Query may be
// sent again (the client loop reads inline and kept it).
func (s *session) firstAnswer() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fresh.Store(false)
	return !s.reader && s.retryQ != nil
}

// sentAt is when the last Query went to the server.
func (s *session) sentAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastQuery
}

// retryFirst drops sc, whose server ended the connection before it read the Query the
// attachment began with, and sends that Query again on a connection from attach (which
// waits for a reachable primary). The client has seen nothing of the first try.
func (s *session) retryFirst(sc *serverConn, done chan struct{}) error {
	s.mu.Lock()
	msg := s.retryQ
	s.retryQ = nil
	s.pending--
	s.rfqSeq++ // the Query's ReadyForQuery will not come from sc
	reader := s.roAttach || s.sessionRO
	if s.sc == sc {
		s.detachLocked()
	}
	s.inBatch = false
	s.mu.Unlock()
	s.srv.attached.Add(-1)
	close(done)
	sc.pool.drop(sc)
	s.srv.log.Info("server connection closed before the transaction's first query was read; sending it again", "client", s.addr, "node", sc.pool.key.nodeID)
	if !reader {
		// its siblings in the pool are going too: wait for the node or the new primary
		// rather than take the next one
		s.srv.notePrimaryUnreachable(sc.pool.key.nodeID, errClosedUnread)
	}
	nsc, err := s.ensureAttached(s.ctx, 'Q', msg)
	if err != nil {
		return err
	}
	return s.send(nsc, 'Q', msg)
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
	node, reader := s.node, s.roAttach || s.sessionRO
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
		s.writeClient(s.srv.lostError(node, reader).encode(nil), true)
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
			// (dialled without holding mu, which the server loop needs to finish)
			if sc.pid != 0 {
				host, port, pid, secret := sc.pool.key.host, sc.pool.key.port, sc.pid, sc.secret
				go func() {
					cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_ = cancelServer(cctx, host, port, pid, secret)
				}()
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
