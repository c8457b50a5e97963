package server

import (
	"fmt"
	"sync"
	"time"
)

// Outcomes of a run.
const (
	OutcomeRunning = "running"
	OutcomeOK      = "ok"
	OutcomeFailed  = "failed"
	OutcomeSkipped = "skipped"
)

// RunRecord is one run of a job.
type RunRecord struct {
	Job     JobKind   `json:"job"`
	Trigger string    `json:"trigger"` // schedule, catch-up, after backup
	Start   time.Time `json:"start"`
	End     time.Time `json:"end,omitzero"`
	Outcome string    `json:"outcome"`
	Error   string    `json:"error,omitempty"`
	Detail  string    `json:"detail,omitempty"`
}

// Seconds is the run's duration.
func (r RunRecord) Seconds() float64 {
	if r.End.IsZero() {
		return time.Since(r.Start).Seconds()
	}
	return r.End.Sub(r.Start).Seconds()
}

// SizeSample is the repository size of a cluster at one moment.
type SizeSample struct {
	At    time.Time `json:"at"`
	Bytes int64     `json:"bytes"`
}

// Bounds of the in-memory history: the page shows recent runs and about a day of size
// samples at the default refresh interval; older ones are dropped.
const (
	maxRecentRuns  = 50
	maxSizeSamples = 1440
)

type clusterState struct {
	refreshMu sync.Mutex // one facts reading at a time

	mu          sync.Mutex
	spec        Cluster
	facts       *Facts
	factsAt     time.Time // when facts were read
	inspectedAt time.Time // last attempt
	inspectErr  error     // of the last attempt
	running     map[JobKind]*RunRecord
	last        map[JobKind]RunRecord // last run of each kind that was not skipped
	recent      []RunRecord           // newest last
	sizes       []SizeSample
}

func newClusterState() *clusterState {
	return &clusterState{running: map[JobKind]*RunRecord{}, last: map[JobKind]RunRecord{}}
}

// addRun records a finished or skipped run; cs.mu is held.
func (cs *clusterState) addRun(r RunRecord) {
	if r.Outcome != OutcomeSkipped {
		cs.last[r.Job] = r
	}
	cs.recent = append(cs.recent, r)
	if len(cs.recent) > maxRecentRuns {
		cs.recent = append(cs.recent[:0], cs.recent[len(cs.recent)-maxRecentRuns:]...)
	}
}

// addSize records a size sample; cs.mu is held.
func (cs *clusterState) addSize(at time.Time, bytes int64) {
	cs.sizes = append(cs.sizes, SizeSample{At: at, Bytes: bytes})
	if len(cs.sizes) > maxSizeSamples {
		cs.sizes = append(cs.sizes[:0], cs.sizes[len(cs.sizes)-maxSizeSamples:]...)
	}
}

// problems says why the cluster is not ready at now (nil when it is); cs.mu is held.
func (cs *clusterState) problems(now time.Time) []string {
	name := cs.spec.Name
	var out []string
	if cs.inspectErr != nil {
		out = append(out, fmt.Sprintf("cluster %s: cannot read its repository: %v", name, cs.inspectErr))
	}
	f := cs.facts
	if f == nil {
		if cs.inspectErr == nil {
			out = append(out, fmt.Sprintf("cluster %s: repository not read yet", name))
		}
		return out
	}
	if maxAge := cs.spec.MaxBackupAge; maxAge > 0 {
		if b, ok := f.Newest(); !ok {
			out = append(out, fmt.Sprintf("cluster %s: backup stale: no complete backup (max_backup_age %s)", name, maxAge))
		} else if age := now.Sub(b.StopTime); age > maxAge {
			out = append(out, fmt.Sprintf("cluster %s: backup stale: newest backup %s ended %s ago, more than max_backup_age %s", name, b.Label, age.Round(time.Second), maxAge))
		}
	}
	if maxAge := cs.spec.MaxWALAge; maxAge > 0 {
		if f.WAL.Newest.IsZero() {
			out = append(out, fmt.Sprintf("cluster %s: WAL stale: no archived WAL (max_wal_age %s)", name, maxAge))
		} else if age := now.Sub(f.WAL.Newest); age > maxAge {
			out = append(out, fmt.Sprintf("cluster %s: WAL stale: newest archived WAL is %s old, more than max_wal_age %s", name, age.Round(time.Second), maxAge))
		}
	}
	return out
}

// newestSegment names the highest complete segment of the highest timeline ("" when none).
func newestSegment(f *Facts) (string, uint32) {
	for i := len(f.WAL.Timelines) - 1; i >= 0; i-- {
		if t := f.WAL.Timelines[i]; t.Last != "" {
			return t.Last, uint32(t.TLI)
		}
	}
	return "", 0
}

// gaps counts the WAL gaps over all timelines.
func gaps(f *Facts) int {
	n := 0
	for _, t := range f.WAL.Timelines {
		n += len(t.Gaps)
	}
	return n
}
