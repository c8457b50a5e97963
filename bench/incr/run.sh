#!/usr/bin/env bash
# Incremental backup benchmark (issue 21, "Performance"): pgharbor `backup --type incr` against
# pgBackRest `--type=incr` after a pgbench run that changes about BENCH_CHANGE_PCT % of the
# cluster's 8 KiB pages, on bench/backup/run.sh's data (pgbench -i -s $BENCH_SCALE plus
# $BENCH_RANDOM_MB rows of 1 MiB of random bytes stored out of line, no data checksums).
#
#   bench/incr/run.sh                      (or `BENCH_ONLY=incr make bench`)
#   BENCH_SCALE=10 BENCH_RANDOM_MB=100 BENCH_ROUNDS=1 bench/incr/run.sh   (quick check)
#
# Each round:
#   1. full backups (untimed here; bench/backup/run.sh measures them, this script records
#      pgharbor's wall time as the reference of the incr target): pgharbor backup --type full
#      (age, zstd 3, method local); pgBackRest --type=full with aes-256-cbc, zst 3,
#      process-max=2 into two repositories: "file" (its default file-level incremental) and
#      "block" (repo1-bundle=y, repo1-block=y, beta=y: block incremental is a beta feature in
#      pgBackRest 2.45, and its full must be taken with it on to leave the block maps).
#   2. CHECKPOINT; a map of every 8 KiB block of the data directory (a 64-bit BLAKE2b per
#      block, benchlib.py blockmap); pgbench (TPC-B, 2 clients, -t N); CHECKPOINT; the map
#      again. The changed fraction is (changed or new blocks) / (blocks after), counted over
#      every file of the data directory but pg_wal/ (no backup copies it). Round 1 calibrates N: it starts from an
#      estimate of three changed pages per transaction and tops up once or twice until the
#      fraction reaches 0.8x the target; later rounds run the same N and record their own
#      fraction.
#   3. incremental backups (tool order rotates every round): pgharbor backup --type incr,
#      pgbackrest --type=incr into "file" and into "block". Before each one the data directory
#      is dropped from the page cache (benchlib.py evict, untimed), so the bytes the tool reads
#      from storage (read_bytes, summed over the tool and its children) are the bytes it read
#      from the primary's data directory (plus its own repository's metadata).
#      Stored bytes: growth of the backup part of each repository (pgharbor
#      <cluster>/backups, pgBackRest backup/; WAL is left out: pgharbor archives the WAL of
#      its backups into the same repository, pgBackRest's archive is unused here).
#   4. a pgharbor full backup of the same state (no writes since the incr besides the
#      backups' own checkpoints and WAL switches; autovacuum is off for the whole run so that
#      the changes are pgbench's alone), then restores of the incr and of that full (each into an
#      empty directory, order rotating, repositories dropped from the page cache before each,
#      wall time with and without sync(1) after it, as in bench/backup/run.sh). The two
#      restores' base/ and global/ must match block for block (global/pg_control aside), or
#      the round fails.
#
# Settings (environment):
#   BENCH_SCALE=100 BENCH_RANDOM_MB=800 BENCH_ROUNDS=3 BENCH_CHANGE_PCT=1
#   BENCH_PARTS="block restore" (drop "block" to skip pgBackRest block incremental, "restore"
#   to skip step 4)   PGBIN=/usr/lib/postgresql/15/bin
#   PGHARBOR_BIN=path (default: go build -tags disable_grpc_modules -o bench/bin/pgharbor ./cmd/pgharbor)
#   KEEP=1 (keep the work dir under /tmp)
# Output: the table on stdout; raw numbers in bench/results/incr-<UTC>.txt.
# Needs: postgresql-15, pgbackrest, python3, Go. Runs as root (tools run as postgres) or as a
# normal user.
set -euo pipefail

SCALE=${BENCH_SCALE:-100}
RANDOM_MB=${BENCH_RANDOM_MB:-800}
ROUNDS=${BENCH_ROUNDS:-3}
CHANGE_PCT=${BENCH_CHANGE_PCT:-1}
PARTS=${BENCH_PARTS:-"block restore"}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LIB=$REPO/bench/backup/benchlib.py

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
has_part() { [[ " $PARTS " == *" $1 "* ]]; }
calc() { python3 -c "print($1)"; }

