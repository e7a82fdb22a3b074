#!/usr/bin/python3
"""checks.py - the driver checks (tests/drivers/README.md) for the Django 3.2 ORM on psycopg2 2.9.

Debian's python3-django 3.2 predates Django's psycopg 3 support (4.2), so the backend is
django.db.backends.postgresql on psycopg2. Django is configured here, in-script, as a web app
would be: persistent connections (CONN_MAX_AGE), autocommit, and DISABLE_SERVER_SIDE_CURSORS=True
as Django's documentation asks for behind a transaction pooler. The models are the small app
pgrapp/ next to this file; their tables (pgr_django_<pid>_item, _account, _blob) are created with
the schema editor and dropped at the end. Django connections are per thread: each check and each
client runs in its own thread, so on its own connection.

psycopg2 interpolates parameters into the query text itself and sends every statement as a
simple Query: it never uses the extended protocol, so it has no protocol-level prepared
statements. Hence:
  named_prepared      SQL `PREPARE name AS ...` once per connection, then `EXECUTE name(...)`
                      many times in autocommit (each its own transaction): a transaction pooler
                      must keep the statement working across transactions, which is the point.
  unnamed_prepared    ORM queries with parameters (psycopg2 sends them as simple Queries with the
                      values inlined: no unnamed statement is involved).
  transactions        transaction.atomic blocks: ORM INSERT/SELECT, PREPARE/EXECUTE/DEALLOCATE
                      inside the block, a savepoint (nested atomic) that fails with 23505,
                      bulk_create, select_for_update of one shared row; rollback via exception.
  plan_invalidated    PREPARE of a SELECT *, ALTER TABLE ADD COLUMN, EXECUTE: directly PostgreSQL
                      answers 0A000 "cached plan must not change result type" (psycopg2 has no
                      re-prepare); after DEALLOCATE and PREPARE again the statement returns the
                      new column.
  deallocate_simple   cursor.execute("DEALLOCATE name") after PREPARE (then EXECUTE gives 26000),
                      and after the statement's table was dropped.
  deallocate_extended skipped: psycopg2 cannot send the extended protocol.
  pipeline            psycopg2 has no pipeline mode: psycopg2.extras.execute_batch and
                      execute_values join many statements / rows into one Query (one round
                      trip); a failing batch (23505) must roll back as a whole (implicit
                      transaction of a multi-statement Query).
  copy                cursor.copy_expert COPY FROM STDIN / COPY TO STDOUT.
  cancel              psycopg2 connection.cancel() from another thread.
  listen_notify       LISTEN, then connection.poll() and connection.notifies.
  large_messages      a 16 MiB text saved and read back through the ORM, md5() of it sent as a
                      parameter, and a 16 MiB repeat() result.
  errors              SQLSTATEs as psycopg2 exposes them (pgcode of the Django exception's cause).
  server_side_cursor  (extra check) a second alias with server-side cursors enabled:
                      QuerySet.iterator(chunk_size=10) by N clients at once, first inside
                      atomic() (the workaround Django's docs give: the cursor lives in one
                      transaction), then in autocommit (Django declares the cursor WITH HOLD
                      and FETCHes each chunk as its own statement: Django's docs say this breaks
                      under transaction pooling).
  workload            with --seconds S > 0: N clients running atomic() blocks (ORM INSERT and a
                      count) for S seconds, no retries; close_old_connections() after each, as
                      Django does around requests (it closes a connection that had an error and
                      fails "SELECT 1"; the next query reconnects).

Usage: tests/drivers/django/run --host H --port P --user U --password PW --dbname D
           --clients N [--seconds S] [--timeout T] [--checks check,check...]
Output: one line per check (ok / FAIL / skip), then "N passed, M failed"; exit 0 when M is 0.
"""
import argparse
import hashlib
import io
import os
import select
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django
from django.conf import settings

ap = argparse.ArgumentParser()
for a in ("host", "port", "user", "password", "dbname"):
    ap.add_argument("--" + a, required=True)
