package failover

import "github.com/prometheus/client_golang/prometheus"

// Collector returns the election's Prometheus collector: pgharbor_failover_leader{name} (1
// while this monitor is the leader and acts) and pgharbor_failover_etcd_up{name} (1 when the
// last request to etcd worked). Values are read at scrape time.
func (e *Elector) Collector() prometheus.Collector {
	return &electionCollector{e: e,
		leader: prometheus.NewDesc("pgharbor_failover_leader", "1 while this failover monitor is the etcd leader (the one that acts), 0 otherwise.", []string{"name"}, nil),
		up:     prometheus.NewDesc("pgharbor_failover_etcd_up", "1 when this monitor's last request to etcd worked, 0 otherwise.", []string{"name"}, nil),
	}
}

type electionCollector struct {
	e          *Elector
	leader, up *prometheus.Desc
}

func (c *electionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.leader; ch <- c.up }

func (c *electionCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.e.Status()
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, b01(st.Leader), st.Name)
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, b01(st.EtcdError == ""), st.Name)
}

func b01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
