package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/restore"
	"github.com/pgharbor/pgharbor/wal"
)

// JobKind names a kind of job.
type JobKind string

// The job kinds a cluster can schedule.
const (
	JobBackup JobKind = "backup"
	JobVerify JobKind = "verify"
	JobExpire JobKind = "expire"
)

// JobKinds lists the kinds in the order the page, the API and the metrics show them.
func JobKinds() []JobKind { return []JobKind{JobBackup, JobVerify, JobExpire} }

// Result is what a job that succeeded reports.
type Result struct {
	// Detail is one line for the log and the page ("backup 20260101T000000Z: 1.2 GiB").
	Detail string
	// ExpiredObjects counts the repository objects an expire deleted.
	ExpiredObjects int64
}

// Job runs one job of a cluster. It must return soon after ctx is cancelled (the server
// cancels it when a shutdown's grace period is over) and leave the repository as the same
// command interrupted would: locks released, an unfinished backup incomplete.
type Job func(ctx context.Context) (Result, error)

// Facts are what `pgharbor info` shows of a cluster; the JSON is the same.
type Facts struct {
	Identity repo.Identity   `json:"identity"`
	Catalog  *backup.Catalog `json:"catalog"`
	WAL      wal.Archive     `json:"wal"`
	Window   restore.Window  `json:"recoverable_window"`
	// Receivers are the last states the cluster's WAL receivers reported.
	Receivers []wal.ReceiverStatus `json:"receivers"`
}

// RepositoryBytes is what the cluster holds in the repository: complete and incomplete
// backups and archived WAL, at their stored (compressed, encrypted) sizes.
func (f *Facts) RepositoryBytes() int64 {
	n := f.WAL.StoredBytes
	if f.Catalog != nil {
		for _, b := range f.Catalog.Backups {
			n += b.StoredSize
		}
		for _, b := range f.Catalog.Incomplete {
			n += b.Bytes
		}
	}
	return n
}

// Newest is the newest complete backup by stop time (never by label).
func (f *Facts) Newest() (backup.Summary, bool) {
	var newest backup.Summary
	if f.Catalog == nil {
		return newest, false
	}
	found := false
	for _, b := range f.Catalog.Backups {
		if !found || b.StopTime.After(newest.StopTime) {
			newest, found = b, true
		}
	}
	return newest, found
}

// Cluster is one cluster the server looks after.
type Cluster struct {
	// Name identifies the cluster in metrics, the API and the page; unique in a server.
	Name string
	// Schedules maps a job kind to its cron expression (5 fields or a descriptor, optionally
	// led by CRON_TZ=zone). A kind without one is not scheduled.
	Schedules map[JobKind]string
	// Jobs holds the job of each kind the cluster can run.
	Jobs map[JobKind]Job
	// ExpireAfterBackup runs the expire job after every successful scheduled backup.
	ExpireAfterBackup bool
	// CatchUpBackup, at start-up, runs a backup at once when the newest backup is older than
	// one interval of the backup schedule (a tick was missed while the server was down).
	CatchUpBackup bool
	// MaxBackupAge and MaxWALAge bound the age of the newest backup and of the newest archived
	// WAL for /readyz; zero does not check.
	MaxBackupAge time.Duration
	MaxWALAge    time.Duration
	// Inspect reads the cluster's facts from the repository.
	Inspect func(ctx context.Context) (*Facts, error)
}

// ParseSchedule parses a cron expression as the server does: 5 fields (minute hour
// day-of-month month day-of-week), or a descriptor (@daily, @hourly, @every 6h), optionally
// led by CRON_TZ=Area/City.
func ParseSchedule(spec string) (cron.Schedule, error) {
	return cron.ParseStandard(spec)
}

// Interval is the time between two consecutive ticks of s after now.
func Interval(s cron.Schedule, now time.Time) time.Duration {
	a := s.Next(now)
	return s.Next(a).Sub(a)
}

