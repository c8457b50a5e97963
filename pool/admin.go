package pool

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"gopkg.in/yaml.v3"

	"github.com/pgharbor/pgharbor/pool/cluster"
)

// adminSession is a client of the admin console (database "pgharbor").
type adminSession struct {
	conn net.Conn
	user string
}

const textOID = 25

// resultSet encodes a text-only result: RowDescription, DataRows, CommandComplete.
func resultSet(dst []byte, cols []string, rows [][]string, tag string) []byte {
	rd := &pgproto3.RowDescription{}
	for _, c := range cols {
		rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: textOID, DataTypeSize: -1, TypeModifier: -1})
	}
	dst = appendMsg(dst, rd)
	for _, r := range rows {
		dr := &pgproto3.DataRow{}
		for _, v := range r {
			dr.Values = append(dr.Values, []byte(v))
		}
		dst = appendMsg(dst, dr)
	}
	if tag == "" {
		tag = "SHOW"
	}
	return appendMsg(dst, &pgproto3.CommandComplete{CommandTag: []byte(tag)})
}

func pgpoolStatus(s cluster.Status) string {
	switch s {
	case cluster.StatusUp:
		return "up"
	case cluster.StatusDown:
		return "down"
	}
	return "waiting"
}

// poolNodesColumns are pgpool-II's SHOW POOL_NODES columns (the ones pgharbor knows).
var poolNodesColumns = []string{"node_id", "hostname", "port", "status", "lb_weight", "role", "select_cnt", "load_balance_node", "replication_delay", "last_status_change"}

// poolNodesRows computes SHOW POOL_NODES; sess may be nil (admin console).
func (s *Server) poolNodesRows(sess *session) [][]string {
	nodes := s.cl.Nodes()
	var total float64
	for _, n := range nodes {
		total += n.Weight
	}
	lbNode := -1
	if sess == nil || s.config().LoadBalance {
		key := uint64(0)
		if sess != nil {
			key = sess.id
		}
		if n, ok := s.cl.PickReader(key); ok {
			lbNode = n.ID
		} else if p, ok := s.cl.Primary(); ok {
			lbNode = p.ID
		}
	}
	rows := make([][]string, 0, len(nodes))
	for _, n := range nodes {
		w := 0.0
		if total > 0 {
			w = n.Weight / total
		}
		last := ""
		if !n.LastStatusChange.IsZero() {
			last = n.LastStatusChange.Format("2006-01-02 15:04:05")
		}
		rows = append(rows, []string{strconv.Itoa(n.ID), n.Host, strconv.Itoa(n.Port), pgpoolStatus(n.Status), fmt.Sprintf("%.6f", w),
			string(n.Role), strconv.FormatInt(n.SelectCount, 10), strconv.FormatBool(n.ID == lbNode), strconv.FormatInt(n.LagBytes, 10), last})
	}
	return rows
}

// poolNodesResponse answers SHOW POOL_NODES (simple protocol) followed by
// ReadyForQuery(status). sess may be nil (admin console).
func (s *Server) poolNodesResponse(sess *session, status byte) []byte {
	rows := s.poolNodesRows(sess)
	out := resultSet(nil, poolNodesColumns, rows, fmt.Sprintf("SELECT %d", len(rows)))
	return appendMsg(out, &pgproto3.ReadyForQuery{TxStatus: orIdle(status)})
}

func poolNodesRowDescription(format int16) *pgproto3.RowDescription {
	rd := &pgproto3.RowDescription{}
	for _, c := range poolNodesColumns {
		rd.Fields = append(rd.Fields, pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: textOID, DataTypeSize: -1, TypeModifier: -1, Format: format})
	}
	return rd
}

