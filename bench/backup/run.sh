#!/usr/bin/env bash
# Backup benchmark (issue 3, "Speed"): pgharbor against pgBackRest and pg_basebackup on one
# PostgreSQL 15 cluster, in one run, on the same data.
#
#   bench/backup/run.sh                                          (or `make bench`)
#   BENCH_SCALE=10 BENCH_RANDOM_MB=100 BENCH_WAL_MB=200 BENCH_ROUNDS=1 bench/backup/run.sh   (quick check)
#
# Data (BENCH_SHAPE):
#   toast   (default) pgbench -i -s $BENCH_SCALE plus $BENCH_RANDOM_MB rows of 1 MiB of os.urandom
#           bytes in a bytea column with STORAGE EXTERNAL (stored out of line, uncompressed),
#           loaded with COPY BINARY; no data checksums.
#   inline  initdb -k (data checksums on), pgbench -i -s $BENCH_SCALE, plus $BENCH_RANDOM_MB MiB of
#           rows (id int, b bytea, t text), both columns STORAGE PLAIN (never compressed, never
#           out of line): b $BENCH_INLINE_RND bytes of os.urandom, t $BENCH_INLINE_TXT bytes of
#           words from a small vocabulary (compressible), so incompressible values sit inline on
#           the same pages as compressible ones.
#
# Each round (the order of the tools rotates every round, so drift in a shared machine's load
# does not favour one tool):
#   full backup   pgharbor backup (age encryption, zstd level 3, its defaults otherwise: method
#                 auto, which reads the data directory itself here, as pgBackRest does; it waits
#                 for its backup's WAL to be archived, as it always does), and for comparison
#                 pgharbor backup --method stream (BASE_BACKUP, as from another host)
#                 pgBackRest 2.x (Debian) --type=full, compress-type=zst, compress-level=3,
#                 process-max=2, start-fast=y, with repo1-cipher-type=aes-256-cbc and without
#                 (two repositories, one config file each); --archive-check=n, because the
#                 cluster's archive_command is pgharbor's (pgBackRest's backups therefore do not
#                 wait for WAL; pgharbor's do)
#                 pg_basebackup -Ft -X none --compress=client-zstd:3 --checkpoint=fast (no WAL)
#   full restore  of the backup just taken, into a fresh empty directory: pgharbor restore
#                 --pgdata DIR (no --start), pgbackrest restore --pg1-path DIR (process-max=2),
#                 and for reference `zstd -dc base.tar.zst | tar -x` of pg_basebackup's tar.
#                 Reported with and without the sync(1) that follows (pgharbor calls syncfs,
#                 pgBackRest fsyncs files; the "+ sync" row puts every tool on equal footing).
#                 Before a round's restores, an untimed write and delete of a file the size of
#                 the data directory puts the first restore in the same state as the others.
#                 Before each restore every repository is dropped from the page cache
#                 (benchlib.py evict), untimed: a restore reads a backup from disk, as it would
#                 days after the backup (pgharbor's filesystem driver drops what it writes from
#                 the cache anyway; pgBackRest's repository would otherwise be read from memory).
#   WAL archiving a bulk load writing ~$BENCH_WAL_MB MB of WAL with archive_command set (ALTER
#                 SYSTEM + pg_reload_conf) to pgharbor wal push (filesystem repository), to
#                 pgbackrest archive-push with archive-async=y (spool-path, process-max=2), and,
#                 unless BENCH_WAL_SYNC=0, to pgbackrest archive-push without async; both
#                 pgBackRest variants use the encrypted repository. After the load: pg_switch_wal,
#                 then pg_stat_archiver is polled (10 ms) until last_archived_wal reaches the
#                 switched segment. Reported: seconds from the end of the load to that moment.
# Measured per run: wall time, peak RSS, CPU seconds (user + system of the tool and the
# children it waited for; pg_basebackup's and pgharbor --method stream's server side is not
# included) reported per GB of data directory (pg_wal aside). "largest process" is ru_maxrss from wait4 (for
# pgBackRest the largest of its main and local processes), "sum over process tree" the largest
# sampled (20 ms) sum over the tool and its children (pgBackRest forks process-max locals).
# Before each measurement the script runs sync(1), untimed. The page cache is not dropped.
#
# Settings (environment):
#   BENCH_SCALE=100 BENCH_RANDOM_MB=800 BENCH_ROUNDS=3 BENCH_WAL_MB=1300 BENCH_WAL_SYNC=1
#   BENCH_SHAPE=toast|inline  BENCH_INLINE_RND=1024 BENCH_INLINE_TXT=512
#   BENCH_PARTS="backup restore wal"   PGBIN=/usr/lib/postgresql/15/bin
#   PGHARBOR_BIN=path (default: go build -tags disable_grpc_modules -o bench/bin/pgharbor ./cmd/pgharbor)
#   PGHARBOR_BASE_BIN=path: also back up with this other pgharbor build, same settings and
#     repository, in the same rounds ("pgharbor, base build"; ratios against it): a paired
#     comparison of two builds on one data set
#   BENCH_PGH_LEVEL1=1: also back up with pgharbor at zstd level 1 ("pgharbor (age+zstd1)")
#   BENCH_PGH_GO=1: also back up with pgharbor's pure-Go zstd encoder (compression.encoder: go)
#     at level 3 ("pgharbor (age+zstd3, Go enc)"); the default row uses libzstd when the
#     binary was built with cgo (`pgharbor version` says which)
#   (both only with BENCH_PARTS without restore: pgharbor's restore takes the newest backup)
#   KEEP=1 (keep the work dir under /tmp: logs, repositories, cluster)
# Output: the table on stdout; raw numbers, settings and the table in bench/results/backup-<UTC>.txt.
# Needs: postgresql-15, pgbackrest, zstd, python3, Go (apt-get install -y pgbackrest zstd).
# Runs as root (PostgreSQL, pgBackRest and pgharbor then run as the postgres OS user) or as a
# normal user.
set -euo pipefail

