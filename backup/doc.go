// Package backup takes base backups and keeps the catalog of backups in a repository.
//
// A backup reads the cluster one of two ways (Options.Method): on the database host it
// reads the data directory and tablespaces itself between pg_backup_start and
// pg_backup_stop (local.go, verifying page checksums and writing PostgreSQL's
// backup_manifest itself); from anywhere it streams BASE_BACKUP's tar archives
// (basebackup.go). Either way the bytes go through a bounded pipeline: the reader cuts the
// concatenated file data into
// bundles of BundleSize bytes (small files share a bundle, large files span several), N
// workers seal bundles (zstd + age), M uploaders store them. The pgharbor manifest lists every
// file with where its bytes live, and is written last: it is the completion marker.
//
// Glossary:
//   - label: a backup's name, its start time in UTC (20261122T023000Z); labels sort by time.
//   - bundle: backups/<label>/data/<n>, a sealed run of consecutive file bytes.
//   - extent: a piece of one file inside one bundle (bundle, offset, length, CRC-32C,
//     SHA-256); a file is cut into one extent per chunk (ChunkSize bytes of the file).
//   - type: full, diff or incr (incremental.go). A diff or incr backup compares each chunk
//     with its parent's and stores only the changed ones; the others are references: extents
//     that name the backup whose bundle holds them. Restore and verify read every piece from
//     the backup that holds it, in one pass.
//   - summary: backups/<label>/summary, the small part of the manifest that listings read.
//   - manifest: backups/<label>/manifest, written last; without it a backup does not exist.
package backup
