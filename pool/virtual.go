package pool

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SHOW POOL_NODES over the extended protocol (JDBC, pgx): a batch that starts with a Parse
// of SHOW POOL_NODES — or a Bind or Describe of a statement that was one — is answered by the
// pool up to its Sync. Mixing it with other statements in one batch is refused.

// virtualState tracks the client's SHOW POOL_NODES statements and portals (client loop only).
type virtualState struct {
	active  bool            // inside a batch answered by the pool
	failed  bool            // an error happened: skip to Sync
	stmts   map[string]bool // statement names (may be "") that are SHOW POOL_NODES
	portals map[string]int16
}

// startsVirtual says whether msg (first of a batch) begins a batch the pool answers.
func (s *session) startsVirtual(typ byte, msg []byte) bool {
	body := msg[5:]
	switch typ {
	case 'P':
		_, q, _, ok := parseMsg(body)
		return ok && len(q) < 64 && isShowPoolNodes(q)
	case 'B':
		_, name, _, ok := bindStmt(body)
		return ok && s.virt.stmts[name]
	case 'D':
		if len(body) >= 2 && body[0] == 'S' {
			name, _, ok := cstring(body[1:])
			return ok && s.virt.stmts[name]
		}
	}
	return false
}

// handleVirtual answers one message of a pool-answered batch.
func (s *session) handleVirtual(typ byte, msg []byte) error {
	v := &s.virt
	if v.stmts == nil {
		v.stmts, v.portals = map[string]bool{}, map[string]int16{}
	}
	body := msg[5:]
	var out []byte
	fail := func(format string, args ...any) {
		if !v.failed {
			out = (&pgError{Severity: "ERROR", Code: sqlstateFeatureNotSupp, Message: fmt.Sprintf(format, args...)}).encode(out)
			v.failed = true
		}
	}
	switch typ {
	case 'S':
		v.active, v.failed = false, false
		s.mu.Lock()
		st := orIdle(s.txStatus)
		s.mu.Unlock()
		out = appendMsg(out, &pgproto3.ReadyForQuery{TxStatus: st})
		s.writeClient(out, true)
		return nil
	case 'H':
		s.writeClient(nil, true)
		return nil
	}
	if v.failed {
		return nil
	}
	switch typ {
	case 'P':
		name, q, _, ok := parseMsg(body)
		if !ok || !isShowPoolNodes(q) {
			fail("SHOW POOL_NODES cannot share an extended-protocol batch with other statements")
			break
		}
		v.stmts[name] = true
		out = appendMsg(out, &pgproto3.ParseComplete{})
	case 'B':
		var b pgproto3.Bind
		if err := b.Decode(body); err != nil || !v.stmts[b.PreparedStatement] {
			fail("SHOW POOL_NODES cannot share an extended-protocol batch with other statements")
			break
		}
		format := int16(0)
		if len(b.ResultFormatCodes) > 0 {
			format = b.ResultFormatCodes[0]
		}
		v.portals[b.DestinationPortal] = format
		out = appendMsg(out, &pgproto3.BindComplete{})
	case 'D':
		if len(body) < 2 {
			return fatal(sqlstateProtocolViolation, "malformed Describe message")
		}
		name, _, _ := cstring(body[1:])
		if body[0] == 'S' && v.stmts[name] {
			out = appendMsg(out, &pgproto3.ParameterDescription{}, poolNodesRowDescription(0))
		} else if f, ok := v.portals[name]; ok && body[0] == 'P' {
			out = appendMsg(out, poolNodesRowDescription(f))
		} else {
			fail("SHOW POOL_NODES cannot share an extended-protocol batch with other statements")
		}
	case 'E':
		name, _, _ := cstring(body)
		if _, ok := v.portals[name]; !ok {
			fail("SHOW POOL_NODES cannot share an extended-protocol batch with other statements")
			break
		}
		rows := s.srv.poolNodesRows(s)
		for _, r := range rows {
			dr := &pgproto3.DataRow{}
			for _, c := range r {
				dr.Values = append(dr.Values, []byte(c))
			}
			out = appendMsg(out, dr)
		}
		out = appendMsg(out, &pgproto3.CommandComplete{CommandTag: []byte(fmt.Sprintf("SELECT %d", len(rows)))})
	case 'C':
		if len(body) >= 2 {
			name, _, _ := cstring(body[1:])
			if body[0] == 'S' {
				delete(v.stmts, name)
			} else {
				delete(v.portals, name)
			}
		}
		out = appendMsg(out, &pgproto3.CloseComplete{})
	default:
		fail("SHOW POOL_NODES cannot share an extended-protocol batch with other statements")
	}
	s.writeClient(out, false)
	return nil
}
