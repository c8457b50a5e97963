package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// TestAutoRejoinRebuildsFormerPrimary: with auto_rejoin, a primary that crashed, lost its
// place to a standby and was started again (it says it is a primary, on the old timeline)
// is logged as a split-brain risk, kept out of routing, rebuilt as a standby of the new
// primary from the repository, attached once it streams, and its data converges.
func TestAutoRejoinRebuildsFormerPrimary(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	e := newEnv(t, "", "")
	nodes := startHANodes(t, pgtest.Options{DataChecksums: true,
		Config: map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand()}})
	n0 := nodes[0]
	n0.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (s1, s2)'")
	n0.Exec(t, "SELECT pg_reload_conf()")
	// The monitor promotes only a standby it saw in sync at the primary's last good check:
	// the standbys must be quorum standbys before it starts, or its first checks (the only
	// ones before the crash) may find none in sync and leave no standby electable.
	waitUntil(t, "both standbys streaming as quorum standbys", 60*time.Second, func() bool {
		return n0.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum'") == "2"
	})
	e.must("repo", "init")
	e.must("backup", "--conn", n0.ConnString("postgres"))
	h := startHAPool(t, nodes, nil, e, "  auto_rejoin: true\n")
	led := newLedger(t, n0, h.connString("postgres"))
	ctx, stop := context.WithCancel(context.Background())
	led.start(ctx, 2)
	defer func() { stop(); led.wg.Wait() }()
	waitUntil(t, "writes through the pool", 30*time.Second, func() bool { return led.count() >= 200 })

	killedPID := postmasterPID(t, n0)
	if err := syscall.Kill(killedPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var newP *pgtest.Cluster
	newID := 0
	waitUntil(t, "a standby promoted", 60*time.Second, func() bool {
		for i, s := range nodes[1:] {
			if queryOK(s, "SELECT (NOT pg_is_in_recovery())::text") == "true" {
				newP, newID = s, i+1
				return true
			}
		}
		return false
	})
	afterFailover := led.count()
	waitUntil(t, "writes on the new primary", 30*time.Second, func() bool { return led.count() >= afterFailover+200 })

	// The old primary comes back as it was: a primary on the old timeline.
	// Its postmaster was killed: once the process is gone (PostgreSQL refuses to start
	// while the PID in its socket lock file still exists), its stale lock files are ignored.
	waitUntil(t, "the killed postmaster gone", 30*time.Second, func() bool {
		return syscall.Kill(killedPID, 0) == syscall.ESRCH
	})
	os.Remove(filepath.Join(n0.DataDir, "postmaster.pid"))
	n0.Start(t)
	t0 := time.Now()
	waitUntil(t, "split-brain risk logged", 30*time.Second, func() bool { return strings.Contains(h.poolLog(), "split-brain risk") })
	if got := roleOf(h.poolNodes(), 0); !strings.HasPrefix(got, "down/") {
		t.Fatalf("the returned old primary is %q in SHOW POOL_NODES; it must get no traffic", got)
	}
	waitUntil(t, "n0 rebuilt and attached as a standby", 3*time.Minute, func() bool { return roleOf(h.poolNodes(), 0) == "up/standby" })
	t.Logf("old primary rebuilt and attached %.1fs after it came back", time.Since(t0).Seconds())
	if !streamsFrom(n0, newP.Port) {
		t.Fatalf("n0 does not stream from the new primary (node %d)", newID)
	}
	stop()
	led.wg.Wait()
	if missing := led.missingOn(t, newP); len(missing) > 0 {
		t.Errorf("%d acknowledged transactions missing on the new primary: %v", len(missing), missing)
	}
	ledgerSame(t, newP, n0)
	for _, l := range strings.Split(h.poolLog(), "\n") {
		if strings.Contains(l, "split-brain risk") || strings.Contains(l, "auto_rejoin") || strings.Contains(l, "rejoined") {
			t.Logf("pool log: %s", l)
		}
	}
	t.Logf("SHOW POOL_NODES after:\n%s", formatRows(h.poolNodes()))
}