SCALE=${BENCH_SCALE:-100}
RANDOM_MB=${BENCH_RANDOM_MB:-800}
ROUNDS=${BENCH_ROUNDS:-3}
WAL_MB=${BENCH_WAL_MB:-1300}
WAL_SYNC=${BENCH_WAL_SYNC:-1}
PARTS=${BENCH_PARTS:-"backup restore wal"}
SHAPE=${BENCH_SHAPE:-toast}
INLINE_RND=${BENCH_INLINE_RND:-1024}
INLINE_TXT=${BENCH_INLINE_TXT:-512}
case $SHAPE in toast | inline) ;; *) echo "BENCH_SHAPE must be toast or inline" >&2; exit 2 ;; esac
if [[ " $PARTS " == *" restore "* ]] && { [ -n "${PGHARBOR_BASE_BIN:-}" ] || [ "${BENCH_PGH_LEVEL1:-0}" != 0 ] || [ "${BENCH_PGH_GO:-0}" != 0 ]; }; then
	echo "PGHARBOR_BASE_BIN, BENCH_PGH_LEVEL1 and BENCH_PGH_GO need BENCH_PARTS without restore" >&2
	exit 2
fi
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/bench/backup

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

for b in initdb pg_ctl psql pgbench pg_basebackup; do
	[ -x "$PGBIN/$b" ] || die "$PGBIN/$b missing (apt-get install -y postgresql-15)"
