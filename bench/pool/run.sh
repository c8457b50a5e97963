#!/usr/bin/env bash
# Pooler benchmark: pgbench through direct TCP, PgBouncer and `pgharbor pool`, transaction
# pooling, the same server pool size for both poolers.
#
#   bench/pool/run.sh            (from the repository root, or via `make bench`)
#
# Two workloads: pgbench -S (select-only) with $SELECT_CLIENTS clients and TPC-B with
# $TPCB_CLIENTS clients, each $DURATION seconds, $ROUNDS rounds; the target order alternates
# between rounds so drift in the machine's load does not favour one target. Reported per
# workload and target: median tps, median p99 latency (from pgbench's per-transaction logs),
# the pooler process's CPU in cores per 10k tps (utime+stime from /proc/<pid>/stat), and
# ratios against direct TCP and PgBouncer; then, per workload, pgharbor's tps over
# PgBouncer's in each round (the two runs of a round are next to each other in time, so the
# machine's drift between rounds cancels out) and their median, which the targets use.
#
# Settings (environment):
#   ROUNDS=5 DURATION=15 SCALE=10 SELECT_CLIENTS=50 TPCB_CLIENTS=20 POOL_SIZE=20 THREADS=2
#   WARMUP=10 (seconds of pgbench -S through each pooler before the rounds; 0: none)
#   TARGETS="direct pgbouncer pgharbor"  WORKLOADS="select tpcb"  MODE=simple (pgbench -M)
#   PGBIN=/usr/lib/postgresql/15/bin  PGBOUNCER=pgbouncer  KEEP=1 (keep the work dir)
#   RESULTS_FILE=path (also write the table there)  STRICT=1 (exit 1 when a target is missed)
#   PGHARBOR_BIN=path (use this binary instead of building bench/bin/pgharbor)
#   PGHARBOR_BASE_BIN=path (with target "baseline" in TARGETS: a second pgharbor pool from
#     this binary, e.g. the commit before a change, measured in the same rounds as pgharbor)
# Needs: PostgreSQL 15 server binaries and pgbench, `apt-get install -y pgbouncer`, Go.
# Run as root (PostgreSQL and PgBouncer then run as the postgres OS user) or as a normal user.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-10}
SCALE=${SCALE:-10}
SELECT_CLIENTS=${SELECT_CLIENTS:-50}
TPCB_CLIENTS=${TPCB_CLIENTS:-20}
POOL_SIZE=${POOL_SIZE:-20}
THREADS=${THREADS:-2}
TARGETS=${TARGETS:-"direct pgbouncer pgharbor"}
WORKLOADS=${WORKLOADS:-"select tpcb"}
MODE=${MODE:-simple}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER=${PGBOUNCER:-pgbouncer}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HZ=$(getconf CLK_TCK)

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# as_pg runs a command as the postgres OS user when we are root (PostgreSQL and PgBouncer
# refuse to run as root).
as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
	local p
	for _ in $(seq 1 200); do
		# Below Linux's ephemeral range (32768+), where pgbench's own connections live.
		p=$((20000 + RANDOM % 12000))
		if port_free "$p"; then echo "$p"; return; fi
	done
	die "no free port"
}

# wait_sql waits until a SELECT 1 succeeds through host 127.0.0.1 port $1 (while process $2,
# when given, is alive).
wait_sql() {
	for _ in $(seq 1 150); do
		if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
		if "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	return 1
}

# busy_ticks prints the whole machine's busy time (user+nice+system+irq+softirq, clock ticks
# summed over all CPUs): with it a run's CPU cost per transaction counts pgbench and
# PostgreSQL too, whatever the pooler makes them do (wake-ups, context switches). It spans
# the whole pgbench run, so the clients' logins are in it too (a fraction of a percent of a
# pooled run; for direct runs, the start of 50 new backends).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }

