package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// receiver runs `pgharbor wal receive` against pg until stopped.
type receiver struct {
	cmd *exec.Cmd
	log *os.File
}

func (e *env) startReceiver(t *testing.T, pg *pgtest.Cluster, args ...string) *receiver {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "receive.log"))
	if err != nil {
		t.Fatal(err)
	}
	all := append([]string{"--config", e.config, "wal", "receive", "--conn", pg.ConnString("postgres")}, args...)
	cmd := exec.Command(binary, all...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	rc := &receiver{cmd: cmd, log: logf}
	t.Cleanup(func() { rc.stop(); logf.Close() })
	return rc
}

func (rc *receiver) stop() {
	if rc.cmd.ProcessState != nil {
		return
	}
	rc.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { rc.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		rc.cmd.Process.Kill()
		<-done
	}
}

func (rc *receiver) output() string {
	b, _ := os.ReadFile(rc.log.Name())
	return string(b)
}

// waitStreaming waits until the server lists the receiver as streaming.
func waitStreaming(t *testing.T, pg *pgtest.Cluster, rc *receiver) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if pg.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_replication WHERE application_name = 'pgharbor' AND state = 'streaming'") == "1" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the receiver is not streaming after 30 s\n%s", rc.output())
}

// crash kills the postmaster and every process it started at once, as a lost machine would
// stop them, and removes the data directory.
func crash(t *testing.T, pg *pgtest.Cluster) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pg.DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	pids := []int{pid}
	if kids, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children"); err == nil {
		for _, f := range strings.Fields(string(kids)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	time.Sleep(200 * time.Millisecond)
	os.RemoveAll(pg.DataDir)
}

// heartbeat commits one row every 100 ms and remembers the last one acknowledged.
type heartbeat struct {
	mu    sync.Mutex
	last  int64
	stop  chan struct{}
	done  chan struct{}
	fails int
}

func startHeartbeat(t *testing.T, pg *pgtest.Cluster) *heartbeat {
	t.Helper()
	pg.Exec(t, "CREATE TABLE hb (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	conn, err := pgx.Connect(context.Background(), pg.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	h := &heartbeat{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		defer conn.Close(context.Background())
		for id := int64(1); ; id++ {
			select {
			case <-h.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := conn.Exec(ctx, "INSERT INTO hb (id) VALUES ($1)", id)
			cancel()
			if err != nil {
				h.mu.Lock()
				h.fails++
				h.mu.Unlock()
				return // the server is gone
			}
			h.mu.Lock()
			h.last = id
			h.mu.Unlock()
		}
	}()
	return h
}

func (h *heartbeat) acknowledged() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// rpoRun backs up a primary, streams its WAL with the receiver (archive_command stays on),
// crashes it under load and restores the latest WAL; it returns the last heartbeat
// acknowledged before the crash, the newest one restored and the time between them.
func rpoRun(t *testing.T, synchronous bool) (acked, restored int64, lost time.Duration) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(map[string]string{"wal_sender_timeout": "'10s'"})
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	e.must("repo", "init")
	e.must("backup", "--conn", pg.ConnString("postgres"))
	var args []string
	if synchronous {
		args = append(args, "--synchronous")
	}
	// Pushes that failed before `repo init` do not count.
	failedBefore := pg.QueryString(t, "postgres", "SELECT failed_count::text FROM pg_stat_archiver")
	rc := e.startReceiver(t, pg, args...)
	waitStreaming(t, pg, rc)
	if synchronous {
		pg.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'pgharbor'")
		pg.Exec(t, "SELECT pg_reload_conf()")
		time.Sleep(300 * time.Millisecond)
		if s := pg.QueryString(t, "postgres", "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgharbor'"); s != "sync" {
			t.Fatalf("the receiver is %q, want a synchronous standby", s)
		}
	}
	h := startHeartbeat(t, pg)
	defer func() {
		// archive_command and the receiver store the same segments: neither may refuse
		// the other's copy.
		if strings.Contains(rc.output(), "different file") || strings.Contains(rc.output(), "level=ERROR") {
			t.Errorf("the receiver reported a conflict:\n%s", rc.output())
		}
	}()
	load := exec.Command(filepath.Join(pg.BinDir, "pgbench"), "-n", "-c", "2", "-T", "20", "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres", "postgres")
	load.Start()
	time.Sleep(5 * time.Second)
	if f := pg.QueryString(t, "postgres", "SELECT failed_count::text FROM pg_stat_archiver"); f != failedBefore {
		t.Errorf("archive_command failed beside the receiver (%s failures, %s before it started)\n%s", f, failedBefore, pg.Log())
	}
	crash(t, pg)
	load.Wait()
	close(h.stop)
	<-h.done
	acked = h.acknowledged()
	time.Sleep(2 * time.Second) // the receiver has lost its server; what it stored stays
	rc.stop()
	if !strings.Contains(rc.output(), "WAL receiver streaming") {
		t.Fatalf("receiver log:\n%s", rc.output())
	}
	var info struct {
		Receivers []struct {
			Slot      string `json:"slot"`
			Streaming bool   `json:"streaming"`
			Stored    string `json:"stored"`
			LastError string `json:"last_error"`
		} `json:"receivers"`
	}
	if err := json.Unmarshal([]byte(e.must("info", "--output", "json")), &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Receivers) != 1 || info.Receivers[0].Slot != "pgharbor" || info.Receivers[0].Streaming || info.Receivers[0].Stored == "0/0" {
		t.Fatalf("info shows the receivers %+v, want the stopped receiver of slot pgharbor with what it stored", info.Receivers)
	}
	t.Logf("info: receiver %+v", info.Receivers[0])
	c := e.restoreStarted(pg)
	restored, _ = strconv.ParseInt(c.QueryString(t, "postgres", "SELECT coalesce(max(id), 0)::text FROM hb"), 10, 64)
	if restored < acked {
		// Heartbeats are 100 ms apart: the lost window is the number missing times that.
		lost = time.Duration(acked-restored) * 100 * time.Millisecond
	}
	// Nothing restored beyond what was acknowledged or in flight.
	if restored > acked+1 {
		t.Fatalf("restored heartbeat %d, but only %d were acknowledged", restored, acked)
	}
	e.must("verify")
	return acked, restored, lost
}

