package pool

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are computed at scrape time from the pools' counters (no package globals: each
// Server has its own registry).
var (
	descClients    = prometheus.NewDesc("pgharbor_pool_clients", "Client connections by state (active: holds a server connection; waiting: waits for one; idle).", []string{"state"}, nil)
	descServers    = prometheus.NewDesc("pgharbor_pool_servers", "Server connections by pool and state.", []string{"database", "user", "node", "state"}, nil)
	descWaiting    = prometheus.NewDesc("pgharbor_pool_waiting_clients", "Clients waiting for a server connection, by pool.", []string{"database", "user", "node"}, nil)
	descXacts      = prometheus.NewDesc("pgharbor_pool_transactions_total", "Transactions (server attachments) completed.", []string{"database", "user", "node"}, nil)
	descQueries    = prometheus.NewDesc("pgharbor_pool_queries_total", "Queries (Sync or simple Query round trips) completed.", []string{"database", "user", "node"}, nil)
	descXactTime   = prometheus.NewDesc("pgharbor_pool_transaction_seconds_total", "Time spent in transactions.", []string{"database", "user", "node"}, nil)
	descQueryTime  = prometheus.NewDesc("pgharbor_pool_query_seconds_total", "Time spent in queries (from the last Sync or Query to ReadyForQuery).", []string{"database", "user", "node"}, nil)
	descWaits      = prometheus.NewDesc("pgharbor_pool_waits_total", "Server connection acquisitions that had to wait.", []string{"database", "user", "node"}, nil)
	descWaitTime   = prometheus.NewDesc("pgharbor_pool_wait_seconds_total", "Time clients waited for a server connection.", []string{"database", "user", "node"}, nil)
	descWaitTO     = prometheus.NewDesc("pgharbor_pool_wait_timeouts_total", "Waits that hit query_wait_timeout.", []string{"database", "user", "node"}, nil)
	descLoginErr   = prometheus.NewDesc("pgharbor_pool_server_login_errors_total", "Failed server connection attempts.", []string{"database", "user", "node"}, nil)
	descPaused     = prometheus.NewDesc("pgharbor_pool_paused", "1 while the pool is paused.", nil, nil)
	descLoginTotal = prometheus.NewDesc("pgharbor_pool_client_logins_total", "Successful client logins.", nil, nil)
	descHandovers  = prometheus.NewDesc("pgharbor_pool_loop_handovers_total", "Sessions the event loop handed to a goroutine (a message or state the loop does not handle).", nil, nil)
	descRingOps    = prometheus.NewDesc("pgharbor_pool_loop_ring_ops_total", "Socket reads (op recv) and writes (op send) the event loop made in batches through io_uring (io_uring: auto).", []string{"op"}, nil)
)

type poolCollector struct{ s *Server }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClients, descServers, descWaiting, descXacts, descQueries, descXactTime, descQueryTime, descWaits, descWaitTime, descWaitTO, descLoginErr, descPaused, descLoginTotal, descHandovers, descRingOps} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	var active, waiting, idle float64
	for _, x := range s.sessionList() {
		x.mu.Lock()
		switch {
		case x.waiting:
			waiting++
		case x.sc != nil:
			active++
		default:
			idle++
		}
		x.mu.Unlock()
	}
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, active, "active")
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, waiting, "waiting")
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, idle, "idle")
	for _, p := range s.sortedPools() {
		a, i, o, w := p.counts()
		node := p.key.host + ":" + itoa(p.key.port)
		l := []string{p.key.clientDB, p.key.user, node}
		ch <- prometheus.MustNewConstMetric(descServers, prometheus.GaugeValue, float64(a), p.key.clientDB, p.key.user, node, "active")
		ch <- prometheus.MustNewConstMetric(descServers, prometheus.GaugeValue, float64(i), p.key.clientDB, p.key.user, node, "idle")
		ch <- prometheus.MustNewConstMetric(descServers, prometheus.GaugeValue, float64(o), p.key.clientDB, p.key.user, node, "login")
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(w), l...)
		st := &p.stats
		ch <- prometheus.MustNewConstMetric(descXacts, prometheus.CounterValue, float64(st.xacts.Load()), l...)
		ch <- prometheus.MustNewConstMetric(descQueries, prometheus.CounterValue, float64(st.queries.Load()), l...)
		ch <- prometheus.MustNewConstMetric(descXactTime, prometheus.CounterValue, float64(st.xactTime.Load())/1e9, l...)
		ch <- prometheus.MustNewConstMetric(descQueryTime, prometheus.CounterValue, float64(st.queryTime.Load())/1e9, l...)
		ch <- prometheus.MustNewConstMetric(descWaits, prometheus.CounterValue, float64(st.waits.Load()), l...)
		ch <- prometheus.MustNewConstMetric(descWaitTime, prometheus.CounterValue, float64(st.waitTime.Load())/1e9, l...)
		ch <- prometheus.MustNewConstMetric(descWaitTO, prometheus.CounterValue, float64(st.timeouts.Load()), l...)
		ch <- prometheus.MustNewConstMetric(descLoginErr, prometheus.CounterValue, float64(st.loginErrors.Load()), l...)
	}
	s.pauseMu.Lock()
	paused := s.paused
	s.pauseMu.Unlock()
	ch <- prometheus.MustNewConstMetric(descPaused, prometheus.GaugeValue, b2f(paused))
	ch <- prometheus.MustNewConstMetric(descLoginTotal, prometheus.CounterValue, float64(s.totalLogins.Load()))
	ch <- prometheus.MustNewConstMetric(descHandovers, prometheus.CounterValue, float64(s.handovers.Load()))
	ch <- prometheus.MustNewConstMetric(descRingOps, prometheus.CounterValue, float64(s.ringRecvs.Load()), "recv")
	ch <- prometheus.MustNewConstMetric(descRingOps, prometheus.CounterValue, float64(s.ringSends.Load()), "send")
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Registry returns a Prometheus registry with the pool's and the cluster's metrics.
func (s *Server) Registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	_ = reg.Register(poolCollector{s})
	// pool/cluster's collectors (built when its metrics file is enabled)
	if cc, ok := any(s.cl).(interface{ Collectors() []prometheus.Collector }); ok {
		for _, c := range cc.Collectors() {
			_ = reg.Register(c)
		}
	}
	for _, c := range s.extraColls {
		_ = reg.Register(c)
	}
	return reg
}

type extraCollectors []prometheus.Collector

// AddCollector serves c on the pool's /metrics too (the failover election's metrics); call
// it before Serve.
func (s *Server) AddCollector(c prometheus.Collector) { s.extraColls = append(s.extraColls, c) }

func (s *Server) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.Registry(), promhttp.HandlerOpts{}))
	return mux
}

func itoa(n int) string { return strconv.Itoa(n) }
