package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ClusterStatus is one cluster in /api/v1/clusters.
type ClusterStatus struct {
	Name     string   `json:"name"`
	Ready    bool     `json:"ready"`
	Problems []string `json:"problems"`
	// Info is what `pgharbor info --output json` shows (null until the repository was read).
	Info            *Facts       `json:"info"`
	ReadAt          time.Time    `json:"read_at,omitzero"`
	ReadError       string       `json:"read_error,omitempty"`
	RepositoryBytes int64        `json:"repository_bytes"`
	WALNewestAge    float64      `json:"wal_newest_age_seconds,omitempty"`
	Jobs            []JobStatus  `json:"jobs"`
	RecentRuns      []RunRecord  `json:"recent_runs"`
	SizeHistory     []SizeSample `json:"repository_size_history"`
}

// JobStatus is one job kind of a cluster.
type JobStatus struct {
	Job      JobKind    `json:"job"`
	Schedule string     `json:"schedule,omitempty"`
	Next     time.Time  `json:"next,omitzero"`
	Running  *RunRecord `json:"running,omitempty"`
	Last     *RunRecord `json:"last,omitempty"`
}

// Status returns every cluster's status at now, in configuration order.
func (s *Server) Status(now time.Time) []ClusterStatus {
	var out []ClusterStatus
	for _, cs := range s.states() {
		cs.mu.Lock()
		st := ClusterStatus{Name: cs.spec.Name, Info: cs.facts, ReadAt: cs.factsAt, Problems: cs.problems(now)}
		if cs.inspectErr != nil {
			st.ReadError = cs.inspectErr.Error()
		}
		if st.Problems == nil {
			st.Problems = []string{}
		}
		st.Ready = len(st.Problems) == 0
		if cs.facts != nil {
			st.RepositoryBytes = cs.facts.RepositoryBytes()
			if !cs.facts.WAL.Newest.IsZero() {
				st.WALNewestAge = now.Sub(cs.facts.WAL.Newest).Seconds()
			}
		}
		for _, kind := range JobKinds() {
			_, hasJob := cs.spec.Jobs[kind]
			spec, scheduled := cs.spec.Schedules[kind]
			if !hasJob && !scheduled {
				continue
			}
			js := JobStatus{Job: kind, Schedule: spec}
			if scheduled {
				if sched, err := ParseSchedule(spec); err == nil {
					js.Next = sched.Next(now)
				}
			}
			if r := cs.running[kind]; r != nil {
				c := *r
				js.Running = &c
			}
			if r, ok := cs.last[kind]; ok {
				js.Last = &r
			}
			st.Jobs = append(st.Jobs, js)
		}
		st.RecentRuns = append([]RunRecord{}, cs.recent...)
		st.SizeHistory = append([]SizeSample{}, cs.sizes...)
		cs.mu.Unlock()
		out = append(out, st)
	}
	return out
}

// Handler serves /metrics, /healthz, /readyz, /api/v1/clusters and the status page at /.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorLog: slogPrintf{s}}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.HandleFunc("GET /api/v1/clusters", func(w http.ResponseWriter, r *http.Request) {
		st := s.Status(time.Now())
		if st == nil {
			st = []ClusterStatus{}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(st)
	})
	mux.HandleFunc("GET /{$}", s.servePage)
	return mux
}

// serveReady answers 200 when every cluster's newest backup and newest WAL are within their
// max ages and its repository could be read, else 503 naming what is stale.
func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	var problems []string
	for _, st := range s.Status(time.Now()) {
		problems = append(problems, st.Problems...)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready\n%s\n", strings.Join(problems, "\n"))
		return
	}
	fmt.Fprintln(w, "ready")
}

// slogPrintf hands promhttp's errors to the server's logger.
type slogPrintf struct{ s *Server }

func (l slogPrintf) Println(v ...any) { l.s.log.Error("metrics: " + fmt.Sprint(v...)) }

func formatUint(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
