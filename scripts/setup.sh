#!/usr/bin/env bash
# Installs what pgrouter's lab, tests and benches need on a Debian machine (run as root).
set -euo pipefail

packages=(postgresql etcd-server patroni protobuf-compiler haproxy pgbouncer prometheus systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The lab runs its own etcd and PostgreSQL members; the distribution's services are not used.
for bin in etcd patroni patronictl protoc psql pgbench promtool haproxy; do
  command -v "$bin" >/dev/null || { echo "setup: $bin missing after install" >&2; exit 1; }
done
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
