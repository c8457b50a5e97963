package failover

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/pgharbor/pgharbor/wal"
)

// Candidate is a standby as seen when the primary has failed.
type Candidate struct {
	ID   int
	Name string
	// Up: it answered the election's query and is in recovery.
	Up bool
	// NoFailover: the node is configured never to be promoted.
	NoFailover bool
	// Priority breaks ties between equally advanced standbys; higher wins.
	Priority int
	// ReceiveLSN is pg_last_wal_receive_lsn() (0 when unknown, e.g. never streamed);
	// ReplayLSN is pg_last_wal_replay_lsn(). A promoted standby replays everything it
	// received, so the larger of the two is how far it will be.
	ReceiveLSN, ReplayLSN wal.LSN
	// WasSync: at the primary's last successful check the standby was a synchronous
	// standby (sync_state sync or quorum) that was streaming.
	WasSync bool
}

// Position is how far the candidate gets once promoted.
func (c Candidate) Position() wal.LSN {
	if c.ReceiveLSN > c.ReplayLSN {
		return c.ReceiveLSN
	}
	return c.ReplayLSN
}

// ElectOptions are the election's rules.
type ElectOptions struct {
	// MaxLagBytes excludes a standby further than this behind the most advanced up standby
	// (and, when known, behind the failed primary's last known LSN); 0 = no limit.
	MaxLagBytes int64
	// PrimaryLSN is the failed primary's last known pg_current_wal_lsn(); 0 when unknown.
	PrimaryLSN wal.LSN
	// RequireSync: the primary ran with synchronous_standby_names set, so only a standby
	// that was in sync may win (no acknowledged commit lost).
	RequireSync bool
}

// ErrNoCandidate is returned by Elect when no standby qualifies.
var ErrNoCandidate = errors.New("no standby qualifies for promotion")

// Elect chooses the standby to promote: among the up standbys not marked no_failover
// (and, with RequireSync, that were in sync) and within the lag limit, the most advanced
// position wins, then the higher priority, then the smaller name. It also returns why each
// other standby was passed over, by name.
func Elect(cands []Candidate, o ElectOptions) (Candidate, map[string]string, error) {
	why := map[string]string{}
	var ok []Candidate
	var best wal.LSN
	for _, c := range cands {
		switch {
		case !c.Up:
			why[c.Name] = "not up"
		case c.NoFailover:
			why[c.Name] = "no_failover"
		case o.RequireSync && !c.WasSync:
			why[c.Name] = "not a synchronous standby in sync"
		default:
			ok = append(ok, c)
			if c.Position() > best {
				best = c.Position()
			}
		}
	}
	ref := best
	if o.PrimaryLSN > ref {
		ref = o.PrimaryLSN
	}
	if o.MaxLagBytes > 0 {
		kept := ok[:0]
		for _, c := range ok {
			lag := uint64(ref - c.Position())
			if lag > uint64(o.MaxLagBytes) {
				why[c.Name] = fmt.Sprintf("lag %d bytes exceeds max_lag_bytes %d", lag, o.MaxLagBytes)
				continue
			}
			kept = append(kept, c)
		}
		ok = kept
	}
	if len(ok) == 0 {
		var parts []string
		for _, c := range cands {
			parts = append(parts, c.Name+": "+why[c.Name])
		}
		sort.Strings(parts)
		return Candidate{}, why, fmt.Errorf("%w (%s)", ErrNoCandidate, strings.Join(parts, "; "))
	}
	sort.SliceStable(ok, func(i, j int) bool {
		a, b := ok[i], ok[j]
		if a.Position() != b.Position() {
			return a.Position() > b.Position()
		}
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		return a.Name < b.Name
	})
	for _, c := range ok[1:] {
		why[c.Name] = "less advanced or lower priority than " + ok[0].Name
	}
	return ok[0], why, nil
}
