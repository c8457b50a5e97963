package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// TestSwitchoverUnderLoadLosesNothing is the planned change of primary: pgbench and a
// ledger of two-statement transactions write through the pool while `pgharbor switchover
// --to s1` runs. No client may see an error, every acknowledged transaction must be on the
// new primary, the old primary must stream from the new one as a standby and converge, the
// other standby must follow, and SHOW POOL_NODES must show the new roles.
func TestSwitchoverUnderLoadLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	nodes := startHANodes(t, pgtest.Options{})
	n0, s1, s2 := nodes[0], nodes[1], nodes[2]
	n0.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	h := startHAPool(t, nodes, nil, nil, "")
	led := newLedger(t, n0, h.connString("postgres"))
	t.Logf("SHOW POOL_NODES before:\n%s", formatRows(h.poolNodes()))

	// pgbench aborts a client on its first error and then exits non-zero.
	bench := exec.Command(pgtest.DefaultBinDir+"/pgbench", "-n", "-c", "4", "-j", "2", "-T", "14", "-h", "127.0.0.1",
		"-p", strconv.Itoa(h.port), "-U", "postgres", "postgres")
	var benchOut strings.Builder
	bench.Stdout, bench.Stderr = &benchOut, &benchOut
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	led.start(ctx, 4)
	defer func() { stop(); led.wg.Wait() }()
	waitUntil(t, "ledger writes through the pool", 30*time.Second, func() bool { return led.count() >= 200 })
	time.Sleep(2 * time.Second)

	before := led.count()
	t0 := time.Now()
	out := h.mustCLI("switchover", "--to", "s1", "--output", "json")
	took := time.Since(t0)
	var rep struct {
		OldPrimary   string   `json:"old_primary"`
		NewPrimary   string   `json:"new_primary"`
		StopLSN      string   `json:"stop_lsn"`
		HeldSeconds  float64  `json:"held_seconds"`
		Followed     []string `json:"followed"`
		Rejoined     bool     `json:"rejoined"`
		RejoinMethod string   `json:"rejoin_method"`
		RejoinError  string   `json:"rejoin_error"`
	}
	decodeJSON(t, out, &rep)
	t.Logf("switchover report: %s", strings.TrimSpace(out))
	if rep.NewPrimary != "s1" || rep.OldPrimary != "n0" || !rep.Rejoined || len(rep.Followed) != 1 || rep.Followed[0] != "s2" {
		t.Fatalf("switchover report %+v: want n0 -> s1, s2 followed, n0 rejoined", rep)
	}
	waitUntil(t, "more ledger writes after the switchover", 30*time.Second, func() bool { return led.count() >= before+400 })
	stop()
	led.wg.Wait()
	if err := bench.Wait(); err != nil {
		t.Errorf("pgbench through the pool failed across the switchover: %v\n%s", err, benchOut.String())
	}
	if !strings.Contains(benchOut.String(), "number of failed transactions: 0 ") {
		t.Errorf("pgbench reports failed transactions:\n%s", benchOut.String())
	}
	if len(led.errs) > 0 {
		t.Errorf("%d ledger client errors across the switchover, first: %s", len(led.errs), led.errs[0])
	}
	if got := queryOK(s1, "SELECT pg_is_in_recovery()::text"); got != "false" {
		t.Fatalf("s1 is not the primary (pg_is_in_recovery = %q)", got)
	}
	if missing := led.missingOn(t, s1); len(missing) > 0 {
		t.Errorf("%d of %d acknowledged transactions missing on the new primary: %v", len(missing), led.count(), missing)
	}
	for _, c := range []*pgtest.Cluster{n0, s2} {
		waitUntil(t, fmt.Sprintf("standby on port %d streams from s1", c.Port), 60*time.Second, func() bool { return streamsFrom(c, s1.Port) })
		ledgerSame(t, s1, c)
	}
	var after [][]string
	waitUntil(t, "SHOW POOL_NODES shows the new roles", 30*time.Second, func() bool {
		after = h.poolNodes()
		return roleOf(after, 1) == "up/primary" && roleOf(after, 0) == "up/standby" && roleOf(after, 2) == "up/standby"
	})
	t.Logf("SHOW POOL_NODES after:\n%s", formatRows(after))
	line := ""
	for _, l := range strings.Split(benchOut.String(), "\n") {
		if strings.HasPrefix(l, "number of transactions actually processed") || strings.HasPrefix(l, "number of failed") {
			line += strings.TrimSpace(l) + "; "
		}
	}
	t.Logf("switchover: %.2fs for the command, new transactions held %.3fs, stop LSN %s; ledger: %d acknowledged, %d errors, 0 missing; pgbench: %s",
		took.Seconds(), rep.HeldSeconds, rep.StopLSN, led.count(), len(led.errs), line)
}

