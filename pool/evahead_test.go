package pool

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// testLoopReadAhead runs many transaction-mode clients through the event loop at once, so
// that its epoll batches hold several readable sockets, once reading them through the
// loop's io_uring (readAhead) and once socket by socket, and checks every answer: short
// statements inside transactions, results larger than one read ahead, a client that leaves
// inside a transaction. With the ring, reads must have gone through it.
func testLoopReadAhead(t *testing.T, f *fixture) {
	ringHere := false
	if r, err := newReadRing(8); err == nil {
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
			n := s.ringReads.Load()
			t.Logf("reads through io_uring: %d", n)
			switch {
			case ring == "off" && n != 0:
				t.Fatalf("io_uring off: %d reads through the ring", n)
			case ring == "auto" && ringHere && n == 0:
				t.Fatal("io_uring auto: no read went through the ring")
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
