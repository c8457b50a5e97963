#!/usr/bin/env bash
# Idle cost of `pgharbor server`: three clusters (filesystem repositories, age encryption),
# schedules that do not fire during the run, the default refresh interval. Measures the
# server's CPU time over DURATION seconds, scaled to an hour, and its resident memory; first
# with nobody scraping, then with /metrics and the status page fetched every SCRAPE seconds
# (as a Prometheus and an open browser tab would).
#
#   DURATION=180   seconds measured per phase (after WARMUP)
#   WARMUP=15      seconds after start-up before measuring
#   SCRAPE=15      seconds between scrapes in the second phase
#   REFRESH=1m     server.refresh_interval
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DURATION=${DURATION:-180}
WARMUP=${WARMUP:-15}
SCRAPE=${SCRAPE:-15}
REFRESH=${REFRESH:-1m}
for v in DURATION WARMUP SCRAPE; do
	case ${!v} in ''|*[!0-9]*|0) echo "$v must be a positive number of seconds" >&2; exit 2 ;; esac
done

work=$(mktemp -d)
pid=""
cleanup() {
	if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

go build -tags disable_grpc_modules -o "$work/pgharbor" ./cmd/pgharbor
bin="$work/pgharbor"
recipient=$("$bin" keygen --out "$work/identity.txt")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/pgharbor.yaml" <<YAML
server: {listen: "127.0.0.1:$port", refresh_interval: $REFRESH}
repo: {url: "file://$work/repo"}
encryption: {mode: age, recipients: [$recipient], identity_file: $work/identity.txt}
schedules: {backup: "@every 24h", verify: "@every 168h", catch_up: false}
readiness: {max_backup_age: 26h}
clusters:
  - {name: alpha, repo: {cluster: alpha}, postgres: {conn: "host=/nonexistent"}}
  - {name: beta,  repo: {cluster: beta},  postgres: {conn: "host=/nonexistent"}}
  - {name: gamma, repo: {cluster: gamma}, postgres: {conn: "host=/nonexistent"}}
YAML
for c in alpha beta gamma; do
	"$bin" --config "$work/pgharbor.yaml" --cluster-name $c repo init >/dev/null 2>&1
done

"$bin" --config "$work/pgharbor.yaml" --log-level warn server 2>"$work/server.log" &
pid=$!
for _ in $(seq 100); do
	curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
	sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null

tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$pid/status"; }

phase() { # name scrape(0|1)
	local t0 t1 c0 c1 start
	c0=$(cpu_ticks); t0=$(date +%s.%N)
	start=$(date +%s)
	while [ $(( $(date +%s) - start )) -lt "$DURATION" ]; do
		if [ "$2" = 1 ]; then
			curl -fsS "http://127.0.0.1:$port/metrics" >/dev/null
			curl -fsS "http://127.0.0.1:$port/" >/dev/null
			sleep "$SCRAPE"
		else
			sleep 5
		fi
	done
	c1=$(cpu_ticks); t1=$(date +%s.%N)
	awk -v n="$1" -v c="$((c1 - c0))" -v hz="$tck" -v t0="$t0" -v t1="$t1" -v rss="$(kib VmRSS)" -v hwm="$(kib VmHWM)" -v anon="$(kib RssAnon)" -v file="$(kib RssFile)" 'BEGIN {
		s = c / hz; d = t1 - t0
		printf "%-22s %4.0f s: CPU %.2f s = %.1f s/hour (%.3f%% of a core); RSS %.1f MiB (anonymous %.1f, binary and files %.1f), peak %.1f MiB\n", n, d, s, s * 3600 / d, 100 * s / d, rss / 1024, anon / 1024, file / 1024, hwm / 1024
	}'
}

# The binary's own baseline: a command that only prints its version.
base=0
if [ -x /usr/bin/time ]; then base=$(/usr/bin/time -f %M "$bin" version 2>&1 >/dev/null | tail -1); fi
sleep "$WARMUP"
echo "pgharbor server, 3 clusters, refresh_interval $REFRESH, $(nproc) cores; \`pgharbor version\` peaks at $(awk -v k="$base" 'BEGIN {printf "%.1f", k / 1024}') MiB RSS"
phase "idle" 0
phase "scraped every ${SCRAPE}s" 1
if grep -q . "$work/server.log"; then
	echo "server log (warnings and errors):"; cat "$work/server.log"
fi