done
command -v pgbackrest >/dev/null || die "pgbackrest missing (apt-get install -y pgbackrest)"
command -v zstd >/dev/null || die "zstd missing (apt-get install -y zstd)"
command -v python3 >/dev/null || die "python3 missing"
[ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1 || die "as root, an OS user postgres is needed"

HARBOR_BIN=${PGHARBOR_BIN:-$REPO/bench/bin/pgharbor}
if [ -z "${PGHARBOR_BIN:-}" ]; then
	log "building bench/bin/pgharbor"
	mkdir -p "$REPO/bench/bin"
	(cd "$REPO" && go build -tags disable_grpc_modules -o bench/bin/pgharbor ./cmd/pgharbor) || die "go build ./cmd/pgharbor failed"
fi
[ -x "$HARBOR_BIN" ] || die "$HARBOR_BIN is not executable"

WORK=$(mktemp -d /tmp/pgharbor-bench-backup-XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" != 0 ] || chown postgres: "$WORK"
PGDATA=$WORK/data
mkdir -p "$REPO/bench/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$REPO/bench/results/backup-$STAMP.txt
RAW=$WORK/raw.txt

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -f "$PGDATA/postmaster.pid" ]; then
		as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	# pgBackRest's async archive-push process (started by the archiver) exits once its queue
	# is empty; give it a moment before its spool directory goes away.
	for _ in $(seq 1 20); do
		compgen -G "$WORK/pgbr-lock-*/*.lock" >/dev/null || break
		sleep 0.5
	done
	if [ "${KEEP:-0}" = 1 ]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	[ "$rc" = 0 ] || log "failed (exit $rc); logs were in $WORK (KEEP=1 keeps them)"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp "$HARBOR_BIN" "$WORK/pgharbor"
if [ -n "${PGHARBOR_BASE_BIN:-}" ]; then
	[ -x "$PGHARBOR_BASE_BIN" ] || die "$PGHARBOR_BASE_BIN is not executable"
	cp "$PGHARBOR_BASE_BIN" "$WORK/pgharbor-base"
	chmod 755 "$WORK/pgharbor-base"
fi
cp "$HERE/benchlib.py" "$WORK/benchlib.py"
chmod 755 "$WORK/pgharbor" "$WORK/benchlib.py"
as_pg mkdir -p "$WORK/logs" "$WORK/pgh-spool"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PSQL=(as_pg env PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -h "$WORK" -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1)
sql() { "${PSQL[@]}" -c "$1"; }

# measure NAME CMD...: run CMD as postgres; sets M_WALL M_RSS M_TREE M_CPU M_READ M_ANON, fails on a
# non-zero exit.
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
dirsize() { du -sb "$1" 2>/dev/null | cut -f1; }

{
	echo "# pgharbor backup benchmark $STAMP"
	echo "# host: $(nproc) cores, $(free -m | awk '/^Mem:/{print $2}') MiB RAM, $(uname -r)"
	echo "# pgharbor $("$WORK/pgharbor" version 2>/dev/null | head -1) ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')), $(pgbackrest version), $("$PGBIN/postgres" --version)"
	echo "# BENCH_SCALE=$SCALE BENCH_RANDOM_MB=$RANDOM_MB BENCH_ROUNDS=$ROUNDS BENCH_WAL_MB=$WAL_MB BENCH_WAL_SYNC=$WAL_SYNC BENCH_PARTS=\"$PARTS\" BENCH_SHAPE=$SHAPE BENCH_INLINE_RND=$INLINE_RND BENCH_INLINE_TXT=$INLINE_TXT"
	echo "# metric tool round value"
} >"$RAW"

# --- cluster --------------------------------------------------------------------------------
log "work dir $WORK; PostgreSQL 15 on port $PORT"
INITDB_OPTS=()
[ "$SHAPE" != inline ] || INITDB_OPTS=(--data-checksums)
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync "${INITDB_OPTS[@]}" >/dev/null
cat >>"$PGDATA/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
shared_buffers = 256MB
max_wal_size = 2GB
archive_mode = on
archive_command = '/bin/true'
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/logs/postgres.log" -w start >/dev/null

sql "CREATE OR REPLACE FUNCTION bench_wait_archived(seg text, t0 timestamptz, timeout_s float8)
RETURNS float8 LANGUAGE plpgsql AS \$f\$
DECLARE last text;
BEGIN
  LOOP
    PERFORM pg_stat_clear_snapshot();
    SELECT last_archived_wal INTO last FROM pg_stat_archiver;
    -- a .backup file named after seg is archived before seg itself
    IF last = seg OR left(last, 24) > seg THEN
      RETURN extract(epoch FROM clock_timestamp() - t0);
    END IF;
    IF clock_timestamp() - t0 > make_interval(secs => timeout_s) THEN
      RETURN -1;
    END IF;
    PERFORM pg_sleep(0.01);
  END LOOP;
END \$f\$"

# archive_now TIMEOUT: write a little, switch WAL, wait until that segment is archived.
archive_now() {
	local seg waited
	sql "CREATE TABLE IF NOT EXISTS bench_tick (t timestamptz); INSERT INTO bench_tick VALUES (now())"
	seg=$(sql "SELECT pg_walfile_name(pg_switch_wal())")
	waited=$(sql "SELECT bench_wait_archived('$seg', clock_timestamp(), ${1:-300})")
	if [ "$waited" = -1 ]; then
		sql "SELECT * FROM pg_stat_archiver" >&2
		tail -n 20 "$WORK/logs/postgres.log" >&2
		die "segment $seg not archived within ${1:-300} s"
	fi
}

# set_archive_command CMD: switch with ALTER SYSTEM + reload, then prove it works.
set_archive_command() {
	sql "ALTER SYSTEM SET archive_command = '$1'"
	sql "SELECT pg_reload_conf()" >/dev/null
	sleep 1
	archive_now 300
}

log "loading data: pgbench -i -s $SCALE"
as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >"$WORK/logs/pgbench-init.log" 2>&1 ||
	{ tail "$WORK/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
if [ "$SHAPE" = toast ]; then
	log "loading data: $RANDOM_MB MiB of random bytes (1 MiB bytea rows, STORAGE EXTERNAL)"
	sql "CREATE TABLE rnd (id int PRIMARY KEY, b bytea); ALTER TABLE rnd ALTER COLUMN b SET STORAGE EXTERNAL"
	python3 "$WORK/benchlib.py" gencopy "$RANDOM_MB" | "${PSQL[@]}" -c "COPY rnd FROM STDIN (FORMAT binary)"
else
	log "loading data: $RANDOM_MB MiB of inline rows ($INLINE_RND random + $INLINE_TXT text bytes, STORAGE PLAIN)"
	sql "CREATE TABLE rnd (id int PRIMARY KEY, b bytea, t text); ALTER TABLE rnd ALTER COLUMN b SET STORAGE PLAIN, ALTER COLUMN t SET STORAGE PLAIN"
	python3 "$WORK/benchlib.py" geninline "$RANDOM_MB" "$INLINE_RND" "$INLINE_TXT" | "${PSQL[@]}" -c "COPY rnd FROM STDIN (FORMAT binary)"
	[ "$(sql "SELECT count(*) FROM pg_class WHERE oid = (SELECT reltoastrelid FROM pg_class WHERE relname = 'rnd') AND relpages > 0")" = 0 ] ||
		die "rnd has TOAST pages: the inline shape needs every value on the table's own pages"
fi
sql "VACUUM ANALYZE" >/dev/null
sql "CHECKPOINT"
archive_now 300
DBSIZE=$(sql "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
log "cluster size $DBSIZE (pgbench_accounts $(sql "SELECT pg_size_pretty(pg_total_relation_size('pgbench_accounts'))"), rnd $(sql "SELECT pg_size_pretty(pg_total_relation_size('rnd'))"))"
# What a backup copies: the data directory without pg_wal (after the load, pg_wal may be as
# large as the data).
DATA_BYTES=$(($(dirsize "$PGDATA") - $(dirsize "$PGDATA/pg_wal")))
echo "# cluster size $DBSIZE; data directory without pg_wal $DATA_BYTES bytes; shape $SHAPE; checksums $(sql "SHOW data_checksums")" >>"$RAW"

# --- pgharbor -------------------------------------------------------------------------------
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
sed 's/^  level: 3$/  level: 1/' "$WORK/pgharbor.yaml" >"$WORK/pgharbor-l1.yaml"
sed 's/^  level: 3$/  level: 3\n  encoder: go/' "$WORK/pgharbor.yaml" >"$WORK/pgharbor-go.yaml"
[ "$(id -u)" != 0 ] || chown postgres: "$WORK/pgharbor-l1.yaml" "$WORK/pgharbor-go.yaml"
as_pg "${PGH[@]}" repo init >"$WORK/logs/repo-init.log" 2>&1 || { cat "$WORK/logs/repo-init.log" >&2; die "pgharbor repo init failed"; }
PGH_ARCHIVE="$WORK/pgharbor --config $WORK/pgharbor.yaml wal push %p"

# --- pgBackRest: two repositories, one config each ----------------------------------------
for v in enc plain; do
	{
		echo "[global]"
		echo "repo1-path=$WORK/pgbr-repo-$v"
		echo "repo1-retention-full=9999"
		if [ "$v" = enc ]; then
			echo "repo1-cipher-type=aes-256-cbc"
			echo "repo1-cipher-pass=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')"
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
PGBR_ARCHIVE_ASYNC="pgbackrest --config $WORK/pgbr-enc.conf --stanza=bench --archive-async archive-push %p"
PGBR_ARCHIVE_SYNC="pgbackrest --config $WORK/pgbr-enc.conf --stanza=bench archive-push %p"

log "archive_command = pgharbor wal push"
set_archive_command "$PGH_ARCHIVE"

rotate() { # rotate N WORDS...: the words, starting at index N mod count
	local n=$1; shift
	local a=("$@") i
	for ((i = 0; i < ${#a[@]}; i++)); do printf '%s ' "${a[$(((i + n) % ${#a[@]}))]}"; done
}

backup_one() { # backup_one TOOL ROUND
	local t=$1 r=$2 dir before after
	case $t in
	pgharbor | pgharbor_stream | pgharbor_base | pgharbor_l1 | pgharbor_go) dir=$WORK/pgh-repo ;;
	pgbr_enc) dir=$WORK/pgbr-repo-enc ;;
	pgbr_plain) dir=$WORK/pgbr-repo-plain ;;
	pg_basebackup) rm -rf "$WORK/pgbb"; dir=$WORK/pgbb ;;
	esac
	before=$(dirsize "$dir" || true); before=${before:-0}
	case $t in
	pgharbor) measure "backup-$t-$r" "${PGH[@]}" backup ;;
	pgharbor_stream) measure "backup-$t-$r" "${PGH[@]}" backup --method stream ;;
	pgharbor_base) measure "backup-$t-$r" "$WORK/pgharbor-base" --config "$WORK/pgharbor.yaml" backup ;;
	pgharbor_l1) measure "backup-$t-$r" "$WORK/pgharbor" --config "$WORK/pgharbor-l1.yaml" backup ;;
	pgharbor_go) measure "backup-$t-$r" "$WORK/pgharbor" --config "$WORK/pgharbor-go.yaml" backup ;;
	pgbr_enc) measure "backup-$t-$r" pgbackrest --config "$WORK/pgbr-enc.conf" --stanza=bench --type=full --archive-check=n backup ;;
	pgbr_plain) measure "backup-$t-$r" pgbackrest --config "$WORK/pgbr-plain.conf" --stanza=bench --type=full --archive-check=n backup ;;
	pg_basebackup) measure "backup-$t-$r" "$PGBIN/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -D "$WORK/pgbb" -Ft -X none \
		--compress=client-zstd:3 --checkpoint=fast --no-sync ;;
	esac || { record backup_s "$t" "$r" FAIL; return 0; }
	after=$(dirsize "$dir")
	record backup_s "$t" "$r" "$M_WALL"
	record backup_rss "$t" "$r" "$M_RSS"
	record backup_tree "$t" "$r" "$M_TREE"
	record backup_anon "$t" "$r" "$M_ANON"
	record backup_stored "$t" "$r" "$(((after - before) / 1000000))"
	record backup_cpu_gb "$t" "$r" "$(python3 -c "print(f'{$M_CPU / ($DATA_BYTES / 1e9):.2f}')")"
	log "  backup  $t: ${M_WALL}s, CPU ${M_CPU}s, peak RSS ${M_RSS} MiB (tree ${M_TREE} MiB), stored $(((after - before) / 1000000)) MB"
}

