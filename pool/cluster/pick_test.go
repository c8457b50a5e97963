package cluster

import (
	"math"
	"testing"
	"time"
)

func st(id int, role Role, status Status, w float64, lagB int64, lagT time.Duration) NodeState {
	return NodeState{ID: id, Role: role, Status: status, Weight: w, LagBytes: lagB, LagTime: lagT}
}

func TestPickReaderSharesReadsByWeightAndSkipsLaggingOrDownNodes(t *testing.T) {
	const maxB, maxT = 1 << 20, 5 * time.Second
	tests := []struct {
		name  string
		nodes []NodeState
		want  map[int]float64 // node id -> expected share; empty: none
	}{
		{"primary and two standbys equal", []NodeState{
			st(0, RolePrimary, StatusUp, 1, 0, 0), st(1, RoleStandby, StatusUp, 1, 0, 0), st(2, RoleStandby, StatusUp, 1, 0, 0),
		}, map[int]float64{0: 1. / 3, 1: 1. / 3, 2: 1. / 3}},
		{"weights 0:1:3", []NodeState{
			st(0, RolePrimary, StatusUp, 0, 0, 0), st(1, RoleStandby, StatusUp, 1, 0, 0), st(2, RoleStandby, StatusUp, 3, 0, 0),
		}, map[int]float64{1: 0.25, 2: 0.75}},
		{"standby over byte limit excluded", []NodeState{
			st(0, RolePrimary, StatusUp, 1, 0, 0), st(1, RoleStandby, StatusUp, 1, maxB+1, 0), st(2, RoleStandby, StatusUp, 1, maxB, 0),
		}, map[int]float64{0: 0.5, 2: 0.5}},
		{"standby over time limit excluded", []NodeState{
			st(0, RolePrimary, StatusUp, 0, 0, 0), st(1, RoleStandby, StatusUp, 1, 0, maxT+time.Millisecond), st(2, RoleStandby, StatusUp, 2, 0, maxT),
		}, map[int]float64{2: 1}},
		{"down and unknown standbys excluded", []NodeState{
			st(0, RolePrimary, StatusUp, 1, 0, 0), st(1, RoleStandby, StatusDown, 5, 0, 0), st(2, RoleStandby, StatusUnknown, 5, 0, 0),
		}, map[int]float64{0: 1}},
		{"unknown role excluded", []NodeState{
			st(0, RoleUnknown, StatusUp, 1, 0, 0), st(1, RoleStandby, StatusUp, 1, 0, 0),
		}, map[int]float64{1: 1}},
		{"no candidate", []NodeState{
			st(0, RolePrimary, StatusUp, 0, 0, 0), st(1, RoleStandby, StatusUp, 1, maxB+1, 0), st(2, RoleStandby, StatusDown, 1, 0, 0),
		}, nil},
		{"nothing up", []NodeState{st(0, RolePrimary, StatusDown, 1, 0, 0)}, nil},
	}
	const keys = 40000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[int]int{}
			for k := uint64(0); k < keys; k++ {
				n, ok := pickReader(tt.nodes, k*7919, maxB, maxT)
				if !ok {
					if len(tt.want) > 0 {
						t.Fatalf("key %d: no reader, want one of %v", k, tt.want)
					}
					continue
				}
				if len(tt.want) == 0 {
					t.Fatalf("key %d: got node %d, want none", k, n.ID)
				}
				got[n.ID]++
			}
			for id, c := range got {
				share, ok := tt.want[id]
				if !ok {
					t.Fatalf("node %d got %d picks, want none", id, c)
				}
				if s := float64(c) / keys; math.Abs(s-share) > 0.02 {
					t.Errorf("node %d share %.3f, want %.3f", id, s, share)
				}
			}
			for id := range tt.want {
				if got[id] == 0 {
					t.Errorf("node %d never picked", id)
				}
			}
		})
	}
}

func TestPickReaderIsStickyPerKeyAndMovesOnlyTheLostNodesKeys(t *testing.T) {
	all := []NodeState{st(0, RolePrimary, StatusUp, 1, 0, 0), st(1, RoleStandby, StatusUp, 2, 0, 0), st(2, RoleStandby, StatusUp, 1, 0, 0)}
	without2 := all[:2]
	for k := uint64(0); k < 5000; k++ {
		a, _ := pickReader(all, k, 0, 0)
		b, _ := pickReader(all, k, 0, 0)
		if a.ID != b.ID {
			t.Fatalf("key %d: %d then %d", k, a.ID, b.ID)
		}
		c, _ := pickReader(without2, k, 0, 0)
		if a.ID != 2 && c.ID != a.ID {
			t.Fatalf("key %d moved from node %d to %d when node 2 left", k, a.ID, c.ID)
		}
	}
}

func TestPickReaderNeverPicksASecondPrimary(t *testing.T) {
	c := static(t, []NodeState{
		{Role: RolePrimary, Status: StatusUp}, {Role: RoleStandby, Status: StatusUp}, {Role: RolePrimary, Status: StatusUp},
	})
	for k := uint64(0); k < 2000; k++ {
		if n, ok := c.PickReader(k); !ok || n.ID == 2 {
			t.Fatalf("key %d: picked %d (%v)", k, n.ID, ok)
		}
	}
}

func TestParseLSN(t *testing.T) {
	for s, want := range map[string]uint64{"0/0": 0, "0/3000060": 0x3000060, "16/B374D848": 0x16_B374D848, "FFFFFFFF/FFFFFFFF": math.MaxUint64} {
		got, err := parseLSN(s)
		if err != nil || got != want {
			t.Errorf("parseLSN(%q) = %x, %v; want %x", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "x/1", "1/", "100000000/0"} {
		if _, err := parseLSN(s); err == nil {
			t.Errorf("parseLSN(%q): no error", s)
		}
	}
}

func BenchmarkPrimaryAndPickReaderParallel(b *testing.B) {
	c, err := NewStatic(cfgN(3), []NodeState{
		{Role: RolePrimary, Status: StatusUp}, {Role: RoleStandby, Status: StatusUp}, {Role: RoleStandby, Status: StatusUp},
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.RunParallel(func(pb *testing.PB) {
		k := uint64(0)
		for pb.Next() {
			k++
			if _, ok := c.Primary(); !ok {
				b.Fatal("no primary")
			}
			if _, ok := c.PickReader(k); !ok {
				b.Fatal("no reader")
			}
		}
	})
}
