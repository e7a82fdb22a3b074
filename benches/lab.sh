# Sourced by the bench scripts that start a lab of their own (root must be the checkout):
#   pg ARGS...      psql as postgres on 127.0.0.1, unaligned, tuples only
#   lab_up DIR BASE pgrouter-lab under DIR/lab, etcd on BASE and the members on BASE+10..12;
#                   sets `leader` (its port) and `lab`, loads pgbench's tables at scale 10, and
#                   on exit stops the lab and the processes the script adds to `pids`.
pg() { PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -X -A -t "$@"; }

lab_up() {
  local dir=$1 base=$2 port
  "$root/target/release/pgrouter-lab" up --dir "$dir/lab" --base-port "$base" >"$dir/lab.out" 2>&1 &
  lab=$!
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; kill -INT $lab 2>/dev/null || true; wait $lab 2>/dev/null || true' EXIT
  for _ in $(seq 120); do grep -q "Press Ctrl-C" "$dir/lab.out" && break; sleep 1; done
  leader=""
  for port in $((base + 10)) $((base + 11)) $((base + 12)); do
    [ "$(pg -p $port -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ] && leader=$port
  done
  [ -n "$leader" ] || { echo "no leader in the lab" >&2; exit 1; }
  PGPASSWORD=postgres pgbench -h 127.0.0.1 -p "$leader" -U postgres -i -s 10 -q postgres >/dev/null 2>&1
}
