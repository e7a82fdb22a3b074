#!/usr/bin/env bash
# Brings up etcd and a 3-member Patroni cluster on loopback with pgrouter in front of it, prints
# the DSNs, and runs until Ctrl-C. Ports: pgrouter 5000/5001, etcd 15400/15402/15404, PostgreSQL
# 15410-15412.
set -euo pipefail
cd "$(dirname "$0")/.."
# What the demo needs only (scripts/setup.sh: the tests' tools are left to scripts/test.sh).
scripts/setup.sh demo
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bin pgrouter
cargo build --release -p pgrouter-lab --bin pgrouter-lab
exec target/release/pgrouter-lab demo --pgrouter target/release/pgrouter "$@"