# warm_restore_target writes and deletes a file the size of the data directory where the
# restores go, untimed. Every restore but a round's first follows the deletion of the one
# before it; without this, whichever tool comes first in a round pays for the page cache
# growing into memory nothing used yet (seen: pgharbor's restore took 8-9 s when first in a
# round, 3.6-5 s otherwise, on the same backup), a penalty the rotation hands to each tool in turn.
warm_restore_target() {
	local mb
	mb=$(du -sm "$PGDATA" | cut -f1)
	as_pg dd if=/dev/zero of="$WORK/warm" bs=1M count="$mb" status=none
	sync
	rm -f "$WORK/warm"
}

restore_one() { # restore_one TOOL ROUND
	local t=$1 r=$2 dst=$WORK/restore s0 s1 synct
	rm -rf "$dst"
	as_pg mkdir -m 700 "$dst"
	# A restore reads a backup taken long before: every tool reads its repository from disk.
	python3 "$WORK/benchlib.py" evict "$WORK/pgh-repo" "$WORK/pgbr-repo-enc" "$WORK/pgbr-repo-plain" "$WORK/pgbb"
	case $t in
	pgharbor) measure "restore-$t-$r" "${PGH[@]}" restore --pgdata "$dst" ;;
	pgbr_enc) measure "restore-$t-$r" pgbackrest --config "$WORK/pgbr-enc.conf" --stanza=bench --pg1-path="$dst" restore ;;
	pgbr_plain) measure "restore-$t-$r" pgbackrest --config "$WORK/pgbr-plain.conf" --stanza=bench --pg1-path="$dst" restore ;;
	pg_basebackup) measure "restore-$t-$r" bash -c "zstd -dc -q '$WORK/pgbb/base.tar.zst' | tar -xf - -C '$dst'" ;;
	esac || { record restore_s "$t" "$r" FAIL; rm -rf "$dst"; return 0; }
	s0=$(date +%s.%N); sync; s1=$(date +%s.%N)
	synct=$(python3 -c "print(f'{$s1 - $s0:.3f}')")
	record restore_s "$t" "$r" "$M_WALL"
	record restore_sync_s "$t" "$r" "$(python3 -c "print(f'{$M_WALL + $synct:.3f}')")"
	record restore_rss "$t" "$r" "$M_RSS"
	record restore_tree "$t" "$r" "$M_TREE"
	log "  restore $t: ${M_WALL}s (+ sync ${synct}s), peak RSS ${M_RSS} MiB (tree ${M_TREE} MiB), $(du -sm "$dst" | cut -f1) MB written"
	rm -rf "$dst"
}

