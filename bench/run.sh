#!/usr/bin/env bash
# `make bench`: the backup benchmark (bench/backup/run.sh: pgharbor against pgBackRest and
# pg_basebackup — backup, restore, WAL archiving), the pooler benchmark (bench/pool/run.sh:
# pgharbor pool against PgBouncer and direct connections, then -M prepared with 50 clients
# against direct connections), the WAL receiver benchmark (bench/receive/run.sh: catch-up, and
# the receiver against a streaming standby as the synchronous standby), the standby benchmark
# (bench/replica/run.sh: seeding and rebuilding a standby with pgharbor, pg_basebackup and
# pgBackRest) and the failover benchmark (bench/failover/run.sh: RTO, lost transactions and
# client errors when the primary is killed under writes through the pool).
#
# The incremental backup benchmark (bench/incr/run.sh) compares pgharbor incr with pgBackRest's
# file-level and block incremental, and restoring an incr with restoring a full.
#
#   BENCH_ONLY=backup|pool|receive|replica|failover|incr   run only one of them (default: all)
# Each benchmark takes its own settings from the environment; see the top of its run.sh.
# All run even when one fails; the exit status is non-zero when any failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ONLY=${BENCH_ONLY:-}
case $ONLY in ""|backup|pool|receive|replica|failover|incr) ;; *) echo "BENCH_ONLY must be backup, pool, receive, replica, failover or incr" >&2; exit 2 ;; esac
rc=0
if [ -z "$ONLY" ] || [ "$ONLY" = backup ]; then
	echo "== backup benchmark (bench/backup/run.sh)"
	bash bench/backup/run.sh || rc=1
fi
if [ -z "$ONLY" ] || [ "$ONLY" = pool ]; then
	echo "== pooler benchmark (bench/pool/run.sh)"
	bash bench/pool/run.sh || rc=1
	# Protocol-level prepared statements (pgbench -M prepared) in transaction mode: the
	# Debian PgBouncer (1.18) cannot carry them (1.21 added max_prepared_statements), so
	# this pass compares pgharbor with direct connections only.
	echo "== pooler benchmark, -M prepared (bench/pool/run.sh)"
	MODE=prepared TARGETS="direct pgharbor" WORKLOADS="${PREPARED_WORKLOADS:-select tpcb}" TPCB_CLIENTS=${PREPARED_CLIENTS:-50} SELECT_CLIENTS=${PREPARED_CLIENTS:-50} \
		bash bench/pool/run.sh || rc=1
fi
if [ -z "$ONLY" ] || [ "$ONLY" = receive ]; then
	echo "== WAL receiver benchmark (bench/receive/run.sh)"
	bash bench/receive/run.sh || rc=1
fi
if [ -z "$ONLY" ] || [ "$ONLY" = replica ]; then
	echo "== standby benchmark (bench/replica/run.sh)"
	bash bench/replica/run.sh || rc=1
fi
if [ -z "$ONLY" ] || [ "$ONLY" = failover ]; then
	echo "== failover benchmark (bench/failover/run.sh)"
	bash bench/failover/run.sh || rc=1
fi
if [ -z "$ONLY" ] || [ "$ONLY" = incr ]; then
	echo "== incremental backup benchmark (bench/incr/run.sh)"
	bash bench/incr/run.sh || rc=1
fi
exit $rc