# cpu_ticks prints utime+stime of a process (clock ticks).
cpu_ticks() {
	[ -r "/proc/$1/stat" ] || { echo 0; return; }
	# Fields after the ")" that closes the command name: state is field 1, utime 12, stime 13.
	sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

for knob in ROUNDS DURATION WARMUP SCALE SELECT_CLIENTS TPCB_CLIENTS POOL_SIZE THREADS; do
	[[ ${!knob} =~ ^[0-9]+$ ]] || die "$knob=${!knob}: want a whole number"
done
for knob in ROUNDS DURATION SCALE SELECT_CLIENTS TPCB_CLIENTS POOL_SIZE THREADS; do
	[ "${!knob}" -gt 0 ] || die "$knob=${!knob}: want at least 1"
done
for bin in initdb pg_ctl pgbench psql; do
	[ -x "$PGBIN/$bin" ] || die "$PGBIN/$bin not found (apt-get install -y postgresql-15)"
done
if [[ " $TARGETS " == *" pgbouncer "* ]] && ! command -v "$PGBOUNCER" >/dev/null; then
	die "pgbouncer not found (apt-get install -y pgbouncer), or drop it from TARGETS"
fi

WORK=$(mktemp -d /tmp/pgharbor-bench-pool.XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
mkdir -p "$WORK/logs"
PGDATA="$WORK/data"
PG_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
HARBOR_PORT=$(free_port)
BASE_PORT=$(free_port)
HARBOR_PID=""
BASE_PID=""
BOUNCER_PID=""

cleanup() {
	set +e
	if [ -n "$HARBOR_PID" ]; then kill "$HARBOR_PID" 2>/dev/null; wait "$HARBOR_PID" 2>/dev/null; fi
	if [ -n "$BASE_PID" ]; then kill "$BASE_PID" 2>/dev/null; wait "$BASE_PID" 2>/dev/null; fi
	if [ -n "$BOUNCER_PID" ]; then kill "$BOUNCER_PID" 2>/dev/null; fi
	if [ -f "$PGDATA/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1; fi
	if [ "${KEEP:-}" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- pgharbor binary ---------------------------------------------------------------------------
HARBOR_BIN=${PGHARBOR_BIN:-$REPO/bench/bin/pgharbor}
if [[ " $TARGETS " == *" pgharbor "* ]]; then
	if [ -z "${PGHARBOR_BIN:-}" ]; then
		log "building pgharbor"
		mkdir -p "$REPO/bench/bin"
		(cd "$REPO" && go build -tags disable_grpc_modules -o bench/bin/pgharbor ./cmd/pgharbor) || die "go build ./cmd/pgharbor failed"
	fi
	if ! "$HARBOR_BIN" pool --help >/dev/null 2>&1; then
		log "warning: this pgharbor has no 'pool' command yet; skipping the pgharbor target"
		TARGETS=$(echo " $TARGETS " | sed 's/ pgharbor / /; s/^ *//; s/ *$//')
	fi
fi
if [[ " $TARGETS " == *" baseline "* ]]; then
	[ -n "${PGHARBOR_BASE_BIN:-}" ] || die "target baseline needs PGHARBOR_BASE_BIN"
	"$PGHARBOR_BASE_BIN" pool --help >/dev/null 2>&1 || die "$PGHARBOR_BASE_BIN has no 'pool' command"
fi

# --- PostgreSQL --------------------------------------------------------------------------------
log "initdb + start PostgreSQL on port $PG_PORT (work dir $WORK)"
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 \
	|| { cat "$WORK/initdb.log" >&2; die initdb; }
cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = $((SELECT_CLIENTS + TPCB_CLIENTS + POOL_SIZE * 2 + 20))
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
checkpoint_timeout = 30min
max_wal_size = 4GB
logging_collector = off
log_min_messages = warning
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null || { cat "$WORK/postgres.log" >&2; die "pg_ctl start"; }
log "pgbench -i -s $SCALE"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -q -s "$SCALE" postgres >"$WORK/pgbench-init.log" 2>&1 \
	|| { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i"; }

# --- PgBouncer ---------------------------------------------------------------------------------
if [[ " $TARGETS " == *" pgbouncer "* ]]; then
	cat >"$WORK/userlist.txt" <<EOT
"postgres" ""
EOT
	cat >"$WORK/pgbouncer.ini" <<EOT
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $((SELECT_CLIENTS + TPCB_CLIENTS + 100))
max_db_connections = 0
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOT
	[ "$(id -u)" = 0 ] && chown postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini"
	log "starting PgBouncer ($("$PGBOUNCER" --version | sed -n 1p)) on port $BOUNCER_PORT, pool size $POOL_SIZE"
	as_pg "$PGBOUNCER" -d "$WORK/pgbouncer.ini" || die "pgbouncer did not start: $(cat "$WORK/pgbouncer.log" 2>/dev/null)"
	for _ in $(seq 1 50); do [ -s "$WORK/pgbouncer.pid" ] && break; sleep 0.1; done
	BOUNCER_PID=$(cat "$WORK/pgbouncer.pid")
	wait_sql "$BOUNCER_PORT" || die "PgBouncer not answering: $(tail -5 "$WORK/pgbouncer.log")"
fi

# --- pgharbor pool -----------------------------------------------------------------------------
# start_harbor NAME BINARY PORT PIDVAR: starts a pool and sets the variable PIDVAR to its pid.
start_harbor() {
	local name=$1 bin=$2 port=$3 pid
	cat >"$WORK/$name.yaml" <<EOT
pool:
  listen: 127.0.0.1:$port
  pool_mode: transaction
  default_pool_size: $POOL_SIZE
  max_client_conn: $((SELECT_CLIENTS + TPCB_CLIENTS + 100))
  auth_type: trust
  cluster:
    nodes:
      - host: 127.0.0.1
        port: $PG_PORT
        name: primary
EOT
	log "starting $name ($bin) on port $port, pool size $POOL_SIZE"
	# In a session of its own, as PgBouncer is (-d) and as a service manager starts it. With
	# Linux's autogroup (kernel.sched_autogroup_enabled), the scheduler shares the CPU fairly
	# between sessions first, then between the tasks of a session; every PostgreSQL backend is
	# a session of its own (it calls setsid). Left in this script's session, the pool would
	# share one session's CPU with pgbench. Measured on the 2-core test machine (TPC-B, 5
	# rounds of 10 s): p99 latency 71-96 ms in pgbench's session against 35-54 ms in its own;
	# PgBouncer's was 30-46 ms.
	setsid "$bin" pool --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 </dev/null &
	pid=$!
	printf -v "$4" '%s' "$pid"
	wait_sql "$port" "$pid" || die "$name not answering: $(tail -20 "$WORK/$name.log")"
	# Fields after the ")" that closes the command name: state 1, ppid 2, pgrp 3, session 4.
	[ "$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $4}')" = "$pid" ] \
		|| die "$name (pid $pid) is not in a session of its own; setsid forked?"
}
if [[ " $TARGETS " == *" pgharbor "* ]]; then
	start_harbor pgharbor "$HARBOR_BIN" "$HARBOR_PORT" HARBOR_PID
fi
if [[ " $TARGETS " == *" baseline "* ]]; then
	start_harbor baseline "$PGHARBOR_BASE_BIN" "$BASE_PORT" BASE_PID
fi

port_of() { case $1 in direct) echo "$PG_PORT" ;; pgbouncer) echo "$BOUNCER_PORT" ;; pgharbor) echo "$HARBOR_PORT" ;; baseline) echo "$BASE_PORT" ;; esac; }
pid_of() { case $1 in direct) echo "" ;; pgbouncer) echo "$BOUNCER_PID" ;; pgharbor) echo "$HARBOR_PID" ;; baseline) echo "$BASE_PID" ;; esac; }

