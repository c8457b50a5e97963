package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the server's Prometheus metrics. Counters and histograms are kept by the
// server as jobs run; the gauges of the repository's facts are computed at each scrape from
// the facts read last, so that ages are always current.
type metrics struct {
	runs            *prometheus.CounterVec
	failures        *prometheus.CounterVec
	skipped         *prometheus.CounterVec
	running         *prometheus.GaugeVec
	lastSuccess     *prometheus.GaugeVec
	duration        *prometheus.HistogramVec
	expired         *prometheus.CounterVec
	inspectFailures *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgharbor_job_runs_total",
			Help: "Finished runs of a job, by outcome (ok, failed)."}, []string{"cluster", "job", "outcome"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgharbor_job_failures_total",
			Help: "Runs of a job that failed."}, []string{"cluster", "job"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgharbor_job_skipped_total",
			Help: "Runs of a job not started because the previous run was still going."}, []string{"cluster", "job"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgharbor_job_running",
			Help: "1 while a job runs."}, []string{"cluster", "job"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgharbor_job_last_success_timestamp_seconds",
			Help: "When a job last finished successfully in this server process (Unix time)."}, []string{"cluster", "job"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pgharbor_job_duration_seconds",
			Help:    "How long runs of a job took, failed ones included.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800}}, []string{"cluster", "job"}),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgharbor_expired_objects_total",
			Help: "Repository objects deleted by expire jobs."}, []string{"cluster"}),
		inspectFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgharbor_repository_read_failures_total",
			Help: "Failed readings of the cluster's repository (backups, WAL) by the server."}, []string{"cluster"}),
	}
	s.reg.MustRegister(m.runs, m.failures, m.skipped, m.running, m.lastSuccess, m.duration, m.expired, m.inspectFailures,
		&factsCollector{s: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ensure makes every series of a cluster exist from the start, at zero: an alert on
// increase() needs the series before the first failure.
func (m *metrics) ensure(cluster string) {
	for _, k := range JobKinds() {
		kind := string(k)
		m.runs.WithLabelValues(cluster, kind, OutcomeOK)
		m.runs.WithLabelValues(cluster, kind, OutcomeFailed)
		m.failures.WithLabelValues(cluster, kind)
		m.skipped.WithLabelValues(cluster, kind)
		m.running.WithLabelValues(cluster, kind)
		m.duration.WithLabelValues(cluster, kind)
	}
	m.expired.WithLabelValues(cluster)
	m.inspectFailures.WithLabelValues(cluster)
}

// forget drops the series of a cluster removed by a reload.
func (m *metrics) forget(cluster string) {
	l := prometheus.Labels{"cluster": cluster}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{m.runs, m.failures, m.skipped, m.running, m.lastSuccess, m.duration, m.expired, m.inspectFailures} {
		v.DeletePartialMatch(l)
	}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append([]string{"cluster"}, labels...), nil)
}

// factsCollector turns each cluster's last facts into gauges at scrape time.
type factsCollector struct{ s *Server }

var (
	_ prometheus.Collector = (*factsCollector)(nil)
)

func factsDescs() map[string]*prometheus.Desc {
	return map[string]*prometheus.Desc{
		"backup_end":      desc("pgharbor_backup_last_end_timestamp_seconds", "When the newest complete backup ended (Unix time; newest by stop time)."),
		"backup_duration": desc("pgharbor_backup_last_duration_seconds", "How long the newest complete backup took."),
		"backup_size":     desc("pgharbor_backup_last_size_bytes", "Size of the newest complete backup's files."),
		"backup_stored":   desc("pgharbor_backup_last_stored_bytes", "Stored (compressed, encrypted) size of the newest complete backup."),
		"backups":         desc("pgharbor_backups", "Complete backups in the repository."),
		"incomplete":      desc("pgharbor_backups_incomplete", "Backups without a manifest (running, or to remove with `pgharbor backup cleanup`)."),
		"window_start":    desc("pgharbor_recoverable_window_start_timestamp_seconds", "Earliest moment a restore can reach (Unix time)."),
		"window_end":      desc("pgharbor_recoverable_window_end_timestamp_seconds", "Latest moment a restore can reach (Unix time)."),
		"wal_newest":      desc("pgharbor_wal_newest_timestamp_seconds", "When the newest archived WAL object was stored (Unix time)."),
		"wal_age":         desc("pgharbor_wal_newest_age_seconds", "Age of the newest archived WAL object at scrape time."),
		"wal_segment":     desc("pgharbor_wal_newest_segment_info", "The highest archived segment (always 1).", "segment", "timeline"),
		"wal_gaps":        desc("pgharbor_wal_gaps", "Runs of missing WAL segments recovery would need."),
		"wal_bytes":       desc("pgharbor_wal_stored_bytes", "Stored size of the archived WAL."),
		"repo_bytes":      desc("pgharbor_repository_bytes", "Stored size of everything the cluster has in the repository."),
		"read_at":         desc("pgharbor_repository_read_timestamp_seconds", "When the server last read the cluster's repository successfully (Unix time)."),
		"read_ok":         desc("pgharbor_repository_up", "1 when the last reading of the cluster's repository succeeded."),
		"ready":           desc("pgharbor_cluster_ready", "1 when the cluster passes /readyz (backup and WAL within their max ages)."),
		"recv_streaming":  desc("pgharbor_wal_receiver_streaming", "1 while the WAL receiver of the slot reports it streams (from its status in the repository).", "slot"),
		"recv_lag":        desc("pgharbor_wal_receiver_lag_bytes", "WAL the server had that the receiver had not stored yet, at its last report.", "slot"),
		"recv_stored_at":  desc("pgharbor_wal_receiver_stored_timestamp_seconds", "When the receiver last stored WAL (Unix time).", "slot"),
		"recv_report_age": desc("pgharbor_wal_receiver_report_age_seconds", "Age of the receiver's last report at scrape time (a killed receiver stops reporting).", "slot"),
	}
}

func (c *factsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range factsDescs() {
		ch <- d
	}
}

func (c *factsCollector) Collect(ch chan<- prometheus.Metric) {
	d := factsDescs()
	now := time.Now()
	gauge := func(name string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d[name], prometheus.GaugeValue, v, labels...)
	}
	unix := func(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
	for _, cs := range c.s.states() {
		cs.mu.Lock()
		name, f, readOK, factsAt, problems := cs.spec.Name, cs.facts, cs.inspectErr == nil && cs.facts != nil, cs.factsAt, cs.problems(now)
		cs.mu.Unlock()
		gauge("read_ok", b2f(readOK), name)
		gauge("ready", b2f(len(problems) == 0), name)
		if f == nil {
			continue
		}
		gauge("read_at", unix(factsAt), name)
		if b, ok := f.Newest(); ok {
			gauge("backup_end", unix(b.StopTime), name)
			gauge("backup_duration", b.Duration, name)
			gauge("backup_size", float64(b.Size), name)
			gauge("backup_stored", float64(b.StoredSize), name)
		}
		if f.Catalog != nil {
			gauge("backups", float64(len(f.Catalog.Backups)), name)
			gauge("incomplete", float64(len(f.Catalog.Incomplete)), name)
		}
		if !f.Window.Earliest.IsZero() {
			gauge("window_start", unix(f.Window.Earliest), name)
			gauge("window_end", unix(f.Window.Latest), name)
		}
		if !f.WAL.Newest.IsZero() {
			gauge("wal_newest", unix(f.WAL.Newest), name)
			gauge("wal_age", now.Sub(f.WAL.Newest).Seconds(), name)
		}
		if seg, tli := newestSegment(f); seg != "" {
			gauge("wal_segment", 1, name, seg, formatUint(tli))
		}
		gauge("wal_gaps", float64(gaps(f)), name)
		for _, r := range f.Receivers {
			gauge("recv_streaming", b2f(r.Streaming), name, r.Slot)
			lag := 0.0
			if r.ServerEnd > r.Stored {
				lag = float64(r.ServerEnd - r.Stored)
			}
			gauge("recv_lag", lag, name, r.Slot)
			if !r.StoredAt.IsZero() {
				gauge("recv_stored_at", unix(r.StoredAt), name, r.Slot)
			}
			gauge("recv_report_age", now.Sub(r.Reported).Seconds(), name, r.Slot)
		}
		gauge("wal_bytes", float64(f.WAL.StoredBytes), name)
		gauge("repo_bytes", float64(f.RepositoryBytes()), name)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
