package cluster

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestCollectorsReportNodeStateAtScrapeTime(t *testing.T) {
	c := static(t, []NodeState{
		{Role: RolePrimary, Status: StatusUp},
		{Role: RoleStandby, Status: StatusUp, LagBytes: 4096, LagTime: 1500 * time.Millisecond},
		{Role: RoleStandby, Status: StatusDown},
	})
	reg := prometheus.NewPedanticRegistry()
	for _, col := range c.Collectors() {
		if err := reg.Register(col); err != nil {
			t.Fatal(err)
		}
	}
	c.CountSelect(1)
	c.CountSelect(1)
	get := func() map[string]map[string]float64 { // metric -> node_id -> value (result="ok" for checks)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]map[string]float64{}
		for _, mf := range mfs {
			out[mf.GetName()] = map[string]float64{}
			for _, m := range mf.GetMetric() {
				id, result := "", ""
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "node_id":
						id = l.GetValue()
					case "result":
						result = l.GetValue()
					}
				}
				if result == "failed" {
					continue
				}
				v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
				out[mf.GetName()][id] = v
			}
		}
		return out
	}
	m := get()
	want := map[string]map[string]float64{
		"pgharbor_pool_node_up":            {"0": 1, "1": 1, "2": 0},
		"pgharbor_pool_node_primary":       {"0": 1, "1": 0, "2": 0},
		"pgharbor_pool_node_lag_bytes":     {"0": 0, "1": 4096, "2": 0},
		"pgharbor_pool_node_lag_seconds":   {"0": 0, "1": 1.5, "2": 0},
		"pgharbor_pool_node_selects_total": {"0": 0, "1": 2, "2": 0},
	}
	for name, byID := range want {
		for id, v := range byID {
			if got := m[name][id]; got != v {
				t.Errorf("%s{node_id=%s} = %v, want %v", name, id, got, v)
			}
		}
	}
	c.MarkDown(0, "test")
	if got := get()["pgharbor_pool_node_up"]["0"]; got != 0 {
		t.Errorf("after MarkDown: up = %v", got)
	}
}