// Validate checks what Apply needs: unique names, a job for every schedule, parsable
// schedules, an Inspect function.
func Validate(clusters []Cluster) error {
	seen := map[string]bool{}
	for _, c := range clusters {
		if c.Name == "" {
			return errors.New("a cluster has no name")
		}
		if seen[c.Name] {
			return fmt.Errorf("cluster %q is listed twice", c.Name)
		}
		seen[c.Name] = true
		if c.Inspect == nil {
			return fmt.Errorf("cluster %s: no way to inspect its repository", c.Name)
		}
		for kind, spec := range c.Schedules {
			if c.Jobs[kind] == nil {
				return fmt.Errorf("cluster %s: %s is scheduled but has no job", c.Name, kind)
			}
			if _, err := ParseSchedule(spec); err != nil {
				return fmt.Errorf("cluster %s: schedule of %s %q: %w", c.Name, kind, spec, err)
			}
		}
	}
	return nil
}

// Options configure a Server.
type Options struct {
	// Listen is the HTTP listener's address (host:port).
	Listen string
	// Grace is how long a shutdown waits for running jobs before cancelling them.
	Grace time.Duration
	// Refresh is how often every cluster's facts are re-read between jobs (WAL arrives
	// through archive_command, not through the server).
	Refresh time.Duration
	Logger  *slog.Logger
}

// Defaults of Options.
const (
	DefaultListen  = "127.0.0.1:9187"
	DefaultGrace   = 2 * time.Minute
	DefaultRefresh = time.Minute
)

// inspectTimeout bounds one reading of a cluster's facts, so that a hung repository cannot
// hold a refresh forever.
const inspectTimeout = 2 * time.Minute

// Server schedules the clusters' jobs and serves what it knows of them over HTTP.
type Server struct {
	opts Options
	log  *slog.Logger
	reg  *prometheus.Registry
	m    *metrics

	mu       sync.Mutex
	order    []string // cluster names in configuration order
	clusters map[string]*clusterState
	cron     *cron.Cron
	started  bool
	stopping bool
	jobs     sync.WaitGroup

	// jobsCtx is what jobs run under: cancelled only when a shutdown's grace period is over,
	// so that a shutdown lets running jobs finish first.
	jobsCtx    context.Context
	cancelJobs context.CancelFunc
}

// New returns a server with no clusters; Apply gives it some.
func New(opts Options) *Server {
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	}
	if opts.Grace <= 0 {
		opts.Grace = DefaultGrace
	}
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultRefresh
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: opts.Logger, clusters: map[string]*clusterState{}, cron: newCron()}
	s.jobsCtx, s.cancelJobs = context.WithCancel(context.Background())
	s.reg = prometheus.NewRegistry()
	s.m = newMetrics(s)
	return s
}

func newCron() *cron.Cron { return cron.New(cron.WithLocation(time.Local)) }

// Apply replaces the clusters and their schedules (at start-up and on reload). It checks
// everything first and changes nothing when something is wrong. Jobs already running go on;
// a cluster keeps its state (last runs, facts, samples) across reloads by name.
func (s *Server) Apply(clusters []Cluster) error {
	if err := Validate(clusters); err != nil {
		return err
	}
	type entry struct {
		cs    *clusterState
		kind  JobKind
		sched cron.Schedule
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return errors.New("the server is stopping")
	}
	next := map[string]*clusterState{}
	var order []string
	var entries []entry
	for _, c := range clusters {
		cs := s.clusters[c.Name]
		if cs == nil {
			cs = newClusterState()
		}
		cs.mu.Lock()
		cs.spec = c
		cs.mu.Unlock()
		next[c.Name] = cs
		order = append(order, c.Name)
		for _, kind := range JobKinds() {
			if spec, ok := c.Schedules[kind]; ok {
				sched, _ := ParseSchedule(spec) // Validate parsed it
				entries = append(entries, entry{cs, kind, sched})
			}
		}
		s.m.ensure(c.Name)
	}
	for name := range s.clusters {
		if next[name] == nil {
			s.m.forget(name)
		}
	}
	cr := newCron()
	for _, e := range entries {
		e := e
		cr.Schedule(e.sched, cron.FuncJob(func() { s.run(e.cs, e.kind, "schedule") }))
	}
	old := s.cron
	s.cron, s.clusters, s.order = cr, next, order
	if s.started {
		old.Stop() // running jobs go on; they are counted in s.jobs
		cr.Start()
	}
	return nil
}

