package replica

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/wal"
)

// A standby whose slot another receiver holds does not stream: the bounded wait ends with
// the reason, read from the standby's own log, and that log's tail.
func TestStartAndWaitStreamingSaysSlotInUse(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Exec(t, "SELECT pg_create_physical_replication_slot('taken', true)")
	// Someone else streams through the slot.
	spool := pgtest.MkdirOwned(t, pg.Cred, "pgharbor-receivewal-")
	recv := pg.Command("pg_receivewal", "-D", spool, "--slot", "taken", "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres", "--no-loop")
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { recv.Process.Kill(); recv.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for pg.QueryString(t, "postgres", "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'taken'") != "true" {
		if time.Now().After(deadline) {
			t.Fatal("pg_receivewal did not take the slot")
		}
		time.Sleep(50 * time.Millisecond)
	}
	root := pgtest.MkdirOwned(t, pg.Cred, "pgharbor-standby-")
	pgdata := filepath.Join(root, "data")
	if out, err := pg.Command("pg_basebackup", "-D", pgdata, "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres", "-X", "stream", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	port := pgtest.FreePort(t)
	conninfo, app, err := WithApplicationName(pg.TCPConnString("postgres"), "victim")
	if err != nil {
		t.Fatal(err)
	}
	err = WriteAutoConf(pgdata, Settings{PrimaryConnInfo: conninfo, SlotName: "taken", Standby: true,
		Extra: map[string]string{"port": strconv.Itoa(port), "unix_socket_directories": root}}, pg.Cred)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Stop(context.Background(), pg.BinDir, pgdata, "immediate", pg.Cred) })
	t0 := time.Now()
	err = StartAndWaitStreaming(context.Background(), StartOptions{PGData: pgdata, BinDir: pg.BinDir, Cred: pg.Cred, Wait: 20 * time.Second,
		PrimaryConnInfo: conninfo, Slot: "taken", AppName: app})
	var se *StreamError
	if !errors.As(err, &se) || se.Reason != ReasonSlotInUse {
		t.Fatalf("start with a slot in use: %v, want a StreamError with reason %q", err, ReasonSlotInUse)
	}
	if took := time.Since(t0); took < 20*time.Second || took > 60*time.Second {
		t.Fatalf("the wait took %s, want the 20 s bound", took)
	}
	if !strings.Contains(se.LogTail, `replication slot "taken" is active for PID`) || !strings.Contains(se.Error(), "what to do:") {
		t.Fatalf("error lacks the log tail or the advice:\n%v", se)
	}
	t.Logf("%v", se)
	if PostmasterPID(pgdata) == 0 {
		t.Fatal("the standby was stopped; it should be left running for inspection")
	}
	if _, err := os.Stat(filepath.Join(pgdata, "standby.signal")); err != nil {
		t.Fatal(err)
	}
}

// WALAfter finds the record at a position and none past the end of WAL, even when pg_wal
// holds a preallocated segment that is still all zeros (pg_waldump would take the segment
// size from it unless told which segment to read).
func TestWALAfterWithAZeroFilledSegmentInPgWal(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Exec(t, "CREATE TABLE t AS SELECT generate_series(1, 1000) g")
	pg.Exec(t, "CHECKPOINT")
	lsn, err := wal.ParseLSN(pg.QueryString(t, "postgres", "SELECT checkpoint_lsn::text FROM pg_control_checkpoint()"))
	if err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(pg.DataDir, "pg_wal", "0000000100000000000000F0")
	if err := os.WriteFile(zero, make([]byte, 16<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if pg.Cred != nil {
		if err := os.Chown(zero, int(pg.Cred.Uid), int(pg.Cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if ok, err := WALAfter(ctx, pg.BinDir, pg.DataDir, 1, lsn); err != nil || !ok {
		t.Fatalf("WALAfter at the last checkpoint: %v %v, want a record", ok, err)
	}
	if ok, err := WALAfter(ctx, pg.BinDir, pg.DataDir, 1, lsn+64<<20); err != nil || ok {
		t.Fatalf("WALAfter 64 MiB past the checkpoint: %v %v, want none and no error", ok, err)
	}
}

// A standby is asked over a connection of this process when it lets it in, and through psql
// as the server's OS user when it does not (peer authentication refuses any other OS user):
// either way the wait ends on the standby's own word that it streams, confirmed once by the
// primary, without a connection to the primary before.
func TestStartAndWaitStreamingAsksTheStandbyEitherWay(t *testing.T) {
	pg := pgtest.Start(t, pgtest.Options{})
	for _, tc := range []struct {
		name, hba string
	}{
		{"trust", ""},
		{"peer", "local all all peer\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.hba != "" && pg.Cred == nil {
				t.Skip("peer authentication refuses this process only when it runs as another OS user than the server")
			}
			root := pgtest.MkdirOwned(t, pg.Cred, "pgharbor-standby-")
			pgdata := filepath.Join(root, "data")
			if out, err := pg.Command("pg_basebackup", "-D", pgdata, "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres", "-X", "stream", "--no-sync").CombinedOutput(); err != nil {
				t.Fatalf("pg_basebackup: %v\n%s", err, out)
			}
			if tc.hba != "" {
				hba := filepath.Join(pgdata, "pg_hba.conf")
				if err := os.WriteFile(hba, []byte(tc.hba), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chown(hba, int(pg.Cred.Uid), int(pg.Cred.Gid)); err != nil {
					t.Fatal(err)
				}
			}
			port := pgtest.FreePort(t)
			conninfo, app, err := WithApplicationName(pg.TCPConnString("postgres"), "asked-"+tc.name)
			if err != nil {
				t.Fatal(err)
			}
			err = WriteAutoConf(pgdata, Settings{PrimaryConnInfo: conninfo, Standby: true,
				Extra: map[string]string{"port": strconv.Itoa(port), "unix_socket_directories": root}}, pg.Cred)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { Stop(context.Background(), pg.BinDir, pgdata, "immediate", pg.Cred) })
			var times StartTimes
			err = StartAndWaitStreaming(context.Background(), StartOptions{PGData: pgdata, BinDir: pg.BinDir, Cred: pg.Cred, Wait: time.Minute,
				PrimaryConnInfo: conninfo, AppName: app, Times: &times, SyncFS: true})
			if err != nil {
				t.Fatal(err)
			}
			if times.StandbyStreams == 0 || times.Confirmed < times.StandbyStreams || times.StandbyAnswered > times.StandbyStreams {
				t.Fatalf("times %+v: want the standby to have answered, said streaming, then the primary confirmed", times)
			}
			// The primary is asked only to confirm (again every 250 ms while its walsender
			// still catches up), never while the standby could say it does not stream yet.
			if most := 1 + int(math.Ceil((times.Confirmed-times.StandbyStreams)/confirmEvery.Seconds())); times.PrimaryAsked < 1 || times.PrimaryAsked > most {
				t.Fatalf("the primary was asked %d times, want 1 to %d: the standby could be asked", times.PrimaryAsked, most)
			}
			if got := pg.QueryString(t, "postgres", "SELECT state FROM pg_stat_replication WHERE application_name = '"+app+"'"); got != "streaming" {
				t.Fatalf("the primary says %q for %s", got, app)
			}
			if tc.hba != "" {
				log, _ := os.ReadFile(filepath.Join(pgdata, "pgharbor-start.log"))
				if !strings.Contains(string(log), "Peer authentication failed") {
					t.Fatalf("the standby's log shows no refused connection of this process: it was not asked through psql\n%s", log)
				}
			}
			t.Logf("%+v", times)
		})
	}
}
