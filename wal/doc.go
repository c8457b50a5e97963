// Package wal is pgharbor's side of PostgreSQL's write-ahead log: typed LSNs, timelines
// and segment names, timeline history files, and the archive itself — `wal push` for
// archive_command (with parallel push of the segments already waiting), `wal fetch` for
// restore_command (with a prefetching background process), and a listing that shows
// ranges and gaps per timeline.
//
// Glossary (PostgreSQL's own words):
//   - LSN: a byte position in the WAL stream, written "16/B374D848".
//   - timeline: a branch of history; a promotion or a point-in-time recovery starts a new
//     one. Timeline 1 is the first.
//   - segment: one WAL file of a fixed size (16 MiB by default; chosen at initdb and read
//     from the server or the repository identity, never assumed by this package), named
//     TTTTTTTTXXXXXXXXYYYYYYYY: timeline, then the segment number split in two.
//   - history file: "00000002.history", written at the start of a timeline; it lists every
//     ancestor timeline and the LSN at which history left it (the switch point).
//   - partial segment: "<segment>.partial", the last, incomplete segment of an old timeline
//     that a promoted standby archives.
//   - backup history file: "<segment>.<offset>.backup", written by pg_backup_stop.
//   - spool: a local directory holding markers of segments pushed ahead of PostgreSQL's
//     request (push side) and segments downloaded ahead of it (fetch side).
//
// Repository layout: see SegmentKey, HistoryKey and docs/wal.md.
package wal
