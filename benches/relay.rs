//! Criterion benchmarks of the hot path: the relay following both directions of realistic
//! traffic (message boundaries, transaction state, counters), in messages/s and bytes/s, and
//! query round trips and a bulk result through the relay loop over loopback against a direct
//! connection.
//! Run: `cargo bench --bench relay` (CI runs it in quick smoke mode: `-- --test`).

#[path = "relay/roundtrip.rs"]
mod roundtrip;
#[path = "relay/traffic.rs"]
mod traffic;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgrouter::config::Config;
use pgrouter::testing::frame::BadLength;
use pgrouter::testing::relay::Follow;
use pgrouter::testing::Metrics;
use pgrouter::testing::Port;
use pgrouter::testing::Shared;
use pgrouter::testing::Topology;
use tokio::sync::watch;

/// How the relay follows one side's bytes.
type Feed<'a> = fn(&mut Follow<'a>, &[u8]) -> Result<(), BadLength>;

/// What the relay reads at most per system call.
const BATCH: usize = 16 * 1024;

pub fn bench_config() -> Config {
    Config::from_toml("[cluster]\nscope = \"bench\"\netcd = [\"127.0.0.1:1\"]\n").unwrap()
}

/// Feeds every traffic mix through a `Follow`, in the relay's batches: the client's side
/// as `client_bytes`, the server's as `server_bytes`. Each direction is measured twice, once
/// counted in messages and once in bytes (criterion reports one rate per benchmark).
fn follow(c: &mut Criterion) {
    let (_topology, receiver) = watch::channel(Arc::new(Topology::empty("bench")));
    let shared = Shared::new(bench_config(), receiver, Arc::new(Metrics::new()));
    let mixes = traffic::mixes(64);
    for mix in &mixes {
        check(&shared, mix);
    }
    for (group_name, per_message) in [("follow_messages", true), ("follow_bytes", false)] {
        let mut group = c.benchmark_group(group_name);
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for mix in &mixes {
            let sides = [
                ("client", &mix.client, Follow::client_bytes as Feed),
                ("server", &mix.server, Follow::server_bytes),
            ];
            for (direction, stream, feed) in sides {
                group.throughput(if per_message {
                    Throughput::Elements(traffic::messages(stream))
                } else {
                    Throughput::Bytes(stream.len() as u64)
                });
                group.bench_function(format!("{}/{direction}", mix.name), |b| {
                    let mut follow = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:1");
                    b.iter(|| {
                        for batch in stream.chunks(BATCH) {
                            feed(&mut follow, batch).unwrap();
                        }
                        follow.tx.awaiting
                    })
                });
            }
        }
        group.finish();
    }
}

/// A mix is whole messages, and the server's answer ends every wait the client's side starts:
/// the relay would find its session idle after it.
fn check(shared: &Shared, mix: &traffic::Traffic) {
    let mut follow = Follow::new(shared, Port::PRIMARY, "127.0.0.1:1");
    follow.client_bytes(&mix.client).unwrap();
    follow.server_bytes(&mix.server).unwrap();
    let whole = follow.up_scan.at_boundary() && follow.down_scan.at_boundary();
    // One wait is the startup's, which the mix does not answer.
    follow.tx.awaiting -= 1;
    assert!(
        whole && follow.tx.idle(),
        "{} is not a whole exchange",
        mix.name
    );
}

criterion_group!(benches, follow, roundtrip::bench);
criterion_main!(benches);