for b in initdb pg_ctl psql pgbench; do
	[ -x "$PGBIN/$b" ] || die "$PGBIN/$b missing (apt-get install -y postgresql-15)"
done
command -v pgbackrest >/dev/null || die "pgbackrest missing (apt-get install -y pgbackrest)"
command -v python3 >/dev/null || die "python3 missing"

HARBOR_BIN=${PGHARBOR_BIN:-$REPO/bench/bin/pgharbor}
if [ -z "${PGHARBOR_BIN:-}" ]; then
	log "building bench/bin/pgharbor"
	mkdir -p "$REPO/bench/bin"
	(cd "$REPO" && go build -tags disable_grpc_modules -o bench/bin/pgharbor ./cmd/pgharbor) || die "go build ./cmd/pgharbor failed"
fi
[ -x "$HARBOR_BIN" ] || die "$HARBOR_BIN is not executable"

WORK=$(mktemp -d /tmp/pgharbor-bench-incr-XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" != 0 ] || chown postgres: "$WORK"
PGDATA=$WORK/data
mkdir -p "$REPO/bench/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/bench/results/incr-$STAMP.txt
RAW=$WORK/raw.txt

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -f "$PGDATA/postmaster.pid" ]; then
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
	[ "$rc" = 0 ] || log "failed (exit $rc); logs were in $WORK (KEEP=1 keeps them)"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$HARBOR_BIN" "$WORK/pgharbor"
cp "$LIB" "$WORK/benchlib.py"
chmod 755 "$WORK/pgharbor" "$WORK/benchlib.py"
as_pg mkdir -p "$WORK/logs" "$WORK/pgh-spool"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PSQL=(as_pg env PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -h "$WORK" -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1)
sql() { "${PSQL[@]}" -c "$1"; }

# measure NAME CMD...: run CMD as postgres; sets M_WALL M_RSS M_TREE M_CPU M_READ.
measure() {
	local name=$1; shift
	sync
	local out
	out=$(as_pg python3 "$WORK/benchlib.py" run "$WORK/logs/$name.log" -- "$@")
	read -r M_WALL M_RSS M_TREE M_CPU M_READ M_CODE M_ANON <<<"$out"
	if [ "$M_CODE" != 0 ]; then
		log "$name: exit $M_CODE; last lines of $WORK/logs/$name.log:"
		tail -n 20 "$WORK/logs/$name.log" >&2
		return 1
	fi
}
record() { echo "$1 $2 $3 $4" >>"$RAW"; }
dirsize() { du -sb "$1" 2>/dev/null | cut -f1 || echo 0; }
evict() { python3 "$WORK/benchlib.py" evict "$@"; }

{
	echo "# pgharbor incremental backup benchmark $STAMP"
	echo "# host: $(nproc) cores, $(free -m | awk '/^Mem:/{print $2}') MiB RAM, $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# pgharbor ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')), $(pgbackrest version), $("$PGBIN/postgres" --version)"
	echo "# BENCH_SCALE=$SCALE BENCH_RANDOM_MB=$RANDOM_MB BENCH_ROUNDS=$ROUNDS BENCH_CHANGE_PCT=$CHANGE_PCT BENCH_PARTS=\"$PARTS\""
	echo "# metric tool round value"
} >"$RAW"

# --- cluster (as bench/backup/run.sh, shape toast) -------------------------------------------
log "work dir $WORK; PostgreSQL 15 on port $PORT"
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync >/dev/null
cat >>"$PGDATA/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
shared_buffers = 256MB
max_wal_size = 2GB
archive_mode = on
archive_command = '/bin/true'
autovacuum = off
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/logs/postgres.log" -w start >/dev/null

