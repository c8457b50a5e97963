#!/usr/bin/env bash
# Standby benchmark (issue 17, "Performance"): seeding and rebuilding a streaming standby of one
# PostgreSQL 15 primary with pgharbor, pg_basebackup and pgBackRest, on the data of
# bench/backup/run.sh.
#
#   bench/replica/run.sh                                             (or BENCH_ONLY=replica make bench)
#   BENCH_SCALE=10 BENCH_RANDOM_MB=100 BENCH_ROUNDS=3 bench/replica/run.sh   (a few minutes)
#
# Data: as bench/backup/run.sh: pgbench -i -s $BENCH_SCALE plus $BENCH_RANDOM_MB rows of 1 MiB
# of random bytes (bytea, STORAGE EXTERNAL). The defaults make the 2.4 GB cluster.
#
# The primary archives every segment to both repositories (archive_command = pgharbor wal push
# && pgbackrest archive-push). Before the rounds, untimed: a pgharbor backup (age encryption,
# zstd 3) and a pgBackRest full backup (aes-256-cbc, zst 3, process-max=2).
# Each round (the order of the tools rotates every round):
#   (a) seed a standby into an empty directory and wait until it streams
#       (pg_stat_wal_receiver.status = streaming on the standby):
#         pgharbor replica create --start (restore from its repository, standby config, start,
#                                          wait for streaming: all inside the command)
#         pg_basebackup -R -X stream --checkpoint=fast from the primary, then pg_ctl start
#         pgbackrest restore --type=standby (process-max=2), then pg_ctl start
#       each standby is then stopped (fast).
#   then ~$BENCH_CHANGE_PCT % of the pages change on the primary: that share of pgbench_accounts'
#       rows (a contiguous aid range, so few pages) is updated, and that share of the 1 MiB rnd
#       rows is rewritten (new TOAST chunks); CHECKPOINT; the segment is archived; then, untimed,
#       a new pgharbor backup and a pgBackRest incremental backup, as a nightly job would have.
#   (b) rebuild each stopped standby and wait until it streams:
#         pgharbor replica rebuild --start (a delta restore that keeps files whose content
#                                           equals the backup's)
#         a fresh pg_basebackup -R (the directory is removed first), then pg_ctl start
#         pgbackrest restore --delta --type=standby, then pg_ctl start
# Measured for every run: wall time, and the primary's load over that time: CPU seconds and
# read bytes of the primary's postmaster and all its processes (replib.py load: live processes
# plus everything the postmaster reaped), both /proc read_bytes (reads that reached the disk)
# and rchar (all bytes read, page cache or not). Before every run the primary's data directory
# and the repositories are dropped from the page cache (benchlib.py evict), untimed, so the
# reads of each tool come from disk as they would on a primary whose cache holds other data.
#
# Settings (environment):
#   BENCH_SCALE=100 BENCH_RANDOM_MB=800 BENCH_ROUNDS=3 BENCH_CHANGE_PCT=1
#   PGBIN=/usr/lib/postgresql/15/bin PGHARBOR_BIN=path KEEP=1 (keep the work dir)
# Output: the tables on stdout; raw numbers in bench/results/replica-<UTC>.txt.
# Needs: postgresql-15, pgbackrest, python3, Go. Runs as root (everything then runs as the
# postgres OS user) or as a normal user; the primary's /proc counters need the same user or root.
set -euo pipefail

SCALE=${BENCH_SCALE:-100}
RANDOM_MB=${BENCH_RANDOM_MB:-800}
ROUNDS=${BENCH_ROUNDS:-3}
CHANGE_PCT=${BENCH_CHANGE_PCT:-1}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/bench/replica

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

for b in initdb pg_ctl psql pgbench pg_basebackup; do
	[ -x "$PGBIN/$b" ] || die "$PGBIN/$b missing (apt-get install -y postgresql-15)"
