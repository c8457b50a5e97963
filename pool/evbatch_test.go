package pool

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// testLoopBatchedIO runs many transaction-mode clients through the event loop at once, so
// that its epoll batches hold several readable sockets, once reading and writing them
// through the loop's io_uring (readAhead, flushQueued) and once socket by socket, and
// checks every answer: short statements inside transactions, results larger than one read
// ahead, a client that leaves inside a transaction, COPY both ways. With the ring, reads
// and writes must have gone through it.
func testLoopBatchedIO(t *testing.T, f *fixture) {
	ringHere := false
	if r, err := newSockRing(8); err == nil {
		r.close()
		ringHere = true
	} else {
		t.Logf("no io_uring here (%v): both runs read socket by socket", err)
	}
	for _, ring := range []string{"auto", "off"} {
		t.Run(ring, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cfg := baseConfig(f, ModeTransaction)
			cfg.DefaultPoolSize = 4
			cfg.IOUring = ring
			s := startPool(t, cfg)
			const clients, rounds = 12, 40
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for c := 0; c < clients; c++ {
				conn, err := pgconn.Connect(ctx, poolConnString(s, "postgres", "postgres")+fmt.Sprintf(" application_name=ahead%d", c))
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer conn.Close(context.Background())
					errs <- aheadClient(ctx, conn, c, rounds)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			// the connection a leaver held came back rolled back: its row is not there
			c := loopConn(t, s, "ahead-check")
			if got := mustOne(t, ctx, c, "SELECT count(*) FROM pg_class WHERE relname LIKE 'ahead_left_%'"); got != "0" {
				t.Fatalf("tables of abandoned transactions: %s, want 0", got)
			}
			// as pgharbor_pool_loop_ring_ops_total reports them
			mfs, err := s.Registry().Gather()
			if err != nil {
				t.Fatal(err)
			}
			var recvs, sends float64
			for _, mf := range mfs {
				if mf.GetName() != "pgharbor_pool_loop_ring_ops_total" {
					continue
				}
				for _, m := range mf.GetMetric() {
					switch op := m.GetLabel()[0].GetValue(); op {
					case "recv":
						recvs = m.GetCounter().GetValue()
					case "send":
						sends = m.GetCounter().GetValue()
					default:
						t.Fatalf("pgharbor_pool_loop_ring_ops_total{op=%q}", op)
					}
				}
			}
			if recvs != float64(s.ringRecvs.Load()) || sends != float64(s.ringSends.Load()) {
				t.Fatalf("metric %v reads, %v writes; counters %d, %d", recvs, sends, s.ringRecvs.Load(), s.ringSends.Load())
			}
			t.Logf("through io_uring: %v reads, %v writes", recvs, sends)
			switch {
			case ring == "off" && recvs+sends != 0:
				t.Fatalf("io_uring off: %v reads and %v writes through the ring", recvs, sends)
			case ring == "auto" && ringHere && (recvs == 0 || sends == 0):
				t.Fatalf("io_uring auto: %v reads and %v writes through the ring, want some of each", recvs, sends)
			}
		})
	}
}

// aheadClient runs client c's rounds and checks each answer; every fourth client leaves in
// the middle of a transaction in its last round, without a Terminate.
func aheadClient(ctx context.Context, conn *pgconn.PgConn, c, rounds int) error {
	for i := 0; i < rounds; i++ {
		tag := fmt.Sprintf("c%d-r%d", c, i)
		if got, err := one(ctx, conn, "BEGIN; SELECT '"+tag+"'"); err != nil || got != tag {
			return fmt.Errorf("%s: BEGIN; SELECT: %q %v", tag, got, err)
		}
		if got, err := one(ctx, conn, "SELECT current_setting('application_name') || ' ' || txid_current_if_assigned() IS NULL"); err != nil || got != "t" {
			return fmt.Errorf("%s: a second statement: %q %v", tag, got, err)
		}
		if i%5 == 0 {
			// larger than one read ahead (aheadSize): read ahead whole, then socket by socket
			want := strings.Repeat(tag, 40000/len(tag))
			if got, err := one(ctx, conn, fmt.Sprintf("SELECT repeat('%s', %d)", tag, 40000/len(tag))); err != nil || got != want {
				return fmt.Errorf("%s: large result: %d bytes %v, want %d", tag, len(got), err, len(want))
			}
		}
		if i%10 == 3 {
			// COPY both ways inside the transaction, larger than the loop's output limit
			// (loopOutHigh) and than a socket's buffer: writes that stop short and resume
			var in bytes.Buffer
			const rows = 60000
			for r := 0; r < rows; r++ {
				fmt.Fprintf(&in, "%d\t%s\n", r, tag)
			}
			want := append([]byte(nil), in.Bytes()...)
			if _, err := one(ctx, conn, fmt.Sprintf("CREATE TEMP TABLE ahead_copy_%d (v int, t text) ON COMMIT DROP", c)); err != nil {
				return fmt.Errorf("%s: %v", tag, err)
			}
			if ct, err := conn.CopyFrom(ctx, &in, fmt.Sprintf("COPY ahead_copy_%d FROM STDIN", c)); err != nil || ct.RowsAffected() != rows {
				return fmt.Errorf("%s: COPY FROM: %v %v", tag, ct, err)
			}
			var out bytes.Buffer
			if _, err := conn.CopyTo(ctx, &out, fmt.Sprintf("COPY (SELECT * FROM ahead_copy_%d ORDER BY v) TO STDOUT", c)); err != nil || !bytes.Equal(out.Bytes(), want) {
				return fmt.Errorf("%s: COPY TO: %d bytes %v, want %d", tag, out.Len(), err, len(want))
			}
		}
		if c%4 == 3 && i == rounds-1 {
			if _, err := one(ctx, conn, fmt.Sprintf("CREATE TABLE ahead_left_%d (v int)", c)); err != nil {
				return fmt.Errorf("%s: %v", tag, err)
			}
			hj, err := conn.Hijack()
			if err != nil {
				return err
			}
			return hj.Conn.Close()
		}
		if got, err := one(ctx, conn, "COMMIT; SELECT '"+tag+" done'"); err != nil || got != tag+" done" {
			return fmt.Errorf("%s: COMMIT: %q %v", tag, got, err)
		}
	}
	return nil
}
