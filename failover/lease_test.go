package failover

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/pool/cluster"
)

// TestSecondMonitorCannotTakeTheLeaseWhileHeld: two monitors of the same nodes; while the
// first holds the promotion lease on the standby (as it does while promoting), the second
// is refused with ErrLeaseHeld naming the holder, and its switchover refuses too; once the
// first releases it, the second gets it.
func TestSecondMonitorCannotTakeTheLeaseWhileHeld(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	primary := pgtest.Start(t, pgtest.Options{})
	standby := primary.StartStandby(t)
	nodes := []cluster.NodeConfig{{Name: "p", Host: "127.0.0.1", Port: primary.Port}, {Name: "s", Host: "127.0.0.1", Port: standby.Port}}
	m1, err := New(Config{}, nodes, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := New(Config{}, nodes, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l1, err := m1.acquireLease(ctx, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m2.acquireLease(ctx, 1, nil)
	if !errors.Is(err, ErrLeaseHeld) || !strings.Contains(err.Error(), leaseAppName) {
		t.Fatalf("second monitor's lease while the first holds it: %v", err)
	}
	m2.SetPauser(noPause{})
	m2.cfg.StopCommand = "false" // the lease is checked before anything is stopped
	if _, err := m2.Switchover(ctx, SwitchoverOptions{To: 1}); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("second monitor's switchover while the lease is held: %v", err)
	}
	if got := standby.QueryString(t, "postgres", "SELECT pg_is_in_recovery()::text"); got != "true" {
		t.Fatal("the standby was promoted")
	}
	l1.release()
	l2, err := m2.acquireLease(ctx, 1, nil)
	if err != nil {
		t.Fatalf("lease after the first monitor released it: %v", err)
	}
	l2.release()
}

type noPause struct{}

func (noPause) Pause(context.Context) error { return nil }
func (noPause) Resume()                     {}

func TestNodeIDByIDOrName(t *testing.T) {
	m, err := New(Config{}, []cluster.NodeConfig{{Name: "a", Host: "h1"}, {Name: "b", Host: "h2"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]int{"0": 0, "1": 1, "a": 0, "b": 1} {
		if got, err := m.NodeID(in); err != nil || got != want {
			t.Errorf("NodeID(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"2", "-1", "c", ""} {
		if _, err := m.NodeID(bad); err == nil {
			t.Errorf("NodeID(%q) accepted", bad)
		}
	}
	if c := m.Config(); c.DrainTimeout != DefaultDrainTimeout || c.ReplayTimeout != DefaultReplayTimeout || c.BinDir != DefaultBinDir {
		t.Errorf("defaults: %+v", c)
	}
	if _, err := New(Config{DrainTimeout: -1}, []cluster.NodeConfig{{Host: "h1"}, {Host: "h2"}}, nil, nil); err == nil {
		t.Error("negative drain_timeout accepted")
	}
}