log "loading data: pgbench -i -s $SCALE, $RANDOM_MB MiB of random bytes (1 MiB bytea rows, STORAGE EXTERNAL)"
as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$WORK/logs/pgbench-init.log" 2>&1 ||
	{ tail "$WORK/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
sql "CREATE TABLE rnd (id int PRIMARY KEY, b bytea); ALTER TABLE rnd ALTER COLUMN b SET STORAGE EXTERNAL"
python3 "$WORK/benchlib.py" gencopy "$RANDOM_MB" | "${PSQL[@]}" -c "COPY rnd FROM STDIN (FORMAT binary)"
sql "VACUUM ANALYZE" >/dev/null
sql "CHECKPOINT"
DBSIZE=$(sql "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
log "cluster size $DBSIZE"
echo "# cluster size $DBSIZE" >>"$RAW"

# --- pgharbor ---------------------------------------------------------------------------------
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
  conn: host=$WORK port=$PORT user=postgres dbname=postgres
wal:
  spool_dir: $WORK/pgh-spool
YAML
[ "$(id -u)" != 0 ] || chown postgres: "$WORK/pgharbor.yaml"
PGH=("$WORK/pgharbor" --config "$WORK/pgharbor.yaml")
as_pg "${PGH[@]}" repo init >"$WORK/logs/repo-init.log" 2>&1 || { cat "$WORK/logs/repo-init.log" >&2; die "pgharbor repo init failed"; }
sql "ALTER SYSTEM SET archive_command = '$WORK/pgharbor --config $WORK/pgharbor.yaml wal push %p'"
sql "SELECT pg_reload_conf()" >/dev/null

# --- pgBackRest: "file" (default file-level incremental) and "block" (block incremental) ------
PGBR_KINDS=(file)
has_part block && PGBR_KINDS+=(block)
for v in "${PGBR_KINDS[@]}"; do
	{
		echo "[global]"
		echo "repo1-path=$WORK/pgbr-repo-$v"
		echo "repo1-retention-full=9999"
		echo "repo1-cipher-type=aes-256-cbc"
		echo "repo1-cipher-pass=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')"
		if [ "$v" = block ]; then
			echo "beta=y"
			echo "repo1-bundle=y"
			echo "repo1-block=y"
		fi
		echo "compress-type=zst"
		echo "compress-level=3"
		echo "process-max=2"
		echo "start-fast=y"
		echo "log-path=$WORK/pgbr-log-$v"
		echo "lock-path=$WORK/pgbr-lock-$v"
		echo "spool-path=$WORK/pgbr-spool-$v"
		echo "log-level-console=warn"
		echo "log-level-file=info"
		echo
		echo "[bench]"
		echo "pg1-path=$PGDATA"
		echo "pg1-port=$PORT"
		echo "pg1-socket-path=$WORK"
		echo "pg1-user=postgres"
	} >"$WORK/pgbr-$v.conf"
	chmod 600 "$WORK/pgbr-$v.conf"
	as_pg mkdir -p "$WORK/pgbr-log-$v" "$WORK/pgbr-lock-$v" "$WORK/pgbr-spool-$v"
	[ "$(id -u)" != 0 ] || chown postgres: "$WORK/pgbr-$v.conf"
	as_pg pgbackrest --config "$WORK/pgbr-$v.conf" --stanza=bench stanza-create >"$WORK/logs/stanza-create-$v.log" 2>&1 ||
		{ cat "$WORK/logs/stanza-create-$v.log" >&2; die "pgbackrest stanza-create ($v) failed"; }
done

rotate() { # rotate N WORDS...: the words, starting at index N mod count
	local n=$1; shift
	local a=("$@") i
	for ((i = 0; i < ${#a[@]}; i++)); do printf '%s ' "${a[$(((i + n) % ${#a[@]}))]}"; done
}

stored_dir() { # the backup part of a tool's repository
	case $1 in
	pgharbor*) echo "$WORK/pgh-repo/bench/backups" ;;
	pgbr_file) echo "$WORK/pgbr-repo-file/backup" ;;
	pgbr_block) echo "$WORK/pgbr-repo-block/backup" ;;
	esac
}

# backup_one TOOL TYPE ROUND [METRIC]: one backup; records METRIC_s, _stored, _read, _cpu, _rss
# (METRIC defaults to TYPE).
backup_one() {
	local t=$1 type=$2 r=$3 dir before after m=${4:-$2}
	dir=$(stored_dir "$t")
	before=$(dirsize "$dir"); before=${before:-0}
	evict "$PGDATA"
	case $t in
	pgharbor) measure "$m-$t-$r" "${PGH[@]}" backup --type "$type" ;;
	pgbr_file | pgbr_block) measure "$m-$t-$r" pgbackrest --config "$WORK/pgbr-${t#pgbr_}.conf" --stanza=bench --type="$type" --archive-check=n backup ;;
	esac || { record "${m}_s" "$t" "$r" FAIL; return 0; }
	after=$(dirsize "$dir")
	record "${m}_s" "$t" "$r" "$M_WALL"
	record "${m}_stored" "$t" "$r" "$(calc "round(($after - $before) / 1e6, 3)")"
	record "${m}_read" "$t" "$r" "$(calc "round($M_READ / 1e6, 1)")"
	record "${m}_cpu" "$t" "$r" "$M_CPU"
	record "${m}_rss" "$t" "$r" "$M_RSS"
	log "  $m $t: ${M_WALL}s, CPU ${M_CPU}s, stored $(calc "round(($after - $before) / 1e6, 3)") MB, read $(calc "round($M_READ / 1e6, 1)") MB, peak RSS ${M_RSS} MiB"
}

