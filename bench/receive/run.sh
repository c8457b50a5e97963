#!/usr/bin/env bash
# WAL receiver benchmark (issue 19): `pgharbor wal receive` on one PostgreSQL 15 cluster.
#
#   bench/receive/run.sh
#   BENCH_WAL_MB=300 BENCH_ROUNDS=1 BENCH_TPS_SECONDS=10 bench/receive/run.sh   (quick check)
#
# 1. Catch-up: with the receiver streaming into an encrypted filesystem repository, a bulk
#    load writes ~$BENCH_WAL_MB MB of WAL (INSERTs of pgbench-like rows committed every
#    20000 rows). At the end of the load, in the same session, a function reads the server's
#    WAL position and the receiver's flushed position (pg_stat_replication: the receiver
#    reports as flushed only what is in the repository), then polls every 10 ms until the
#    receiver has stored everything. Reported: the lag in MB at the end of the load, the seconds to catch up, the
#    receiver's CPU seconds per GB of WAL (utime+stime from /proc over the load and
#    catch-up) and its peak RSS (VmHWM).
# 2. Synchronous commit: pgbench TPC-B (-c 8, $BENCH_TPS_SECONDS s) with
#    synchronous_standby_names naming the receiver (run with --synchronous), against the
#    same with an ordinary streaming standby (pg_basebackup -R, on this machine) as the
#    synchronous standby, and with no synchronous standby. Rounds alternate the order.
# Medians over $BENCH_ROUNDS rounds. Output: the table on stdout, and
# bench/results/receive-<UTC>.txt.
#
# Settings: BENCH_WAL_MB=1300 BENCH_ROUNDS=3 BENCH_TPS_SECONDS=20 BENCH_SCALE=10
#   PGBIN=/usr/lib/postgresql/15/bin PGHARBOR_BIN=path KEEP=1
set -euo pipefail

WAL_MB=${BENCH_WAL_MB:-1300}
ROUNDS=${BENCH_ROUNDS:-3}
TPS_SECONDS=${BENCH_TPS_SECONDS:-20}
SCALE=${BENCH_SCALE:-10}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

HARBOR_BIN=${PGHARBOR_BIN:-$REPO/bench/bin/pgharbor}
if [ -z "${PGHARBOR_BIN:-}" ]; then
	(cd "$REPO" && go build -tags disable_grpc_modules -o bench/bin/pgharbor ./cmd/pgharbor) || die "go build failed"
