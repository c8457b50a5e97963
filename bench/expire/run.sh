#!/usr/bin/env bash
# Expire benchmark (not part of `make test`): `pgharbor expire` of WAL_OBJECTS WAL segment
# objects and BACKUPS backups on the Versity S3 gateway, through a proxy that counts the S3
# requests. The repository is seeded with small objects (a delete costs the same whatever
# the object's size); expire runs as the real binary.
#
#   bench/expire/run.sh          (from the repository root)
#
# Settings (environment): WAL_OBJECTS=20000 BACKUPS=30 BUNDLES=20 FULL_COUNT=1
#   VERSITYGW=versitygw (else ~/go/bin/versitygw)  RESULTS_FILE=path (JSON results)
# Needs Go and versitygw (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0).
# Exits non-zero when the WAL took more than 20 delete requests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GW=${VERSITYGW:-$(command -v versitygw || echo "$HOME/go/bin/versitygw")}
[ -x "$GW" ] || { echo "versitygw not found; go install github.com/versity/versitygw/cmd/versitygw@v1.8.0" >&2; exit 2; }
mkdir -p bench/bin
go build -tags disable_grpc_modules -o bench/bin/pgharbor ./cmd/pgharbor
go build -o bench/bin/expire-bench ./bench/expire
bench/bin/expire-bench -versitygw "$GW" -pgharbor bench/bin/pgharbor \
	-wal "${WAL_OBJECTS:-20000}" -backups "${BACKUPS:-30}" -bundles "${BUNDLES:-20}" -full-count "${FULL_COUNT:-1}" \
	${RESULTS_FILE:+-json "$RESULTS_FILE"}
