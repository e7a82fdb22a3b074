//! Criterion benchmarks of the hot path: following message headers over realistic traffic, and
//! round trips through the relay loop over loopback against a direct connection.
//! Run: `cargo bench --bench relay` (CI runs it in quick smoke mode: `-- --test`).

#[path = "relay/roundtrip.rs"]
mod roundtrip;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgrouter::protocol::frame::Scanner;

pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// What the server sends for one pgbench -S transaction in simple-query mode.
pub fn pgbench_select_reply() -> Vec<u8> {
    [
        msg(b'T', &[0u8; 27]),
        msg(b'D', &[0, 1, 0, 0, 0, 4, 0, 0, 0x12, 0x34]),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"I"),
    ]
    .concat()
}

/// A large result: 1,000 DataRows of 200 bytes, as a bulk read returns.
fn data_rows() -> Vec<u8> {
    let mut out: Vec<u8> = (0..1000).flat_map(|_| msg(b'D', &[b'x'; 200])).collect();
    out.extend(msg(b'C', b"SELECT 1000\0"));
    out.extend(msg(b'Z', b"I"));
    out
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("scanner");
    for (name, stream) in [
        (
            "pgbench_select_reply_x64",
            pgbench_select_reply().repeat(64),
        ),
        ("data_rows_200b_x1000", data_rows()),
    ] {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| {
            let mut scanner = Scanner::new(b"ZK");
            b.iter(|| {
                let mut ready = 0u32;
                for chunk in stream.chunks(16 * 1024) {
                    scanner
                        .feed(chunk, |tag, _| ready += u32::from(tag == b'Z'))
                        .unwrap();
                }
                ready
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scan, roundtrip::bench);
criterion_main!(benches);
