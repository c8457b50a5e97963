// Package replica turns restores from the repository into streaming standbys: it seeds a new
// standby (create), brings a failed standby or a former primary back (rebuild: pg_rewind
// when the node diverged and pg_rewind can apply, otherwise a delta restore), writes the
// standby configuration, starts the server and waits until it streams from the primary, or
// says why it does not.
//
// Glossary:
//   - primary: the server the standby streams from, reached with a libpq connection string
//     (primary_conninfo).
//   - slot: a physical replication slot on the primary (primary_slot_name); it keeps the WAL
//     a standby has not received yet. "Active" means a walsender is using it.
//   - diverged: the node wrote WAL on a timeline the primary's history left before that
//     point (a former primary after a promotion elsewhere); replaying the primary's WAL on
//     top of it is impossible, its files must be rewound or restored.
//   - reason: why a standby does not stream (auth, pg_hba, slot in use, timeline, missing
//     WAL …), read from a probe of the primary and from the standby's log.
package replica
