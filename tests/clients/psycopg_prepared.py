#!/usr/bin/python3
"""psycopg_prepared.py - N psycopg 3 threads, one connection each, every statement server-side prepared.

With prepare_threshold=0 psycopg prepares each query text on its first execution under a
per-connection name (_pg3_0, _pg3_1, ... - the same names on every connection) and then only
sends Bind/Execute for it. Each client mixes statements prepared once and executed on every
iteration, explicit transactions (BEGIN; INSERT; SELECT count; COMMIT via conn.transaction())
and autocommit statements, with per-client statement texts, and checks every result. A few
new texts per iteration overflow psycopg's cache (prepared_max=100) so it also sends DEALLOCATE.
Through a transaction pooler that does not track prepared statements (pgbouncer 1.18) this fails
with "prepared statement ... does not exist / already exists"; directly or in session mode it passes.

Usage: /usr/bin/python3 psycopg_prepared.py --host H --port P --user U --password PW --dbname D
           --clients N --iterations K [--timeout SECONDS]
Success: one line "ok: N clients x K iterations, S statements", exit 0.
Failure: one line per failing client with the driver's error message, exit 1.
"""
import argparse
import os
import sys
import threading
import time

import psycopg

ap = argparse.ArgumentParser()
for a in ("host", "port", "user", "password", "dbname"):
    ap.add_argument("--" + a, required=True)
ap.add_argument("--clients", type=int, required=True)
ap.add_argument("--iterations", type=int, required=True)
ap.add_argument("--timeout", type=float, default=60)
args = ap.parse_args()
N, K = args.clients, args.iterations
TABLE = f"pgr_psycopg_{os.getpid()}_{os.urandom(3).hex()}"


def connect():
    return psycopg.connect(host=args.host, port=args.port, user=args.user, password=args.password,
                           dbname=args.dbname, autocommit=True, prepare_threshold=0, connect_timeout=10)


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def one_line(e):
    return " ".join(f"{type(e).__name__}: {e}".split())


def client(c):
    """Returns the number of prepared statements executed; raises on any failure."""
    n = rows = 0
    with connect() as conn:
        for i in range(K):
            r = conn.execute(f"SELECT %s::int + %s::int + {c}", (i, 1000)).fetchone()[0]
            expect(r, i + 1000 + c, "add")
            r = conn.execute(f"SELECT %s::text || %s::text || '/c{c}'", (f"a{i}", "b")).fetchone()[0]
            expect(r, f"a{i}b/c{c}", "concat")
            m = i % 150 + 2  # 150 distinct texts per client: more than prepared_max, so DEALLOCATEs too
            r = conn.execute(f"SELECT %s::int * {m}", (c,)).fetchone()[0]
            expect(r, c * m, "churn")
            n += 3
            if i % 5 == 0:
                with conn.transaction():
                    conn.execute(f"INSERT INTO {TABLE} (client, i, v) VALUES (%s, %s, %s) -- client {c}",
                                 (c, i, f"v{i}"))
                    rows += 1
                    r = conn.execute(f"SELECT count(*) AS n_{c} FROM {TABLE} WHERE client = %s", (c,)).fetchone()[0]
                    expect(r, rows, "count in transaction")
                    n += 2
    return n


def main():
    try:
        with connect() as conn:
            conn.execute(f"CREATE TABLE {TABLE} (client int NOT NULL, i int NOT NULL, v text NOT NULL)", prepare=False)
    except Exception as e:
        print("setup:", one_line(e))
        return 1

    results = {}

    def run(c):
        try:
            results[c] = ("ok", client(c))
        except Exception as e:
            results[c] = ("fail", one_line(e))

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(N)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + args.timeout
    for t in threads:
        t.join(max(0, deadline - time.monotonic()))

    failed, total = False, 0
    for c in range(N):
        status, val = results.get(c, ("fail", f"timed out after {args.timeout:g}s"))
        if status == "ok":
            total += val
        else:
            failed = True
            print(f"client {c}: {val}")

    try:
        with connect() as conn:
            if not failed:
                rows, clients = conn.execute(f"SELECT count(*), count(DISTINCT client) FROM {TABLE}", prepare=False).fetchone()
                expect(rows, N * ((K + 4) // 5), "final row count")
                expect(clients, N, "final client count")
                total += 1
            conn.execute(f"DROP TABLE {TABLE}", prepare=False)  # setup/cleanup unprepared
    except Exception as e:
        print("verify:", one_line(e))
        failed = True

    if failed:
        return 1
    print(f"ok: {N} clients x {K} iterations, {total} statements")
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    os._exit(rc)  # os._exit: don't wait for hung (timed-out) daemon threads