ap.add_argument("--clients", type=int, default=4)
ap.add_argument("--seconds", type=float, default=0)
ap.add_argument("--timeout", type=float, default=30)
ap.add_argument("--checks", dest="only", default="", help="comma-separated check names to run (default: all)")
args = ap.parse_args()
N = args.clients
K = 50  # iterations per client
PID = os.getpid()
P = f"pgr_django_{PID}"

db = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": args.host, "PORT": args.port, "USER": args.user, "PASSWORD": args.password,
    "NAME": args.dbname,
    "CONN_MAX_AGE": 600,
    "DISABLE_SERVER_SIDE_CURSORS": True,
    "OPTIONS": {"connect_timeout": 10},
}
settings.configure(
    DATABASES={"default": db, "ssc": {**db, "DISABLE_SERVER_SIDE_CURSORS": False}},
    INSTALLED_APPS=["pgrapp"],
    USE_TZ=True, TIME_ZONE="UTC",
    PGR_PREFIX=P,
)
django.setup()

import psycopg2
import psycopg2.extras
from django.db import IntegrityError, close_old_connections, connection, connections, transaction

from pgrapp.models import Account, Blob, Item


class Skip(Exception):
    pass


class Rollback(Exception):
    pass


def pgcode(e):
    """The SQLSTATE psycopg2 gives (Django wraps psycopg2's exception as __cause__)."""
    while e is not None:
        if getattr(e, "pgcode", None):
            return e.pgcode
        e = e.__cause__
    return None


def primary(e):
    while e is not None:
        diag = getattr(e, "diag", None)
        if diag is not None and diag.message_primary:
            return diag.message_primary
        e = e.__cause__
    return None


def one_line(e):
    code = pgcode(e)
    return " ".join(f"{type(e).__name__}{f' [{code}]' if code else ''}: {e}".split())