// With the receiver streaming, a primary lost with its disk loses under 2 s of commits
// (archive_command alone would lose everything after the last full segment).
func TestWALReceiverRPOAsynchronous(t *testing.T) {
	acked, restored, lost := rpoRun(t, false)
	t.Logf("RPO asynchronous: last acknowledged heartbeat %d, newest restored %d, lost window %v", acked, restored, lost)
	if acked < 20 {
		t.Fatalf("only %d heartbeats acknowledged: the load did not run", acked)
	}
	if lost >= 2*time.Second {
		t.Fatalf("lost %v of acknowledged commits, want under 2 s", lost)
	}
}

// With the receiver as a synchronous standby, no acknowledged commit is lost: over five
// crashes, each on a fresh primary, the restore holds every acknowledged heartbeat.
func TestWALReceiverRPOSynchronous(t *testing.T) {
	const crashes = 5
	for i := 1; i <= crashes; i++ {
		t.Run(fmt.Sprintf("crash%d", i), func(t *testing.T) {
			acked, restored, lost := rpoRun(t, true)
			t.Logf("RPO synchronous, crash %d of %d: last acknowledged heartbeat %d, newest restored %d, lost window %v", i, crashes, acked, restored, lost)
			if acked < 20 {
				t.Fatalf("only %d heartbeats acknowledged: the load did not run", acked)
			}
			if restored < acked {
				t.Fatalf("heartbeat %d was acknowledged but the restore ends at %d: a synchronous receiver lost a commit", acked, restored)
			}
		})
	}
}

