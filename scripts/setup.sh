#!/usr/bin/env bash
# Installs what pgharbor's tests and demo need on a fresh Debian machine, and nothing twice:
# PostgreSQL 15 (server binaries), the clients the pool tests drive, headless Chromium and a
# font for the server's status-page test, libfaketime (a PostgreSQL with a clock of its own),
# etcd (the failover leader election tests), a C compiler (cgo), and the storage servers the S3 and GCS tests
# start (built with go install at pinned versions, cached in ~/go/bin).
set -euo pipefail

need_pkgs=()
for p in postgresql-15 pgbouncer python3-psycopg2 libpostgresql-jdbc-java chromium fonts-dejavu-core faketime etcd-server; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
command -v java >/dev/null 2>&1 || need_pkgs+=(default-jre-headless) # the JDBC client test
# cgo, for the C zstd encoder (libzstd is linked in from valyala/gozstd; Go builds without
# cgo when no C compiler is found, and then uses its pure-Go encoder).
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc)
dpkg -s libc6-dev >/dev/null 2>&1 || need_pkgs+=(libc6-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
GOBIN_DIR="$(go env GOPATH)/bin"
install_tool() { # name module@version
  if [ -x "$GOBIN_DIR/$1" ]; then return; fi
  echo "setup: go install $2"
  GOFLAGS=-mod=mod go install "$2"
}
install_tool versitygw github.com/versity/versitygw/cmd/versitygw@v1.8.0
install_tool fake-gcs-server github.com/fsouza/fake-gcs-server@v1.56.1
echo "setup: ready (PostgreSQL 15, pgbouncer, psycopg2, JDBC, chromium, etcd, versitygw, fake-gcs-server)"
