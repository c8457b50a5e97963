package replica

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Reason says why a standby does not stream.
type Reason string

// Reasons, each with the advice StreamError prints.
const (
	ReasonUnreachable     Reason = "primary unreachable"
	ReasonAuth            Reason = "authentication failed"
	ReasonHBA             Reason = "rejected by pg_hba.conf"
	ReasonNotReplication  Reason = "no replication privilege"
	ReasonSlotInUse       Reason = "slot in use"
	ReasonSlotMissing     Reason = "slot missing"
	ReasonTimeline        Reason = "timeline mismatch"
	ReasonMissingWAL      Reason = "missing WAL"
	ReasonForeignPrimary  Reason = "primary belongs to another cluster"
	ReasonAhead           Reason = "standby ahead of the primary"
	ReasonServerStopped   Reason = "standby stopped"
	ReasonStillCatchingUp Reason = "not streaming yet"
)

var advice = map[Reason]string{
	ReasonUnreachable:     "check the host and port in --primary, that the primary runs and listens there (listen_addresses), and firewalls",
	ReasonAuth:            "the primary refused the password: put the right one in --primary (password=…) or in the postgres OS user's ~/.pgpass",
	ReasonHBA:             "add a `host replication USER ADDRESS scram-sha-256` line to the primary's pg_hba.conf and reload it",
	ReasonNotReplication:  "the user in --primary needs the REPLICATION attribute (ALTER ROLE … REPLICATION)",
	ReasonSlotInUse:       "another standby streams through this slot: give this one its own --slot (with --create-slot)",
	ReasonSlotMissing:     "create the slot on the primary (--create-slot) or name an existing one",
	ReasonTimeline:        "the standby's timeline is not in the primary's history: the backup is from a timeline the primary left before it; take a new backup of the primary, or rebuild with `pgharbor replica rebuild`",
	ReasonMissingWAL:      "the primary removed WAL the standby still needs and the archive does not have it: use a replication slot, raise wal_keep_size, check that archiving works (`pgharbor info`), or seed from a newer backup",
	ReasonForeignPrimary:  "the primary's system identifier differs from the repository's: --primary points at another cluster",
	ReasonAhead:           "the standby holds or needs WAL the primary never wrote (a node that diverged, e.g. a former primary): rebuild it with `pgharbor replica rebuild`",
	ReasonServerStopped:   "the standby's server exited; its log says why",
	ReasonStillCatchingUp: "the standby is still replaying archived WAL or connecting; wait longer (--wait) or look at its log",
}

// logPatterns map messages of the standby's (or the probe's) log to reasons; the first that
// matches wins, so the precise ones come first.
var logPatterns = []struct {
	re     *regexp.Regexp
	reason Reason
}{
	{regexp.MustCompile(`replication slot "[^"]*" is active for PID`), ReasonSlotInUse},
	{regexp.MustCompile(`replication slot "[^"]*" does not exist`), ReasonSlotMissing},
	{regexp.MustCompile(`password authentication failed|authentication failed for user|no password supplied|fe_sendauth`), ReasonAuth},
	{regexp.MustCompile(`no pg_hba\.conf entry|pg_hba\.conf rejects`), ReasonHBA},
	{regexp.MustCompile(`must be superuser or replication role|permission denied to start WAL sender`), ReasonNotReplication},
	{regexp.MustCompile(`database system identifier differs`), ReasonForeignPrimary},
	{regexp.MustCompile(`is not a child of this server's history|highest timeline \d+ of the primary is behind recovery timeline|forked off current database system timeline|requested starting point .* is not in this server's history`), ReasonTimeline},
	{regexp.MustCompile(`requested starting point \S+ is ahead of the WAL flush position`), ReasonAhead},
	{regexp.MustCompile(`requested WAL segment \S+ has already been removed|could not receive data from WAL stream.*has already been removed`), ReasonMissingWAL},
	{regexp.MustCompile(`could not connect to the primary server|Connection refused|could not translate host name|timeout expired|No route to host`), ReasonUnreachable},
}

// Classify returns the reason the standby's log (its tail, newest last) shows, newest
// evidence first; ok is false when nothing in it explains the failure.
func Classify(log string) (Reason, bool) {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		for _, p := range logPatterns {
			if p.re.MatchString(lines[i]) {
				return p.reason, true
			}
		}
	}
	return "", false
}

// StreamError says why a standby does not stream, with what to do and the standby's log.
type StreamError struct {
	Reason  Reason
	Detail  string // what was seen (a probe's error, a log line)
	LogFile string
	LogTail string
}

func (e *StreamError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "standby does not stream: %s", e.Reason)
	if e.Detail != "" {
		fmt.Fprintf(&b, ": %s", e.Detail)
	}
	if a := advice[e.Reason]; a != "" {
		fmt.Fprintf(&b, "\n  what to do: %s", a)
	}
	if e.LogTail != "" {
		fmt.Fprintf(&b, "\n--- standby log %s (tail) ---\n%s", e.LogFile, strings.TrimRight(e.LogTail, "\n"))
	}
	return b.String()
}

// ReasonOf returns the reason of a StreamError in err's chain, or "".
func ReasonOf(err error) Reason {
	var se *StreamError
	if errors.As(err, &se) {
		return se.Reason
	}
	return ""
}

// lastMatch returns the newest line of log that explains reason r (for the Detail).
func lastMatch(log string, r Reason) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		for _, p := range logPatterns {
			if p.reason == r && p.re.MatchString(lines[i]) {
				return strings.TrimSpace(lines[i])
			}
		}
	}
	return ""
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
		if i := strings.IndexByte(string(b), '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}
