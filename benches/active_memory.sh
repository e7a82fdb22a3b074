#!/usr/bin/env bash
# Memory with many active pooled clients, side by side in one lab: pgrouter in transaction
# pooling and pgbouncer 1.18 in transaction mode, both directly on the leader with 20 server
# connections, under `pgbench -S -c CLIENTS` (default 1000, all running transactions).
#
#   cargo build --release --workspace && benches/active_memory.sh [rounds] [seconds] [clients]
#
# Prints a markdown table per run: the proxy's VmRSS before the run and in the middle of it
# (every client connected and busy), the growth per client, tps and proxy CPU per transaction.
set -euo pipefail
rounds=${1:-2}
seconds=${2:-12}
clients=${3:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=/tmp/pgrouter-bench-active-memory
base=19600
# shellcheck source=benches/lab.sh
. "$root/benches/lab.sh"

rm -rf "$dir" && mkdir -p "$dir"
lab_up "$dir" $base
secret=$(pg -p "$leader" -c "select rolpassword from pg_authid where rolname = 'postgres'")
printf '"postgres" "%s"\n' "$secret" >"$dir/userlist.txt"
chown postgres:postgres "$dir" "$dir/userlist.txt"

cat >"$dir/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$leader dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 19701
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = $((clients + 100))
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
chown postgres:postgres "$dir/pgbouncer.ini"
pgbouncer -d -u postgres "$dir/pgbouncer.ini"
for _ in $(seq 50); do [ -s "$dir/pgbouncer.pid" ] && break; sleep 0.1; done
pids+=("$(cat "$dir/pgbouncer.pid")")

cat >"$dir/pgrouter-txn.toml" <<EOF
[cluster]
scope = "demo"
etcd = ["http://127.0.0.1:$base"]
[listen]
primary = "127.0.0.1:19720"
replicas = "127.0.0.1:19721"
admin = "127.0.0.1:19722"
primary_pool_mode = "transaction"
max_client_conn = $((clients + 100))
[pool]
pool_size = 20
[auth]
auth_file = "$dir/userlist.txt"
EOF
"$root/target/release/pgrouter" --config "$dir/pgrouter-txn.toml" 2>"$dir/pgrouter-txn.log" &
pids+=($!)
sleep 2

declare -A port=([pgbouncer]=19701 [pgrouter-txn]=19720)
declare -A pid=([pgbouncer]=${pids[0]} [pgrouter-txn]=${pids[1]})
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Growth is taken from the RSS before the first run on each process: the allocator keeps what
# the first run's clients used, so later runs grow little from their own start.
declare -A base=([pgbouncer]=$(rss "${pid[pgbouncer]}") [pgrouter-txn]=$(rss "${pid[pgrouter-txn]}"))
echo "| round | target | VmRSS before the first run (KiB) | VmRSS with $clients active (KiB) | per client (KiB) | tps | proxy CPU us/txn |"
echo "|---|---|---|---|---|---|---|"
targets=(pgbouncer pgrouter-txn)
for r in $(seq "$rounds"); do
  for i in 0 1; do
    t=${targets[$(((i + r) % 2))]}
    before=${base[$t]}
    c0=$(cpu "${pid[$t]}")
    PGPASSWORD=postgres pgbench -h 127.0.0.1 -p "${port[$t]}" -U postgres \
      -n -S -M simple -c "$clients" -j 2 -T "$seconds" postgres >"$dir/run.out" 2>&1 &
    bench=$!
    sleep $((seconds * 2 / 3))
    during=$(rss "${pid[$t]}")
    wait $bench || true
    c1=$(cpu "${pid[$t]}")
    out=$(cat "$dir/run.out")
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
    n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    ticks=$(getconf CLK_TCK)
    us=$(awk -v d=$((c1 - c0)) -v n="${n:-0}" -v k="$ticks" 'BEGIN { if (n > 0) printf "%.1f", d / k * 1e6 / n; else print "-" }')
    per=$(awk -v a="$before" -v b="$during" -v c="$clients" 'BEGIN { printf "%.2f", (b - a) / c }')
    echo "| $r | $t | $before | $during | $per | ${tps:-failed: $(tail -1 <<<"$out")} | $us |"
    sleep 2
  done
done
