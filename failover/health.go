package failover

import "fmt"

// HealthState is the monitor's belief about the primary.
type HealthState int

// Health states. The zero value is Healthy: a monitor starts trusting the primary it found.
const (
	// Healthy: the last check succeeded.
	Healthy HealthState = iota
	// Suspect: one or more checks in a row failed, not yet enough to act.
	Suspect
	// Failed: enough checks in a row failed; the monitor fails over. Only a successful
	// check leaves it (and that is the caller's business: after a failover the monitor
	// watches the new primary with a fresh Health).
	Failed
)

func (s HealthState) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Suspect:
		return "suspect"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("HealthState(%d)", int(s))
}

// Outcome is the result of one health check of the primary.
type Outcome int

// Outcomes.
const (
	// CheckOK: connected and the query answered in time.
	CheckOK Outcome = iota
	// CheckError: the server said no (connection refused, reset, an error reply): a
	// definite answer that something is wrong.
	CheckError
	// CheckTimeout: no answer within the connect or query timeout. A loaded server may just
	// be slow, so a timeout alone never fails the primary on its first occurrence.
	CheckTimeout
)

func (o Outcome) String() string {
	switch o {
	case CheckOK:
		return "ok"
	case CheckError:
		return "error"
	case CheckTimeout:
		return "timeout"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Health is the primary's health: the state and the consecutive failed checks behind it.
type Health struct {
	State    HealthState
	Failures int // consecutive failed checks
}

// Step is the one transition function of the health state machine. retries is how many
// failed checks in a row are tolerated: the primary fails on failed check number retries+1.
// A timeout never fails the primary on the first failed check, whatever retries says, so
// a single slow answer cannot cause a failover. Failed is absorbing: later outcomes do not
// change it (the failover is under way).
func Step(h Health, o Outcome, retries int) Health {
	if retries < 0 {
		retries = 0
	}
	if h.State == Failed {
		return h
	}
	if o == CheckOK {
		return Health{State: Healthy}
	}
	n := h.Failures + 1
	need := retries + 1
	if o == CheckTimeout && need < 2 {
		need = 2
	}
	if n >= need {
		return Health{State: Failed, Failures: n}
	}
	return Health{State: Suspect, Failures: n}
}