done
command -v pgbackrest >/dev/null || die "pgbackrest missing (apt-get install -y pgbackrest)"
command -v python3 >/dev/null || die "python3 missing"
[ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1 || die "as root, an OS user postgres is needed"

HARBOR_BIN=${PGHARBOR_BIN:-$REPO/bench/bin/pgharbor}
if [ -z "${PGHARBOR_BIN:-}" ]; then
	log "building bench/bin/pgharbor"
	mkdir -p "$REPO/bench/bin"
	(cd "$REPO" && go build -tags disable_grpc_modules -o bench/bin/pgharbor ./cmd/pgharbor) || die "go build ./cmd/pgharbor failed"
fi
[ -x "$HARBOR_BIN" ] || die "$HARBOR_BIN is not executable"

WORK=$(mktemp -d /tmp/pgharbor-bench-replica-XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" != 0 ] || chown postgres: "$WORK"
PGDATA=$WORK/primary
mkdir -p "$REPO/bench/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/bench/results/replica-$STAMP.txt
RAW=$WORK/raw.txt
TOOLS=(pgharbor pg_basebackup pgbackrest)

stop_dir() { [ -f "$1/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$1" -m "${2:-fast}" -w -t 120 stop >/dev/null 2>&1 || true; }
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for t in "${TOOLS[@]}"; do stop_dir "$WORK/sb-$t" immediate; done
	stop_dir "$PGDATA" immediate
	if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
	[ "$rc" = 0 ] || log "failed (exit $rc); logs were in $WORK (KEEP=1 keeps them)"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$HARBOR_BIN" "$WORK/pgharbor"
cp "$REPO/bench/backup/benchlib.py" "$HERE/replib.py" "$WORK/"
chmod 755 "$WORK/pgharbor" "$WORK/benchlib.py" "$WORK/replib.py"
as_pg mkdir -p "$WORK/logs" "$WORK/pgh-spool"
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(freeport)
psql_at() { as_pg env PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -h "$1" -p "$2" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 -c "$3"; }
sql() { psql_at "$WORK" "$PORT" "$1"; }
PRIMARY_CONN="host=$WORK port=$PORT user=postgres dbname=postgres"

{
	echo "# pgharbor standby benchmark $STAMP"
	echo "# host: $(nproc) cores, $(free -m | awk '/^Mem:/{print $2}') MiB RAM, $(uname -r)"
	echo "# pgharbor $("$WORK/pgharbor" version 2>/dev/null | head -1) ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')), $(pgbackrest version), $("$PGBIN/postgres" --version)"
	echo "# BENCH_SCALE=$SCALE BENCH_RANDOM_MB=$RANDOM_MB BENCH_ROUNDS=$ROUNDS BENCH_CHANGE_PCT=$CHANGE_PCT"
	echo "# part metric tool round value"
} >"$RAW"

# --- primary ----------------------------------------------------------------------------------
log "work dir $WORK; primary on port $PORT"
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync >/dev/null
cat >>"$PGDATA/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
shared_buffers = 256MB
max_wal_size = 2GB
archive_mode = on
archive_command = '/bin/true'
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/logs/primary.log" -w start >/dev/null

# archive_now: write a little, switch WAL, wait until that segment is archived (5 min).
archive_now() {
	local seg last
	sql "CREATE TABLE IF NOT EXISTS bench_tick (t timestamptz); INSERT INTO bench_tick VALUES (now())"
	seg=$(sql "SELECT pg_walfile_name(pg_switch_wal())")
	for _ in $(seq 1 3000); do
		last=$(sql "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
		if [ "$last" = "$seg" ] || [[ "${last:0:24}" > "$seg" ]]; then return 0; fi
		sleep 0.1
	done
	sql "SELECT * FROM pg_stat_archiver" >&2
	die "segment $seg not archived within 5 min"
}

log "loading data: pgbench -i -s $SCALE"
as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$WORK/logs/pgbench-init.log" 2>&1 ||
	{ tail "$WORK/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
log "loading data: $RANDOM_MB MiB of random bytes (1 MiB bytea rows, STORAGE EXTERNAL)"
sql "CREATE TABLE rnd (id int PRIMARY KEY, b bytea); ALTER TABLE rnd ALTER COLUMN b SET STORAGE EXTERNAL"
python3 "$WORK/benchlib.py" gencopy "$RANDOM_MB" |
	as_pg "$PGBIN/psql" -h "$WORK" -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 -c "COPY rnd FROM STDIN (FORMAT binary)"
sql "VACUUM ANALYZE" >/dev/null
sql "CHECKPOINT"
DBSIZE=$(sql "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
log "cluster size $DBSIZE"
echo "# cluster size $DBSIZE" >>"$RAW"

# --- repositories -------------------------------------------------------------------------------
as_pg "$WORK/pgharbor" keygen --out "$WORK/identity.txt" >"$WORK/recipient"
cat >"$WORK/pgharbor.yaml" <<YAML
repo:
  url: file://$WORK/pgh-repo
  cluster: bench
encryption:
  mode: age
  recipients: [$(cat "$WORK/recipient")]
  identity_file: $WORK/identity.txt
compression:
  type: zstd
  level: 3
postgres:
  conn: $PRIMARY_CONN
wal:
  spool_dir: $WORK/pgh-spool
YAML
PGBR_CONF=$WORK/pgbr.conf
cat >"$PGBR_CONF" <<CONF
[global]
repo1-path=$WORK/pgbr-repo
repo1-retention-full=9999
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')
compress-type=zst
compress-level=3
process-max=2
start-fast=y
log-path=$WORK/pgbr-log
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$WORK
pg1-user=postgres
CONF
chmod 600 "$WORK/pgharbor.yaml" "$PGBR_CONF"
[ "$(id -u)" != 0 ] || chown postgres: "$WORK/pgharbor.yaml" "$PGBR_CONF"
as_pg mkdir -p "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
PGH=("$WORK/pgharbor" --config "$WORK/pgharbor.yaml")
PGBR=(pgbackrest --config "$PGBR_CONF" --stanza=bench)
as_pg "${PGH[@]}" repo init >"$WORK/logs/repo-init.log" 2>&1 || { cat "$WORK/logs/repo-init.log" >&2; die "pgharbor repo init failed"; }
as_pg "${PGBR[@]}" stanza-create >"$WORK/logs/stanza-create.log" 2>&1 || { cat "$WORK/logs/stanza-create.log" >&2; die "pgbackrest stanza-create failed"; }
sql "ALTER SYSTEM SET archive_command = '$WORK/pgharbor --config $WORK/pgharbor.yaml wal push %p && pgbackrest --config $PGBR_CONF --stanza=bench archive-push %p'"
sql "SELECT pg_reload_conf()" >/dev/null
sleep 1
archive_now

backups() { # untimed: a pgharbor backup and a pgBackRest backup of TYPE
	log "untimed backups (pgharbor, pgBackRest $1)"
	as_pg "${PGH[@]}" backup >"$WORK/logs/pgh-backup-$2.log" 2>&1 || { tail "$WORK/logs/pgh-backup-$2.log" >&2; die "pgharbor backup failed"; }
	as_pg "${PGBR[@]}" --type="$1" backup >"$WORK/logs/pgbr-backup-$2.log" 2>&1 || { tail "$WORK/logs/pgbr-backup-$2.log" >&2; die "pgbackrest backup failed"; }
}
backups full initial

# --- measurements ---------------------------------------------------------------------------
rotate() { # rotate N WORDS...: the words, starting at index N mod count
	local n=$1; shift
	local a=("$@") i
	for ((i = 0; i < ${#a[@]}; i++)); do printf '%s ' "${a[$(((i + n) % ${#a[@]}))]}"; done
}
now() { date +%s.%N; }
primary_pid() { head -1 "$PGDATA/postmaster.pid"; }
declare -A SB_PORT
for t in "${TOOLS[@]}"; do SB_PORT[$t]=$(freeport); done

wait_streaming() { # wait_streaming TOOL: until the standby's walreceiver streams (10 min)
	local t=$1 s
	for _ in $(seq 1 6000); do
		s=$(psql_at "$WORK/sock-$t" "${SB_PORT[$t]}" "SELECT status FROM pg_stat_wal_receiver" 2>/dev/null || true)
		[ "$s" = streaming ] && return 0
		sleep 0.1
	done
	tail -n 20 "$WORK/logs/sb-$t.log" >&2
	die "standby $t does not stream after 10 min"
}

# start_standby TOOL: the port and socket of its own, then pg_ctl start and wait for streaming.
start_standby() {
	local t=$1 d=$WORK/sb-$1
	printf "port = %s\nunix_socket_directories = '%s'\n" "${SB_PORT[$t]}" "$WORK/sock-$t" | as_pg tee -a "$d/postgresql.auto.conf" >/dev/null
	as_pg "$PGBIN/pg_ctl" -D "$d" -l "$WORK/logs/sb-$t.log" -w -t 600 start >/dev/null || { tail -n 20 "$WORK/logs/sb-$t.log" >&2; die "standby $t did not start"; }
	wait_streaming "$t"
}

run_tool() { # run_tool PART TOOL: the timed work
	local part=$1 t=$2 d=$WORK/sb-$2
	case $part-$t in
	seed-pgharbor | rebuild-pgharbor)
		local verb=create
		[ "$part" = seed ] || verb=rebuild
		as_pg "${PGH[@]}" replica "$verb" --pgdata "$d" --primary "$PRIMARY_CONN" --start --port "${SB_PORT[$t]}" \
			--socket-dir "$WORK/sock-$t" --output json >"$WORK/logs/$part-$t-$r.json" 2>"$WORK/logs/$part-$t-$r.log" ||
			{ tail -n 20 "$WORK/logs/$part-$t-$r.log" >&2; die "pgharbor replica $verb failed"; } ;;
	seed-pg_basebackup | rebuild-pg_basebackup)
		as_pg rm -rf "$d"
		as_pg "$PGBIN/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -D "$d" -R -X stream --checkpoint=fast \
			>"$WORK/logs/$part-$t-$r.log" 2>&1 || { tail -n 20 "$WORK/logs/$part-$t-$r.log" >&2; die "pg_basebackup failed"; }
		start_standby "$t" ;;
	seed-pgbackrest | rebuild-pgbackrest)
		local delta=()
		[ "$part" = seed ] || delta=(--delta)
		as_pg mkdir -p -m 700 "$d"
		as_pg "${PGBR[@]}" --pg1-path="$d" --type=standby "${delta[@]}" --recovery-option="primary_conninfo=$PRIMARY_CONN" restore \
			>"$WORK/logs/$part-$t-$r.log" 2>&1 || { tail -n 20 "$WORK/logs/$part-$t-$r.log" >&2; die "pgbackrest restore failed"; }
		start_standby "$t" ;;
	esac
}

measure() { # measure PART TOOL
	local part=$1 t=$2 a b t0 t1
	as_pg mkdir -p "$WORK/sock-$t"
	sync
	python3 "$WORK/benchlib.py" evict "$PGDATA" "$WORK/pgh-repo" "$WORK/pgbr-repo" >/dev/null 2>&1 || true
	a=$(python3 "$WORK/replib.py" load "$(primary_pid)" "$WORK/logs/procs-a")
	t0=$(now)
	run_tool "$part" "$t"
	t1=$(now)
	b=$(python3 "$WORK/replib.py" load "$(primary_pid)" "$WORK/logs/procs-b")
	read -r ca ra xa <<<"$a"
	read -r cb rb xb <<<"$b"
	local wall cpu
	wall=$(python3 -c "print(f'{$t1-$t0:.2f}')")
	cpu=$(python3 -c "print(f'{$cb-$ca:.2f}')")
	echo "$part wall $t $r $wall" >>"$RAW"
	echo "$part cpu $t $r $cpu" >>"$RAW"
	echo "$part read $t $r $((rb - ra))" >>"$RAW"
	echo "$part rchar $t $r $((xb - xa))" >>"$RAW"
	log "$part $t: $wall s, primary CPU $cpu s, read_bytes $(((rb - ra) >> 20)) MiB, rchar $(((xb - xa) >> 20)) MiB; primary CPU by process: $(python3 "$WORK/replib.py" top "$WORK/logs/procs-a" "$WORK/logs/procs-b")"
	stop_dir "$WORK/sb-$t" fast
}

ROWS=$(sql "SELECT count(*) FROM pgbench_accounts")
for ((r = 1; r <= ROUNDS; r++)); do
	log "round $r of $ROUNDS: seeding"
	for t in $(rotate "$r" "${TOOLS[@]}"); do
		as_pg rm -rf "$WORK/sb-$t"
		measure seed "$t"
	done
	log "round $r: changing ~$CHANGE_PCT % of the pages"
	n=$((ROWS * CHANGE_PCT / 100)) m=$((RANDOM_MB * CHANGE_PCT / 100))
	off=$(((r - 1) * n))
	sql "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > $off AND aid <= $off + $n" >/dev/null
	[ "$m" -lt 1 ] || sql "UPDATE rnd SET b = b || '\\x00'::bytea WHERE id IN (SELECT id FROM rnd ORDER BY random() LIMIT $m)" >/dev/null
	sql "CHECKPOINT"
	archive_now
	backups incr "round$r"
	log "round $r: rebuilding"
	for t in $(rotate "$r" "${TOOLS[@]}"); do
		measure rebuild "$t"
	done
	for t in "${TOOLS[@]}"; do as_pg rm -rf "$WORK/sb-$t"; done
done

{
	cat "$RAW"
	echo
	python3 "$WORK/replib.py" report "$RAW"
} >"$RESULTS"
python3 "$WORK/replib.py" report "$RAW"
log "results in $RESULTS"
