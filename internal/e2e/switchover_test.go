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
