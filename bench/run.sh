#!/usr/bin/env bash
# `make bench`: the backup benchmark (bench/backup/run.sh: pgharbor against pgBackRest and
# pg_basebackup — backup, restore, WAL archiving) and then the pooler benchmark
# (bench/pool/run.sh: pgharbor pool against PgBouncer and direct connections).
#
#   BENCH_ONLY=backup|pool   run only one of them (default: both)
# Each benchmark takes its own settings from the environment; see the top of its run.sh.
# Both run even when the first fails; the exit status is non-zero when either failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ONLY=${BENCH_ONLY:-}
case $ONLY in ""|backup|pool) ;; *) echo "BENCH_ONLY must be backup or pool" >&2; exit 2 ;; esac
rc=0
if [ -z "$ONLY" ] || [ "$ONLY" = backup ]; then
	echo "== backup benchmark (bench/backup/run.sh)"
	bash bench/backup/run.sh || rc=1
fi
if [ -z "$ONLY" ] || [ "$ONLY" = pool ]; then
	echo "== pooler benchmark (bench/pool/run.sh)"
	bash bench/pool/run.sh || rc=1
fi
exit $rc