// The receiver streams from a standby; it is killed and restarted, the standby restarted,
// then promoted after its primary stops: the receiver follows timeline 2, and a restore of
// the newest WAL after the new primary is lost with its disk equals the data it had.
func TestWALReceiverSurvivesRestartsAndFollowsAPromotion(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.primaryWithData()
	e.must("backup", "--conn", pg.ConnString("postgres"))
	sb := pg.StartStandby(t)
	rc := e.startReceiver(t, sb)
	waitStreaming(t, sb, rc)

	pg.Pgbench(t, "postgres", "-n", "-t", "200")
	pg.Exec(t, "INSERT INTO marks VALUES (1)")
	rc.cmd.Process.Kill() // killed, not stopped
	rc.cmd.Wait()
	pg.Pgbench(t, "postgres", "-n", "-t", "200")
	pg.Exec(t, "INSERT INTO marks VALUES (2)")
	rc = e.startReceiver(t, sb)
	waitStreaming(t, sb, rc)
	sb.Stop(t, "fast")
	sb.Start(t)
	pg.Pgbench(t, "postgres", "-n", "-t", "200")
	pg.Exec(t, "INSERT INTO marks VALUES (3)")
	pg.WaitReplay(t, sb)

	pg.Stop(t, "fast")
	sb.Exec(t, "SELECT pg_promote(true, 60)")
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(rc.output(), "follows a new timeline") {
		if time.Now().After(deadline) {
			t.Fatalf("the receiver did not follow the promotion to timeline 2:\n%s", rc.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	sb.Pgbench(t, "postgres", "-n", "-t", "200")
	sb.Exec(t, "INSERT INTO marks VALUES (4)")
	want := snapshot(t, sb.ConnString("postgres"))
	time.Sleep(3 * time.Second) // two flush intervals: everything received is stored
	crash(t, sb)
	time.Sleep(time.Second)
	rc.stop()
	if strings.Contains(rc.output(), "level=ERROR") {
		t.Errorf("receiver errors:\n%s", rc.output())
	}
	c := e.restoreStarted(pg)
	if got := snapshot(t, c.ConnString("postgres")); got != want {
		t.Fatalf("restore of the newest WAL: %s, want the new primary's data %s\nreceiver log:\n%s", got, want, rc.output())
	}
	if tli := c.QueryString(t, "postgres", "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); tli < "00000003" {
		t.Fatalf("the restored cluster runs on timeline %s: recovery did not follow timeline 2", tli)
	}
	e.must("verify")
}

// Each way a receiver cannot stream gets one message that says what to change, and the
// foreground command exits instead of retrying what cannot succeed.
func TestWALReceiverExplainsWhatIsWrong(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	e.must("repo", "init")
	pg.Exec(t, "CREATE ROLE plain LOGIN")
	minimal := pgtest.Start(t, pgtest.Options{Config: map[string]string{"wal_level": "minimal", "max_wal_senders": "0"}})
	first := e.startReceiver(t, pg, "--slot", "busy")
	waitStreaming(t, pg, first)
	cases := []struct {
		name, want string
		args       []string
	}{
		{"bad slot name", "slot name", []string{"--conn", pg.ConnString("postgres"), "--slot", "Bad-Slot"}},
		{"missing slot", "does not exist", []string{"--conn", pg.ConnString("postgres"), "--slot", "nosuch", "--create-slot=false"}},
		{"no replication privilege", "REPLICATION", []string{"--conn", strings.Replace(pg.ConnString("postgres"), "user=postgres", "user=plain", 1)}},
		{"no wal senders", "max_wal_senders", []string{"--conn", minimal.ConnString("postgres")}},
		{"slot in use", "in use", []string{"--conn", pg.ConnString("postgres"), "--slot", "busy"}},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "-"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, binary, append([]string{"--config", e.config, "wal", "receive"}, c.args...)...).CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("wal receive kept retrying instead of saying what is wrong:\n%s", out)
			}
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Fatalf("wal receive: %v, want a failure mentioning %q:\n%s", err, c.want, out)
			}
			t.Logf("%s", lastLines(string(out), 1))
		})
	}
}

