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
//   - extent: a piece of one file inside one bundle (bundle, offset, length, CRC-32C).
//   - summary: backups/<label>/summary, the small part of the manifest that listings read.
//   - manifest: backups/<label>/manifest, written last; without it a backup does not exist.
package backup
