#!/usr/bin/env bash
# Failover benchmark: RTO, lost acknowledged transactions and client errors when the primary
# is SIGKILLed under writes through `pgharbor pool` with the failover monitor inside.
#
#   bench/failover/run.sh        (from the repository root, or via `make bench`)
#
# It drives the end-to-end test internal/e2e TestFailoverPrimaryKilledUnderWrites (real
# PostgreSQL 15: a primary and two standbys, four clients inserting one row per transaction
# through the pool, two of them on a new connection for every transaction), RUNS crashes per
# set, each on fresh clusters:
#
#   fast      health checks every 1 s, failover.retries -1 (none), asynchronous standbys
#   defaults  every health-check and retry setting at its default, asynchronous standbys
#   sync      as fast, with synchronous_standby_names = 'ANY 1 (s1, s2)'
#
# Reported per run: RTO = SIGKILL → first write acknowledged by the new primary through the
# pool, the promotion as the test saw it, acknowledged rows missing on the new primary, and
# client errors by kind, split into transactions that reached a backend of the old primary
# ("in flight"; some of them began after the SIGKILL by the client's clock, since backends outlive
# a killed postmaster by milliseconds) and transactions begun after it that never reached it. Per set: median and worst RTO, lost rows, errors. Then SHOW POOL_NODES before and
# after one failover.
#
# Settings (environment):
#   RUNS=5  SETS="fast defaults sync"  IO_ENGINE=epoll (or goroutines)
#   RESULTS_FILE=path (default bench/results/failover-<UTC>.txt)
# Needs: PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin), Go. Run as root (the
# clusters run as the postgres OS user).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

RUNS=${RUNS:-5}
SETS=${SETS:-"fast defaults sync"}
IO_ENGINE=${IO_ENGINE:-epoll}
mkdir -p bench/results
RESULTS_FILE=${RESULTS_FILE:-bench/results/failover-$(date -u +%Y%m%dT%H%M%SZ).txt}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rc=0
for set in $SETS; do
	env=(PGHARBOR_E2E_FAILOVER_RUNS="$RUNS" PGHARBOR_E2E_IO_ENGINE="$IO_ENGINE")
	case $set in
	fast) env+=(PGHARBOR_E2E_FAILOVER_RETRIES=-1 PGHARBOR_E2E_FAILOVER_SYNC=0) ;;
	defaults) env+=(PGHARBOR_E2E_FAILOVER_DEFAULTS=1 PGHARBOR_E2E_FAILOVER_SYNC=0) ;;
	sync) env+=(PGHARBOR_E2E_FAILOVER_RETRIES=-1 PGHARBOR_E2E_FAILOVER_SYNC=1) ;;
	*) echo "unknown set $set (want fast, defaults, sync)" >&2; exit 2 ;;
	esac
	echo "== $set: $RUNS crashes (io_engine $IO_ENGINE)"
	if ! env "${env[@]}" go test -count=1 -p 1 -timeout 60m -v -run '^TestFailoverPrimaryKilledUnderWrites$' ./internal/e2e/ >"$work/$set.log" 2>&1; then
		echo "   (the test failed; its log: $RESULTS_FILE.$set.log)"
		cp "$work/$set.log" "$RESULTS_FILE.$set.log"
		rc=1
	fi
	grep -h 'FAILOVER-RESULT' "$work/$set.log" | sed "s/^ *failover_test.go:[0-9]*: FAILOVER-RESULT /$set /" >>"$work/results"
	if [ ! -s "$work/nodes" ]; then
		grep -m2 -A4 'SHOW POOL_NODES' "$work/$set.log" | grep -v '^--$' |
			sed 's/^ *failover_test.go:[0-9]*: //; s/^        //' >"$work/nodes" || true
	fi
done

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
{
	echo "failover benchmark $(date -u +%Y-%m-%dT%H:%MZ), io_engine $IO_ENGINE, $(nproc) cores"
	echo "RTO = SIGKILL of the primary's postmaster -> first write acknowledged by the new primary through the pool"
	echo
	printf '%-9s %4s %8s %12s %6s %7s %10s %16s %12s  %s\n' set run "RTO(s)" "promoted(s)" lost acked in_flight "(begun after kill)" begun_after "errors by kind"
	while read -r line; do
		set=${line%% *}
		printf '%-9s %4s %8.3f %12.3f %6s %7s %10s %16s %12s  %s\n' "$set" "$(field run <<<"$line")" \
			"$(awk -v m="$(field rto_ms <<<"$line")" 'BEGIN{print m/1000}')" \
			"$(awk -v m="$(field promoted_ms <<<"$line")" 'BEGIN{print m/1000}')" \
			"$(field lost <<<"$line")" "$(field acked <<<"$line")" "$(field errors_in_flight <<<"$line")" \
			"$(field errors_in_flight_begun_after_kill <<<"$line")" \
			"$(field errors_begun_after <<<"$line")" "$(sed -n 's/.* kinds="\(.*\)"$/\1/p' <<<"$line")"
	done <"$work/results"
	echo
	printf '%-9s %5s %12s %11s %6s %18s %18s %12s\n' set runs "RTO median" "RTO worst" lost "errors in flight" "(begun after kill)" "begun after"
	for set in $SETS; do
		grep "^$set " "$work/results" >"$work/r.$set" || true
		n=$(wc -l <"$work/r.$set")
		[ "$n" -gt 0 ] || continue
		rtos=$(field rto_ms <"$work/r.$set" | sort -n)
		med=$(awk -v n="$n" 'NR==int((n+1)/2){print $1/1000}' <<<"$rtos")
		worst=$(tail -1 <<<"$rtos" | awk '{print $1/1000}')
		lost=$(field lost <"$work/r.$set" | awk '{s+=$1} END{print s+0}')
		inf=$(field errors_in_flight <"$work/r.$set" | awk '{s+=$1} END{print s+0}')
		late=$(field errors_in_flight_begun_after_kill <"$work/r.$set" | awk '{s+=$1} END{print s+0}')
		aft=$(field errors_begun_after <"$work/r.$set" | awk '{s+=$1} END{print s+0}')
		printf '%-9s %5s %11.3fs %10.3fs %6s %18s %18s %12s\n' "$set" "$n" "$med" "$worst" "$lost" "$inf" "$late" "$aft"
	done
	echo
	echo "in_flight: the transaction reached a backend of the old primary (its commit is in doubt); \"begun after kill\": of those, begun"
	echo "after the SIGKILL by the client's clock (backends outlive their postmaster by milliseconds); begun_after: errors of transactions"
	echo "begun after the SIGKILL that never reached the old primary"
	echo "targets: fast RTO <= 0.5 s (pgpool-II's class), defaults RTO <= 3 s, begun_after 0, sync 0 lost"
	echo
	cat "$work/nodes"
} | tee "$RESULTS_FILE"
exit $rc
