package server

import (
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"
)

// The status page is plain HTML with inline SVG drawn here: no script, no stylesheet or font
// fetched from anywhere, so it works on an isolated backup host and in any browser. It
// reloads itself every 30 seconds with a meta refresh.

const (
	svgWidth   = 960
	svgLeft    = 10
	svgRight   = 950
	labelsMax  = 6 // backup labels written on the timeline; the table lists them all
	tableMax   = 30
	recentMax  = 12
	sizeHeight = 80
)

type pageData struct {
	Now      string
	Clusters []pageCluster
	Ready    bool
}

type pageCluster struct {
	ClusterStatus
	ID         string
	System     string
	PGVersion  int
	Encryption string
	Window     string
	WindowLen  string
	WALSegment string
	WALAge     string
	RepoSize   string
	Timeline   *timeline
	Backups    []pageBackup
	MoreBackup int
	Jobs       []pageJob
	Recent     []pageRun
	Sizes      *sizeChart
	Incomplete int
}

type pageBackup struct {
	Label, Start, Stop, Size, Stored, Seconds string
}

type pageJob struct {
	Job, Schedule, Next, LastStart, LastOutcome, LastSeconds, LastText string
	Running                                                            bool
	Failed                                                             bool
}

type pageRun struct {
	Job, Trigger, Start, Outcome, Seconds, Text string
	Failed                                      bool
}

type timeline struct {
	From, To            string
	WindowX, WindowW    float64
	WindowStart, WindEn string
	Marks               []timelineMark
	NowX                float64
}

type timelineMark struct {
	Label        string
	X, W         float64 // backup from its start to its stop
	TextX, TextY float64
	ShowLabel    bool
	Title        string
}

type sizeChart struct {
	Points   string
	Min, Max string
	From, To string
}

func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	data := pageData{Now: now.UTC().Format(time.RFC3339), Ready: true}
	for _, st := range s.Status(now) {
		data.Clusters = append(data.Clusters, buildPageCluster(st, now))
		if !st.Ready {
			data.Ready = false
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageTemplate.Execute(w, data); err != nil {
		s.log.Error("status page", "error", err)
	}
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func fmtAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%.0f s", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%.1f min", d.Minutes())
	case d < 48*time.Hour:
		return fmt.Sprintf("%.1f h", d.Hours())
	}
	return fmt.Sprintf("%.1f days", d.Hours()/24)
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func buildPageCluster(st ClusterStatus, now time.Time) pageCluster {
	pc := pageCluster{ClusterStatus: st, ID: "cluster-" + st.Name, Window: "empty (no backup)", WALAge: "—", RepoSize: fmtBytes(st.RepositoryBytes)}
	if f := st.Info; f != nil {
		pc.System, pc.PGVersion, pc.Encryption = f.Identity.SystemIdentifier, f.Identity.PGVersion/10000, f.Identity.Encryption
		if !f.Window.Earliest.IsZero() {
			pc.Window = fmtTime(f.Window.Earliest) + " … " + fmtTime(f.Window.Latest)
			pc.WindowLen = fmtAge(f.Window.Latest.Sub(f.Window.Earliest))
		}
		if seg, _ := newestSegment(f); seg != "" {
			pc.WALSegment = seg
		}
		if !f.WAL.Newest.IsZero() {
			pc.WALAge = fmtAge(now.Sub(f.WAL.Newest))
		}
		if f.Catalog != nil {
			pc.Incomplete = len(f.Catalog.Incomplete)
			bs := append(f.Catalog.Backups[:0:0], f.Catalog.Backups...)
			sort.Slice(bs, func(i, j int) bool { return bs[i].StopTime.After(bs[j].StopTime) })
			for i, b := range bs {
				if i == tableMax {
					pc.MoreBackup = len(bs) - tableMax
					break
				}
				pc.Backups = append(pc.Backups, pageBackup{Label: b.Label, Start: fmtTime(b.StartTime), Stop: fmtTime(b.StopTime),
					Size: fmtBytes(b.Size), Stored: fmtBytes(b.StoredSize), Seconds: fmt.Sprintf("%.1f", b.Duration)})
			}
			pc.Timeline = buildTimeline(f, now)
		}
	}
	for _, j := range st.Jobs {
		pj := pageJob{Job: string(j.Job), Schedule: j.Schedule, Next: fmtTime(j.Next), LastStart: "—", LastOutcome: "never run", Running: j.Running != nil}
		if j.Schedule == "" {
			pj.Schedule, pj.Next = "not scheduled", "—"
		}
		if l := j.Last; l != nil {
			pj.LastStart, pj.LastOutcome, pj.LastSeconds = fmtTime(l.Start), l.Outcome, fmt.Sprintf("%.1f s", l.Seconds())
			pj.LastText, pj.Failed = l.Detail, l.Outcome == OutcomeFailed
			if l.Error != "" {
				pj.LastText = l.Error
			}
		}
		if pj.Running {
			pj.LastOutcome = "running since " + fmtTime(j.Running.Start)
		}
		pc.Jobs = append(pc.Jobs, pj)
	}
	for i := len(st.RecentRuns) - 1; i >= 0 && len(pc.Recent) < recentMax; i-- {
		r := st.RecentRuns[i]
		text := r.Detail
		if r.Error != "" {
			text = r.Error
		}
		pc.Recent = append(pc.Recent, pageRun{Job: string(r.Job), Trigger: r.Trigger, Start: fmtTime(r.Start), Outcome: r.Outcome,
			Seconds: fmt.Sprintf("%.1f", r.Seconds()), Text: text, Failed: r.Outcome == OutcomeFailed})
	}
	pc.Sizes = buildSizeChart(st.SizeHistory)
	return pc
}

