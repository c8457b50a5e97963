// Package server runs pgharbor unattended: cron schedules of jobs per cluster, and one HTTP
// listener with Prometheus metrics, health and readiness probes, a JSON API and a status page.
//
// Glossary:
//   - cluster: one PostgreSQL cluster in a repository, with its own jobs and schedules.
//   - job: a unit of work of one kind (backup, verify, expire) on one cluster. The server
//     never runs the same job of a cluster twice at once: a tick that finds it still running
//     is skipped, logged and counted.
//   - facts: what the repository says of a cluster (identity, backups, archived WAL, the
//     recoverable window), the same facts `pgharbor info` shows. The server re-reads them
//     after every job and every refresh interval, and serves the last ones it read.
//   - run: one execution of a job, with its trigger (schedule, catch-up, after-backup), its
//     times and its outcome.
//
// The package knows nothing of storage drivers or keys: the command builds each Cluster
// with its jobs and its Inspect function.
package server