# run_one WORKLOAD TARGET ROUND: one pgbench run; appends "workload target round tps p99ms cores
# machine_us" to results.
run_one() {
	local w=$1 t=$2 r=$3 port pid clients args prefix out tps p99 n t0 t1 m0 m1 cores machine
	port=$(port_of "$t")
	pid=$(pid_of "$t")
	if [ "$w" = select ]; then clients=$SELECT_CLIENTS; args=(-S); else clients=$TPCB_CLIENTS; args=(); fi
	prefix="$WORK/logs/$w-$t-$r"
	t0=0
	[ -n "$pid" ] && t0=$(cpu_ticks "$pid")
	m0=$(busy_ticks)
	if ! out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -M "$MODE" "${args[@]}" \
		-c "$clients" -j "$THREADS" -T "$DURATION" --log --log-prefix="$prefix" postgres 2>&1); then
		printf '%s\n' "$out" | tail -15 >&2
		case $t in pgharbor | baseline) log "$t log (tail):"; tail -20 "$WORK/$t.log" >&2 ;; esac
		log "round $r $w $t: pgbench FAILED (counted as a failed run; the benchmark goes on)"
		echo "$w $t $r nan nan nan nan" >>"$WORK/results.txt"
		echo "round $r $w $t" >>"$WORK/failed.txt"
		rm -f "$prefix".*
		return 0
	fi
	t1=0
	[ -n "$pid" ] && t1=$(cpu_ticks "$pid")
	m1=$(busy_ticks)
	tps=$(printf '%s\n' "$out" | awk '/^tps = / && !v {v = $3} END {print v}')
	[ -n "$tps" ] || { printf '%s\n' "$out" >&2; die "no tps in pgbench output"; }
	# Per-transaction log lines: client_id transaction_no latency_us script_no epoch us.
	n=$(cat "$prefix".* | wc -l)
	p99=$(cat "$prefix".* | awk '{print $3}' | sort -n -S 25% | awk -v n="$n" 'BEGIN {k = int(n * 0.99); if (k < n * 0.99) k++; if (k < 1) k = 1} NR == k {v = $1} END {printf "%.3f", v / 1000}')
	rm -f "$prefix".*
	cores=nan
	if [ -n "$pid" ]; then
		cores=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v dur="$DURATION" -v tps="$tps" 'BEGIN {if (tps > 0) printf "%.3f", (d / hz / dur) / (tps / 10000); else print "nan"}')
	fi
	machine=$(awk -v d=$((m1 - m0)) -v hz="$HZ" -v dur="$DURATION" -v tps="$tps" 'BEGIN {if (tps > 0) printf "%.1f", d / hz * 1e6 / (tps * dur); else print "nan"}')
	echo "$w $t $r $tps $p99 $cores $machine" >>"$WORK/results.txt"
	log "$(printf 'round %d %-6s %-9s tps %10.1f  p99 %8s ms  cores/10k tps %s  machine CPU %s us/tx' "$r" "$w" "$t" "$tps" "$p99" "$cores" "$machine")"
}