// runAdmin serves the admin console: simple queries only.
func (s *Server) runAdmin(ctx context.Context, conn net.Conn, mr *msgReader, cw *bufio.Writer, user string) {
	a := &adminSession{conn: conn, user: user}
	s.mu.Lock()
	s.admins[a] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.admins, a)
		s.mu.Unlock()
		_ = conn.Close()
	}()
	ps := []pgproto3.ParameterStatus{{Name: "server_version", Value: "15.0 (pgharbor)"}, {Name: "client_encoding", Value: "UTF8"},
		{Name: "server_encoding", Value: "UTF8"}, {Name: "DateStyle", Value: "ISO, MDY"}, {Name: "standard_conforming_strings", Value: "on"},
		{Name: "integer_datetimes", Value: "on"}, {Name: "TimeZone", Value: "UTC"}}
	var out []byte
	for i := range ps {
		out = appendMsg(out, &ps[i])
	}
	out = appendMsg(out, &pgproto3.BackendKeyData{ProcessID: 0, SecretKey: []byte{0, 0, 0, 0}}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	_, _ = cw.Write(out)
	if cw.Flush() != nil {
		return
	}
	failed := false
	for {
		typ, n, err := mr.header()
		if err != nil {
			return
		}
		msg, err := mr.whole(n)
		if err != nil {
			return
		}
		var resp []byte
		switch typ {
		case 'X':
			return
		case 'Q':
			q, _, _ := cstring(msg[5:])
			resp = s.adminQuery(ctx, q)
			resp = appendMsg(resp, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		case 'S':
			failed = false
			resp = appendMsg(nil, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		case 'H':
		default:
			if !failed {
				failed = true
				resp = (&pgError{Severity: "ERROR", Code: sqlstateFeatureNotSupp, Message: "the admin console supports only simple queries (psql works)"}).encode(nil)
			}
		}
		_, _ = cw.Write(resp)
		if cw.Flush() != nil {
			return
		}
	}
}

func adminErr(format string, args ...any) []byte {
	return (&pgError{Severity: "ERROR", Code: sqlstateSyntaxError, Message: fmt.Sprintf(format, args...)}).encode(nil)
}

// adminQuery answers one admin command (without the ReadyForQuery).
func (s *Server) adminQuery(ctx context.Context, q string) []byte {
	f := strings.Fields(strings.TrimSuffix(strings.TrimSpace(q), ";"))
	if len(f) == 0 {
		return appendMsg(nil, &pgproto3.EmptyQueryResponse{})
	}
	cmd := strings.ToUpper(f[0])
	arg := ""
	if len(f) > 1 {
		arg = strings.ToUpper(f[1])
	}
	switch {
	case cmd == "SHOW" && arg == "POOLS":
		return s.showPools()
	case cmd == "SHOW" && arg == "CLIENTS":
		return s.showClients()
	case cmd == "SHOW" && arg == "SERVERS":
		return s.showServers()
	case cmd == "SHOW" && arg == "STATS":
		return s.showStats()
	case cmd == "SHOW" && arg == "CONFIG":
		return s.showConfig()
	case cmd == "SHOW" && arg == "FAILOVER":
		return s.showFailover()
	case cmd == "SHOW" && arg == "POOL_NODES":
		b := s.poolNodesResponse(nil, 'I')
		return b[:len(b)-6] // without its ReadyForQuery
	case cmd == "PAUSE":
		pctx, cancel := context.WithTimeout(ctx, max(positive(s.config().QueryWaitTimeout), time.Second))
		defer cancel()
		if err := s.Pause(pctx); err != nil {
			return adminErr("%v", err)
		}
		return appendMsg(nil, &pgproto3.CommandComplete{CommandTag: []byte("PAUSE")})
	case cmd == "RESUME":
		s.Resume()
		return appendMsg(nil, &pgproto3.CommandComplete{CommandTag: []byte("RESUME")})
	case cmd == "SWITCHOVER" || ((cmd == "ATTACH" || cmd == "DETACH" || cmd == "RECOVER") && arg == "NODE"):
		return s.nodeCommand(ctx, cmd, f[1:])
	case cmd == "RELOAD":
		if err := s.reload(); err != nil {
			return adminErr("reload: %v", err)
		}
		return appendMsg(nil, &pgproto3.CommandComplete{CommandTag: []byte("RELOAD")})
	}
	return adminErr("unknown admin command %q: try SHOW POOLS|CLIENTS|SERVERS|STATS|CONFIG|POOL_NODES|FAILOVER, PAUSE, RESUME, RELOAD, SWITCHOVER [TO] node [NOREJOIN], ATTACH|DETACH|RECOVER NODE node", q)
}

func (s *Server) sortedPools() []*serverPool {
	s.mu.Lock()
	out := make([]*serverPool, 0, len(s.pools))
	for _, p := range s.pools {
		out = append(out, p)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].name() < out[j].name() })
	return out
}