pgh_newest() { # label of pgharbor's newest backup
	as_pg "${PGH[@]}" info --output json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(sorted(b["label"] for b in d["catalog"]["backups"])[-1])'
}

# change TXNS: pgbench -t, CHECKPOINT, map; sets CH_PCT (changed % of blocks against
# map-before) and the B_* counts.
change() {
	local per=$(( ($1 + 1) / 2 )) d
	as_pg env PGOPTIONS="-c synchronous_commit=off" "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -c 2 -j 2 -t "$per" postgres \
		>>"$WORK/logs/pgbench.log" 2>&1 || { tail "$WORK/logs/pgbench.log" >&2; die "pgbench failed"; }
	sql "CHECKPOINT"
	python3 "$WORK/benchlib.py" blockmap "$PGDATA" "$WORK/map-after"
	read -r B_BLOCKS B_CHANGED B_CHUNKS B_CHUNKS_CHANGED B_FILES B_FILES_CHANGED < <(python3 "$WORK/benchlib.py" blockdiff "$WORK/map-before" "$WORK/map-after")
	CH_PCT=$(calc "round(100 * $B_CHANGED / $B_BLOCKS, 3)")
}

restore_one() { # restore_one WHICH LABEL ROUND
	local t=$1 label=$2 r=$3 dst=$WORK/restore-$1 s0 s1
	rm -rf "$dst"
	as_pg mkdir -m 700 "$dst"
	as_pg dd if=/dev/zero of="$WORK/warm" bs=1M count="$(du -sm "$PGDATA" | cut -f1)" status=none
	sync
	rm -f "$WORK/warm"
	evict "$WORK/pgh-repo"
	measure "restore-$t-$r" "${PGH[@]}" restore --backup "$label" --pgdata "$dst" || { record restore_s "$t" "$r" FAIL; return 0; }
	s0=$(date +%s.%N); sync; s1=$(date +%s.%N)
	record restore_s "$t" "$r" "$M_WALL"
	record restore_sync_s "$t" "$r" "$(calc "round($M_WALL + $s1 - $s0, 3)")"
	record restore_rss "$t" "$r" "$M_RSS"
	log "  restore $t ($label): ${M_WALL}s (+ sync $(calc "round($s1 - $s0, 3)")s), peak RSS ${M_RSS} MiB"
}

