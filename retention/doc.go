// Package retention decides which backups and which archived WAL a repository keeps, and
// deletes the rest. Plan is a pure function of a policy, the backups, the WAL archive and
// the time; Expire runs it against a repository under the repository lock.
//
// Glossary:
//   - policy: the rules (newest N full backups, younger than a duration, a recovery window,
//     a minimum count); a backup is kept when any rule keeps it, or when it is pinned.
//   - references: the backups whose bundles a diff or incr backup's extents point into; a
//     kept backup keeps its references ("kept: parent of …", "kept: referenced by …").
//   - pin: a marker object that exempts one backup from expiry (`pgharbor backup pin`).
//   - recovery window: every moment of the last D must stay restorable, so the newest backup
//     that stopped at or before the window's start is kept, with all WAL from its start.
//   - horizon: per timeline, the first WAL position any kept backup can still reach; WAL
//     before it goes. Timeline history files always stay.
//   - expiring marker: an object written into a backup's prefix before its manifest is
//     deleted, so that an interrupted expire is recognised and finished by the next one.
package retention
