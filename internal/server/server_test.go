package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/restore"
	"github.com/pgharbor/pgharbor/wal"
)

// These tests exercise the scheduler and the HTTP side with jobs and facts made in memory;
// internal/e2e runs the real server against real PostgreSQL clusters.

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func factsWith(backups ...backup.Summary) *Facts {
	f := &Facts{Catalog: &backup.Catalog{Backups: backups}}
	for _, b := range backups {
		if b.StopTime.After(f.WAL.Newest) {
			f.WAL.Newest = b.StopTime
		}
	}
	f.Window = restore.ComputeWindow(backups, f.WAL.Newest)
	return f
}

func startServer(t *testing.T, opts Options, clusters ...Cluster) (*Server, string, func()) {
	t.Helper()
	opts.Listen = freeAddr(t)
	s := New(opts)
	if err := s.Apply(clusters); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	base := "http://" + opts.Listen
	waitFor(t, 5*time.Second, func() bool {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return s, base, stop
}

func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestOverlappingTickIsSkippedAndCounted(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int32
	slow := func(ctx context.Context) (Result, error) {
		started.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
		return Result{Detail: "done"}, nil
	}
	c := Cluster{Name: "a", Schedules: map[JobKind]string{JobVerify: "@every 1s"}, Jobs: map[JobKind]Job{JobVerify: slow},
		Inspect: func(context.Context) (*Facts, error) { return factsWith(), nil }}
	s, _, _ := startServer(t, Options{}, c)
	waitFor(t, 10*time.Second, func() bool { return value(t, s.m.skipped.WithLabelValues("a", "verify")) >= 2 })
	if n := started.Load(); n != 1 {
		t.Fatalf("the job was started %d times while it was running", n)
	}
	close(release)
	waitFor(t, 5*time.Second, func() bool { return value(t, s.m.runs.WithLabelValues("a", "verify", OutcomeOK)) >= 1 })
	st := s.Status(time.Now())[0]
	skipped := 0
	for _, r := range st.RecentRuns {
		if r.Outcome == OutcomeSkipped && strings.Contains(r.Detail, "still running") {
			skipped++
		}
	}
	if skipped < 2 {
		t.Fatalf("recent runs do not show the skipped ticks: %+v", st.RecentRuns)
	}
}

func TestFailingJobIsCountedAndRetriedAtNextTick(t *testing.T) {
	var calls atomic.Int32
	failing := func(ctx context.Context) (Result, error) {
		calls.Add(1)
		return Result{}, errors.New("connection refused")
	}
	c := Cluster{Name: "db", Schedules: map[JobKind]string{JobBackup: "@every 1s"}, Jobs: map[JobKind]Job{JobBackup: failing},
		Inspect: func(context.Context) (*Facts, error) { return factsWith(), nil }}
	s, base, _ := startServer(t, Options{}, c)
	waitFor(t, 10*time.Second, func() bool { return calls.Load() >= 2 })
	waitFor(t, 5*time.Second, func() bool { return value(t, s.m.failures.WithLabelValues("db", "backup")) >= 2 })
	code, page := get(t, base+"/")
	if code != 200 || !strings.Contains(page, "connection refused") || !strings.Contains(page, `class="bad">failed`) {
		t.Fatalf("status page (%d) does not show the failure:\n%s", code, page)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz %d after failures", code)
	}
}

func TestReadyzNamesWhatIsStale(t *testing.T) {
	now := time.Now()
	fresh := backup.Summary{Label: "fresh", StartTime: now.Add(-2 * time.Minute), StopTime: now.Add(-time.Minute)}
	old := backup.Summary{Label: "old", StartTime: now.Add(-49 * time.Hour), StopTime: now.Add(-48 * time.Hour)}
	good := Cluster{Name: "good", MaxBackupAge: time.Hour, MaxWALAge: time.Hour, Inspect: func(context.Context) (*Facts, error) { return factsWith(fresh), nil }}
	stale := Cluster{Name: "stale", MaxBackupAge: 26 * time.Hour, MaxWALAge: 10 * time.Minute, Inspect: func(context.Context) (*Facts, error) { return factsWith(old), nil }}
	down := Cluster{Name: "down", Inspect: func(context.Context) (*Facts, error) { return nil, errors.New("bucket unreachable") }}

	_, base, _ := startServer(t, Options{}, good)
	waitFor(t, 5*time.Second, func() bool { c, _ := get(t, base+"/readyz"); return c == 200 })

	_, base, _ = startServer(t, Options{}, good, stale, down)
	var body string
	waitFor(t, 5*time.Second, func() bool {
		var c int
		c, body = get(t, base+"/readyz")
		return c == 503 && strings.Contains(body, "down")
	})
	for _, want := range []string{"cluster stale: backup stale: newest backup old", "max_backup_age 26h0m0s", "cluster stale: WAL stale", "cluster down: cannot read its repository: bucket unreachable"} {
		if !strings.Contains(body, want) {
			t.Errorf("/readyz does not say %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "cluster good") {
		t.Errorf("/readyz blames the fresh cluster:\n%s", body)
	}
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{`pgharbor_cluster_ready{cluster="good"} 1`, `pgharbor_cluster_ready{cluster="stale"} 0`, `pgharbor_repository_up{cluster="down"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestShutdownWaitsForRunningJobThenCancelsAfterGrace(t *testing.T) {
	var sawCancel atomic.Bool
	began := make(chan struct{}, 10)
	stubborn := func(ctx context.Context) (Result, error) {
		began <- struct{}{}
		<-ctx.Done()
		sawCancel.Store(true)
		return Result{}, ctx.Err()
	}
	c := Cluster{Name: "a", Schedules: map[JobKind]string{JobBackup: "@every 1s"}, Jobs: map[JobKind]Job{JobBackup: stubborn},
		Inspect: func(context.Context) (*Facts, error) { return factsWith(), nil }}
	_, _, stop := startServer(t, Options{Grace: 700 * time.Millisecond}, c)
	<-began
	t0 := time.Now()
	stop()
	if d := time.Since(t0); d < 600*time.Millisecond || d > 5*time.Second {
		t.Fatalf("shutdown took %s with a grace of 700ms", d)
	}
	if !sawCancel.Load() {
		t.Fatal("the running job was not cancelled after the grace period")
	}
}

func TestApplyRefusesBadSchedulesAndKeepsTheOldOnes(t *testing.T) {
	ok := func(context.Context) (Result, error) { return Result{}, nil }
	inspect := func(context.Context) (*Facts, error) { return factsWith(), nil }
	s := New(Options{})
	if err := s.Apply([]Cluster{{Name: "a", Schedules: map[JobKind]string{JobBackup: "@daily"}, Jobs: map[JobKind]Job{JobBackup: ok}, Inspect: inspect}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		c    []Cluster
		want string
	}{
		{[]Cluster{{Name: "a", Schedules: map[JobKind]string{JobBackup: "61 * * * *"}, Jobs: map[JobKind]Job{JobBackup: ok}, Inspect: inspect}}, "end of range (61) above maximum (59)"},
		{[]Cluster{{Name: "a", Schedules: map[JobKind]string{JobVerify: "@daily"}, Jobs: map[JobKind]Job{JobBackup: ok}, Inspect: inspect}}, "verify is scheduled but has no job"},
		{[]Cluster{{Name: "a", Inspect: inspect}, {Name: "a", Inspect: inspect}}, `"a" is listed twice`},
	} {
		err := s.Apply(tc.c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Apply: %v, want %q", err, tc.want)
		}
	}
	if st := s.Status(time.Now()); len(st) != 1 || st[0].Jobs[0].Schedule != "@daily" {
		t.Fatalf("a refused Apply changed the server: %+v", st)
	}
}

func TestStatusPageDrawsWindowBackupsAndSizes(t *testing.T) {
	now := time.Now()
	var bs []backup.Summary
	for i := 3; i >= 1; i-- {
		stop := now.Add(-time.Duration(i) * time.Hour)
		bs = append(bs, backup.Summary{Label: fmt.Sprintf("2026010%dT000000Z", i), StartTime: stop.Add(-5 * time.Minute), StopTime: stop, Size: 1 << 30, StoredSize: 300 << 20})
	}
	f := factsWith(bs...)
	f.WAL.Newest = now.Add(-time.Minute)
	f.WAL.Timelines = []wal.TimelineArchive{{TLI: 1, Last: "000000010000000000000042"}}
	f.Window = restore.ComputeWindow(bs, f.WAL.Newest)
	c := Cluster{Name: "prod", Inspect: func(context.Context) (*Facts, error) { return f, nil }}
	s, base, _ := startServer(t, Options{Refresh: 50 * time.Millisecond}, c)
	waitFor(t, 5*time.Second, func() bool { return len(s.Status(time.Now())[0].SizeHistory) >= 2 })
	_, page := get(t, base+"/")
	for _, want := range []string{`id="cluster-prod"`, `class="window" data-start="` + f.Window.Earliest.UTC().Format(time.RFC3339), `class="backup" data-label="20260101T000000Z"`,
		`class="backup-label"`, "000000010000000000000042", `<polyline`, "<svg"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, "<script") || strings.Contains(page, "http://") && !strings.Contains(page, "http-equiv") {
		t.Errorf("page loads scripts or external assets")
	}
}

func TestCatchUpBackupOnlyWhenATickWasMissed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		newest  time.Duration // age of the newest backup; 0 = none
		catchUp bool
		want    int32
	}{
		{"older than the interval", 2 * time.Hour, true, 1},
		{"within the interval", 10 * time.Minute, true, 0},
		{"no backup at all", 0, true, 1},
		{"catch-up off", 2 * time.Hour, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var backups atomic.Int32
			var bs []backup.Summary
			if tc.newest > 0 {
				stop := time.Now().Add(-tc.newest)
				bs = append(bs, backup.Summary{Label: "b", StartTime: stop.Add(-time.Minute), StopTime: stop})
			}
			c := Cluster{Name: "a", CatchUpBackup: tc.catchUp,
				Schedules: map[JobKind]string{JobBackup: "@every 1h", JobVerify: "@every 1h"},
				Jobs: map[JobKind]Job{
					JobBackup: func(context.Context) (Result, error) { backups.Add(1); return Result{}, nil },
					JobVerify: func(context.Context) (Result, error) { t.Error("verify is never caught up"); return Result{}, nil },
				},
				Inspect: func(context.Context) (*Facts, error) { return factsWith(bs...), nil }}
			s, _, stop := startServer(t, Options{}, c)
			waitFor(t, 5*time.Second, func() bool { return !s.Status(time.Now())[0].ReadAt.IsZero() })
			time.Sleep(300 * time.Millisecond)
			stop()
			if n := backups.Load(); n != tc.want {
				t.Fatalf("%d catch-up backups, want %d", n, tc.want)
			}
		})
	}
}

func TestExpireRunsAfterEverySuccessfulBackup(t *testing.T) {
	var expires atomic.Int32
	fail := atomic.Bool{}
	c := Cluster{Name: "a", ExpireAfterBackup: true,
		Schedules: map[JobKind]string{JobBackup: "@every 1s"},
		Jobs: map[JobKind]Job{
			JobBackup: func(context.Context) (Result, error) {
				if fail.Load() {
					return Result{}, errors.New("server down")
				}
				return Result{Detail: "ok"}, nil
			},
			JobExpire: func(context.Context) (Result, error) { expires.Add(1); return Result{ExpiredObjects: 7}, nil },
		},
		Inspect: func(context.Context) (*Facts, error) { return factsWith(), nil }}
	s, _, _ := startServer(t, Options{}, c)
	waitFor(t, 10*time.Second, func() bool { return expires.Load() >= 2 })
	fail.Store(true)
	before := value(t, s.m.failures.WithLabelValues("a", "backup"))
	waitFor(t, 10*time.Second, func() bool { return value(t, s.m.failures.WithLabelValues("a", "backup")) >= before+2 })
	n := expires.Load()
	ok := value(t, s.m.runs.WithLabelValues("a", "backup", OutcomeOK))
	if float64(n) != ok && float64(n) != ok-1 { // the last success's expire may still be starting
		t.Fatalf("%d expires after %v successful backups", n, ok)
	}
	if got := value(t, s.m.expired.WithLabelValues("a")); got != 7*float64(n) {
		t.Fatalf("expired objects %v, want %v", got, 7*n)
	}
	for _, r := range s.Status(time.Now())[0].RecentRuns {
		if r.Job == JobExpire && r.Trigger != "after backup" {
			t.Fatalf("expire run with trigger %q", r.Trigger)
		}
	}
}