// buildTimeline places the recoverable window and the backups on a time axis that runs from
// the oldest backup's start to now.
func buildTimeline(f *Facts, now time.Time) *timeline {
	bs := f.Catalog.Backups
	if len(bs) == 0 {
		return nil
	}
	from, to := bs[0].StartTime, now
	for _, b := range bs {
		if b.StartTime.Before(from) {
			from = b.StartTime
		}
		if b.StopTime.After(to) {
			to = b.StopTime
		}
	}
	if f.Window.Latest.After(to) {
		to = f.Window.Latest
	}
	span := to.Sub(from)
	from = from.Add(-span / 50)
	span = to.Sub(from)
	if span <= 0 {
		span = time.Second
	}
	x := func(t time.Time) float64 {
		return svgLeft + float64(svgRight-svgLeft)*float64(t.Sub(from))/float64(span)
	}
	tl := &timeline{From: fmtTime(from), To: fmtTime(to), NowX: x(now)}
	if !f.Window.Earliest.IsZero() {
		tl.WindowX = x(f.Window.Earliest)
		tl.WindowW = max(x(f.Window.Latest)-tl.WindowX, 1)
		tl.WindowStart, tl.WindEn = f.Window.Earliest.UTC().Format(time.RFC3339), f.Window.Latest.UTC().Format(time.RFC3339)
	}
	sorted := append(bs[:0:0], bs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].StopTime.Before(sorted[j].StopTime) })
	for i, b := range sorted {
		m := timelineMark{Label: b.Label, X: x(b.StartTime), W: max(x(b.StopTime)-x(b.StartTime), 2),
			Title: fmt.Sprintf("backup %s: %s … %s, %s", b.Label, fmtTime(b.StartTime), fmtTime(b.StopTime), fmtBytes(b.Size))}
		if fromEnd := len(sorted) - 1 - i; fromEnd < labelsMax {
			m.ShowLabel = true
			m.TextY = 96 + float64(fromEnd%3)*14
			m.TextX = min(m.X, svgRight-150)
		}
		tl.Marks = append(tl.Marks, m)
	}
	return tl
}

func buildSizeChart(samples []SizeSample) *sizeChart {
	if len(samples) < 2 {
		return nil
	}
	lo, hi := samples[0].Bytes, samples[0].Bytes
	for _, s := range samples {
		lo, hi = min(lo, s.Bytes), max(hi, s.Bytes)
	}
	from, to := samples[0].At, samples[len(samples)-1].At
	span := max(to.Sub(from), time.Second)
	rng := max(hi-lo, 1)
	var pts []string
	for _, s := range samples {
		px := svgLeft + float64(svgRight-svgLeft)*float64(s.At.Sub(from))/float64(span)
		py := float64(sizeHeight-10) - float64(sizeHeight-30)*float64(s.Bytes-lo)/float64(rng)
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", px, py))
	}
	return &sizeChart{Points: strings.Join(pts, " "), Min: fmtBytes(lo), Max: fmtBytes(hi), From: fmtTime(from), To: fmtTime(to)}
}

