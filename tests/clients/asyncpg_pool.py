#!/usr/bin/python3
"""asyncpg_pool.py - N asyncio tasks sharing an asyncpg pool of N connections.

asyncpg prepares every query under a per-connection name (__asyncpg_stmt_1__, ... - the same
names on every connection) and keeps it in its statement cache (statement_cache_size=100), so a
statement prepared in one pool.acquire() is executed again, without Parse, in later ones. Each
task acquires a connection per iteration and mixes cached statements, an explicit conn.prepare()
statement object executed several times, and an explicit transaction (conn.transaction():
INSERT + SELECT count), with per-client statement texts, checking every result. Through a
transaction pooler that does not track prepared statements (pgbouncer 1.18) this fails with
"prepared statement ... does not exist / already exists"; directly or in session mode it passes.

Usage: /usr/bin/python3 asyncpg_pool.py --host H --port P --user U --password PW --dbname D
           --clients N --iterations K [--timeout SECONDS]
Success: one line "ok: N clients x K iterations, S statements", exit 0.
Failure: one line per failing client with the driver's error message, exit 1.
"""
import argparse
import asyncio
import os
import sys

import asyncpg

ap = argparse.ArgumentParser()
for a in ("host", "port", "user", "password", "dbname"):
    ap.add_argument("--" + a, required=True)
ap.add_argument("--clients", type=int, required=True)
ap.add_argument("--iterations", type=int, required=True)
ap.add_argument("--timeout", type=float, default=60)
args = ap.parse_args()
N, K = args.clients, args.iterations
TABLE = f"pgr_asyncpg_{os.getpid()}_{os.urandom(3).hex()}"
CONN = dict(host=args.host, port=int(args.port), user=args.user, password=args.password, database=args.dbname,
            timeout=10)


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def one_line(e):
    return " ".join(f"{type(e).__name__}: {e}".split())


async def client(pool, c):
    """Returns the number of prepared statements executed; raises on any failure."""
    n = rows = 0
    for i in range(K):
        async with pool.acquire() as conn:
            expect(await conn.fetchval(f"SELECT $1::int + $2::int + {c}", i, 1000), i + 1000 + c, "add")
            expect(await conn.fetchval(f"SELECT $1::text || $2::text || '/c{c}'", f"a{i}", "b"), f"a{i}b/c{c}", "concat")
            stmt = await conn.prepare(f"SELECT $1::int * {i % 7 + 2} AS m_{c}")  # uncached, closed when collected
            for x in range(3):
                expect(await stmt.fetchval(x + c), (x + c) * (i % 7 + 2), "prepared object")
            n += 5
            if i % 5 == 0:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {TABLE} (client, i, v) VALUES ($1, $2, $3) -- client {c}",
                                       c, i, f"v{i}")
                    rows += 1
                    expect(await conn.fetchval(f"SELECT count(*) AS n_{c} FROM {TABLE} WHERE client = $1", c),
                           rows, "count in transaction")
                    n += 2
    return n


async def main():
    try:
        conn = await asyncpg.connect(**CONN)
        await conn.execute(f"CREATE TABLE {TABLE} (client int NOT NULL, i int NOT NULL, v text NOT NULL)")
        await conn.close()
        pool = await asyncpg.create_pool(min_size=N, max_size=N, statement_cache_size=100, **CONN)
    except Exception as e:
        print("setup:", one_line(e))
        return 1

    tasks = [asyncio.create_task(client(pool, c)) for c in range(N)]
    await asyncio.wait(tasks, timeout=args.timeout)
    failed, total = False, 0
    for c, t in enumerate(tasks):
        if not t.done():
            t.cancel()
            failed = True
            print(f"client {c}: timed out after {args.timeout:g}s")
        elif t.exception() is not None:
            failed = True
            print(f"client {c}: {one_line(t.exception())}")
        else:
            total += t.result()
    try:
        await asyncio.wait_for(pool.close(), 10)
    except Exception:
        pool.terminate()

    try:
        conn = await asyncpg.connect(**CONN)
        if not failed:
            row = await conn.fetchrow(f"SELECT count(*) AS n, count(DISTINCT client) AS c FROM {TABLE}")
            expect(row["n"], N * ((K + 4) // 5), "final row count")
            expect(row["c"], N, "final client count")
            total += 1
        await conn.execute(f"DROP TABLE {TABLE}")
        await conn.close()
    except Exception as e:
        print("verify:", one_line(e))
        failed = True

    if failed:
        return 1
    print(f"ok: {N} clients x {K} iterations, {total} statements")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