# warm_up runs pgbench -S through each pooler for $WARMUP seconds before the measured rounds:
# a pooler's server connections are new PostgreSQL backends, whose first seconds go to page
# faults on shared_buffers (measured on the 2-core test machine: through a fresh PgBouncer the
# first 12 s of pgbench -S ramp from 7.4k to 14k tps, through a fresh pgharbor pool from 3.3k
# to 10k). Without it the first round of each pooler measures that, not the pooler.
# Direct connections are not warmed: every direct run starts new backends, which is the cost
# of not pooling.
warm_up() {
	local t port
	[ "$WARMUP" -gt 0 ] || return 0
	for t in "${targets[@]}"; do
		[ "$t" = direct ] && continue
		port=$(port_of "$t")
		log "warm-up: ${WARMUP}s of pgbench -S through $t"
		"$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -M "$MODE" -S -c "$SELECT_CLIENTS" -j "$THREADS" -T "$WARMUP" postgres >/dev/null 2>&1 \
			|| log "warm-up through $t failed (the measured runs will show it)"
	done
}

read -r -a targets <<<"$TARGETS"
[ "${#targets[@]}" -gt 0 ] || die "no targets"
log "rounds=$ROUNDS duration=${DURATION}s scale=$SCALE select_clients=$SELECT_CLIENTS tpcb_clients=$TPCB_CLIENTS pool_size=$POOL_SIZE mode=$MODE targets=${targets[*]}"
: >"$WORK/results.txt"
warm_up
for r in $(seq 1 "$ROUNDS"); do
	# Rotate the order each round: direct,bouncer,harbor / bouncer,harbor,direct / ...
	order=()
	for i in "${!targets[@]}"; do order+=("${targets[$(((i + r - 1) % ${#targets[@]}))]}"); done
	for w in $WORKLOADS; do
		for t in "${order[@]}"; do run_one "$w" "$t" "$r"; done
	done
done