func (s *Server) sessionList() []*session {
	s.mu.Lock()
	out := make([]*session, 0, len(s.sessions))
	for _, x := range s.sessions {
		out = append(out, x)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

func (s *Server) showPools() []byte {
	type cl struct{ active, waiting int }
	counts := map[[2]string]*cl{}
	for _, x := range s.sessionList() {
		x.mu.Lock()
		k := [2]string{x.db, x.tgt.user}
		c := counts[k]
		if c == nil {
			c = &cl{}
			counts[k] = c
		}
		if x.waiting {
			c.waiting++
		} else {
			c.active++
		}
		x.mu.Unlock()
	}
	cols := []string{"database", "user", "node", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login", "sv_waiters", "pool_size", "pool_mode"}
	var rows [][]string
	for _, p := range s.sortedPools() {
		a, i, o, w := p.counts()
		c := counts[[2]string{p.key.clientDB, p.key.user}]
		if c == nil {
			c = &cl{}
		}
		p.mu.Lock()
		size := p.size
		p.mu.Unlock()
		t := s.config().resolve(p.key.clientDB, p.key.user)
		rows = append(rows, []string{p.key.clientDB, p.key.user, fmt.Sprintf("%s:%d", p.key.host, p.key.port), strconv.Itoa(c.active), strconv.Itoa(c.waiting),
			strconv.Itoa(a), strconv.Itoa(i), strconv.Itoa(o), strconv.Itoa(w), strconv.Itoa(size), string(t.mode)})
	}
	return resultSet(nil, cols, rows, "SHOW")
}

func (s *Server) showClients() []byte {
	cols := []string{"type", "user", "database", "state", "addr", "connect_time", "tls", "server_id", "pid", "io"}
	var rows [][]string
	for _, x := range s.sessionList() {
		x.mu.Lock()
		state, sid := "idle", ""
		switch {
		case x.waiting:
			state = "waiting"
		case x.sc != nil:
			state, sid = "active", strconv.FormatUint(x.sc.id, 10)
		}
		x.mu.Unlock()
		io := "goroutine"
		if x.inLoop.Load() {
			io = "epoll"
		}
		rows = append(rows, []string{"C", x.user, x.db, state, x.addr, x.started.UTC().Format(time.DateTime), strconv.FormatBool(x.tls), sid, strconv.FormatUint(uint64(x.pid), 10), io})
	}
	return resultSet(nil, cols, rows, "SHOW")
}

func (s *Server) showServers() []byte {
	cols := []string{"type", "user", "database", "state", "addr", "port", "connect_time", "id", "backend_pid", "prepared"}
	var rows [][]string
	for _, p := range s.sortedPools() {
		p.mu.Lock()
		conns := make([]*serverConn, 0, len(p.all))
		for sc := range p.all {
			conns = append(conns, sc)
		}
		sort.Slice(conns, func(i, j int) bool { return conns[i].id < conns[j].id })
		for _, sc := range conns {
			state := "idle"
			if sc.active {
				state = "active"
			}
			rows = append(rows, []string{"S", p.key.user, p.key.db, state, p.key.host, strconv.Itoa(p.key.port), sc.created.UTC().Format(time.DateTime),
				strconv.FormatUint(sc.id, 10), strconv.FormatUint(uint64(sc.pid), 10), strconv.Itoa(sc.preparedShown())})
		}
		p.mu.Unlock()
	}
	return resultSet(nil, cols, rows, "SHOW")
}

func (s *Server) showStats() []byte {
	type agg struct{ xacts, queries, xactTime, queryTime, waits, waitTime, timeouts, loginErrors int64 }
	byDB := map[string]*agg{}
	var names []string
	for _, p := range s.sortedPools() {
		a := byDB[p.key.clientDB]
		if a == nil {
			a = &agg{}
			byDB[p.key.clientDB] = a
			names = append(names, p.key.clientDB)
		}
		st := &p.stats
		a.xacts += st.xacts.Load()
		a.queries += st.queries.Load()
		a.xactTime += st.xactTime.Load()
		a.queryTime += st.queryTime.Load()
		a.waits += st.waits.Load()
		a.waitTime += st.waitTime.Load()
		a.timeouts += st.timeouts.Load()
		a.loginErrors += st.loginErrors.Load()
	}
	cols := []string{"database", "total_xact_count", "total_query_count", "total_xact_time", "total_query_time", "total_wait_count", "total_wait_time", "wait_timeouts", "server_login_errors"}
	var rows [][]string
	us := func(ns int64) string { return strconv.FormatInt(ns/1000, 10) } // microseconds, like PgBouncer
	for _, n := range names {
		a := byDB[n]
		rows = append(rows, []string{n, strconv.FormatInt(a.xacts, 10), strconv.FormatInt(a.queries, 10), us(a.xactTime), us(a.queryTime),
			strconv.FormatInt(a.waits, 10), us(a.waitTime), strconv.FormatInt(a.timeouts, 10), strconv.FormatInt(a.loginErrors, 10)})
	}
	return resultSet(nil, cols, rows, "SHOW")
}

func (s *Server) showConfig() []byte {
	cfg := *s.config()
	if cfg.ServerPassword != "" {
		cfg.ServerPassword = "********"
	}
	cfg.Cluster.HealthCheckPassword = ""
	dbs := map[string]DatabaseConfig{}
	for k, d := range cfg.Databases {
		if d.Password != "" {
			d.Password = "********"
		}
		dbs[k] = d
	}
	cfg.Databases = dbs
	raw, _ := yaml.Marshal(cfg)
	var m map[string]any
	_ = yaml.Unmarshal(raw, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var rows [][]string
	for _, k := range keys {
		v := m[k]
		var sv string
		switch x := v.(type) {
		case nil:
			sv = ""
		case map[string]any, []any:
			b, _ := yaml.Marshal(x)
			sv = strings.TrimSpace(string(b))
		default:
			sv = fmt.Sprint(x)
		}
		rows = append(rows, []string{k, sv})
	}
	return resultSet(nil, []string{"key", "value"}, rows, "SHOW")
}

// NodeControl carries out the admin console's node commands (pcp-like: SWITCHOVER, ATTACH
// NODE, DETACH NODE, RECOVER NODE). The failover monitor implements it; a node is given by
// id or name. Each method blocks until the command is done and returns a sentence for
// people and a JSON document for programs.
type NodeControl interface {
	Switchover(ctx context.Context, to string, rejoin bool) (msg, detail string, err error)
	Attach(ctx context.Context, node string) (msg, detail string, err error)
	Detach(ctx context.Context, node string) (msg, detail string, err error)
	Recover(ctx context.Context, node string) (msg, detail string, err error)
}

// NodeStatus is implemented by a NodeControl that can describe the failover monitor: the
// admin console's SHOW FAILOVER lists its (key, value) rows.
type NodeStatus interface {
	Status() [][2]string
}

type nodeControlRef struct{ NodeControl }

// showFailover answers SHOW FAILOVER.
func (s *Server) showFailover() []byte {
	var st NodeStatus
	if ref := s.nodeCtl.Load(); ref != nil {
		st, _ = ref.NodeControl.(NodeStatus)
	}
	if st == nil {
		return (&pgError{Severity: "ERROR", Code: sqlstateFeatureNotSupp,
			Message: "SHOW FAILOVER: no failover monitor in this pool (a failover: section and at least two nodes)"}).encode(nil)
	}
	var rows [][]string
	for _, kv := range st.Status() {
		rows = append(rows, []string{kv[0], kv[1]})
	}
	return resultSet(nil, []string{"key", "value"}, rows, "SHOW")
}

// SetNodeControl enables the node commands of the admin console (nil disables them).
func (s *Server) SetNodeControl(nc NodeControl) {
	if nc == nil {
		s.nodeCtl.Store(nil)
		return
	}
	s.nodeCtl.Store(&nodeControlRef{nc})
}

// nodeCommandColumns is the one row a node command answers.
var nodeCommandColumns = []string{"result", "detail"}

// nodeCommand runs SWITCHOVER [TO] node [NOREJOIN] or ATTACH|DETACH|RECOVER NODE node; args
// are the words after the command.
func (s *Server) nodeCommand(ctx context.Context, cmd string, args []string) []byte {
	ref := s.nodeCtl.Load()
	if ref == nil {
		return (&pgError{Severity: "ERROR", Code: sqlstateFeatureNotSupp,
			Message: cmd + ": node commands need the failover monitor in this pool (a failover: section and at least two nodes)"}).encode(nil)
	}
	var (
		msg, detail string
		err         error
	)
	switch cmd {
	case "SWITCHOVER":
		if len(args) > 0 && strings.EqualFold(args[0], "TO") {
			args = args[1:]
		}
		rejoin := true
		if len(args) == 2 && strings.EqualFold(args[1], "NOREJOIN") {
			rejoin, args = false, args[:1]
		}
		if len(args) != 1 {
			return adminErr("usage: SWITCHOVER [TO] node [NOREJOIN] (node: id or name)")
		}
		msg, detail, err = ref.Switchover(ctx, args[0], rejoin)
	default:
		if len(args) != 2 {
			return adminErr("usage: %s NODE node (node: id or name)", cmd)
		}
		node := args[1]
		switch cmd {
		case "ATTACH":
			msg, detail, err = ref.Attach(ctx, node)
		case "DETACH":
			msg, detail, err = ref.Detach(ctx, node)
		case "RECOVER":
			msg, detail, err = ref.Recover(ctx, node)
		}
	}
	if err != nil {
		s.log.Error("admin node command failed", "command", cmd, "args", args, "err", err)
		return (&pgError{Severity: "ERROR", Code: sqlstateObjectInState, Message: fmt.Sprintf("%s: %v", strings.ToLower(cmd), err)}).encode(nil)
	}
	s.log.Info("admin node command done", "command", cmd, "args", args, "result", msg)
	return resultSet(nil, nodeCommandColumns, [][]string{{msg, detail}}, cmd)
}

// sqlstateObjectInState (object_not_in_prerequisite_state) answers a node command that was
// refused or failed.
const sqlstateObjectInState = "55000"