var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="30">
<title>pgharbor server{{if not .Ready}} — not ready{{end}}</title>
<style>
body{font:14px/1.4 sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 .3em} h2{font-size:17px;margin:.2em 0}
section.cluster{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0}
.ok{color:#11772d;font-weight:bold} .bad{color:#b3261e;font-weight:bold}
table{border-collapse:collapse;margin:.5em 0} td,th{border-bottom:1px solid #eee;padding:2px 10px 2px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:normal} .facts td:first-child{color:#555}
svg text{font:11px sans-serif;fill:#333} .muted{color:#777}
</style></head>
<body>
<h1>pgharbor server</h1>
<p class="muted">at {{.Now}} · <a href="/metrics">metrics</a> · <a href="/api/v1/clusters">JSON</a> · <a href="/readyz">readyz</a></p>
{{range .Clusters}}
<section class="cluster" id="{{.ID}}" data-cluster="{{.Name}}">
<h2>{{.Name}} {{if .Ready}}<span class="ok">ready</span>{{else}}<span class="bad">not ready</span>{{end}}</h2>
{{if .Problems}}<ul class="problems">{{range .Problems}}<li class="bad">{{.}}</li>{{end}}</ul>{{end}}
<table class="facts">
<tr><td>system identifier</td><td>{{if .System}}{{.System}} (PostgreSQL {{.PGVersion}}, encryption {{.Encryption}}){{else}}—{{end}}</td></tr>
<tr><td>recoverable window</td><td class="window-text">{{.Window}}{{if .WindowLen}} ({{.WindowLen}}){{end}}</td></tr>
<tr><td>newest archived segment</td><td class="wal-segment">{{if .WALSegment}}{{.WALSegment}}, stored {{.WALAge}} ago{{else}}none{{end}}</td></tr>
<tr><td>repository size</td><td>{{.RepoSize}}{{if .Incomplete}} · {{.Incomplete}} incomplete backup(s){{end}}</td></tr>
{{if .ReadError}}<tr><td>repository</td><td class="bad">{{.ReadError}}</td></tr>{{end}}
</table>
{{with .Timeline}}
<svg class="timeline" width="960" height="140" viewBox="0 0 960 140" role="img" aria-label="recoverable window and backups">
<rect x="10" y="30" width="940" height="40" fill="#f0f0f0"/>
{{if .WindowStart}}<rect class="window" data-start="{{.WindowStart}}" data-end="{{.WindEn}}" x="{{printf "%.1f" .WindowX}}" y="30" width="{{printf "%.1f" .WindowW}}" height="40" fill="#b9e3c6"><title>recoverable window {{.WindowStart}} … {{.WindEn}}</title></rect>{{end}}
{{range .Marks}}<rect class="backup" data-label="{{.Label}}" x="{{printf "%.1f" .X}}" y="22" width="{{printf "%.1f" .W}}" height="56" fill="#2f6db5" opacity="0.8"><title>{{.Title}}</title></rect>
{{if .ShowLabel}}<text class="backup-label" x="{{printf "%.1f" .TextX}}" y="{{printf "%.0f" .TextY}}">{{.Label}}</text>{{end}}
{{end}}<line x1="{{printf "%.1f" .NowX}}" y1="14" x2="{{printf "%.1f" .NowX}}" y2="80" stroke="#b3261e" stroke-width="1.5"/>
<text x="10" y="12">{{.From}}</text><text x="950" y="12" text-anchor="end">now {{.To}}</text>
</svg>
<p class="muted">green: recoverable window · blue: backups (start to stop) · red: now</p>
{{else}}<p class="muted">no complete backup yet: nothing to restore from</p>{{end}}
<h3>Jobs</h3>
<table class="jobs"><tr><th>job</th><th>schedule</th><th>next</th><th>last run</th><th>outcome</th><th>took</th><th></th></tr>
{{range .Jobs}}<tr data-job="{{.Job}}"><td>{{.Job}}</td><td><code>{{.Schedule}}</code></td><td>{{.Next}}</td><td>{{.LastStart}}</td><td class="{{if .Failed}}bad{{else if eq .LastOutcome "ok"}}ok{{end}}">{{.LastOutcome}}</td><td>{{.LastSeconds}}</td><td>{{.LastText}}</td></tr>
{{end}}</table>
{{if .Recent}}<h3>Recent runs</h3>
<table class="runs"><tr><th>job</th><th>trigger</th><th>start</th><th>outcome</th><th>seconds</th><th></th></tr>
{{range .Recent}}<tr><td>{{.Job}}</td><td>{{.Trigger}}</td><td>{{.Start}}</td><td class="{{if .Failed}}bad{{else if eq .Outcome "ok"}}ok{{end}}">{{.Outcome}}</td><td>{{.Seconds}}</td><td>{{.Text}}</td></tr>
{{end}}</table>{{end}}
<h3>Repository size</h3>
{{with .Sizes}}<svg class="sizes" width="960" height="100" viewBox="0 0 960 100" role="img" aria-label="repository size over time">
<polyline fill="none" stroke="#2f6db5" stroke-width="2" points="{{.Points}}"/>
<text x="10" y="95">{{.From}}</text><text x="950" y="95" text-anchor="end">{{.To}}</text>
<text x="950" y="12" text-anchor="end">{{.Min}} … {{.Max}}</text>
</svg>{{else}}<p class="muted">{{.RepoSize}} (the chart needs two readings)</p>{{end}}
{{if .Backups}}<h3>Backups</h3>
<table class="backups"><tr><th>label</th><th>start</th><th>stop</th><th>size</th><th>stored</th><th>seconds</th></tr>
{{range .Backups}}<tr><td class="label">{{.Label}}</td><td>{{.Start}}</td><td>{{.Stop}}</td><td>{{.Size}}</td><td>{{.Stored}}</td><td>{{.Seconds}}</td></tr>
{{end}}</table>{{if .MoreBackup}}<p class="muted">and {{.MoreBackup}} older</p>{{end}}{{end}}
</section>
{{else}}<p>no cluster configured</p>{{end}}
</body></html>
`))
