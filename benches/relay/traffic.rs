//! Realistic PostgreSQL traffic, both directions, for the benches: what pgbench -S sends and gets
//! back in its three query modes, a large result, and COPY out and in.

/// One message: tag, length, body.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Strings as the protocol writes them: each followed by a zero byte.
fn cstrs(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|s| s.bytes().chain([0])).collect()
}

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";

/// What the server sends for one pgbench -S transaction in simple-query mode.
pub fn pgbench_select_reply() -> Vec<u8> {
    [row_description(), data_row(), complete("SELECT 1"), ready()].concat()
}

fn row_description() -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(cstrs(&["abalance"]));
    body.extend([
        0, 0, 0x40, 0x01, 0, 3, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]);
    msg(b'T', &body)
}

fn data_row() -> Vec<u8> {
    msg(b'D', &[0, 1, 0, 0, 0, 4, b'-', b'1', b'2', b'7'])
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstrs(&[tag]))
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

/// Bind of one text parameter, Describe of the portal, Execute, Sync: what libpq sends to run
/// a statement, named (`-M prepared`) or unnamed (`-M extended`, after a Parse).
fn bind_execute(statement: &str) -> Vec<u8> {
    let mut bind = cstrs(&["", statement]);
    bind.extend([0, 0, 0, 1, 0, 0, 0, 5]);
    bind.extend(b"12345");
    bind.extend([0, 0]);
    [
        msg(b'B', &bind),
        msg(b'D', b"P\0"),
        msg(b'E', &[0, 0, 0, 0, 0]),
        msg(b'S', &[]),
    ]
    .concat()
}

/// A stream of traffic in both directions, and how many messages each holds.
pub struct Traffic {
    pub name: &'static str,
    pub client: Vec<u8>,
    pub server: Vec<u8>,
}

/// Counts the messages in a stream of whole messages.
pub fn messages(mut stream: &[u8]) -> u64 {
    let mut n = 0;
    while stream.len() >= 5 {
        let len = u32::from_be_bytes([stream[1], stream[2], stream[3], stream[4]]) as usize;
        stream = &stream[1 + len..];
        n += 1;
    }
    n
}

/// The traffic mixes the benches scan, each `transactions` transactions (or results) long.
pub fn mixes(transactions: usize) -> Vec<Traffic> {
    let simple_query = msg(b'Q', &cstrs(&[&SELECT.replace("$1", "12345")]));
    let mut parse = cstrs(&["", SELECT]);
    parse.extend([0, 1, 0, 0, 0, 23]);
    let rows = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| msg(b'D', &[b'x'; 200])).collect() };
    let copy_lines = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| msg(b'd', format!("{i}\t1\t0\t{:84}\n", "").as_bytes()))
            .collect()
    };
    let copy_start = |tag| msg(tag, &[0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
    let repeat = |one: Vec<u8>| one.repeat(transactions);
    vec![
        Traffic {
            name: "pgbench_simple",
            client: repeat(simple_query),
            server: repeat(pgbench_select_reply()),
        },
        Traffic {
            name: "pgbench_extended",
            client: repeat([msg(b'P', &parse), bind_execute("")].concat()),
            server: repeat([msg(b'1', &[]), msg(b'2', &[]), pgbench_select_reply()].concat()),
        },
        Traffic {
            name: "pgbench_prepared",
            client: repeat(bind_execute("P_0")),
            server: repeat([msg(b'2', &[]), pgbench_select_reply()].concat()),
        },
        Traffic {
            name: "data_rows_200b",
            client: msg(b'Q', &cstrs(&["SELECT repeat('x', 200) FROM t"])),
            server: [
                row_description(),
                rows(16 * transactions),
                complete("SELECT"),
                ready(),
            ]
            .concat(),
        },
        Traffic {
            name: "copy_out",
            client: msg(b'Q', &cstrs(&["COPY pgbench_accounts TO STDOUT"])),
            server: [
                copy_start(b'H'),
                copy_lines(16 * transactions),
                msg(b'c', &[]),
                complete("COPY"),
                ready(),
            ]
            .concat(),
        },
        Traffic {
            name: "copy_in",
            client: [
                msg(b'Q', &cstrs(&["COPY pgbench_accounts FROM STDIN"])),
                copy_lines(16 * transactions),
                msg(b'c', &[]),
            ]
            .concat(),
            server: [copy_start(b'G'), complete("COPY"), ready()].concat(),
        },
    ]
}