TXNS=
INCR_TOOLS=(pgharbor "${PGBR_KINDS[@]/#/pgbr_}")
for ((r = 1; r <= ROUNDS; r++)); do
	log "round $r/$ROUNDS: full backups"
	for t in $(rotate $((r - 1)) "${INCR_TOOLS[@]}"); do backup_one "$t" full "$r"; done

	sql "CHECKPOINT"
	python3 "$WORK/benchlib.py" blockmap "$PGDATA" "$WORK/map-before"
	if [ -z "$TXNS" ]; then
		total=$(python3 -c "import pickle; print(sum(len(v) for v in pickle.load(open('$WORK/map-before','rb')).values()))")
		TXNS=$(calc "max(100, int($total * $CHANGE_PCT / 100 / 3))")
		ran=$TXNS
		change "$TXNS"; pct=$CH_PCT
		log "  calibration: $ran transactions changed $pct % of $total blocks"
		for _ in 1 2; do
			[ "$(calc "int($pct < 0.8 * $CHANGE_PCT)")" = 1 ] || break
			more=$(calc "max(100, int($ran * ($CHANGE_PCT - $pct) / max($pct, 0.01)))")
			ran=$((ran + more))
			change "$more"; pct=$CH_PCT
			log "  calibration: $ran transactions changed $pct % of $total blocks"
		done
		TXNS=$ran
	else
		change "$TXNS"; pct=$CH_PCT
	fi
	record changed_pct all "$r" "$pct"
	record changed_chunks_pct all "$r" "$(calc "round(100 * $B_CHUNKS_CHANGED / $B_CHUNKS, 3)")"
	record changed_files all "$r" "$B_FILES_CHANGED"
	log "round $r: $TXNS pgbench transactions changed $B_CHANGED of $B_BLOCKS 8 KiB blocks ($pct %), $B_CHUNKS_CHANGED of $B_CHUNKS 128 KiB chunks, $B_FILES_CHANGED of $B_FILES files"

	log "round $r/$ROUNDS: incremental backups"
	for t in $(rotate $((r - 1)) "${INCR_TOOLS[@]}"); do backup_one "$t" incr "$r"; done
	INCR_LABEL=$(pgh_newest)

	if has_part restore; then
		log "round $r/$ROUNDS: a pgharbor full of the same state, then restores of the incr and of that full"
		backup_one pgharbor full "$r" full2
		FULL_LABEL=$(pgh_newest)
		[ "$FULL_LABEL" != "$INCR_LABEL" ] || die "no new pgharbor backup after the incr"
		for w in $(rotate $((r - 1)) incr full); do
			if [ "$w" = incr ]; then restore_one incr "$INCR_LABEL" "$r"; else restore_one full "$FULL_LABEL" "$r"; fi
		done
		# Both restores hold the same relation files (pg_control and backup_label differ).
		for w in incr full; do
			rm -f "$WORK/restore-$w/global/pg_control"
			python3 "$WORK/benchlib.py" blockmap "$WORK/restore-$w/base" "$WORK/map-$w-base"
			python3 "$WORK/benchlib.py" blockmap "$WORK/restore-$w/global" "$WORK/map-$w-global"
		done
		same=1
		for d in base global; do
			python3 -c "import pickle,sys; sys.exit(pickle.load(open('$WORK/map-incr-$d','rb')) != pickle.load(open('$WORK/map-full-$d','rb')))" || same=0
		done
		if [ $same = 1 ]; then
			log "  restores of the incr and of the full match in base/ and global/"
		else
			log "  ERROR: the restores of $INCR_LABEL (incr) and $FULL_LABEL (full) differ in base/ or global/"
			record restore_match incr "$r" FAIL
		fi
		rm -rf "$WORK/restore-incr" "$WORK/restore-full"
	fi
done

echo "# pgharbor chain at the end:" >>"$RAW"
as_pg "${PGH[@]}" info 2>&1 | sed 's/^/#   /' >>"$RAW"
TABLE=$(python3 "$WORK/benchlib.py" report-incr "$RAW")
{
	echo
	echo "pgharbor incremental backup benchmark, $STAMP: $(nproc) cores; cluster $DBSIZE (pgbench -s $SCALE + $RANDOM_MB MiB random); $ROUNDS round(s), $TXNS pgbench transactions per round"
	echo "pgBackRest: aes-256-cbc, zst level 3, process-max=2, start-fast, --archive-check=n; block = beta, repo1-bundle, repo1-block"
	echo "$TABLE"
} | tee -a "$RAW"
cp "$RAW" "$RESULTS"
log "raw numbers and table: $RESULTS"
if grep -q ' FAIL$' "$RAW"; then
	log "some runs failed (FAIL lines in $RESULTS)"
	exit 1
fi
