#!/usr/bin/env bash
# Where a transaction's CPU goes, per target: pgbench -S through each port in turn, ROUNDS times,
# printing tps, the proxy's user and system time per transaction (utime and stime of the process
# listening on the port, from /proc) and the whole machine's busy and idle time per transaction
# (from /proc/stat). With pgbench, PostgreSQL and the proxy on the same cores, tps is the cores
# over the machine's busy time per transaction: the split shows how much of that the proxy is.
#
#   benches/cpu_split.sh CLIENTS MODE ROUNDS NAME:PORT [NAME:PORT ...]
#   benches/cpu_split.sh 16 simple 3 direct:15410 HAProxy:6350 pgrouter:6250
#
# A target named "direct" is PostgreSQL itself: no proxy time. Needs pgbench tables on the
# cluster (pgbench -i -s 10) and PGPASSWORD (or a .pgpass) for postgres. Used for BENCHMARKS.md,
# "Pass-through at -c 16: where a transaction's CPU goes", on ./scripts/demo.sh's cluster.
set -euo pipefail
clients=$1 mode=$2 rounds=$3
shift 3

pid_of() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
proxy_ticks() { if [ -n "$1" ]; then awk '{ print $14, $15 }' "/proc/$1/stat"; else echo 0 0; fi; }
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }

echo "pgbench -n -S -M $mode -c $clients -j 2 -T 8, $rounds rounds; per transaction:"
for _ in $(seq 1 "$rounds"); do
  for target in "$@"; do
    name=${target%%:*} port=${target##*:} pid=
    [ "$name" = direct ] || pid=$(pid_of "$port")
    read -r u0 s0 < <(proxy_ticks "$pid")
    read -r b0 i0 < <(machine_ticks)
    out=$(pgbench -n -S -M "$mode" -c "$clients" -j 2 -T 8 -h 127.0.0.1 -p "$port" -U postgres postgres 2>&1)
    read -r u1 s1 < <(proxy_ticks "$pid")
    read -r b1 i1 < <(machine_ticks)
    tx=$(grep -oP 'processed: \K[0-9]+' <<<"$out") || { echo "$out" >&2; exit 1; }
    awk -v o="$out" -v n="$name" -v tx="$tx" -v hz="$(getconf CLK_TCK)" \
      -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v b=$((b1 - b0)) -v i=$((i1 - i0)) 'BEGIN {
      match(o, /tps = [0-9.]+/); tps = substr(o, RSTART + 6, RLENGTH - 6); k = 1e6 / hz / tx
      printf "%-10s %6.0f tps  proxy user %5.2f system %5.2f us  machine busy %6.1f idle %5.1f us\n",
        n, tps, u * k, s * k, b * k, i * k }'
  done
done
