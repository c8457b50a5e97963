package replica

import (
	"context"
	"errors"
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
