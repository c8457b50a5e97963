package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgharbor/pgharbor/failover"
	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// TestNodeDetachAttachRecoverAndLease drives `pgharbor node` against a running pool: a
// detached standby leaves SHOW POOL_NODES' routing and comes back with attach; the primary
// cannot be detached; a standby that does not stream is refused by attach; a stopped standby
// is rebuilt from the repository by recover and attached. Then the promotion lease: while
// another holder (as a second monitor would) holds it on a standby, neither a switchover
// nor a failover after the primary's crash promotes anything; once released, the monitor
// fails over.
func TestNodeDetachAttachRecoverAndLease(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	e := newEnv(t, "", "")
	nodes := startHANodes(t, pgtest.Options{DataChecksums: true,
		Config: map[string]string{"archive_mode": "on", "archive_command": e.archiveCommand()}})
	n0, s1, s2 := nodes[0], nodes[1], nodes[2]
	n0.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	e.must("repo", "init")
	e.must("backup", "--conn", n0.ConnString("postgres"))
	h := startHAPool(t, nodes, nil, e, "")
	led := newLedger(t, n0, h.connString("postgres"))
	ctx, stop := context.WithCancel(context.Background())
	led.start(ctx, 2)
	defer func() { stop(); led.wg.Wait() }()

	// detach / attach
	out := h.mustCLI("node", "detach", "s2")
	t.Logf("node detach s2: %s", strings.TrimSpace(out))
	if got := roleOf(h.poolNodes(), 2); got != "down/standby" {
		t.Fatalf("after detach s2 is %q in SHOW POOL_NODES, want down/standby", got)
	}
	if so, se, code := h.cli("node", "detach", "n0"); code == 0 || !strings.Contains(se, "is the primary") {
		t.Fatalf("detach of the primary: exit %d: %s%s", code, so, se)
	}
	out = h.mustCLI("node", "attach", "2", "--output", "json")
	var res struct {
		Action string `json:"action"`
		NodeID int    `json:"node_id"`
	}
	decodeJSON(t, out, &res)
	if res.Action != "attach" || res.NodeID != 2 {
		t.Fatalf("node attach 2 --output json: %s", out)
	}
	waitUntil(t, "s2 up again", 10*time.Second, func() bool { return roleOf(h.poolNodes(), 2) == "up/standby" })
	var list []map[string]string
	decodeJSON(t, h.mustCLI("node", "list", "--output", "json"), &list)
	if len(list) != 3 || list[0]["role"] != "primary" || list[2]["status"] != "up" || list[2]["role"] != "standby" {
		t.Fatalf("node list --output json: %v", list)
	}

	// attach refuses a standby that does not stream
	h.mustCLI("node", "detach", "s2")
	s2.Exec(t, "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres application_name=s2'")
	s2.Exec(t, "SELECT pg_reload_conf()")
	waitUntil(t, "s2 stops streaming", 30*time.Second, func() bool { return !streamsFrom(s2, n0.Port) })
	so, se, code := h.cli("node", "attach", "s2")
	if code == 0 || !strings.Contains(se, "does not stream") {
		t.Fatalf("attach of a standby that does not stream: exit %d: %s%s", code, so, se)
	}
	t.Logf("attach refused: %s", strings.TrimSpace(se))
	if got := roleOf(h.poolNodes(), 2); got != "down/standby" {
		t.Fatalf("after a refused attach s2 is %q, want down/standby", got)
	}

	// recover: s2 is stopped and rebuilt from the repository as a standby of n0
	s2.Stop(t, "immediate")
	t0 := time.Now()
	out = h.mustCLI("node", "recover", "s2")
	t.Logf("node recover s2 (%.1fs): %s", time.Since(t0).Seconds(), strings.TrimSpace(out))
	if !strings.Contains(out, "attached") {
		t.Fatalf("recover: %s", out)
	}
	if !streamsFrom(s2, n0.Port) {
		t.Fatal("s2 does not stream from n0 after recover")
	}
	waitUntil(t, "s2 up after recover", 10*time.Second, func() bool { return roleOf(h.poolNodes(), 2) == "up/standby" })
	stop()
	led.wg.Wait()
	if len(led.errs) > 0 {
		t.Errorf("%d client errors during the node commands, first: %s", len(led.errs), led.errs[0])
	}
	ledgerSame(t, n0, s2)
	t.Logf("SHOW POOL_NODES after detach/attach/recover:\n%s", formatRows(h.poolNodes()))

	// The promotion lease, held by someone else on s1.
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, _ := pgx.ParseConfig(s1.ConnString("postgres"))
	cfg.RuntimeParams["application_name"] = "another monitor"
	other, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	if _, err := other.Exec(cctx, fmt.Sprintf("SELECT pg_advisory_lock(%d)", failover.LeaseKey)); err != nil {
		t.Fatal(err)
	}
	so, se, code = h.cli("switchover", "--to", "s2")
	if code == 0 || !strings.Contains(se, "promotion lease") || !strings.Contains(se, "another monitor") {
		t.Fatalf("switchover while the lease is held on s1: exit %d: %s%s", code, so, se)
	}
	t.Logf("switchover refused: %s", strings.TrimSpace(se))
	if got := roleOf(h.poolNodes(), 0); got != "up/primary" {
		t.Fatalf("after the refused switchover n0 is %q", got)
	}
	if err := syscall.Kill(postmasterPID(t, n0), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the monitor refuses to promote for the lease", 30*time.Second, func() bool {
		return strings.Contains(h.poolLog(), "not promoting: the promotion lease is not ours")
	})
	time.Sleep(3 * time.Second)
	for _, c := range []*pgtest.Cluster{s1, s2} {
		if got := queryOK(c, "SELECT pg_is_in_recovery()::text"); got != "true" {
			t.Fatalf("a standby was promoted while the lease was held (pg_is_in_recovery = %q)", got)
		}
	}
	if _, err := other.Exec(cctx, fmt.Sprintf("SELECT pg_advisory_unlock(%d)", failover.LeaseKey)); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	waitUntil(t, "failover once the lease is free", 30*time.Second, func() bool {
		return queryOK(s1, "SELECT pg_is_in_recovery()::text") == "false" || queryOK(s2, "SELECT pg_is_in_recovery()::text") == "false"
	})
	t.Logf("promoted %.2fs after the lease was released", time.Since(t1).Seconds())
}