wal_one() { # wal_one TOOL ROUND
	local t=$1 r=$2 target out
	case $t in
	pgharbor) set_archive_command "$PGH_ARCHIVE" ;;
	pgbr_async) set_archive_command "$PGBR_ARCHIVE_ASYNC" ;;
	pgbr_sync) set_archive_command "$PGBR_ARCHIVE_SYNC" ;;
	esac
	sql "DROP TABLE IF EXISTS big; CREATE TABLE big (id bigint, pad text)"
	sql "CHECKPOINT"
	archive_now 300
	target=$((WAL_MB * 1000000))
	sync
	# One session: the load (committing every 20000 rows until $WAL_MB MB of WAL are written),
	# its end time, pg_switch_wal, then the wait for the archiver.
	out=$("${PSQL[@]}" -F ' ' <<SQL 2>>"$WORK/logs/wal-$t-$r.log"
DO \$load\$
DECLARE s pg_lsn := pg_current_wal_lsn(); t0 timestamptz := clock_timestamp(); i bigint := 0;
BEGIN
  LOOP
    INSERT INTO big SELECT g, md5(g::text) || md5(random()::text) || md5(random()::text) || md5(random()::text)
      FROM generate_series(i * 20000 + 1, (i + 1) * 20000) g;
    COMMIT;
    i := i + 1;
    EXIT WHEN pg_wal_lsn_diff(pg_current_wal_lsn(), s) >= $target;
  END LOOP;
  PERFORM set_config('bench.t_end', clock_timestamp()::text, false);
  PERFORM set_config('bench.wal_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), s)::text, false);
  PERFORM set_config('bench.load_s', extract(epoch FROM clock_timestamp() - t0)::text, false);
END \$load\$;
SELECT (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS pending,
       pg_walfile_name(pg_switch_wal()) AS seg \gset
SELECT round(bench_wait_archived(:'seg', current_setting('bench.t_end')::timestamptz, 1800)::numeric, 3),
       :pending, round(current_setting('bench.load_s')::numeric, 2),
       round(current_setting('bench.wal_bytes')::numeric / 1000000), :'seg',
       (SELECT failed_count FROM pg_stat_archiver);
SQL
	) || { record wal_catchup_s "$t" "$r" FAIL; log "  wal $t: load failed (see $WORK/logs/wal-$t-$r.log)"; return 0; }
	local lag pending loads walmb seg failed
	read -r lag pending loads walmb seg failed <<<"$out"
	if [ "$lag" = "-1.000" ]; then
		record wal_catchup_s "$t" "$r" FAIL
		log "  wal $t: archiver did not catch up within 1800 s"
		return 0
	fi
	record wal_catchup_s "$t" "$r" "$lag"
	record wal_pending "$t" "$r" "$pending"
	record wal_load_s "$t" "$r" "$loads"
	record wal_mb "$t" "$r" "$walmb"
	log "  wal $t: load ${loads}s, ${walmb} MB WAL, ${pending} segments .ready at its end, caught up ${lag}s after it (up to $seg; archiver failures so far: $failed)"
}

TOOLS=(pgharbor pgbr_enc pgbr_plain pg_basebackup)
BACKUP_TOOLS=(pgharbor pgharbor_stream pgbr_enc pgbr_plain pg_basebackup)
[ -z "${PGHARBOR_BASE_BIN:-}" ] || BACKUP_TOOLS+=(pgharbor_base)
[ "${BENCH_PGH_LEVEL1:-0}" = 0 ] || BACKUP_TOOLS+=(pgharbor_l1)
[ "${BENCH_PGH_GO:-0}" = 0 ] || BACKUP_TOOLS+=(pgharbor_go)
WAL_TOOLS=(pgharbor pgbr_async)
[ "$WAL_SYNC" = 0 ] || WAL_TOOLS+=(pgbr_sync)

for ((r = 1; r <= ROUNDS; r++)); do
	if has_part backup || has_part restore; then
		log "round $r/$ROUNDS: full backups"
		for t in $(rotate $((r - 1)) "${BACKUP_TOOLS[@]}"); do backup_one "$t" "$r"; done
	fi
	if has_part restore; then
		log "round $r/$ROUNDS: full restores of those backups"
		warm_restore_target
		for t in $(rotate $((r - 1)) "${TOOLS[@]}"); do restore_one "$t" "$r"; done
	fi
done
if has_part wal; then
	for ((r = 1; r <= ROUNDS; r++)); do
		log "round $r/$ROUNDS: WAL archiving under a bulk load of ~$WAL_MB MB of WAL"
		for t in $(rotate $((r - 1)) "${WAL_TOOLS[@]}"); do wal_one "$t" "$r"; done
	done
	set_archive_command "$PGH_ARCHIVE"
fi

TABLE=$(python3 "$HERE/benchlib.py" report "$RAW")
{
	echo
	echo "pgharbor backup benchmark, $STAMP: $(nproc) cores; cluster $DBSIZE (pgbench -s $SCALE + $RANDOM_MB MiB random, shape $SHAPE); $ROUNDS round(s), tool order rotating"
	echo "pgBackRest: zst level 3, process-max=2, start-fast, --archive-check=n; pg_basebackup: -Ft -X none, client-zstd:3"
	echo "$TABLE"
} | tee -a "$RAW"
cp "$RAW" "$RESULTS"
log "raw numbers and table: $RESULTS"
if grep -q ' FAIL$' "$RAW"; then
	log "some runs failed (FAIL lines in $RESULTS)"
	exit 1
fi
