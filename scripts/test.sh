#!/usr/bin/env bash
# Every check and test: formatting, clippy, unit tests, integration tests on a real lab
# (etcd + Patroni + PostgreSQL on loopback), a smoke run of the criterion benches, and a short
# run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
# The shipped alert rules: valid, and firing (or not) on the series of their tests.
promtool check rules docker/alerts.yml
promtool test rules docker/alerts_test.yml
cargo clippy --workspace --all-targets -- -D warnings
# cargo-deny reads the metadata of every platform's dependencies, which a build does not fetch.
cargo fetch --quiet
cargo fetch --quiet --manifest-path fuzz/Cargo.toml
# Advisories from the RustSec snapshot beside the checkout (../shared/advisory-db), copied where
# deny.toml's db-path says; offline, nothing fetched. The fuzz crate has a lock file of its own.
advisories=(advisories)
scripts/advisory-db.sh || {
  [ $? -eq 2 ] || exit 1
  echo "test.sh: NO ADVISORY CHECK: no RustSec snapshot beside the checkout (../shared/advisory-db)" >&2
  advisories=()
}
cargo deny --offline --log-level error check "${advisories[@]}" licenses bans sources
if ((${#advisories[@]})); then
  cargo deny --offline --log-level error --manifest-path fuzz/Cargo.toml check advisories
fi
# The driver matrix runs the lab crate's tokio-postgres driver (tests/drivers/README.md).
cargo build -p pgrouter-lab --bins
cargo test --workspace
# The lab's own end-to-end tests start labs of their own; a plain `cargo test` shows them ignored.
cargo test -p pgrouter-lab --test lab -- --ignored
# The Debian package: built from the test binary, installed, run, removed and purged (root).
cargo test --test package -- --ignored
cargo bench --bench relay -- --test
# Issue 30's probes (BPF sockmap, io_uring) still build.
benches/kernel_relay.sh --build-only
# Every fuzz target for 30 s from the committed seeds (docs/fuzzing.md: longer runs).
scripts/fuzz.sh 30
