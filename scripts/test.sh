#!/usr/bin/env bash
# Every check and test: formatting, clippy, unit tests, integration tests on a real lab
# (etcd + Patroni + PostgreSQL on loopback), and a smoke run of the criterion benches.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Advisories need the RustSec database from GitHub, out of reach here (see deny.toml).
cargo deny --offline --log-level error check licenses bans sources
PGROUTER_LAB_TESTS=1 cargo test --workspace
cargo bench --bench relay -- --test