# --- report ------------------------------------------------------------------------------------
val() { awk -v w="$1" -v t="$2" -v c="$3" '$1 == w && $2 == t {print $c}' "$WORK/results.txt" | grep -v nan | median; }
fmt3() { awk -v x="$1" 'BEGIN {if (x == "nan" || x == "") print "-"; else printf "%.3f", x}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.3f", a / b}'; }
# paired W A B [C]: A's value in column C of results.txt (default 4, tps; 6 is the pooler's
# CPU per transaction) over B's, in each round where both ran, one per line, in round order.
paired() {
	awk -v w="$1" -v a="$2" -v b="$3" -v c="${4:-4}" '$1 == w && $c != "nan" {if ($2 == a) x[$3] = $c; if ($2 == b) y[$3] = $c}
		END {for (r = 1; r <= 1000; r++) if ((r in x) && (r in y) && y[r] > 0) printf "%.3f\n", x[r] / y[r]}' "$WORK/results.txt"
}
report() {
	echo "pooler benchmark: PostgreSQL $("$PGBIN/postgres" --version | awk '{v = $3} END {print v}'), pgbench scale $SCALE, ${DURATION}s x $ROUNDS rounds, transaction mode, pool size $POOL_SIZE, -M $MODE, $(nproc) cores"
	echo "medians over rounds; p99 from pgbench per-transaction logs; cores/10k = pooler CPU (user+sys) per 10k tps;"
	echo "machine_us = the whole machine's CPU per transaction (pgbench, PostgreSQL and the pooler)"
	printf '%-8s %-10s %12s %10s %10s %10s %10s %12s\n' workload target tps p99_ms cores/10k machine_us vs_direct vs_pgbouncer
	local failed=0 w t tps p99 cores machine d b rd rb rc
	for w in $WORKLOADS; do
		d=$(val "$w" direct 4); b=$(val "$w" pgbouncer 4)
		for t in "${targets[@]}"; do
			tps=$(val "$w" "$t" 4); p99=$(fmt3 "$(val "$w" "$t" 5)"); cores=$(fmt3 "$(val "$w" "$t" 6)")
			machine=$(val "$w" "$t" 7)
			rd=$(ratio "$tps" "$d"); rb=$(ratio "$tps" "$b")
			printf '%-8s %-10s %12.1f %10s %10s %10s %10s %12s\n' "$w" "$t" "$tps" "$p99" "$cores" "$machine" "$rd" "$rb"
		done
	done
	if [[ " ${targets[*]} " == *" pgharbor "* ]]; then
		echo "pgharbor's tps over the other target's, round by round (median):"
		for w in $WORKLOADS; do
			for t in pgbouncer direct baseline; do
				[[ " ${targets[*]} " == *" $t "* ]] || continue
				printf '  %-8s vs %-10s %s (%s)\n' "$w" "$t" "$(paired "$w" pgharbor "$t" | paste -sd' ')" "$(fmt3 "$(paired "$w" pgharbor "$t" | median)")"
			done
		done
		echo "pgharbor's pool CPU per transaction over the other pooler's, round by round (median):"
		for w in $WORKLOADS; do
			for t in pgbouncer baseline; do
				[[ " ${targets[*]} " == *" $t "* ]] || continue
				printf '  %-8s vs %-10s %s (%s)\n' "$w" "$t" "$(paired "$w" pgharbor "$t" 6 | paste -sd' ')" "$(fmt3 "$(paired "$w" pgharbor "$t" 6 | median)")"
			done
		done
		echo "targets (medians of the round-by-round ratios):"
		for w in $WORKLOADS; do
			if [[ " ${targets[*]} " == *" pgbouncer "* ]]; then
				rb=$(paired "$w" pgharbor pgbouncer | median)
				if awk -v x="$rb" 'BEGIN {exit !(x >= 1.0)}'; then s=PASS; else s=MISS; failed=1; fi
				echo "  $w: pgharbor >= 1.00x PgBouncer tps: $(fmt3 "$rb") $s"
				if [ "$w" = tpcb ]; then
					rc=$(paired "$w" pgharbor pgbouncer 6 | median)
					if awk -v x="$rc" 'BEGIN {exit !(x <= 1.0)}'; then s=PASS; else s=MISS; failed=1; fi
					echo "  $w: pgharbor pool CPU per transaction <= 1.00x PgBouncer's: $(fmt3 "$rc") $s"
				fi
			fi
			if [ "$w" = select ] && [[ " ${targets[*]} " == *" direct "* ]]; then
				rd=$(paired "$w" pgharbor direct | median)
				if awk -v x="$rd" 'BEGIN {exit !(x >= 0.95)}'; then s=PASS; else s=MISS; failed=1; fi
				echo "  $w: pgharbor >= 0.95x direct tps: $(fmt3 "$rd") $s"
			fi
		done
	fi
	return $failed
}
set +e
{
	report
	rs=$?
	if [ -s "$WORK/failed.txt" ]; then
		echo "FAILED pgbench runs (not in the medians):"
		sed 's/^/  /' "$WORK/failed.txt"
		rs=2
	fi
	exit $rs
} | tee "$WORK/report.txt"
status=${PIPESTATUS[0]}
set -e
[ -n "${RESULTS_FILE:-}" ] && cp "$WORK/report.txt" "$RESULTS_FILE"
[ "$status" = 2 ] && exit 1 # a pgbench run failed
if [ "${STRICT:-}" = 1 ] && [ "$status" != 0 ]; then exit 1; fi
exit 0
