#!/usr/bin/env bash
# A/B of two running routers (two builds, or two configs) on one cluster: pgbench runs against
# A then B, PAIRS times, and each pair's tps ratio B/A is printed with the median of them.
# Short alternated pairs keep the machine's drift out of the ratio; a single pair is noise.
#
#   benches/ab.sh PORT_A PORT_B [PAIRS=8] [SECONDS=6] [CLIENTS=150] [MODE=simple]
#   AB_PGBENCH_FLAGS=-C benches/ab.sh ...   (more pgbench flags: -C for connection churn)
#
# Per run: tps, the router's CPU per transaction (utime+stime of the process listening on the
# port, from /proc), the machine's idle time per transaction (from /proc/stat) and how often per
# transaction the router's threads were preempted (involuntary context switches, from /proc). Needs
# pgbench tables on the cluster (pgbench -i -s 10) and PGPASSWORD (or a .pgpass) for postgres.
# Used for BENCHMARKS.md, "Worker threads as separate event loops", on ./scripts/demo.sh's
# cluster with routers started from configs like config/pgrouter.toml.
set -euo pipefail
port_a=$1 port_b=$2 pairs=${3:-8} secs=${4:-6} clients=${5:-150} mode=${6:-simple}

pid_of() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
idle_ticks() { awk '/^cpu /{print $5}' /proc/stat; }
preempted() { cat "/proc/$1"/task/*/status | awk '/^nonvoluntary_ctxt_switches/ { n += $2 } END { print n }'; }

# One run: prints "tps cpu_us_per_txn idle_us_per_txn preempted_per_txn".
run() {
  local port=$1 pid out tx c0 c1 i0 i1 p0 p1 hz
  pid=$(pid_of "$port")
  [ -n "$pid" ] || { echo "nothing listens on $port" >&2; exit 1; }
  hz=$(getconf CLK_TCK)
  c0=$(cpu_ticks "$pid"); i0=$(idle_ticks); p0=$(preempted "$pid")
  out=$(pgbench -n -S ${AB_PGBENCH_FLAGS:-} -M "$mode" -c "$clients" -j 2 -T "$secs" -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1)
  c1=$(cpu_ticks "$pid"); i1=$(idle_ticks); p1=$(preempted "$pid")
  tx=$(grep -oP 'processed: \K[0-9]+' <<<"$out") || { echo "$out" >&2; exit 1; }
  awk -v o="$out" -v tx="$tx" -v c=$((c1 - c0)) -v i=$((i1 - i0)) -v p=$((p1 - p0)) -v hz="$hz" 'BEGIN {
    match(o, /tps = [0-9.]+/); tps = substr(o, RSTART + 6, RLENGTH - 6)
    printf "%.0f %.1f %.1f %.2f\n", tps, c * 1e6 / hz / tx, i * 1e6 / hz / tx, p / tx }'
}

echo "pgbench -n -S ${AB_PGBENCH_FLAGS:+$AB_PGBENCH_FLAGS }-M $mode -c $clients -j 2 -T $secs: A on :$port_a, B on :$port_b, $pairs pairs"
ratios=()
for n in $(seq 1 "$pairs"); do
  read -r ta ca ia pa < <(run "$port_a")
  read -r tb cb ib pb < <(run "$port_b")
  r=$(awk -v a="$ta" -v b="$tb" 'BEGIN { printf "%.2f", b / a }')
  ratios+=("$r")
  echo "pair $n: A $ta tps ($ca us CPU, $ia us idle, $pa preempted per txn)  B $tb tps ($cb us, $ib us, $pb)  B/A $r"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END {
  m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "median B/A %.3f (min %.2f, max %.2f)\n", m, v[1], v[NR] }'