// Run serves HTTP and runs the schedules until ctx is done, then shuts down: no new job
// starts, running jobs get the grace period to finish and are cancelled after it. It
// returns an error when the listener cannot be opened or jobs did not stop after being
// cancelled.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("server.listen %s: %w", s.opts.Listen, err)
	}
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()

	s.mu.Lock()
	s.started = true
	s.cron.Start()
	names := append([]string(nil), s.order...)
	s.mu.Unlock()
	s.log.Info("server started", "listen", ln.Addr().String(), "clusters", names)

	refreshDone := make(chan struct{})
	refreshCtx, stopRefresh := context.WithCancel(ctx)
	go func() {
		defer close(refreshDone)
		s.refreshLoop(refreshCtx)
	}()

	select {
	case <-ctx.Done():
	case err := <-served:
		stopRefresh()
		<-refreshDone
		s.stop()
		return fmt.Errorf("http server: %w", err)
	}
	stopRefresh()
	err = s.stop()
	<-refreshDone
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs.Shutdown(shutCtx)
	if err != nil {
		return err
	}
	s.log.Info("server stopped")
	return nil
}

// stop ends scheduling and waits for the running jobs: the grace period, then cancellation.
func (s *Server) stop() error {
	s.mu.Lock()
	s.stopping = true
	s.cron.Stop()
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.jobs.Wait(); close(done) }()
	s.log.Info("stopping: no new jobs; waiting for running jobs", "grace", s.opts.Grace.String(), "running", s.runningJobs())
	select {
	case <-done:
		s.cancelJobs()
		return nil
	case <-time.After(s.opts.Grace):
	}
	s.log.Warn("grace period over: cancelling running jobs", "running", s.runningJobs())
	s.cancelJobs()
	select {
	case <-done:
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("jobs still running a minute after they were cancelled: %v", s.runningJobs())
	}
}

// runningJobs names the running jobs as cluster/kind.
func (s *Server) runningJobs() []string {
	var out []string
	for _, cs := range s.states() {
		cs.mu.Lock()
		for _, kind := range JobKinds() {
			if cs.running[kind] != nil {
				out = append(out, cs.spec.Name+"/"+string(kind))
			}
		}
		cs.mu.Unlock()
	}
	return out
}

// states returns the clusters' states in configuration order.
func (s *Server) states() []*clusterState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*clusterState, 0, len(s.order))
	for _, n := range s.order {
		out = append(out, s.clusters[n])
	}
	return out
}

// refreshLoop reads every cluster's facts at once (then runs catch-up backups), and again
// every refresh interval.
func (s *Server) refreshLoop(ctx context.Context) {
	first := true
	t := time.NewTicker(s.opts.Refresh)
	defer t.Stop()
	for {
		// In parallel: one hung repository must not leave the others' facts (and so their
		// WAL age and readiness) stale for the length of its timeout.
		var wg sync.WaitGroup
		for _, cs := range s.states() {
			wg.Add(1)
			go func(cs *clusterState, first bool) {
				defer wg.Done()
				s.refresh(ctx, cs)
				if first && ctx.Err() == nil {
					s.catchUp(cs)
				}
			}(cs, first)
		}
		wg.Wait()
		first = false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// catchUp starts a backup when the newest one is older than the backup schedule's interval:
// a tick passed while the server was down. Other missed ticks are not caught up.
func (s *Server) catchUp(cs *clusterState) {
	cs.mu.Lock()
	spec, facts := cs.spec, cs.facts
	cs.mu.Unlock()
	expr, ok := spec.Schedules[JobBackup]
	if !spec.CatchUpBackup || !ok || facts == nil {
		return
	}
	sched, err := ParseSchedule(expr)
	if err != nil {
		return
	}
	now := time.Now()
	interval := Interval(sched, now)
	newest, have := facts.Newest()
	if have && now.Sub(newest.StopTime) <= interval {
		return
	}
	reason := "no complete backup"
	if have {
		reason = fmt.Sprintf("newest backup %s ended %s ago, longer than the schedule's interval %s", newest.Label, now.Sub(newest.StopTime).Round(time.Second), interval)
	}
	s.log.Info("catching up a missed backup", "cluster", spec.Name, "reason", reason)
	go s.run(cs, JobBackup, "catch-up")
}

// refresh re-reads a cluster's facts; a failure keeps the facts read before and is reported.
func (s *Server) refresh(ctx context.Context, cs *clusterState) {
	cs.refreshMu.Lock()
	defer cs.refreshMu.Unlock()
	cs.mu.Lock()
	inspect, name := cs.spec.Inspect, cs.spec.Name
	cs.mu.Unlock()
	ictx, cancel := context.WithTimeout(ctx, inspectTimeout)
	defer cancel()
	facts, err := safeInspect(ictx, inspect)
	if ctx.Err() != nil {
		return // shutting down: not a failure of the repository
	}
	now := time.Now()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.inspectedAt = now
	if err != nil {
		if cs.inspectErr == nil || cs.inspectErr.Error() != err.Error() {
			s.log.Error("cannot read the cluster's repository", "cluster", name, "error", err)
		}
		cs.inspectErr = err
		s.m.inspectFailures.WithLabelValues(name).Inc()
		return
	}
	if cs.inspectErr != nil {
		s.log.Info("the cluster's repository is readable again", "cluster", name)
	}
	cs.inspectErr = nil
	cs.facts = facts
	cs.factsAt = now
	cs.addSize(now, facts.RepositoryBytes())
}

func safeInspect(ctx context.Context, inspect func(context.Context) (*Facts, error)) (f *Facts, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("inspect panicked: %v\n%s", p, debug.Stack())
		}
	}()
	f, err = inspect(ctx)
	if err == nil && f == nil {
		err = errors.New("inspect returned no facts")
	}
	return f, err
}