fi
WORK=$(mktemp -d /tmp/pgharbor-bench-receive-XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
cleanup() {
	for d in "$WORK/primary" "$WORK/standby"; do
		[ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
	done
	[ -n "${RECV_PID:-}" ] && kill "${RPID:-}" "$RECV_PID" 2>/dev/null
	if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cp "$HARBOR_BIN" "$WORK/pgharbor"
chmod 755 "$WORK/pgharbor"
PORT=$((20000 + RANDOM % 20000))
SPORT=$((PORT + 1))
sql() { as_pg "$PGBIN/psql" -h "$WORK" -p "$PORT" -U postgres -d postgres -AtqX -c "$1"; }

log "cluster in $WORK (port $PORT)"
as_pg "$PGBIN/initdb" -D "$WORK/primary" -U postgres -A trust >/dev/null
cat >>"$WORK/primary/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$WORK'
listen_addresses = ''
shared_buffers = 256MB
max_wal_size = 4GB
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
EOF
as_pg "$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1

as_pg "$WORK/pgharbor" keygen --out "$WORK/identity.txt" >"$WORK/recipient.txt"
RECIPIENT=$(grep -o 'age1[0-9a-z]*' "$WORK/recipient.txt" | head -1)
cat >"$WORK/pgharbor.yaml" <<EOF
repo: {url: "file://$WORK/repo", cluster: bench}
encryption: {mode: age, recipients: [$RECIPIENT], identity_file: $WORK/identity.txt}
postgres: {conn: "host=$WORK port=$PORT user=postgres"}
EOF
[ "$(id -u)" = 0 ] && chown postgres: "$WORK/pgharbor.yaml" "$WORK/identity.txt"
as_pg "$WORK/pgharbor" --config "$WORK/pgharbor.yaml" repo init >/dev/null

start_receiver() { # start_receiver [--synchronous]
	as_pg "$WORK/pgharbor" --config "$WORK/pgharbor.yaml" wal receive "$@" >>"$WORK/receive.log" 2>&1 &
	RECV_PID=$!
	for _ in $(seq 1 300); do
		[ "$(sql "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgharbor' AND state = 'streaming'")" = 1 ] && break
		sleep 0.1
	done
	# The receiver's own process (runuser forks it).
	RPID=$(pgrep -f "pgharbor --config $WORK/pgharbor.yaml wal receive" | tail -1)
}
stop_receiver() { # the receiver itself, not only runuser, then wait until its slot is free
	kill "$RPID" "$RECV_PID" 2>/dev/null
	wait "$RECV_PID" 2>/dev/null || true
	while kill -0 "$RPID" 2>/dev/null; do sleep 0.05; done
	RECV_PID=
	for _ in $(seq 1 100); do
		[ "$(sql "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgharbor'")" = 0 ] && break
		sleep 0.1
	done
}
cpu_s() { awk '{printf "%.3f", ($14 + $15) / 100}' "/proc/$1/stat"; }

declare -A R
record() { R[$1]+="$2 "; }
median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.2f}" if v else "-")' $1; }

sql "CREATE TABLE load (aid int, bid int, abalance int, filler char(84))"
# catchup() waits until the receiver has stored the WAL written so far; it returns that WAL
# position, the receiver's lag behind it when called, and when it was called.
sql "CREATE FUNCTION catchup(OUT end_lsn pg_lsn, OUT lag numeric, OUT t0 timestamptz) LANGUAGE plpgsql AS \$\$
DECLARE f pg_lsn; BEGIN
  t0 := clock_timestamp(); end_lsn := pg_current_wal_lsn();
  SELECT flush_lsn INTO f FROM pg_stat_replication WHERE application_name = 'pgharbor';
  lag := pg_wal_lsn_diff(end_lsn, coalesce(f, '0/0'));
  LOOP
    SELECT flush_lsn INTO f FROM pg_stat_replication WHERE application_name = 'pgharbor';
    EXIT WHEN f >= end_lsn;
    PERFORM pg_sleep(0.01);
  END LOOP;
END \$\$"
for r in $(seq 1 "$ROUNDS"); do
	log "round $r: catch-up after ~$WAL_MB MB of WAL"
	start_receiver
	cpu0=$(cpu_s "$RPID")
	startlsn=$(sql "SELECT pg_current_wal_lsn()")
	# The load, then in the same session (no new connection between them) the wait: from the
	# end of the load, poll pg_stat_replication every 10 ms until the receiver's flushed
	# position reaches the server's WAL position at that moment.
	out=$(as_pg "$PGBIN/psql" -h "$WORK" -p "$PORT" -U postgres -d postgres -AtqX -F ' ' \
		-c "DO \$\$ DECLARE target bigint := $WAL_MB::bigint * 1000000; s pg_lsn := pg_current_wal_lsn(); BEGIN
	  WHILE pg_wal_lsn_diff(pg_current_wal_lsn(), s) < target LOOP
	    INSERT INTO load SELECT g, g % 10, 0, '' FROM generate_series(1, 20000) g; COMMIT;
	  END LOOP; END \$\$" \
		-c "SELECT end_lsn, round(lag / 1e6, 1), round(extract(epoch FROM clock_timestamp() - t0)::numeric, 2) FROM catchup()")
	read -r endlsn lag catch <<<"$out"
	[ -n "$catch" ] || die "catch-up not measured: $out"
	walgb=$(sql "SELECT pg_wal_lsn_diff('$endlsn', '$startlsn') / 1e9")
	cpu=$(python3 -c "print(f'{($(cpu_s "$RPID") - $cpu0) / $walgb:.2f}')")
	rss=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$RPID/status")
	stop_receiver
	record lag "$lag"; record catch "$catch"; record cpu "$cpu"; record rss "$rss"
	log "  lag at the end ${lag} MB, caught up in ${catch} s, ${cpu} CPU-s/GB, peak RSS ${rss} MiB"
	sql "TRUNCATE load; CHECKPOINT" >/dev/null
done

log "standby for the synchronous comparison"
as_pg "$PGBIN/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -D "$WORK/standby" -R -X stream --checkpoint=fast -c fast >/dev/null
sed -i "s/^port = .*/port = $SPORT/" "$WORK/standby/postgresql.conf"
echo "primary_conninfo = 'host=$WORK port=$PORT user=postgres application_name=standby'" >>"$WORK/standby/postgresql.auto.conf"
as_pg "$PGBIN/pg_ctl" -D "$WORK/standby" -l "$WORK/standby.log" -w start >/dev/null
tps() { # tps SYNC_NAMES
	sql "ALTER SYSTEM SET synchronous_standby_names = '$1'" >/dev/null
	sql "SELECT pg_reload_conf()" >/dev/null
	sleep 0.5
	as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -c 8 -j 2 -T "$TPS_SECONDS" postgres 2>/dev/null | awk '/^tps/ {printf "%.0f", $3}'
}
start_receiver --synchronous
for r in $(seq 1 "$ROUNDS"); do
	log "round $r: pgbench TPC-B with each synchronous standby"
	for kind in receiver standby none; do
		case $kind in receiver) names=pgharbor ;; standby) names=standby ;; none) names= ;; esac
		v=$(tps "$names"); record "tps_$kind" "$v"; log "  $kind: $v tps"
	done
done
stop_receiver

OUT=$REPO/bench/results/receive-$(date -u +%Y%m%dT%H%M%SZ).txt
mkdir -p "$REPO/bench/results"
{
	echo "# BENCH_WAL_MB=$WAL_MB BENCH_ROUNDS=$ROUNDS BENCH_TPS_SECONDS=$TPS_SECONDS BENCH_SCALE=$SCALE, $(nproc) cores"
	printf '%-58s %s\n' "measure (median of $ROUNDS)" "value (each round)"
	printf '%-58s %s\n' "receiver lag at the end of the load (MB)" "$(median "${R[lag]}") (${R[lag]% })"
	printf '%-58s %s\n' "receiver catch-up after the load (s)" "$(median "${R[catch]}") (${R[catch]% })"
	printf '%-58s %s\n' "receiver CPU per GB of WAL (s)" "$(median "${R[cpu]}") (${R[cpu]% })"
	printf '%-58s %s\n' "receiver peak RSS (MiB)" "$(median "${R[rss]}") (${R[rss]% })"
	printf '%-58s %s\n' "pgbench tps, receiver as synchronous standby" "$(median "${R[tps_receiver]}") (${R[tps_receiver]% })"
	printf '%-58s %s\n' "pgbench tps, streaming standby as synchronous standby" "$(median "${R[tps_standby]}") (${R[tps_standby]% })"
	printf '%-58s %s\n' "pgbench tps, no synchronous standby" "$(median "${R[tps_none]}") (${R[tps_none]% })"
} | tee "$OUT"
