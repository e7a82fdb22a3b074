#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, one process at a time, on the
# stable toolchain; fails if any target finds a crash. See docs/fuzzing.md.
#
# usage: scripts/fuzz.sh [seconds-per-target] [target...]
#   seconds-per-target  libFuzzer's -max_total_time for each target   [30]
#   target              startup, frames, pooled_rewrite, patroni_json  [all of them]
#
# Environment: FUZZ_TOOLCHAIN (default "stable"; "nightly" also allows FUZZ_SANITIZER),
# FUZZ_SANITIZER (default "none": sanitizers need nightly), FUZZ_ARGS (more libFuzzer flags).
# The corpus libFuzzer grows goes to a temporary directory; fuzz/corpus/<target> (the seeds
# in the repository) is only read. Crashes are written to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(startup frames pooled_rewrite patroni_json)
fi
toolchain=${FUZZ_TOOLCHAIN:-stable}
sanitizer=${FUZZ_SANITIZER:-none}

cargo_() {
  if command -v rustup >/dev/null; then
    cargo "+$toolchain" "$@"
  else
    cargo "$@"
  fi
}

if ! cargo_ fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo_ install cargo-fuzz --locked
fi

# libFuzzer's coverage instrumentation (-Cpasses=sancov-module, -Cllvm-args=...) takes only
# stable flags; with --sanitizer none nothing needs nightly.
# Release with debug assertions (cargo-fuzz's default), the same flags for build and run so
# run does not rebuild.
build=(--sanitizer "$sanitizer" --release --debug-assertions)
start=$(date +%s)
echo "fuzz: building the targets"
(cd fuzz && cargo_ fuzz build "${build[@]}")
echo "fuzz: built in $(($(date +%s) - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  max_len=4096
  # frames: room for streams longer than the relay's 16 KiB batch.
  [[ $t == frames ]] && max_len=40000
  echo "fuzz: $t for ${seconds} s"
  # shellcheck disable=SC2086
  if (cd fuzz && cargo_ fuzz run "${build[@]}" "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 ${FUZZ_ARGS:-}) >"$work/$t.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    echo "fuzz: $t: ok, ${runs:-?} executions"
  else
    failed+=("$t")
    echo "fuzz: $t: FAILED" >&2
    grep -v '^#[0-9]' "$work/$t.log" | tail -n 60 >&2
    echo "fuzz: reproduce with: (cd fuzz && cargo +$toolchain fuzz run --sanitizer $sanitizer $t artifacts/$t/<crash-file>)" >&2
  fi
done
echo "fuzz: done in $(($(date +%s) - start)) s"
if ((${#failed[@]})); then
  echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} passed, 0 failed"
