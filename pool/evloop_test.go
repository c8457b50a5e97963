package pool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// loopConn connects a simple-protocol client (pgconn's Exec sends Query messages only, so
// the session stays in the event loop) with the given application_name.
func loopConn(t *testing.T, s *Server, app string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, poolConnString(s, "postgres", "postgres")+" application_name="+app)
	if err != nil {
		t.Fatalf("connect %s: %v", app, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// one runs sql and returns the first column of the last result's first row.
func one(ctx context.Context, c *pgconn.PgConn, sql string) (string, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	for i := len(res) - 1; i >= 0; i-- {
		if res[i].Err != nil {
			return "", res[i].Err
		}
		if len(res[i].Rows) > 0 {
			return string(res[i].Rows[0][0]), nil
		}
	}
	return "", nil
}

func mustOne(t *testing.T, ctx context.Context, c *pgconn.PgConn, sql string) string {
	t.Helper()
	v, err := one(ctx, c, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// clientIO returns the io column of SHOW CLIENTS for the client whose BackendKeyData
// process id is pid.
func clientIO(t *testing.T, s *Server, pid uint32) string {
	t.Helper()
	for _, r := range adminQuery(t, s, "SHOW CLIENTS") {
		if r[8] == strconv.FormatUint(uint64(pid), 10) {
			return r[9]
		}
	}
	t.Fatalf("client %d not in SHOW CLIENTS", pid)
	return ""
}

// waitClientIO waits until SHOW CLIENTS shows the client pid on engine want (a session
// moves to the event loop just after its login completes, so right after a client's
// connect it may still be on its goroutine), and returns what it last showed.
func waitClientIO(t *testing.T, s *Server, pid uint32, want string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		io := clientIO(t, s, pid)
		if io == want || time.Now().After(deadline) {
			return io
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testEventLoop drives transaction-mode sessions of the event loop through one server
// connection: settings that follow each client, waiting and query_wait_timeout, clients
// that leave inside a transaction or during a query, COPY both ways, a large result, a
// session that moves to a goroutine inside a transaction, and protocol errors.
func testEventLoop(t *testing.T, f *fixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cfg := baseConfig(f, ModeTransaction)
	cfg.DefaultPoolSize = 1
	cfg.QueryWaitTimeout = 2 * time.Second
	s := startPool(t, cfg)
	f.primary.Exec(t, "DROP TABLE IF EXISTS el; CREATE TABLE el (v int)")

	a, b := loopConn(t, s, "app_a"), loopConn(t, s, "app_b")
	if io := waitClientIO(t, s, a.PID(), "epoll"); io != "epoll" {
		t.Fatalf("SHOW CLIENTS io for a simple-protocol client: %q, want epoll", io)
	}

	t.Run("SettingsFollowEachClient", func(t *testing.T) {
		pids := map[string]bool{}
		for i := 0; i < 3; i++ {
			for c, want := range map[*pgconn.PgConn]string{a: "app_a", b: "app_b"} {
				if got := mustOne(t, ctx, c, "SHOW application_name"); got != want {
					t.Fatalf("round %d: application_name %q, want %q", i, got, want)
				}
				pids[mustOne(t, ctx, c, "SELECT pg_backend_pid()")] = true
			}
		}
		if len(pids) != 1 {
			t.Fatalf("server backends used: %v, want the pool's only one", pids)
		}
		// a reported setting changed with SET follows its client too
		tz := mustOne(t, ctx, b, "SHOW TimeZone")
		mustOne(t, ctx, a, "SET TimeZone TO 'Asia/Tokyo'")
		if got := mustOne(t, ctx, b, "SHOW TimeZone"); got != tz {
			t.Fatalf("b's TimeZone after a's SET: %q, want %q", got, tz)
		}
		if got := mustOne(t, ctx, a, "SHOW TimeZone"); got != "Asia/Tokyo" {
			t.Fatalf("a's TimeZone after b ran: %q", got)
		}
	})

	t.Run("WaitsForTheTransactionThenTimesOut", func(t *testing.T) {
		mustOne(t, ctx, a, "BEGIN; INSERT INTO el VALUES (1)")
		done := make(chan error, 1)
		start := time.Now()
		go func() { _, err := one(ctx, b, "SELECT 1"); done <- err }()
		time.Sleep(300 * time.Millisecond)
		mustOne(t, ctx, a, "COMMIT")
		if err := <-done; err != nil {
			t.Fatalf("b after a's COMMIT: %v", err)
		}
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Fatalf("b ran after %v while a held the only server connection", d)
		}
		mustOne(t, ctx, a, "BEGIN; SELECT 1")
		start = time.Now()
		_, err := one(ctx, b, "SELECT 1")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || !strings.Contains(pe.Message, "query_wait_timeout") || time.Since(start) > 5*time.Second {
			t.Fatalf("b waiting past query_wait_timeout: %v after %v", err, time.Since(start))
		}
		mustOne(t, ctx, a, "COMMIT")
		if got := mustOne(t, ctx, b, "SELECT 'b goes on'"); got != "b goes on" {
			t.Fatalf("b after its timeout: %q", got)
		}
	})

	t.Run("ClientLeavesInsideATransaction", func(t *testing.T) {
		c := loopConn(t, s, "app_c")
		mustOne(t, ctx, c, "BEGIN; INSERT INTO el VALUES (2)")
		hj, err := c.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		_ = hj.Conn.Close() // no Terminate: the socket just closes
		// the only server connection must come back, rolled back
		if got := mustOne(t, ctx, a, "SELECT count(*) FROM el WHERE v = 2"); got != "0" {
			t.Fatalf("rows of the abandoned transaction: %s, want 0", got)
		}
		if got := mustOne(t, ctx, a, "SELECT count(*) FROM el WHERE v = 1"); got != "1" {
			t.Fatalf("committed rows: %s, want 1", got)
		}
	})

	t.Run("ClientLeavesDuringAQuery", func(t *testing.T) {
		d := loopConn(t, s, "app_d")
		hj, err := d.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		q := (&pgproto3.Query{String: "SELECT pg_sleep(30)"})
		msg, _ := q.Encode(nil)
		if _, err := hj.Conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		_ = hj.Conn.Close()
		start := time.Now()
		if got := mustOne(t, ctx, a, "SELECT 'after d'"); got != "after d" || time.Since(start) > 10*time.Second {
			t.Fatalf("a after d left mid-query: %q after %v (the query should be cancelled)", got, time.Since(start))
		}
	})

	t.Run("CopyBothWaysAndALargeResult", func(t *testing.T) {
		var in bytes.Buffer
		const rows = 200000
		for i := 0; i < rows; i++ {
			fmt.Fprintf(&in, "%d\n", i)
		}
		want := append([]byte(nil), in.Bytes()...)
		mustOne(t, ctx, a, "DROP TABLE IF EXISTS elcopy; CREATE TABLE elcopy (v int)")
		tag, err := a.CopyFrom(ctx, &in, "COPY elcopy FROM STDIN")
		if err != nil || tag.RowsAffected() != rows {
			t.Fatalf("COPY FROM STDIN: %v %v", err, tag)
		}
		var out bytes.Buffer
		if _, err := a.CopyTo(ctx, &out, "COPY (SELECT v FROM elcopy ORDER BY v) TO STDOUT"); err != nil {
			t.Fatalf("COPY TO STDOUT: %v", err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("COPY round trip: %d bytes back, want %d", out.Len(), len(want))
		}
		res, err := a.Exec(ctx, "SELECT repeat(md5(i::text), 40000) FROM generate_series(1, 8) i").ReadAll()
		if err != nil || len(res) != 1 || len(res[0].Rows) != 8 || len(res[0].Rows[7][0]) != 32*40000 {
			t.Fatalf("large result: %v", err)
		}
		if io := waitClientIO(t, s, a.PID(), "epoll"); io != "epoll" {
			t.Fatalf("after COPY and a large result a runs on %q, want epoll", io)
		}
	})

	t.Run("MovesToAGoroutineInsideATransaction", func(t *testing.T) {
		e := loopConn(t, s, "app_e")
		x := mustOne(t, ctx, e, "BEGIN; SELECT txid_current()")
		// the extended protocol runs in the loop, in the same transaction
		rr := e.ExecParams(ctx, "SELECT txid_current()", nil, nil, nil, nil).Read()
		if rr.Err != nil || len(rr.Rows) != 1 || string(rr.Rows[0][0]) != x {
			t.Fatalf("txid over the extended protocol: %v %v, want %s (same transaction)", rr.Err, rr.Rows, x)
		}
		if io := clientIO(t, s, e.PID()); io != "epoll" {
			t.Fatalf("SHOW CLIENTS io after the extended protocol: %q, want epoll", io)
		}
		// DEALLOCATE (the pool's prepared-statement bookkeeping): the session moves to a
		// goroutine, with its transaction
		mustOne(t, ctx, e, "DEALLOCATE ALL")
		if got := mustOne(t, ctx, e, "SELECT txid_current()"); got != x {
			t.Fatalf("txid after the move: %s, want %s (same transaction)", got, x)
		}
		mustOne(t, ctx, e, "COMMIT")
		if io := clientIO(t, s, e.PID()); io != "goroutine" {
			t.Fatalf("SHOW CLIENTS io after DEALLOCATE: %q, want goroutine", io)
		}
		if got := mustOne(t, ctx, a, "SELECT 'a still in the loop'"); got != "a still in the loop" {
			t.Fatal(got)
		}
	})

	t.Run("IdleServerConnectionClosedByTheServer", func(t *testing.T) {
		pid := mustOne(t, ctx, a, "SELECT pg_backend_pid()")
		f.primary.Exec(t, "SELECT pg_terminate_backend("+pid+")")
		time.Sleep(300 * time.Millisecond)
		got, err := one(ctx, a, "SELECT pg_backend_pid()")
		if err != nil || got == pid {
			t.Fatalf("after the server closed the idle connection: %v, backend %s (was %s)", err, got, pid)
		}
	})

	t.Run("ProtocolErrors", func(t *testing.T) {
		g := loopConn(t, s, "app_g")
		hj, err := g.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		defer hj.Conn.Close()
		bad := []byte{'Q', 0, 0, 0, 2} // a length below the header's own 4 bytes
		if _, err := hj.Conn.Write(bad); err != nil {
			t.Fatal(err)
		}
		_ = hj.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(hj.Conn)
		if len(got) < 5 || got[0] != 'E' || !bytes.Contains(got, []byte("08P01")) {
			t.Fatalf("answer to a bad length: %q, want an ErrorResponse 08P01 and the end", got)
		}
		if n := int(binary.BigEndian.Uint32(got[1:5])) + 1; n != len(got) {
			t.Fatalf("%d bytes after the error, want none", len(got)-n)
		}
		if got := mustOne(t, ctx, a, "SELECT 'pool fine'"); got != "pool fine" {
			t.Fatal(got)
		}
	})

	if act, total := activeServers(t, s); act != 0 || total > 1 {
		t.Fatalf("SHOW SERVERS at the end: %d active of %d, want 0 of at most 1", act, total)
	}
}