def expect(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def expect_error(fn, code, what, message=None):
    """Runs fn, which must fail with SQLSTATE code (and a primary message starting so)."""
    try:
        fn()
    except Exception as e:
        if pgcode(e) != code:
            raise AssertionError(f"{what}: want SQLSTATE {code}, got {one_line(e)}")
        if message is not None and not (primary(e) or "").startswith(message):
            raise AssertionError(f"{what}: want message {message!r}..., got {primary(e)!r}")
        return
    raise AssertionError(f"{what}: succeeded, want SQLSTATE {code}")


def sql(query, params=None, alias="default"):
    """One statement on this thread's connection; its rows (None if it returns none)."""
    with connections[alias].cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description is not None else None


def status(query):
    """One statement; the command tag psycopg2 saw."""
    with connection.cursor() as cur:
        cur.execute(query)
        return cur.statusmessage


def run_clients(n, fn):
    """fn(c) in n threads at once, each on its own Django connection; raises on any failure."""
    errors = {}

    def one(c):
        try:
            fn(c)
        except Exception as e:
            errors[c] = one_line(e)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        c = min(errors)
        raise AssertionError(f"{len(errors)} of {n} clients failed; client {c}: {errors[c]}")


def count(kind, client):
    return Item.objects.filter(kind=kind, client=client).count()


# ---------------------------------------------------------------------------------- checks


def named_prepared():
    # The same statement names on every connection, with per-client texts (as an app's would
    # differ between versions): a pooler mixing them up gives wrong results or 26000/42P05.
    add, cat = f"pgr_np_{PID}_add", f"pgr_np_{PID}_cat"

    def client(c):
        sql(f"PREPARE {add} (int, int) AS SELECT $1 + $2 + {c}")
        sql(f"PREPARE {cat} (text) AS SELECT $1 || '/c{c}'")
        for i in range(K):
            expect(sql(f"EXECUTE {add}(%s, %s)", [i, 1000]), [(i + 1000 + c,)], "add")
            expect(sql(f"EXECUTE {cat}(%s)", [f"x{i}"]), [(f"x{i}/c{c}",)], "concat")
        expect(status(f"DEALLOCATE {add}"), "DEALLOCATE", "deallocate add")
        expect(status(f"DEALLOCATE {cat}"), "DEALLOCATE", "deallocate concat")

    run_clients(N, client)


def unnamed_prepared():
    # psycopg2 sends these as simple Queries with the parameters inlined (no extended protocol).
    def client(c):
        for i in range(K):
            Item.objects.create(kind="unnamed", client=c, i=i, v=f"u{i}'\"\\")
            expect(Item.objects.filter(kind="unnamed", client=c, i__lte=i).count(), i + 1, "count")
            got = list(Item.objects.filter(kind="unnamed", client=c, i=i).values_list("v", flat=True))
            expect(got, [f"u{i}'\"\\"], "values_list")
            expect(sql("SELECT %s::int + %s::int, %s::text", [i, c, f"p{c}"]), [(i + c, f"p{c}")], "raw")

    run_clients(N, client)
    expect(Item.objects.filter(kind="unnamed").count(), N * K, "total rows")


def transactions():
    T = 20
    Account.objects.create(name="shared", balance=0)
    stmt = f"pgr_tx_{PID}_count"

    def client(c):
        committed, nxt = 0, 0
        for _ in range(T):
            with transaction.atomic():
                Item.objects.create(kind="tx", client=c, i=nxt)
                nxt += 1
                # A prepared statement inside the transaction, gone before it ends.
                sql(f"PREPARE {stmt} (text, int) AS SELECT count(*) FROM {P}_item WHERE kind = $1 AND client = $2")
                expect(sql(f"EXECUTE {stmt}(%s, %s)", ["tx", c]), [(committed + 1,)], "count in transaction")
                expect(status(f"DEALLOCATE {stmt}"), "DEALLOCATE", "deallocate in transaction")
                try:  # a savepoint failing with 23505, rolled back, the transaction going on
                    with transaction.atomic():
                        Item.objects.create(kind="tx", client=c, i=nxt - 1)
                    raise AssertionError("duplicate insert in savepoint succeeded")
                except IntegrityError as e:
                    expect(pgcode(e), "23505", "savepoint error")
                Item.objects.bulk_create([Item(kind="tx", client=c, i=nxt + j, v="bulk") for j in range(3)])
                nxt += 3
                a = Account.objects.select_for_update().get(name="shared")
                a.balance += 1
                a.save(update_fields=["balance"])
            committed += 4
            expect(count("tx", c), committed, "count after commit")
            try:
                with transaction.atomic():
                    Item.objects.create(kind="tx", client=c, i=nxt)
                    nxt += 1
                    expect(count("tx", c), committed + 1, "count before rollback")
                    raise Rollback()
            except Rollback:
                pass
            expect(count("tx", c), committed, "count after rollback")

    run_clients(N, client)
    expect(Account.objects.get(name="shared").balance, N * T, "select_for_update increments")


def plan_invalidated():
    t, s = f"{P}_plan", f"pgr_pi_{PID}"
    sql(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
    sql(f"INSERT INTO {t} VALUES (1, 'a')")
    sql(f"PREPARE {s} (int) AS SELECT * FROM {t} WHERE id = $1")
    expect(sql(f"EXECUTE {s}(1)"), [(1, "a")], "before ALTER")
    sql(f"ALTER TABLE {t} ADD COLUMN extra int DEFAULT 7")
    # Directly 0A000. A pooler that prepares the statement again on the connection running
    # this transaction (pgrouter carries SQL-level statements so) plans it afresh: the new
    # column, which is no error the database would not give. Wrong rows or another error fail.
    try:
        rows = sql(f"EXECUTE {s}(1)")
    except Exception as e:
        if pgcode(e) != "0A000" or not (primary(e) or "").startswith("cached plan must not change result type"):
            raise AssertionError(f"EXECUTE after ALTER: want SQLSTATE 0A000, got {one_line(e)}")
    else:
        expect(rows, [(1, "a", 7)], "EXECUTE after ALTER, planned afresh")
    expect(sql("SELECT 1"), [(1,)], "connection after 0A000")
    expect(status(f"DEALLOCATE {s}"), "DEALLOCATE", "DEALLOCATE")
    sql(f"PREPARE {s} (int) AS SELECT * FROM {t} WHERE id = $1")
    expect(sql(f"EXECUTE {s}(1)"), [(1, "a", 7)], "prepared again")
    sql(f"DEALLOCATE {s}")


def deallocate_simple():
    t, a, b = f"{P}_dealloc", f"pgr_ds_{PID}_a", f"pgr_ds_{PID}_b"
    sql(f"PREPARE {a} (int) AS SELECT $1 * 3")
    expect(sql(f"EXECUTE {a}(5)"), [(15,)], "EXECUTE")
    expect(status(f"DEALLOCATE {a}"), "DEALLOCATE", "DEALLOCATE")
    expect_error(lambda: sql(f"EXECUTE {a}(5)"), "26000", "EXECUTE after DEALLOCATE")
    sql(f"CREATE TABLE {t} (id int)")
    sql(f"INSERT INTO {t} VALUES (1), (2)")
    sql(f"PREPARE {b} AS SELECT * FROM {t} ORDER BY id")
    expect(sql(f"EXECUTE {b}"), [(1,), (2,)], "EXECUTE of table statement")
    sql(f"DROP TABLE {t}")
    expect(status(f"DEALLOCATE {b}"), "DEALLOCATE", "DEALLOCATE after DROP TABLE")
    expect(sql("SELECT 1"), [(1,)], "connection after DEALLOCATE")
    expect_error(lambda: sql(f"EXECUTE {b}"), "26000", "EXECUTE after DEALLOCATE of dropped table's statement")


def deallocate_extended():
    raise Skip("psycopg2 cannot send the extended protocol (it inlines parameters and sends every "
               "statement as a simple Query)")


def pipeline():
    ins = f"INSERT INTO {P}_item (kind, client, i, v) VALUES (%s, %s, %s, %s)"
    with connection.cursor() as cur:
        raw = cur.cursor  # psycopg2's cursor under Django's CursorWrapper
        # execute_batch: page_size statements joined by ';' in one Query (one round trip each).
        psycopg2.extras.execute_batch(raw, ins, [("pipe", 0, i, f"b{i}") for i in range(300)], page_size=100)
        expect(count("pipe", 0), 300, "rows after execute_batch")
        # execute_values: one multi-row INSERT ... RETURNING per page.
        got = psycopg2.extras.execute_values(
            raw, f"INSERT INTO {P}_item (kind, client, i, v) VALUES %s RETURNING i",
            [("pipe", 1, i, f"v{i}") for i in range(250)], page_size=100, fetch=True)
        expect(sorted(r[0] for r in got), list(range(250)), "execute_values RETURNING")
        # A batch with a failing statement in the middle: 23505, and the whole Query (an
        # implicit transaction in autocommit) is rolled back, the statements before it too.
        rows = [("pipe", 2, i, "x") for i in range(10)] + [("pipe", 0, 5, "dup")] + \
               [("pipe", 2, i, "x") for i in range(10, 20)]
        expect_error(lambda: psycopg2.extras.execute_batch(raw, ins, rows, page_size=100), "23505",
                     "batch with a duplicate")
        expect(count("pipe", 2), 0, "rows of the failed batch")
        expect(sql("SELECT 1"), [(1,)], "connection after failed batch")
        expect(Item.objects.filter(kind="pipe").count(), 550, "pipe rows")


def copy():
    def esc(s):
        return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")

    def text(i):
        return f"row {i} tab\t nl\n bs\\ é ✓"

    R = 5000
    data = "".join(f"copy\t0\t{i}\t{esc(text(i))}\n" for i in range(R))
    with connection.cursor() as cur:
        cur.copy_expert(f"COPY {P}_item (kind, client, i, v) FROM STDIN", io.StringIO(data))
        expect(count("copy", 0), R, "rows after COPY FROM")
        out = io.StringIO()
        cur.copy_expert(f"COPY (SELECT kind, client, i, v FROM {P}_item WHERE kind = 'copy' ORDER BY i) TO STDOUT", out)
        expect(out.getvalue() == data, True, f"COPY TO equals COPY FROM ({len(out.getvalue())} vs {len(data)} chars)")
    expect(Item.objects.get(kind="copy", client=0, i=7).v, text(7), "row 7")


def cancel():
    connection.ensure_connection()
    raw = connection.connection  # the psycopg2 connection, for the other thread
    cancelled = []

    def canceller():
        time.sleep(0.5)
        try:
            raw.cancel()
            cancelled.append(True)
        except Exception as e:
            cancelled.append(one_line(e))

    t = threading.Thread(target=canceller, daemon=True)
    start = time.monotonic()
    t.start()
    expect_error(lambda: sql("SELECT pg_sleep(20)"), "57014", "pg_sleep(20) cancelled")
    took = time.monotonic() - start
    t.join()
    expect(cancelled, [True], "cancel() call")
    if took > 10:
        raise AssertionError(f"cancelled only after {took:.1f}s")
    expect(sql("SELECT 42"), [(42,)], "query after cancel")


def listen_notify():
    chan = f"pgr_django_{PID}"
    sql(f"LISTEN {chan}")
    raw = connection.connection
    problem, sent_at, start = [], [], time.monotonic()

    def notifier():
        try:
            sql("SELECT pg_notify(%s, %s)", [chan, "hello é"])
            sql(f"NOTIFY {chan}, 'second'")
        except Exception as e:
            problem.append(one_line(e))
        finally:
            connections.close_all()
            sent_at.append(time.monotonic())

    threading.Thread(target=notifier, daemon=True).start()
    # The notifier may wait for a pooled server connection (the listener pins one): wait for
    # it, then up to 5 s for the notifications (--timeout bounds the whole check).
    got = []
    while len(got) < 2 and not (sent_at and time.monotonic() > sent_at[0] + 5):
        if select.select([raw], [], [], 0.5)[0]:
            raw.poll()
            while raw.notifies:
                n = raw.notifies.pop(0)
                got.append((n.channel, n.payload))
    expect(problem, [], "notifier")
    want = [(chan, "hello é"), (chan, "second")]
    if got != want:
        done = f"after {sent_at[0] - start:.1f}s" if sent_at else "not yet"
        raise AssertionError(f"notifications: got {got!r}, want {want!r} (NOTIFY done {done})")
    expect(sql("SELECT 1"), [(1,)], "listener connection after")
    sql("UNLISTEN *")


def large_messages():
    big = os.urandom(8 * 1024 * 1024).hex()  # 16 MiB of text
    b = Blob.objects.create(data=big)
    expect(Blob.objects.get(pk=b.pk).data == big, True, "16 MiB text saved and read back")
    got = sql("SELECT %s::text, md5(%s)", [big[:1024], big])
    expect(got, [(big[:1024], hashlib.md5(big.encode()).hexdigest())], "md5 of 16 MiB parameter")
    out = sql("SELECT repeat(%s, %s)", ["0123456789abcdef", 1024 * 1024])[0][0]
    expect((len(out), out == "0123456789abcdef" * (1024 * 1024)), (16 * 1024 * 1024, True), "16 MiB result")


def errors():
    missing = f"{P}_missing"
    expect_error(lambda: sql("SELEC 1"), "42601", "syntax error", 'syntax error at or near "SELEC"')
    expect_error(lambda: sql(f"SELECT * FROM {missing}"), "42P01", "missing table",
                 f'relation "{missing}" does not exist')
    expect_error(lambda: sql("SELECT 1 / 0"), "22012", "division by zero")
    Account.objects.create(name="dup")
    expect_error(lambda: Account.objects.create(name="dup"), "23505", "duplicate key")

    def failed_transaction():
        with transaction.atomic():
            try:
                sql("SELECT 1 / 0")
            except Exception:
                pass
            sql("SELECT 1")  # 25P02 leaves atomic() by exception: it rolls back

    expect_error(failed_transaction, "25P02", "statement in a failed transaction",
                 "current transaction is aborted")
    expect_error(lambda: sql(f"EXECUTE pgr_nosuch_{PID}"), "26000", "EXECUTE of unknown statement",
                 f'prepared statement "pgr_nosuch_{PID}" does not exist')
    expect_error(lambda: sql(f"DEALLOCATE pgr_nosuch_{PID}"), "26000", "DEALLOCATE of unknown statement")
    expect(sql("SELECT 1"), [(1,)], "connection after errors")


def server_side_cursor():
    R, CH = 60, 10
    Item.objects.bulk_create([Item(kind="ssc", client=c, i=i) for c in range(N) for i in range(R)])

    def iterate(c):
        qs = Item.objects.using("ssc").filter(kind="ssc", client=c).order_by("i")
        expect([it.i for it in qs.iterator(chunk_size=CH)], list(range(R)), "iterated rows")

    def autocommit(c):
        for _ in range(3):
            iterate(c)

    def in_atomic(c):
        for _ in range(3):
            with transaction.atomic(using="ssc"):
                iterate(c)

    problems = []
    # atomic() first: cursors the autocommit way leaves open on a pooler's server connections
    # (its CLOSE sent on another) could otherwise clash with the names Django reuses
    # (_django_curs_<thread ident>_sync_<n>, thread idents being reused).
    for name, fn in (("inside atomic()", in_atomic), ("autocommit (cursor WITH HOLD, FETCH per chunk)", autocommit)):
        try:
            run_clients(N, fn)
        except Exception as e:
            problems.append(f"{name}: {e}")
    if problems:
        raise AssertionError("; ".join(problems))


def workload():
    if args.seconds <= 0:
        raise Skip("no --seconds")
    results = {}
    end = time.monotonic() + args.seconds

    def client(c):
        ok = failed = 0
        first = None
        while time.monotonic() < end:
            try:
                with transaction.atomic():
                    Item.objects.create(kind="wl", client=c, i=ok, v="w")
                    expect(count("wl", c), ok + 1, "count in transaction")
                ok += 1
            except Exception as e:
                failed += 1
                first = first or one_line(e)
                time.sleep(0.05)
            close_old_connections()  # what Django does at each request's start and end
        results[c] = (ok, failed, first)

    run_clients(N, client)
    ok = sum(r[0] for r in results.values())
    failed = sum(r[1] for r in results.values())
    if failed:
        first = next(r[2] for c, r in sorted(results.items()) if r[2])
        raise AssertionError(f"{failed} transactions failed ({ok} committed); first: {first}")
    expect(Item.objects.filter(kind="wl").count(), ok, "committed rows")
    return f"{ok} transactions"


CHECKS = [named_prepared, unnamed_prepared, transactions, plan_invalidated, deallocate_simple,
          deallocate_extended, pipeline, copy, cancel, listen_notify, large_messages, errors,
          server_side_cursor, workload]


def run_check(fn, timeout):
    result = []

    def target():
        try:
            result.append(("ok", fn()))
        except Skip as e:
            result.append(("skip", str(e)))
        except Exception as e:
            result.append(("fail", one_line(e)))
        finally:
            connections.close_all()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else ("fail", f"hang: no answer within {timeout:g}s")


def main():
    passed = failed = 0

    def setup():
        with connection.schema_editor() as se:
            for m in (Item, Account, Blob):
                se.create_model(m)

    status_, why = run_check(setup, args.timeout)
    if status_ != "ok":
        print(f"FAIL setup: {why}")
        print("0 passed, 1 failed")
        return 1
    try:
        only = set(filter(None, args.only.split(",")))
        for fn in [f for f in CHECKS if not only or f.__name__ in only]:
            timeout = args.timeout + (args.seconds if fn is workload else 0)
            st, detail = run_check(fn, timeout)
            if st == "ok":
                passed += 1
                print(f"ok {fn.__name__}" + (f": {detail}" if detail else ""), flush=True)
            elif st == "skip":
                print(f"skip {fn.__name__}: {detail}", flush=True)
            else:
                failed += 1
                print(f"FAIL {fn.__name__}: {detail}", flush=True)
    finally:
        def cleanup():
            for t in ("item", "account", "blob", "plan", "dealloc"):
                sql(f"DROP TABLE IF EXISTS {P}_{t}")
        st, detail = run_check(cleanup, args.timeout)
        if st != "ok":
            print(f"cleanup: {detail}", file=sys.stderr)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    os._exit(rc)  # don't wait for hung (timed-out) daemon threads
