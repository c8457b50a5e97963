// Package cluster keeps the pool's view of the PostgreSQL nodes behind it: which node is the
// primary, which standbys are healthy and how far behind they are, and where a read may go.
//
// Roles are never taken from the configuration: a periodic health check connects to every
// node, asks pg_is_in_recovery() and measures replication lag, and the results of one round
// are applied together in one place (Cluster.apply), which is the only place that changes a
// node's status from health checks. A failover monitor drives the same state through
// MarkDown, MarkUp and SetPrimary.
//
// Glossary:
//   - node: one PostgreSQL server listed in the config, identified by its position (node id,
//     from 0, as in pgpool-II's SHOW POOL_NODES).
//   - status: up (gets new traffic), down (gets none), unknown (not checked yet).
//   - role: primary or standby as the node itself reports it; unknown before its first check.
//   - detached: a node taken out by MarkDown; health checks do not bring it back, MarkUp does.
//   - fenced: the old primary after SetPrimary picked another node; it stays down until MarkUp,
//     so a returning old primary that still reports pg_is_in_recovery() = false (split brain)
//     is never routed to.
//   - lag: for a standby, bytes = primary's pg_current_wal_lsn() − standby's
//     pg_last_wal_replay_lsn(); time = now − pg_last_xact_replay_timestamp() while the standby
//     has received WAL it has not replayed yet (0 when caught up).
//
// A node that cannot be reached is marked down; the cluster starts and keeps serving with the
// nodes it can reach (degraded), never failing because one node is gone.
package cluster
