package failover

import (
	"testing"

	"github.com/pgharbor/pgharbor/pool/cluster"
)

// TestCheckSoonOnlyWakesForAHealthyPrimary: the pool's refused logins ask for an early check
// of the primary; while the primary is suspect they do not (retry_delay holds), nor for a
// node that is not the primary.
func TestCheckSoonOnlyWakesForAHealthyPrimary(t *testing.T) {
	m, err := New(Config{}, []cluster.NodeConfig{{Host: "a"}, {Host: "b"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Config().ClientWait != DefaultClientWait {
		t.Fatalf("client_wait default %v, want %v", m.Config().ClientWait, DefaultClientWait)
	}
	m.CheckSoon(0) // no primary known yet
	if len(m.kick) != 0 {
		t.Fatal("kick with no primary")
	}
	m.primary = 0
	m.CheckSoon(1)
	if len(m.kick) != 0 {
		t.Fatal("kick for a node that is not the primary")
	}
	m.CheckSoon(0)
	m.CheckSoon(0) // coalesced, never blocks
	if len(m.kick) != 1 {
		t.Fatalf("%d kicks pending, want 1", len(m.kick))
	}
	<-m.kick
	m.health = Health{State: Suspect, Failures: 1}
	m.CheckSoon(0)
	if len(m.kick) != 0 {
		t.Fatal("kick while the primary is suspect")
	}
	if _, err := New(Config{ClientWait: -1}, []cluster.NodeConfig{{Host: "a"}, {Host: "b"}}, nil, nil); err == nil {
		t.Fatal("negative client_wait accepted")
	}
}