// TestSwitchoverDrainTimeoutAndStopCommand: a transaction that stays open longer than
// drain_timeout makes the switchover give up with nothing changed (the transaction then
// commits on the old primary). A primary whose data directory the pool does not know is
// stopped with stop_command; the target is then judged by what it received and replayed
// after the old primary went away; the old primary cannot rejoin from here and stays out.
func TestSwitchoverDrainTimeoutAndStopCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	nodes := startHANodes(t, pgtest.Options{})
	n0, s1, s2 := nodes[0], nodes[1], nodes[2]
	stopCmd := fmt.Sprintf("runuser -u postgres -- %s/pg_ctl -D %s -m fast -w stop", n0.BinDir, n0.DataDir)
	h := startHAPool(t, nodes, nil, nil, fmt.Sprintf("  drain_timeout: 1s\n  stop_command: '%s'\n", stopCmd), 0)
	led := newLedger(t, n0, h.connString("postgres"))

	// An open transaction through the pool outlives drain_timeout.
	c, err := connectSimple(h.connString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx := context.Background()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO ledger VALUES (-1, 1)"); err != nil {
		t.Fatal(err)
	}
	so, se, code := h.cli("switchover", "--to", "s2")
	if code == 0 || !strings.Contains(se, "drain_timeout") || !strings.Contains(se, "nothing changed") {
		t.Fatalf("switchover with a transaction open past drain_timeout: exit %d: %s%s", code, so, se)
	}
	t.Logf("switchover abandoned: %s", strings.TrimSpace(se))
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("the open transaction could not commit after the abandoned switchover: %v", err)
	}
	if got := queryOK(n0, "SELECT count(*)::text FROM ledger WHERE client = -1"); got != "1" {
		t.Fatalf("the transaction is not on the old primary: %q", got)
	}
	if got := roleOf(h.poolNodes(), 0); got != "up/primary" {
		t.Fatalf("after the abandoned switchover n0 is %q", got)
	}
	c.Close(ctx)

	lctx, stop := context.WithCancel(context.Background())
	led.start(lctx, 3)
	defer func() { stop(); led.wg.Wait() }()
	waitUntil(t, "ledger writes", 30*time.Second, func() bool { return led.count() >= 200 })
	out := h.mustCLI("switchover", "--to", "s2", "--output", "json")
	var rep struct {
		NewPrimary  string   `json:"new_primary"`
		StopLSN     string   `json:"stop_lsn"`
		HeldSeconds float64  `json:"held_seconds"`
		Followed    []string `json:"followed"`
		Rejoined    bool     `json:"rejoined"`
		RejoinError string   `json:"rejoin_error"`
	}
	decodeJSON(t, out, &rep)
	t.Logf("switchover report: %s", strings.TrimSpace(out))
	if rep.NewPrimary != "s2" || rep.Rejoined || !strings.Contains(rep.RejoinError, "data_dir") || len(rep.Followed) != 1 || rep.Followed[0] != "s1" {
		t.Fatalf("switchover report %+v: want s2 promoted, s1 followed, n0 not rejoined for want of a data_dir", rep)
	}
	mid := led.count()
	waitUntil(t, "ledger writes after the switchover", 30*time.Second, func() bool { return led.count() >= mid+300 })
	stop()
	led.wg.Wait()
	if len(led.errs) > 0 {
		t.Errorf("%d client errors across the switchover, first: %s", len(led.errs), led.errs[0])
	}
	if missing := led.missingOn(t, s2); len(missing) > 0 {
		t.Errorf("%d acknowledged transactions missing on the new primary: %v", len(missing), missing)
	}
	waitUntil(t, "s1 streams from s2", 60*time.Second, func() bool { return streamsFrom(s1, s2.Port) })
	ledgerSame(t, s2, s1)
	rows := h.poolNodes()
	if roleOf(rows, 2) != "up/primary" || !strings.HasPrefix(roleOf(rows, 0), "down/") {
		t.Fatalf("SHOW POOL_NODES after:\n%s", formatRows(rows))
	}
	t.Logf("stop_command switchover: new transactions held %.3fs; %d acknowledged, 0 errors, 0 missing\n%s", rep.HeldSeconds, led.count(), formatRows(rows))
}