// A slot dropped while its receiver was down cannot give back the WAL written meanwhile:
// the receiver creates it anew and says so, and info shows the hole as a gap instead of
// hiding it (here the receiver is the only way WAL reaches the repository).
func TestWALReceiverReportsTheGapOfADroppedSlot(t *testing.T) {
	e := newEnv(t, "", "")
	pg := pgtest.Start(t, pgtest.Options{})
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	e.must("repo", "init")
	rc := e.startReceiver(t, pg)
	waitStreaming(t, pg, rc)
	for range 2 {
		pg.Pgbench(t, "postgres", "-n", "-t", "100")
		pg.Exec(t, "SELECT pg_switch_wal()")
	}
	time.Sleep(2 * time.Second)
	rc.stop()
	pg.Exec(t, "SELECT pg_drop_replication_slot('pgharbor')")
	for range 3 {
		pg.Pgbench(t, "postgres", "-n", "-t", "100")
		pg.Exec(t, "SELECT pg_switch_wal()")
	}
	pg.Exec(t, "CHECKPOINT")
	rc = e.startReceiver(t, pg)
	waitStreaming(t, pg, rc)
	pg.Pgbench(t, "postgres", "-n", "-t", "100")
	pg.Exec(t, "SELECT pg_switch_wal()")
	time.Sleep(2 * time.Second)
	rc.stop()
	if !strings.Contains(rc.output(), "created anew") {
		t.Errorf("the receiver did not report the WAL its new slot cannot give back:\n%s", rc.output())
	}
	var info struct {
		WAL struct {
			Timelines []struct {
				Gaps []struct {
					From, To string
					Count    int
				} `json:"gaps"`
			} `json:"timelines"`
		} `json:"wal"`
	}
	if err := json.Unmarshal([]byte(e.must("info", "--output", "json")), &info); err != nil {
		t.Fatal(err)
	}
	if len(info.WAL.Timelines) != 1 || len(info.WAL.Timelines[0].Gaps) == 0 {
		t.Fatalf("info shows no gap after the slot was dropped: %+v\n%s", info.WAL, e.must("info"))
	}
	t.Logf("info: gap %+v", info.WAL.Timelines[0].Gaps[0])
}

// After a burst of WAL the receiver stores the tail as soon as the stream pauses, not at
// the next flush tick (set far off here), and the completed segments it sealed from its
// frames decode to the very bytes PostgreSQL wrote.
func TestWALReceiverStoresTheTailOfABurstAtOnce(t *testing.T) {
	e := newEnvSpool(t, "", "wal:\n  stream:\n    flush_interval: 60s\n", true)
	pg := e.startPrimary(map[string]string{"archive_mode": "off"})
	e.must("repo", "init")
	rc := e.startReceiver(t, pg)
	waitStreaming(t, pg, rc)
	pg.Exec(t, "CREATE TABLE burst (id int, filler char(84))")
	first := pg.QueryString(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
	pg.Exec(t, "INSERT INTO burst SELECT g, g::text FROM generate_series(1, 300000) g")
	end := pg.QueryString(t, "postgres", "SELECT pg_current_wal_lsn()::text")
	start := time.Now()
	for pg.QueryString(t, "postgres", "SELECT coalesce(flush_lsn >= '"+end+"', false)::text FROM pg_stat_replication WHERE application_name = 'pgharbor'") != "true" {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the receiver has not stored the burst's tail (up to %s) after %v; the flush interval is 60 s\n%s", end, time.Since(start), rc.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("burst's tail stored %v after the burst", time.Since(start).Round(time.Millisecond))
	last := pg.QueryString(t, "postgres", "SELECT pg_walfile_name('"+end+"')")
	if first == last {
		t.Fatalf("the burst stayed within segment %s: no completed segment to compare", first)
	}
	// Every segment the burst completed, fetched from the repository, is the file in pg_wal.
	for _, name := range strings.Fields(pg.QueryString(t, "postgres", "SELECT string_agg(name, ' ') FROM pg_ls_waldir() WHERE name >= '"+first+"' AND name < '"+last+"'")) {
		dest := filepath.Join(e.dir, "fetched-"+name)
		e.must("wal", "fetch", "--prefetch", "-1", name, dest)
		got, err := os.ReadFile(dest)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(pg.DataDir, "pg_wal", name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("segment %s from the repository differs from pg_wal's (%d and %d bytes)", name, len(got), len(want))
		}
	}
}
