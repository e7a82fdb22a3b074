#!/usr/bin/env bash
# Issue 30's measurement: how fast can a relay in front of the leader be, in user space and in
# the kernel? Side by side in one lab, alternated each round: a direct connection to the leader,
# HAProxy (mode tcp), pgrouter pass-through, and three single-threaded probes from
# benches/kernel_relay/: an epoll relay, the same with a BPF sockmap relaying every established
# session in the kernel (relay.bpf.c: the bare redirect, none of pgrouter's rules), and an
# io_uring relay.
#
#   cargo build --release --workspace && benches/kernel_relay.sh [rounds] [seconds]
#   benches/kernel_relay.sh --build-only     compiles the probes, warnings as errors (the tests)
#
# Needs root (the sockmap), clang, libbpf-dev and liburing-dev (installed when missing).
# Prints each run (tps, and the whole machine's CPU per transaction from /proc/stat), then the
# medians over rounds of each target's tps ratio to HAProxy's and to direct's in the same round.
set -euo pipefail
build_only=false
[ "${1:-}" = --build-only ] && build_only=true && shift
rounds=${1:-5}
seconds=${2:-6}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=/tmp/pgrouter-bench-kernel-relay
base=19800
# shellcheck source=benches/lab.sh
. "$root/benches/lab.sh"

missing=()
command -v clang >/dev/null || missing+=(clang)
[ -e /usr/include/bpf/libbpf.h ] || missing+=(libbpf-dev)
[ -e /usr/include/liburing.h ] || missing+=(liburing-dev)
command -v haproxy >/dev/null || missing+=(haproxy)
((${#missing[@]} == 0)) || { apt-get update -qq && apt-get install -y -q "${missing[@]}" >/dev/null; }

rm -rf "$dir" && mkdir -p "$dir"
src=$root/benches/kernel_relay
clang -O2 -g -Wall -Werror -target bpf -I"/usr/include/$(gcc -dumpmachine)" -c "$src/relay.bpf.c" -o "$dir/relay.bpf.o"
gcc -O2 -Wall -Werror -o "$dir/probe" "$src/probe.c" -lbpf
gcc -O2 -Wall -Werror -o "$dir/uring" "$src/uring.c" -luring
$build_only && { echo "kernel_relay: probes built in $dir"; exit 0; }

lab_up "$dir" $base

cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen leader
    bind 127.0.0.1:19850
    server leader 127.0.0.1:$leader
EOF
haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
pids+=($!)
cat >"$dir/pgrouter.toml" <<EOF
[cluster]
scope = "demo"
etcd = ["127.0.0.1:$base"]
[listen]
primary = "127.0.0.1:19851"
replicas = "127.0.0.1:19852"
admin = "127.0.0.1:19853"
EOF
"$root/target/release/pgrouter" --config "$dir/pgrouter.toml" 2>"$dir/pgrouter.log" &
pids+=($!)
"$dir/probe" 19854 "$leader" epoll 2>"$dir/epoll.log" &
pids+=($!)
RELAY_BPF=$dir/relay.bpf.o "$dir/probe" 19855 "$leader" sockmap 2>"$dir/sockmap.log" &
pids+=($!)
"$dir/uring" 19856 "$leader" 2>"$dir/uring.log" &
pids+=($!)
sleep 2

targets=(direct haproxy pgrouter epoll sockmap io_uring)
declare -A port=([direct]=$leader [haproxy]=19850 [pgrouter]=19851 [epoll]=19854 [sockmap]=19855 [io_uring]=19856)
for t in "${targets[@]}"; do
  [ "$(pg -p "${port[$t]}" -c 'select 1')" = 1 ] || { echo "$t on ${port[$t]} does not answer" >&2; exit 1; }
done
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
runs=$dir/runs.txt
: >"$runs"
echo "| round | workload | target | tps | machine CPU us/txn |"
echo "|---|---|---|---|---|"
for r in $(seq "$rounds"); do
  for workload in "simple 1" "simple 16" "simple 150" "prepared 16"; do
    read -r mode clients <<<"$workload"
    for i in "${!targets[@]}"; do
      t=${targets[$(((i + r) % ${#targets[@]}))]}
      before=$(busy)
      out=$(PGPASSWORD=postgres pgbench -h 127.0.0.1 -p "${port[$t]}" -U postgres \
        -n -S -M "$mode" -c "$clients" -j 2 -T "$seconds" postgres 2>&1)
      after=$(busy)
      tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
      n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
      us=$(awk -v d=$((after - before)) -v n="${n:-0}" -v k="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.1f", d / k * 1e6 / n; else print "-" }')
      echo "| $r | $mode -c $clients | $t | ${tps:-failed: $(tail -1 <<<"$out")} | $us |"
      echo "$r $mode-c$clients $t ${tps:-0} $us" >>"$runs"
    done
  done
done
echo
echo "Medians over rounds of each run's ratio to HAProxy's and to direct's tps in the same round:"
echo
python3 - "$runs" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, workload, target, tps, us = line.split()
    runs[(r, workload)][target] = (float(tps), float(us) if us != "-" else float("nan"))
targets = ["direct", "haproxy", "pgrouter", "epoll", "sockmap", "io_uring"]
print("| workload | target | x HAProxy | x direct | machine CPU us/txn |")
print("|---|---|---|---|---|")
for w in dict.fromkeys(w for _, w in runs):
    rounds = [v for (_, ww), v in runs.items() if ww == w]
    for t in targets:
        hx = statistics.median(v[t][0] / v["haproxy"][0] for v in rounds if v["haproxy"][0])
        dx = statistics.median(v[t][0] / v["direct"][0] for v in rounds if v["direct"][0])
        cpu = statistics.median(v[t][1] for v in rounds)
        print(f"| {w} | {t} | {hx:.2f}x | {dx:.2f}x | {cpu:.1f} |")
PY