// run runs a job of a cluster unless the same job is still running (then the tick is
// skipped, logged and counted). A failure is logged and counted; the next tick tries again.
func (s *Server) run(cs *clusterState, kind JobKind, trigger string) {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	s.jobs.Add(1)
	s.mu.Unlock()
	defer s.jobs.Done()

	cs.mu.Lock()
	job, name, expireAfter := cs.spec.Jobs[kind], cs.spec.Name, cs.spec.ExpireAfterBackup
	if job == nil {
		cs.mu.Unlock()
		return
	}
	now := time.Now()
	if r := cs.running[kind]; r != nil {
		cs.addRun(RunRecord{Job: kind, Trigger: trigger, Start: now, End: now, Outcome: OutcomeSkipped,
			Detail: fmt.Sprintf("still running since %s (%s)", r.Start.UTC().Format(time.RFC3339), r.Trigger)})
		cs.mu.Unlock()
		s.m.skipped.WithLabelValues(name, string(kind)).Inc()
		s.log.Warn("job still running: this run is skipped", "cluster", name, "job", kind, "trigger", trigger, "running_since", r.Start)
		return
	}
	rec := &RunRecord{Job: kind, Trigger: trigger, Start: now, Outcome: OutcomeRunning}
	cs.running[kind] = rec
	cs.mu.Unlock()

	s.m.running.WithLabelValues(name, string(kind)).Set(1)
	s.log.Info("job started", "cluster", name, "job", kind, "trigger", trigger)
	res, err := safeRun(s.jobsCtx, job)
	end := time.Now()
	dur := end.Sub(now)
	s.m.running.WithLabelValues(name, string(kind)).Set(0)
	s.m.duration.WithLabelValues(name, string(kind)).Observe(dur.Seconds())
	done := *rec
	done.End = end
	if err != nil {
		done.Outcome, done.Error = OutcomeFailed, err.Error()
		s.m.runs.WithLabelValues(name, string(kind), OutcomeFailed).Inc()
		s.m.failures.WithLabelValues(name, string(kind)).Inc()
		s.log.Error("job failed", "cluster", name, "job", kind, "trigger", trigger, "seconds", dur.Seconds(), "error", err)
	} else {
		done.Outcome, done.Detail = OutcomeOK, res.Detail
		s.m.runs.WithLabelValues(name, string(kind), OutcomeOK).Inc()
		s.m.lastSuccess.WithLabelValues(name, string(kind)).Set(float64(end.UnixNano()) / 1e9)
		if res.ExpiredObjects > 0 {
			s.m.expired.WithLabelValues(name).Add(float64(res.ExpiredObjects))
		}
		s.log.Info("job finished", "cluster", name, "job", kind, "trigger", trigger, "seconds", dur.Seconds(), "result", res.Detail)
	}
	cs.mu.Lock()
	delete(cs.running, kind)
	cs.addRun(done)
	cs.mu.Unlock()

	if s.jobsCtx.Err() == nil {
		s.refresh(s.jobsCtx, cs)
	}
	if kind == JobBackup && err == nil && expireAfter {
		s.run(cs, JobExpire, "after backup")
	}
}

func safeRun(ctx context.Context, job Job) (res Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("job panicked: %v\n%s", p, debug.Stack())
		}
	}()
	return job(ctx)
}
