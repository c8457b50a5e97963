#!/usr/bin/env bash
# The main job on the embedded defaults: a throwaway PostgreSQL 15 cluster archiving into a
# filesystem repository, a full backup, writes, a point-in-time restore to a moment between
# the writes, and a comparison proving the restored data is what was there at that moment.
set -euo pipefail
cd "$(dirname "$0")/.."
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BIN=$(pwd)/bin/pgharbor
[ -x "$BIN" ] || go build -tags disable_grpc_modules -o "$BIN" ./cmd/pgharbor

WORK=$(mktemp -d /tmp/pgharbor-demo-XXXXXX)
chmod 755 "$WORK"
RUNAS=()
if [ "$(id -u)" -eq 0 ]; then RUNAS=(runuser -u postgres --); chown postgres: "$WORK"; fi
as_pg() { "${RUNAS[@]}" "$@"; }
cp "$BIN" "$WORK/pgharbor"; chmod 755 "$WORK/pgharbor"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PORT2=$((PORT + 1))
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$WORK/restored" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "keys and configuration ($WORK)"
as_pg "$WORK/pgharbor" keygen --out "$WORK/identity.txt" > "$WORK/recipient"
cat > "$WORK/pgharbor.yaml" <<YAML
repo:
  url: file://$WORK/repo
  cluster: demo
encryption:
  mode: age
  recipients: [$(cat "$WORK/recipient")]
  identity_file: $WORK/identity.txt
postgres:
  conn: host=$WORK port=$PORT user=postgres dbname=postgres
YAML
[ ${#RUNAS[@]} -gt 0 ] && chown postgres: "$WORK/pgharbor.yaml"
PGH=(as_pg "$WORK/pgharbor" --config "$WORK/pgharbor.yaml")
"${PGH[@]}" repo init

step "a throwaway PostgreSQL 15 cluster with archive_command = 'pgharbor wal push %p'"
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
archive_mode = on
archive_command = '$WORK/pgharbor --config $WORK/pgharbor.yaml wal push %p'
CONF
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start >/dev/null
PSQL=(as_pg "$PGBIN/psql" -h "$WORK" -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1)
as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s 10 -q postgres 2>&1 | tail -1

step "full backup"
"${PGH[@]}" backup

step "writes after the backup"
as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -c 4 -t 500 postgres | grep -E '^(number of transactions actually|tps)' || true
SNAP_SQL="SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts"
WANT=$("${PSQL[@]}" -c "$SNAP_SQL")
TARGET=$("${PSQL[@]}" -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
echo "target time $TARGET, accounts checksum at that moment $WANT"
sleep 1.2
as_pg "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -c 4 -t 500 postgres >/dev/null
NOW=$("${PSQL[@]}" -c "$SNAP_SQL")
echo "more writes after the target: checksum now $NOW"
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
sleep 1

step "pgharbor info"
"${PGH[@]}" info

step "restore to $TARGET and start"
mkdir -p "$WORK/restored"; [ ${#RUNAS[@]} -gt 0 ] && chown postgres: "$WORK/restored"; chmod 700 "$WORK/restored"
"${PGH[@]}" restore --pgdata "$WORK/restored" --target-time "$TARGET" --target-action promote \
  --archive-mode off --start --port "$PORT2" --socket-dir "$WORK"
GOT=$(as_pg "$PGBIN/psql" -h "$WORK" -p "$PORT2" -U postgres -d postgres -qAtX -c "$SNAP_SQL")

step "comparison"
printf '%-34s %s\n' "at the target (original):" "$WANT" "restored:" "$GOT" "original now:" "$NOW"
if [ "$GOT" = "$WANT" ] && [ "$GOT" != "$NOW" ]; then
  echo "OK: the restored cluster holds exactly the data of $TARGET"
else
  echo "MISMATCH: the restore did not reproduce the data at the target" >&2
  exit 1
fi
