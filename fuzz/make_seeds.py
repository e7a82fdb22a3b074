#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/<target>/seed-* (see docs/fuzzing.md).

usage: make_seeds.py CAPTURES PATRONI_KEYS

CAPTURES holds <n>.c2s / <n>.s2c: the two directions of real connections (pgbench -M simple,
extended and prepared; psql), recorded by a plain TCP relay in front of PostgreSQL 15.
PATRONI_KEYS is `etcdctl get --prefix /service/<scope>/` output of a Patroni 3.0.2 cluster
(key and value on alternate lines).
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SSL, GSS, CANCEL = 80877103, 80877104, 80877102


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def untagged(stream):
    """The untagged packets (SSLRequest, StartupMessage) at the front, and the rest."""
    packets = []
    while len(stream) >= 8:
        (n,) = struct.unpack(">I", stream[:4])
        packets.append(stream[:n])
        stream = stream[n:]
        (code,) = struct.unpack(">I", packets[-1][4:8])
        if code not in (SSL, GSS):
            break
    return packets, stream


def messages(stream):
    out = []
    while len(stream) >= 5:
        (n,) = struct.unpack(">I", stream[1:5])
        out.append(stream[: n + 1])
        stream = stream[n + 1 :]
    return out


def frames_input(seed, client, server):
    return bytes(seed) + struct.pack(">H", len(client)) + client + server


def main(captures, keys_file):
    names = {}
    for f in sorted(os.listdir(captures)):
        base, ext = f.split(".")
        names.setdefault(base, {})[ext] = open(os.path.join(captures, f), "rb").read()
    seen_startups, seen_conns = set(), set()
    for base, conn in sorted(names.items(), key=lambda kv: int(kv[0])):
        c2s, s2c = conn["c2s"], conn["s2c"]
        # pgbench opens the same set-up connection in every run (only SCRAM nonces differ):
        # keep one.
        shape = bytes(m[0] for m in messages(untagged(c2s)[1])), len(c2s)
        if shape in seen_conns:
            continue
        seen_conns.add(shape)
        packets, client = untagged(c2s)
        server = s2c
        # A refused SSLRequest is answered with one byte, 'N'.
        if any(struct.unpack(">I", p[4:8])[0] == SSL for p in packets):
            server = server[1:]
        tags = "".join(chr(m[0]) for m in messages(client))
        kind = {
            True: "psql",
        }.get("Q" in tags and "P" not in tags and b"PREPARE" in client, None)
        if kind is None:
            kind = "extended" if "P" in tags else "simple"
            if b"P_0" in client:
                kind = "prepared"
        if kind != "psql":
            kind = "pgbench-" + (kind if b"BEGIN" in client else "setup")
        name = f"{base}-{kind}"
        for p in packets:
            if p not in seen_startups:
                seen_startups.add(p)
                write("startup", f"{name}-{len(p)}", b"\x00" + p)
        write("frames", name, frames_input([int(base), 7], client, server))
        write("pooled_rewrite", name, b"\x00" + client)
        # BackendKeyData of this connection, quoted back as a CancelRequest.
        for m in messages(server):
            if m[0:1] == b"K":
                write("startup", "cancel", b"\x00" + struct.pack(">II", 16, CANCEL) + m[5:13])
    write("startup", "gssenc", b"\x00" + struct.pack(">II", 8, GSS))
    # A protocol 3.2 startup (PostgreSQL 18 clients), with its length fixed up by mode 1.
    write("startup", "proto32", b"\x01\0\0\0\0" + struct.pack(">I", 3 << 16 | 2)
          + b"user\0app\0database\0app\0_pq_.x\0y\0\0")
    # A 3.2 cancel with a 32-byte secret.
    write("startup", "cancel-long", b"\x00" + struct.pack(">II", 44, CANCEL)
          + struct.pack(">I", 4242) + bytes(range(32)))

    for name, sql in [
        ("pdo", b"DEALLOCATE pdo_stmt_0000000a"),
        ("pg3", b'DEALLOCATE PREPARE "_pg3_2";'),
        ("reset", b"SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"),
        ("listen", b"select 1; LISTEN\tjobs -- wake me"),
        ("discard", b"/* pool */ DISCARD ALL"),
        ("literals", b"select $f$;listen x$f$, E'\\';deallocate all', \"a;b\"; deallocate \"Mixed\"\"Case\""),
    ]:
        write("pooled_rewrite", "sql-" + name, b"\x02" + sql)
    # Names for DEALLOCATE [PREPARE] "name": mode bits pick PREPARE, keyword case, ';'.
    write("pooled_rewrite", "name-pdo", bytes([3 | 8 | 32 | 64]) + b"pdo_stmt_00000001")
    write("pooled_rewrite", "name-quoted", bytes([3 | 16]) + b'My "odd"; name')

    lines = open(keys_file).read().splitlines()
    keys = dict(zip(lines[0::2], lines[1::2]))
    prefix = os.path.commonprefix(list(keys)).rsplit("/", 1)[0] + "/"
    keys = {k[len(prefix):]: v for k, v in keys.items()}
    for k, v in keys.items():
        if k.startswith("members/"):
            write("patroni_json", "member-" + k.split("/", 1)[1], b"\x00" + v.encode())
    write("patroni_json", "failover", b"\x02" + keys["failover"].encode())
    write("patroni_json", "failover-cleared", b"\x02{}")
    write("patroni_json", "keys", b"\x01" + b"\0".join(
        x for kv in sorted(keys.items()) for x in (kv[0].encode(), kv[1].encode())))
    # Patroni 4.x fields (replay/receive positions, string tags, IPv6), as its tests have them.
    write("patroni_json", "member-4x-replica", b"\x00" + b'{"conn_url":"postgres://[::1]:6432/postgres",'
          b'"api_url":"http://[::1]:8008/patroni","state":"streaming","role":"replica","version":"4.0.4",'
          b'"xlog_location":67108000,"replication_state":"streaming","replay_lsn":67000000,'
          b'"receive_lsn":67108000,"timeline":3,"tags":{"noloadbalance":"true","clonefrom":true}}')


if __name__ == "__main__":
    main(*sys.argv[1:3])
