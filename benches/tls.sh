#!/usr/bin/env bash
# TLS on the client side, side by side in one lab: pgrouter pass-through, pgrouter in
# transaction pooling, and pgbouncer 1.18 in transaction mode, each terminating the clients'
# TLS (pgbench with PGSSLMODE=require) and talking plaintext to the leader.
#
#   cargo build --release --workspace && benches/tls.sh [rounds] [seconds]
#
# Prints a markdown table: tps and proxy CPU (utime+stime from /proc) per transaction, per run.
set -euo pipefail
rounds=${1:-2}
seconds=${2:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=/tmp/pgrouter-bench-tls
base=19400
# shellcheck source=benches/lab.sh
. "$root/benches/lab.sh"

rm -rf "$dir" && mkdir -p "$dir"
lab_up "$dir" $base
secret=$(pg -p "$leader" -c "select rolpassword from pg_authid where rolname = 'postgres'")

# One certificate for both proxies, for 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/server.key" -out "$dir/server.crt" 2>/dev/null
chown postgres:postgres "$dir/server.key" "$dir/server.crt"
printf '"postgres" "%s"\n' "$secret" >"$dir/userlist.txt"
chown postgres:postgres "$dir" "$dir/userlist.txt"

cat >"$dir/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$leader dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 19501
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
client_tls_sslmode = require
client_tls_key_file = $dir/server.key
client_tls_cert_file = $dir/server.crt
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
chown postgres:postgres "$dir/pgbouncer.ini"
pgbouncer -u postgres "$dir/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)

router() { # name port pool_mode
  cat >"$dir/$1.toml" <<EOF
[cluster]
scope = "demo"
etcd = ["127.0.0.1:$base"]
[listen]
primary = "127.0.0.1:$2"
replicas = "127.0.0.1:$(($2 + 1))"
admin = "127.0.0.1:$(($2 + 2))"
primary_pool_mode = "$3"
[pool]
pool_size = 20
[auth]
auth_file = "$dir/userlist.txt"
[tls]
mode = "require"
cert = "$dir/server.crt"
key = "$dir/server.key"
EOF
  "$root/target/release/pgrouter" --config "$dir/$1.toml" 2>"$dir/$1.log" &
  pids+=($!)
}
router pgrouter 19510 passthrough
router pgrouter-txn 19520 transaction
sleep 2

declare -A port=([pgbouncer]=19501 [pgrouter]=19510 [pgrouter-txn]=19520)
declare -A pid=([pgbouncer]=$(cat "$dir/pgbouncer.pid") [pgrouter]=${pids[1]} [pgrouter-txn]=${pids[2]})
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "| round | target | tps (-S -c 16, client TLS) | proxy CPU us/txn |"
echo "|---|---|---|---|"
targets=(pgbouncer pgrouter pgrouter-txn)
for r in $(seq "$rounds"); do
  for i in 0 1 2; do
    t=${targets[$(((i + r) % 3))]}
    before=$(cpu "${pid[$t]}")
    out=$(PGSSLMODE=require PGPASSWORD=postgres pgbench -h 127.0.0.1 -p "${port[$t]}" -U postgres \
      -n -S -M simple -c 16 -j 2 -T "$seconds" postgres 2>&1)
    after=$(cpu "${pid[$t]}")
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")
    n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    ticks=$(getconf CLK_TCK)
    us=$(awk -v d=$((after - before)) -v n="${n:-0}" -v k="$ticks" 'BEGIN { if (n > 0) printf "%.1f", d / k * 1e6 / n; else print "-" }')
    echo "| $r | $t | ${tps:-failed: $(tail -1 <<<"$out")} | $us |"
  done
done
