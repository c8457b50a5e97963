package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

// serverProc is a running `pgharbor server` with its JSON log.
type serverProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	base string
	mu   sync.Mutex
	log  bytes.Buffer
	done chan error
}

func (p *serverProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

func (p *serverProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// startServer runs `pgharbor server --config config` as the cluster's OS user, as a service
// would run.
func (e *env) startServer(config, listen string) *serverProc {
	e.t.Helper()
	p := &serverProc{t: e.t, base: "http://" + listen, done: make(chan error, 1)}
	p.cmd = exec.Command(binary, "--config", config, "--log-format", "json", "server")
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	e.t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := http.Get(p.base + "/healthz"); err == nil {
			resp.Body.Close()
			return p
		}
		select {
		case err := <-p.done:
			e.t.Fatalf("pgharbor server exited: %v\n%s", err, p.logText())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("pgharbor server not listening on %s:\n%s", listen, p.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *serverProc) get(path string) (int, []byte) {
	p.t.Helper()
	resp, err := http.Get(p.base + path)
	if err != nil {
		p.t.Fatalf("GET %s: %v\nserver log:\n%s", path, err, p.logText())
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp.StatusCode, b
}

// apiCluster is the part of /api/v1/clusters the test reads.
type apiCluster struct {
	Name     string   `json:"name"`
	Ready    bool     `json:"ready"`
	Problems []string `json:"problems"`
	Info     *struct {
		Catalog struct {
			Backups []struct {
				Label      string    `json:"label"`
				StopTime   time.Time `json:"stop_time"`
				Size       int64     `json:"size"`
				StoredSize int64     `json:"stored_size"`
				Duration   float64   `json:"duration_seconds"`
			} `json:"backups"`
		} `json:"catalog"`
		Window struct {
			Earliest time.Time `json:"earliest"`
			Latest   time.Time `json:"latest"`
		} `json:"recoverable_window"`
	} `json:"info"`
	Jobs []struct {
		Job     string `json:"job"`
		Running *struct {
			Start time.Time `json:"start"`
		} `json:"running"`
		Last *struct {
			Outcome string `json:"outcome"`
			Error   string `json:"error"`
		} `json:"last"`
	} `json:"jobs"`
}

func (p *serverProc) clusters() []apiCluster {
	p.t.Helper()
	code, body := p.get("/api/v1/clusters")
	var out []apiCluster
	if code != 200 || json.Unmarshal(body, &out) != nil {
		p.t.Fatalf("/api/v1/clusters: %d %s", code, body)
	}
	return out
}

func (p *serverProc) metrics() map[string]*dto.MetricFamily {
	p.t.Helper()
	code, body := p.get("/metrics")
	if code != 200 {
		p.t.Fatalf("/metrics: %d", code)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		p.t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return fams
}

// metricValue is the value of the series of family name whose labels include want.
func metricValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no series of %s with %v", name, want)
	return 0
}

// TestServerTakesScheduledBackupsAndReportsThem runs `pgharbor server` for a fleet file of two
// clusters: a real one with a backup every 3 seconds and a verify every 5, and a broken one.
// The backups land in the repository and verify; /metrics (parsed with Prometheus's own
// parser) reports exactly what `pgharbor info` reads; /readyz and the API agree; the broken
// cluster fails alone; SIGHUP replaces the schedules; the status page shows the window and
// the backups in real Chromium; SIGTERM stops the server cleanly.
func TestServerTakesScheduledBackupsAndReportsThem(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	e.must("repo", "init")

	listen := fmt.Sprintf("127.0.0.1:%d", pgtest.FreePort(t))
	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	// The backup host's file lists two clusters over the settings newEnv wrote (the database
	// host keeps its single-cluster file for archive_command): main, and broken, whose server
	// does not exist and whose repository was never initialised.
	fleet := filepath.Join(e.dir, "fleet.yaml")
	serverConfig := func(backupSchedule, verifySchedule string) string {
		return string(base) + fmt.Sprintf(`server:
  listen: %s
  shutdown_grace: 60s
  refresh_interval: 1s
schedules:
  backup: "%s"
readiness:
  max_backup_age: 10m
  max_wal_age: 10m
clusters:
  - name: main
    postgres:
      conn: "%s"
    schedules: {verify: "%s"}
  - name: broken
    repo: {cluster: broken}
    postgres: {conn: "host=127.0.0.1 port=1 user=postgres connect_timeout=2"}
`, listen, backupSchedule, pg.ConnString("postgres"), verifySchedule)
	}
	e.writeOwned(fleet, serverConfig("@every 3s", "@every 5s"), 0o600)
	srv := e.startServer(fleet, listen)

	// Backups on the schedule.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cl := srv.clusters()
		if len(cl) != 2 || cl[0].Name != "main" || cl[1].Name != "broken" {
			t.Fatalf("clusters %+v", cl)
		}
		if cl[0].Info != nil && len(cl[0].Info.Catalog.Backups) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 3 scheduled backups after 2 minutes: %+v\nserver log:\n%s", cl, srv.logText())
		}
		time.Sleep(500 * time.Millisecond)
	}

	// SIGHUP with a schedule that will not fire during the test: the ticks stop, and the
	// numbers settle for an exact comparison with `pgharbor info`.
	e.writeOwned(fleet, serverConfig("@every 1h", ""), 0o600)
	if err := srv.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, srv, "configuration reloaded")
	var api apiCluster
	settled := 0
	var lastCount int
	deadline = time.Now().Add(2 * time.Minute)
	for settled < 3 {
		api = srv.clusters()[0]
		running := false
		for _, j := range api.Jobs {
			running = running || j.Running != nil
		}
		n := len(api.Info.Catalog.Backups)
		if !running && n == lastCount {
			settled++
		} else {
			settled = 0
		}
		lastCount = n
		if time.Now().After(deadline) {
			t.Fatalf("jobs still running 2 minutes after the reload:\n%s", srv.logText())
		}
		time.Sleep(1200 * time.Millisecond) // more than refresh_interval
	}

	var info struct {
		Catalog struct {
			Backups []struct {
				Label      string    `json:"label"`
				StopTime   time.Time `json:"stop_time"`
				Size       int64     `json:"size"`
				StoredSize int64     `json:"stored_size"`
				Duration   float64   `json:"duration_seconds"`
			} `json:"backups"`
		} `json:"catalog"`
		WAL struct {
			Timelines []struct {
				Last string `json:"last"`
			} `json:"timelines"`
		} `json:"wal"`
		Window struct {
			Earliest time.Time `json:"earliest"`
		} `json:"recoverable_window"`
	}
	// info on the fleet's file, choosing the cluster.
	out, err := exec.Command(binary, "--config", fleet, "--cluster-name", "main", "info", "--output", "json").Output()
	if err != nil {
		t.Fatalf("info --cluster-name main: %v", err)
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	bs := info.Catalog.Backups
	if len(bs) < 3 || len(bs) != len(api.Info.Catalog.Backups) {
		t.Fatalf("info lists %d backups, the API %d", len(bs), len(api.Info.Catalog.Backups))
	}
	newest := bs[0]
	for _, b := range bs {
		if b.StopTime.After(newest.StopTime) {
			newest = b
		}
	}

	fams := srv.metrics()
	if dir := os.Getenv("PGHARBOR_ARTIFACTS"); dir != "" {
		_, text := srv.get("/metrics")
		_, api := srv.get("/api/v1/clusters")
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "server-metrics.txt"), text, 0o644)
		os.WriteFile(filepath.Join(dir, "server-clusters.json"), api, 0o644)
	}
	main := map[string]string{"cluster": "main"}
	backupJob := map[string]string{"cluster": "main", "job": "backup"}
	near := func(name string, got, want float64, tol float64) {
		t.Helper()
		if math.Abs(got-want) > tol {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	near("pgharbor_backup_last_end_timestamp_seconds", metricValue(t, fams, "pgharbor_backup_last_end_timestamp_seconds", main), float64(newest.StopTime.UnixNano())/1e9, 0.001)
	near("pgharbor_backup_last_size_bytes", metricValue(t, fams, "pgharbor_backup_last_size_bytes", main), float64(newest.Size), 0)
	near("pgharbor_backup_last_stored_bytes", metricValue(t, fams, "pgharbor_backup_last_stored_bytes", main), float64(newest.StoredSize), 0)
	near("pgharbor_backup_last_duration_seconds", metricValue(t, fams, "pgharbor_backup_last_duration_seconds", main), newest.Duration, 0.001)
	near("pgharbor_backups", metricValue(t, fams, "pgharbor_backups", main), float64(len(bs)), 0)
	near("pgharbor_recoverable_window_start_timestamp_seconds", metricValue(t, fams, "pgharbor_recoverable_window_start_timestamp_seconds", main), float64(info.Window.Earliest.UnixNano())/1e9, 0.001)
	if end := metricValue(t, fams, "pgharbor_recoverable_window_end_timestamp_seconds", main); end < float64(newest.StopTime.Unix()) {
		t.Errorf("window ends at %v, before the newest backup %v", end, newest.StopTime)
	}
	if age := metricValue(t, fams, "pgharbor_wal_newest_age_seconds", main); age < 0 || age > 120 {
		t.Errorf("newest WAL age %v s", age)
	}
	lastSeg := info.WAL.Timelines[len(info.WAL.Timelines)-1].Last
	metricValue(t, fams, "pgharbor_wal_newest_segment_info", map[string]string{"cluster": "main", "segment": lastSeg, "timeline": "1"})
	if ok := metricValue(t, fams, "pgharbor_job_runs_total", map[string]string{"cluster": "main", "job": "backup", "outcome": "ok"}); ok < float64(len(bs)) {
		t.Errorf("%v successful backup runs counted, %d backups in the repository", ok, len(bs))
	}
	near("pgharbor_job_failures_total backup", metricValue(t, fams, "pgharbor_job_failures_total", backupJob), 0, 0)
	// The scheduled verify read the backups back (with the identity) and found them whole.
	verifyJob := map[string]string{"cluster": "main", "job": "verify"}
	if n := metricValue(t, fams, "pgharbor_job_runs_total", map[string]string{"cluster": "main", "job": "verify", "outcome": "ok"}); n < 1 {
		t.Errorf("%v successful verify runs", n)
	}
	near("pgharbor_job_failures_total verify", metricValue(t, fams, "pgharbor_job_failures_total", verifyJob), 0, 0)
	if n := metricValue(t, fams, "pgharbor_job_duration_seconds", backupJob); n < float64(len(bs)) {
		t.Errorf("duration histogram holds %v runs, want %d", n, len(bs))
	}
	metricValue(t, fams, "pgharbor_job_skipped_total", backupJob)
	metricValue(t, fams, "pgharbor_expired_objects_total", main)
	if rb := metricValue(t, fams, "pgharbor_repository_bytes", main); rb <= float64(newest.StoredSize) {
		t.Errorf("repository bytes %v not above the newest backup's %d", rb, newest.StoredSize)
	}
	near("pgharbor_cluster_ready", metricValue(t, fams, "pgharbor_cluster_ready", main), 1, 0)

	// The broken cluster fails on its own: its failures are counted and it alone makes the
	// server not ready.
	broken := map[string]string{"cluster": "broken"}
	if n := metricValue(t, fams, "pgharbor_job_failures_total", map[string]string{"cluster": "broken", "job": "backup"}); n < 1 {
		t.Errorf("broken cluster: %v backup failures counted", n)
	}
	near("pgharbor_repository_up broken", metricValue(t, fams, "pgharbor_repository_up", broken), 0, 0)
	near("pgharbor_cluster_ready broken", metricValue(t, fams, "pgharbor_cluster_ready", broken), 0, 0)
	if code, body := srv.get("/readyz"); code != 503 || !strings.Contains(string(body), "cluster broken: cannot read its repository") || strings.Contains(string(body), "cluster main") {
		t.Errorf("/readyz %d: %s", code, body)
	}
	if !strings.Contains(srv.logText(), `"msg":"job failed","cluster":"broken","job":"backup"`) {
		t.Errorf("the broken cluster's failure is not logged:\n%s", srv.logText())
	}
	if !api.Ready || api.Info.Window.Earliest.IsZero() {
		t.Errorf("API: ready %v, window %+v, problems %v", api.Ready, api.Info.Window, api.Problems)
	}
	for _, j := range api.Jobs {
		if j.Job == "backup" && (j.Last == nil || j.Last.Outcome != "ok") {
			t.Errorf("API: last backup run %+v", j.Last)
		}
	}
	// The scheduled backups are real backups.
	e.must("verify", "--backup", newest.Label)
	// A restore from the fleet's file: the restore_command it writes names the cluster, so
	// that wal fetch reads main's settings from a file that lists two.
	pg.Exec(t, "CREATE TABLE after_backups AS SELECT 42 AS answer")
	waitArchived(t, pg)
	fleetConfig := e.config
	e.config = fleet
	restored := e.restoreStarted(pg, "--cluster-name", "main", "--target", "latest")
	e.config = fleetConfig
	auto, err := os.ReadFile(filepath.Join(restored.DataDir, "postgresql.auto.conf"))
	if err != nil || !strings.Contains(string(auto), "--cluster-name main") {
		t.Errorf("restore_command of a fleet restore does not name the cluster (%v):\n%s", err, auto)
	}
	if got := restored.QueryString(t, "postgres", "SELECT answer::text FROM after_backups"); got != "42" {
		t.Errorf("restored through the fleet file's wal fetch: %q", got)
	}

	t.Run("StatusPageInChromium", func(t *testing.T) {
		labels := make([]string, 0, len(bs))
		for _, b := range bs {
			labels = append(labels, b.Label)
		}
		checkStatusPage(t, srv.base+"/", "main", info.Window.Earliest, newest.Label, labels)
	})

	// SIGTERM: a clean stop.
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-srv.done:
		if err != nil {
			t.Fatalf("server exit after SIGTERM: %v\n%s", err, srv.logText())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("server did not stop within 90 s of SIGTERM:\n%s", srv.logText())
	}
	// The log is JSON throughout and tells the story.
	var finished, stopped int
	sc := bufio.NewScanner(strings.NewReader(srv.logText()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("--log-format json wrote a line that is not JSON: %q", sc.Text())
		}
		switch rec["msg"] {
		case "job finished":
			if rec["cluster"] == "main" && rec["job"] == "backup" {
				finished++
			}
		case "server stopped":
			stopped++
		}
	}
	if finished < len(bs) || stopped != 1 {
		t.Fatalf("log: %d finished backups (want %d), %d 'server stopped':\n%s", finished, len(bs), stopped, srv.logText())
	}
}

func waitLog(t *testing.T, srv *serverProc, msg string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(srv.logText(), `"msg":"`+msg+`"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the server log:\n%s", msg, srv.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkStatusPage loads the status page in headless Chromium, saves a screenshot, and checks
// that the page shows the cluster's recoverable window and its backups.
func checkStatusPage(t *testing.T, url, cluster string, windowStart time.Time, newestLabel string, labels []string) {
	exe := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			exe = p
			break
		}
	}
	if exe == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("no chromium on PATH: scripts/setup.sh installs it (apt-get install chromium)")
		}
		t.Skip("no chromium on PATH: install it with `apt-get install chromium` (scripts/setup.sh does)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1100, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	defer cancelTimeout()

	type pageSeen struct {
		WindowStart string   `json:"windowStart"`
		WindowWidth float64  `json:"windowWidth"`
		SVGLabels   []string `json:"svgLabels"`
		Marks       []string `json:"marks"`
		Table       []string `json:"table"`
		Ready       string   `json:"ready"`
		BrokenJobs  string   `json:"brokenJobs"`
	}
	sel := "#cluster-" + cluster
	js := fmt.Sprintf(`(() => {
		const c = document.querySelector(%q);
		const w = c.querySelector("svg.timeline rect.window");
		return {
			windowStart: w ? w.dataset.start : "",
			windowWidth: w ? w.getBoundingClientRect().width : 0,
			svgLabels: [...c.querySelectorAll("svg.timeline text.backup-label")].map(e => e.textContent),
			marks: [...c.querySelectorAll("svg.timeline rect.backup")].map(e => e.dataset.label),
			table: [...c.querySelectorAll("table.backups td.label")].map(e => e.textContent),
			ready: c.querySelector("h2").textContent,
			brokenJobs: (document.querySelector("#cluster-broken table.jobs") || {}).textContent || "",
		};
	})()`, sel)
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(sel+" svg.timeline")); err != nil {
		t.Fatalf("chromium on %s: %v", url, err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	seen, err := chromedp.Run(ctx, chromedp.Evaluate[pageSeen](js))
	if err != nil {
		t.Fatalf("read the page: %v", err)
	}
	p := filepath.Join(t.TempDir(), "status-page.png")
	if err := os.WriteFile(p, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("status page screenshot: %s (%d bytes)", p, len(shot))
	if dir := os.Getenv("PGHARBOR_ARTIFACTS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, "server-status-page.png")
		if err := os.WriteFile(dst, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("status page screenshot copied to %s", dst)
	}
	if !bytes.HasPrefix(shot, []byte("\x89PNG")) {
		t.Fatalf("screenshot is not a PNG")
	}
	if seen.WindowStart != windowStart.UTC().Format(time.RFC3339) || seen.WindowWidth < 1 {
		t.Errorf("page window starts %q (%.1f px wide), want %s", seen.WindowStart, seen.WindowWidth, windowStart.UTC().Format(time.RFC3339))
	}
	if !contains(seen.SVGLabels, newestLabel) {
		t.Errorf("the timeline does not label the newest backup %s: %v", newestLabel, seen.SVGLabels)
	}
	for _, l := range labels {
		if !contains(seen.Marks, l) || !contains(seen.Table, l) {
			t.Errorf("backup %s is not on the page: timeline %v, table %v", l, seen.Marks, seen.Table)
		}
	}
	if !strings.HasSuffix(strings.TrimSpace(seen.Ready), " ready") || strings.Contains(seen.Ready, "not ready") {
		t.Errorf("the cluster's heading says %q", seen.Ready)
	}
	if !strings.Contains(seen.BrokenJobs, "failed") || !strings.Contains(seen.BrokenJobs, "connect to the server") {
		t.Errorf("the broken cluster's failed backup is not on the page: %q", seen.BrokenJobs)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestServerShutdownCancelsARunningBackupAfterTheGracePeriod: SIGTERM while a backup runs
// with a grace period too short for it: the backup is cancelled as an interrupted `pgharbor
// backup` is (no manifest, its objects removed, its lock released) and the server exits 0.
func TestServerShutdownCancelsARunningBackupAfterTheGracePeriod(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "20", "-q") // a backup of a few seconds
	e.must("repo", "init")
	listen := fmt.Sprintf("127.0.0.1:%d", pgtest.FreePort(t))
	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	// No backup yet: the start-up catch-up backs up at once.
	e.writeOwned(e.config, string(base)+fmt.Sprintf(`server: {listen: "%s", shutdown_grace: 300ms}
schedules: {backup: "@every 1h"}
postgres: {conn: "%s"}
`, listen, pg.ConnString("postgres")), 0o600)
	srv := e.startServer(e.config, listen)
	waitLog(t, srv, "job started")
	time.Sleep(500 * time.Millisecond)
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-srv.done:
		if err != nil {
			t.Fatalf("server exit after SIGTERM: %v\n%s", err, srv.logText())
		}
	case <-time.After(20 * time.Second):
		// The cancelled backup should end at once: show where it is stuck.
		srv.cmd.Process.Signal(syscall.SIGQUIT)
		<-srv.done
		t.Fatalf("server did not stop within 20 s of SIGTERM; its goroutines:\n%s", srv.logText())
	}
	log := srv.logText()
	if strings.Contains(log, `"msg":"job finished"`) {
		t.Fatalf("the backup finished within 800 ms: the test needs a larger cluster to cancel one\n%s", log)
	}
	for _, want := range []string{`"msg":"grace period over: cancelling running jobs"`, `"msg":"job failed"`, "context canceled", `"msg":"server stopped"`} {
		if !strings.Contains(log, want) {
			t.Errorf("server log lacks %s:\n%s", want, log)
		}
	}
	var info struct {
		Catalog struct {
			Backups    []json.RawMessage `json:"backups"`
			Incomplete []json.RawMessage `json:"incomplete"`
		} `json:"catalog"`
	}
	if err := json.Unmarshal([]byte(e.must("info", "--output", "json")), &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Catalog.Backups) != 0 || len(info.Catalog.Incomplete) != 0 {
		t.Fatalf("after the cancelled backup: %+v", info.Catalog)
	}
	if left := strings.TrimSpace(e.must("repo", "ls", "backups/")); left != "" {
		t.Fatalf("the cancelled backup left objects:\n%s", left)
	}
	if locks := strings.TrimSpace(e.must("repo", "ls", "locks/")); locks != "" {
		t.Fatalf("the cancelled backup left its lock:\n%s", locks)
	}
	// The next backup takes the lock at once.
	e.must("backup", "--conn", pg.ConnString("postgres"))
}

// The server's expire job: with a retention policy, expire runs after every scheduled
// backup and keeps exactly the newest backups the policy names; what it deleted is counted
// in /metrics, and what is left restores. With wal.stream.enabled the server also runs the
// cluster's WAL receiver, which /metrics shows streaming.
func TestServerExpiresAfterScheduledBackups(t *testing.T) {
	t.Setenv("PGHARBOR_WAL_STREAM_ENABLED", "true")
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	e.must("repo", "init")
	listen := fmt.Sprintf("127.0.0.1:%d", pgtest.FreePort(t))
	base, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(e.dir, "server.yaml")
	e.writeOwned(cfg, string(base)+fmt.Sprintf(`postgres: {conn: "%s"}
server: {listen: %s, refresh_interval: 1s}
schedules: {backup: "@every 2s"}
retention: {full_count: 2}
`, pg.ConnString("postgres"), listen), 0o600)
	// A writer killed two days ago left a temporary file; one being written now has another.
	stale := filepath.Join(e.dir, "repo", "main", ".pgharbor-tmp-0123456789abcdef")
	live := filepath.Join(e.dir, "repo", "main", ".pgharbor-tmp-fedcba9876543210")
	for _, p := range []string{stale, live} {
		if err := os.WriteFile(p, []byte("half"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(stale, past, past); err != nil {
		t.Fatal(err)
	}
	srv := e.startServer(cfg, listen)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		fams := srv.metrics()
		backups := metricOrZero(fams, "pgharbor_job_runs_total", map[string]string{"cluster": "main", "job": "backup", "outcome": "ok"})
		expired := metricOrZero(fams, "pgharbor_expired_objects_total", map[string]string{"cluster": "main"})
		streaming := metricOrZero(fams, "pgharbor_wal_receiver_streaming", map[string]string{"cluster": "main", "slot": "pgharbor"})
		if backups >= 4 && expired > 0 && streaming == 1 {
			t.Logf("%v scheduled backups, %v objects expired", backups, expired)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 2 minutes: %v backups, %v objects expired, receiver streaming %v\nserver log:\n%s", backups, expired, streaming, srv.logText())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if n := pg.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_stat_replication WHERE application_name = 'pgharbor'"); n != "1" {
		t.Fatalf("the server's WAL receiver is not connected (%s)", n)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	<-srv.done
	n := len(e.info().Catalog.Backups)
	if n < 2 || n > 3 { // the newest two, and perhaps one backup taken after the last expire
		t.Fatalf("%d complete backups after expire with full_count 2", n)
	}
	if strings.Contains(srv.logText(), `"job":"expire"`) && strings.Contains(srv.logText(), "not built") {
		t.Fatalf("expire job not wired:\n%s", srv.logText())
	}
	if left := tempFiles(t, filepath.Join(e.dir, "repo")); len(left) != 1 || left[0] != live {
		t.Fatalf("temporary files after the server's expire jobs: %v, want only %s\nserver log:\n%s", left, live, srv.logText())
	}
	if !strings.Contains(srv.logText(), "removed temporary files of interrupted writes") {
		t.Fatalf("the server did not log the removal:\n%s", srv.logText())
	}
	e.must("verify")
}

// metricOrZero is metricValue for a series that may not exist yet.
func metricOrZero(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if v, ok := want[l.GetName()]; ok && v != l.GetValue() {
				continue next
			}
		}
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		if m.Gauge != nil {
			return m.Gauge.GetValue()
		}
	}
	return 0
}
