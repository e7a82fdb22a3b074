//! Realistic PostgreSQL traffic, both directions, for the benches: what pgbench -S sends and gets
//! back in its three query modes, a large result, and COPY out and in. Written with the pooler's
//! own message encoders (`pgrouter::testing::wire`).

use bytes::{BufMut, Bytes, BytesMut};
use pgrouter::testing::frame;
use pgrouter::testing::wire::{self, message};

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";

/// A stream: the messages `write` puts in one buffer.
fn stream(write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    write(&mut out);
    out.freeze()
}

/// A stream of `n` times what `write` writes.
fn repeat(n: usize, write: impl Fn(&mut BytesMut)) -> Bytes {
    stream(|out| (0..n).for_each(|_| write(out)))
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// One int4 column, `abalance`.
fn row_description(out: &mut BytesMut) {
    message(out, b'T', |b| {
        b.put_u16(1);
        put_cstr(b, "abalance");
        b.put_u32(0x4001); // table
        b.put_u16(3); // column
        b.put_u32(23); // int4
        b.put_i16(4);
        b.put_i32(-1);
        b.put_u16(0); // text
    });
}

fn data_row(out: &mut BytesMut, value: &[u8]) {
    message(out, b'D', |b| {
        b.put_u16(1);
        b.put_u32(value.len() as u32);
        b.put_slice(value);
    });
}

fn complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag));
}

fn empty(out: &mut BytesMut, tag: u8) {
    message(out, tag, |_| {});
}

fn select_reply(out: &mut BytesMut) {
    row_description(out);
    data_row(out, b"-127");
    complete(out, "SELECT 1");
    wire::ready_for_query(out, b'I');
}

/// What the server sends for one pgbench -S transaction in simple-query mode.
pub fn pgbench_select_reply() -> Bytes {
    stream(select_reply)
}

/// Bind of one text parameter, Describe of the portal, Execute, Sync: what libpq sends to run
/// a statement, named (`-M prepared`) or unnamed (`-M extended`, after a Parse).
fn bind_execute(out: &mut BytesMut, statement: &str) {
    // No parameter formats, one parameter of 5 bytes, no result formats.
    wire::bind(out, b"", statement, b"\0\0\0\x01\0\0\0\x0512345\0\0");
    wire::describe_or_close(out, b'D', b'P', b"");
    message(out, b'E', |b| {
        b.put_u8(0);
        b.put_u32(0);
    });
    empty(out, b'S');
}

/// A result of `rows` DataRows of 200 bytes, as a bulk read returns.
pub fn data_rows(rows: usize) -> Bytes {
    stream(|out| {
        row_description(out);
        (0..rows).for_each(|_| message(out, b'D', |b| b.put_bytes(b'x', 200)));
        complete(out, "SELECT");
        wire::ready_for_query(out, b'I');
    })
}

/// CopyOutResponse ('H') or CopyInResponse ('G') of pgbench_accounts' four text columns.
fn copy_start(out: &mut BytesMut, tag: u8) {
    message(out, tag, |b| {
        b.put_u8(0);
        b.put_u16(4);
        b.put_bytes(0, 8);
    });
}

/// `n` CopyData lines of about 100 bytes, then CopyDone.
fn copy_lines(out: &mut BytesMut, n: usize) {
    for i in 0..n {
        message(out, b'd', |b| {
            b.put_slice(format!("{i}\t1\t0\t{:84}\n", "").as_bytes())
        });
    }
    empty(out, b'c');
}

/// A stream of traffic in both directions.
pub struct Traffic {
    pub name: &'static str,
    pub client: Bytes,
    pub server: Bytes,
}

/// Counts the messages in a stream of whole messages.
pub fn messages(mut stream: &[u8]) -> u64 {
    let mut n = 0;
    while let Ok(Some((_, len))) = frame::header(stream) {
        stream = &stream[len..];
        n += 1;
    }
    n
}

/// The traffic mixes the benches follow, each `transactions` transactions long (or 16 rows or
/// lines per transaction).
pub fn mixes(transactions: usize) -> Vec<Traffic> {
    let lines = 16 * transactions;
    vec![
        Traffic {
            name: "pgbench_simple",
            client: repeat(transactions, |out| {
                wire::query(out, &SELECT.replace("$1", "12345"))
            }),
            server: repeat(transactions, select_reply),
        },
        Traffic {
            name: "pgbench_extended",
            client: repeat(transactions, |out| {
                // The unnamed statement, one int4 parameter.
                wire::parse(out, "", format!("{SELECT}\0\0\x01\0\0\0\x17").as_bytes());
                bind_execute(out, "");
            }),
            server: repeat(transactions, |out| {
                empty(out, b'1');
                empty(out, b'2');
                select_reply(out);
            }),
        },
        Traffic {
            name: "pgbench_prepared",
            client: repeat(transactions, |out| bind_execute(out, "P_0")),
            server: repeat(transactions, |out| {
                empty(out, b'2');
                select_reply(out);
            }),
        },
        Traffic {
            name: "data_rows_200b",
            client: stream(|out| wire::query(out, "SELECT repeat('x', 200) FROM t")),
            server: data_rows(lines),
        },
        Traffic {
            name: "copy_out",
            client: stream(|out| wire::query(out, "COPY pgbench_accounts TO STDOUT")),
            server: stream(|out| {
                copy_start(out, b'H');
                copy_lines(out, lines);
                complete(out, "COPY");
                wire::ready_for_query(out, b'I');
            }),
        },
        Traffic {
            name: "copy_in",
            client: stream(|out| {
                wire::query(out, "COPY pgbench_accounts FROM STDIN");
                copy_lines(out, lines);
            }),
            server: stream(|out| {
                copy_start(out, b'G');
                complete(out, "COPY");
                wire::ready_for_query(out, b'I');
            }),
        },
    ]
}
