// Package failover is the failover monitor: it watches the primary, decides when it has
// failed, elects the best standby, promotes it, tells the pool, re-points the other
// standbys and runs the user's hooks.
//
// Glossary:
//   - health state: what the monitor believes about the primary (healthy, suspect, failed),
//     changed only by Step, one check outcome at a time.
//   - candidate: a standby as seen at election time (up, its received and replayed LSN,
//     whether it was a synchronous standby in sync, its no_failover flag and priority).
//   - election: Elect, a pure function from candidates to the winner.
//   - promotion: pg_promote(true, timeout) on the winner over SQL.
//   - fencing: the pool's cluster.SetPrimary, which keeps the old primary out of routing
//     until an operator attaches it again.
//   - hooks: failover_command, follow_primary_command and on_role_change, shell commands
//     with pgpool-II's placeholders.
//
// Only one monitor may act on a cluster. The promotion lease (LeaseKey, an advisory lock
// held on the standbys while a monitor promotes) keeps a second monitor from promoting at the
// same moment; it is no consensus store (see docs/ha.md).
//
// Besides failover: Switchover (a planned change of primary with no committed transaction
// lost), Attach, Detach and Recover (the admin console's node commands, through Console),
// and auto_rejoin (a returning former primary rebuilt as a standby through a Rebuilder).
package failover
