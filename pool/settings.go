package pool

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Settings that follow a client from server connection to server connection, for both
// engines: the client's startup settings, the reported ones it changes (ParameterStatus),
// its session-level SETs, what a RESET gives back, and the role reset a connection gets
// before another client has it (see docs/pool.md, Pooling).

// trackedParams are reported settings a client may change and expects to keep across
// transactions; the pool re-applies them when it attaches another server connection.
var trackedParams = map[string]bool{
	"client_encoding": true, "datestyle": true, "intervalstyle": true, "timezone": true,
	"standard_conforming_strings": true, "application_name": true, "search_path": true,
	"extra_float_digits": true, "default_transaction_read_only": true,
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
			s.paramsChanged()
			sc.paramsChanged()
		}
		s.setPending, s.setUndone = s.setPending[:0], false
		s.setsOpen.Store(false)
	}
	if (len(s.resetNames) == 0 && !s.resetAll) || failed {
		s.resetNames, s.resetAll = s.resetNames[:0], false
		return
	}
	s.paramsChanged()
	sc.paramsChanged()
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
	sc.matchKey, sc.matchOK = s.paramsKey(), true
}

// paramsMatch says whether syncParams has nothing to send to sc (the same checks, no SQL).
// It runs at every attach: when sc last matched a client with the same settings and has not
// changed since, one string comparison answers.
func (s *session) paramsMatch(sc *serverConn) bool {
	key := s.paramsKey()
	if sc.matchOK && sc.matchKey == key {
		return true
	}
	if !s.paramsMatchMaps(sc) {
		return false
	}
	sc.matchKey, sc.matchOK = key, true
	return true
}

// paramsMatchMaps is paramsMatch by walking the settings of both sides.
func (s *session) paramsMatchMaps(sc *serverConn) bool {
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

// paramsKey returns the client's settings that paramsMatch depends on (those with a valid
// name) as one string, sorted by name, each name and value prefixed by its length (values
// may hold any byte, see rawValue). Two sessions with the same key match the same server
// connections.
func (s *session) paramsKey() string {
	if s.keyOK {
		return s.key
	}
	names := make([]string, 0, len(s.params))
	for k := range s.params {
		if validGUC(k) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	var b []byte
	for _, k := range names {
		v := s.params[k]
		b = strconv.AppendInt(b, int64(len(k)), 10)
		b = append(b, ':')
		b = append(b, k...)
		b = strconv.AppendInt(b, int64(len(v)), 10)
		b = append(b, ':')
		b = append(b, v...)
	}
	s.key, s.keyOK = string(b), true
	return s.key
}

// paramsChanged forgets paramsKey's string after a change to params.
func (s *session) paramsChanged() { s.keyOK = false }

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
		s.paramsChanged()
	}
	s.mu.Unlock()
}
