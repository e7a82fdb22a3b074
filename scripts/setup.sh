#!/usr/bin/env bash
# Installs what pgrouter needs on a Debian machine (run as root), what is missing only.
#   scripts/setup.sh demo   what scripts/demo.sh needs: PostgreSQL, etcd, Patroni, a C toolchain
#                           and protoc (etcd-client's build), Rust (rustup, when cargo is missing)
#   scripts/setup.sh        that, and what the tests, benches and fuzzing need besides
#                           (scripts/test.sh): drivers, HAProxy, pgbouncer, promtool, cargo-deny...
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}
case "$mode" in
  demo | test) ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac

# Installs the packages named that are not installed yet.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The demo: the lab's etcd, Patroni and PostgreSQL; cc links and protoc generates etcd's client.
apt_install postgresql etcd-server patroni protobuf-compiler build-essential curl ca-certificates
for bin in etcd patroni patronictl protoc psql cc curl; do
  command -v "$bin" >/dev/null || { echo "setup: $bin missing after install" >&2; exit 1; }
done
# Rust from rustup (Debian's cargo is older than the dependencies need), for root's home.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  echo "setup: installing Rust with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
fi
[ "$mode" = demo ] && exit 0

# php-cli/php-pgsql, python3-psycopg and python3-asyncpg: the real drivers the pooling tests run
# (Nextcloud's PDO, psycopg 3, asyncpg), under Debian's /usr/bin/python3. iptables: the fault
# tests drop packets (etcd unreachable, a member cut off, half-open clients) on loopback.
# The driver matrix (tests/drivers/README.md): pgjdbc on the JDK, ruby-pg with ActiveRecord,
# Django on psycopg2, Go pgx v4; node-postgres below. Debian's pgbouncer exporter scrapes the
# console in the tests (its service, enabled with pgbouncer's, is stopped: the tests run it).
# prometheus: promtool checks and tests docker/alerts.yml. clang, libbpf-dev, liburing-dev: the
# probes of benches/kernel_relay.sh (a BPF sockmap relay, an io_uring relay) are built in the tests.
apt_install haproxy pgbouncer prometheus systemd clang libbpf-dev liburing-dev \
  prometheus-pgbouncer-exporter zookeeperd python3-kazoo openssl \
  php-cli php-pgsql python3-psycopg python3-asyncpg iptables \
  libpostgresql-jdbc-java default-jdk-headless ruby-pg ruby-activerecord python3-django \
  python3-psycopg2 golang-go golang-github-jackc-pgx-v4-dev
# The lab runs its own etcd and PostgreSQL members; the distribution's services are not used.
systemctl stop prometheus-pgbouncer-exporter 2>/dev/null || true
# ZooKeeper (with python3-kazoo, Patroni's client for it) runs the lab of Patroni on another DCS;
# openssl makes the secured lab's certificates, curl speaks HTTPS to its etcd and REST APIs.
systemctl stop zookeeper 2>/dev/null || true
for bin in pgbench promtool haproxy php iptables prometheus-pgbouncer-exporter openssl curl; do
  command -v "$bin" >/dev/null || { echo "setup: $bin missing after install" >&2; exit 1; }
done
# docker-compose validates docker/compose.yml in the tests (no container engine is needed;
# its recommended docker.io is not installed).
command -v docker-compose >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
}
[ -f /usr/share/java/zookeeper.jar ] || { echo "setup: ZooKeeper missing after install" >&2; exit 1; }
/usr/bin/python3 -c 'import kazoo' || { echo "setup: python3-kazoo missing" >&2; exit 1; }
/usr/bin/python3 -c 'import psycopg, asyncpg' || { echo "setup: psycopg or asyncpg missing" >&2; exit 1; }
/usr/bin/python3 -c 'import django, psycopg2' || { echo "setup: django or psycopg2 missing" >&2; exit 1; }
ruby -e 'require "active_record"; require "pg"' || { echo "setup: activerecord or ruby-pg missing" >&2; exit 1; }
# node-postgres: Debian's node-pg (with Debian's nodejs), unless a nodejs from elsewhere is
# installed (NodeSource's clashes with it): then the versions tests/drivers/node-pg pins, from npm.
if [ ! -d /usr/share/nodejs/pg ] && [ ! -d tests/drivers/node-pg/node_modules/pg ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq node-pg >/dev/null 2>&1 ||
    npm ci --silent --prefix tests/drivers/node-pg
fi
for bin in java go node; do
  command -v "$bin" >/dev/null || { echo "setup: $bin missing after install" >&2; exit 1; }
done
php -r 'exit(extension_loaded("pdo_pgsql") ? 0 : 1);' || { echo "setup: php pdo_pgsql missing" >&2; exit 1; }
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
# cargo-deny checks advisories (offline, scripts/advisory-db.sh), licenses, bans and sources of
# every dependency in the tests.
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked --quiet
