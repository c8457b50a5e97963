package cluster

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors returns Prometheus collectors for the nodes (register them on the registry that
// serves /metrics): pgharbor_pool_node_up, pgharbor_pool_node_primary,
// pgharbor_pool_node_lag_bytes, pgharbor_pool_node_lag_seconds,
// pgharbor_pool_node_selects_total and pgharbor_pool_node_health_checks_total{result}.
// Values are read from the cluster at scrape time.
func (c *Cluster) Collectors() []prometheus.Collector {
	labels := []string{"node_id", "node", "address"}
	return []prometheus.Collector{&collector{
		c:       c,
		up:      prometheus.NewDesc("pgharbor_pool_node_up", "1 when the node gets new traffic (status up), 0 otherwise.", labels, nil),
		primary: prometheus.NewDesc("pgharbor_pool_node_primary", "1 when the node is the primary the pool writes to.", labels, nil),
		lagB:    prometheus.NewDesc("pgharbor_pool_node_lag_bytes", "Replay lag of a standby behind the primary's current WAL position, in bytes.", labels, nil),
		lagS:    prometheus.NewDesc("pgharbor_pool_node_lag_seconds", "Replay lag of a standby in time (0 when caught up).", labels, nil),
		selects: prometheus.NewDesc("pgharbor_pool_node_selects_total", "Reads load-balanced to the node (select_cnt).", labels, nil),
		checks:  prometheus.NewDesc("pgharbor_pool_node_health_checks_total", "Health-check rounds for the node by result (ok, failed).", append(labels, "result"), nil),
	}}
}

type collector struct {
	c                                        *Cluster
	up, primary, lagB, lagS, selects, checks *prometheus.Desc
}

var _ prometheus.Collector = (*collector)(nil)

func (m *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.up, m.primary, m.lagB, m.lagS, m.selects, m.checks} {
		ch <- d
	}
}

func (m *collector) Collect(ch chan<- prometheus.Metric) {
	p, hasPrimary := m.c.Primary()
	for _, n := range m.c.Nodes() {
		lv := []string{strconv.Itoa(n.ID), n.Name, n.Host + ":" + strconv.Itoa(n.Port)}
		ch <- prometheus.MustNewConstMetric(m.up, prometheus.GaugeValue, b2f(n.Status == StatusUp), lv...)
		ch <- prometheus.MustNewConstMetric(m.primary, prometheus.GaugeValue, b2f(hasPrimary && p.ID == n.ID), lv...)
		ch <- prometheus.MustNewConstMetric(m.lagB, prometheus.GaugeValue, float64(n.LagBytes), lv...)
		ch <- prometheus.MustNewConstMetric(m.lagS, prometheus.GaugeValue, n.LagTime.Seconds(), lv...)
		ch <- prometheus.MustNewConstMetric(m.selects, prometheus.CounterValue, float64(n.SelectCount), lv...)
		ch <- prometheus.MustNewConstMetric(m.checks, prometheus.CounterValue, float64(n.ChecksOK), append(lv, "ok")...)
		ch <- prometheus.MustNewConstMetric(m.checks, prometheus.CounterValue, float64(n.ChecksFailed), append(lv, "failed")...)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
