package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/etcdtest"
	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// TestTwoPoolsWithEtcdFailOverOnce runs two `pgharbor pool` with failover.enabled and the
// same failover.etcd in front of a primary and two standbys. One pool's monitor leads; a
// node command through the other is refused and names the leader. After SIGKILL of the
// primary exactly one failover happens (in the leader's log only) and one standby is
// promoted once. When the leading pool stops, the other leads and watches the new primary
// without failing over again.
func TestTwoPoolsWithEtcdFailOverOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, etcd and pgharbor pool")
	}
	url := etcdtest.Start(t)
	nodes := startHANodes(t, pgtest.Options{})
	etcd := func(name string) string {
		return fmt.Sprintf("  etcd: {endpoints: [%s], prefix: /pgharbor/e2e/, ttl: 3s, name: %s}\n", url, name)
	}
	a := startHAPool(t, nodes, nil, nil, etcd("pool-a"))
	waitUntil(t, "pool-a leads", 20*time.Second, func() bool { return strings.Contains(a.poolLog(), "this monitor is the leader now") })
	b := startHAPool(t, nodes, nil, nil, etcd("pool-b"))
	waitUntil(t, "pool-b knows pool-a leads", 20*time.Second, func() bool {
		return strings.Contains(b.poolLog(), "another monitor is the leader; this one does not act") && strings.Contains(b.poolLog(), "leader=pool-a")
	})
	if _, err := b.admin("DETACH NODE s2"); err == nil || !strings.Contains(err.Error(), "the leader is pool-a") {
		t.Fatalf("DETACH NODE through the follower pool: %v", err)
	}

	if err := syscall.Kill(postmasterPID(t, nodes[0]), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "failover by pool-a", 60*time.Second, func() bool { return strings.Contains(a.poolLog(), "failover: new primary") })
	time.Sleep(3 * time.Second) // room for a second, wrong failover by either pool
	if n, m := strings.Count(a.poolLog(), "failover: new primary"), strings.Count(b.poolLog(), "failover: new primary"); n != 1 || m != 0 {
		t.Fatalf("failovers: pool-a %d, pool-b %d; want 1 and 0", n, m)
	}
	if strings.Contains(b.poolLog(), "promoting standby") {
		t.Fatal("pool-b promoted")
	}
	var promoted []int
	for i, c := range nodes[1:] {
		if queryOK(c, "SELECT pg_is_in_recovery()::text") == "false" {
			promoted = append(promoted, i+1)
			if tl := queryOK(c, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); tl != "00000002" {
				t.Fatalf("promoted node %d writes on timeline %s, want 00000002", i+1, tl)
			}
		}
	}
	if len(promoted) != 1 {
		t.Fatalf("promoted standbys: %v, want one", promoted)
	}
	newName := a.names[promoted[0]]
	// pool-b learns the new primary through its own health checks.
	waitUntil(t, "pool-b routes to the new primary", 30*time.Second, func() bool {
		return roleOf(b.poolNodes(), promoted[0]) == "up/primary"
	})

	stopped := time.Now()
	a.stop()
	waitUntil(t, "pool-b leads and watches the new primary", 20*time.Second, func() bool {
		l := b.poolLog()
		i := strings.Index(l, "this monitor is the leader now")
		return i >= 0 && strings.Contains(l[i:], "msg=\"watching primary\"") && strings.Contains(l[i:], "node="+newName)
	})
	t.Logf("pool-b leads and watches %s %v after pool-a stopped", newName, time.Since(stopped).Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	if strings.Contains(b.poolLog(), "failover: new primary") || strings.Contains(b.poolLog(), "promoting standby") {
		t.Fatalf("pool-b failed over after taking over:\n%s", b.poolLog())
	}
}
