//! Query/response round trips over loopback: straight to a fake server, and through
//! pgrouter's relay loop. The difference is what the relay costs per transaction (pgbench's
//! reply, five messages a round trip) and per byte (a 1,024-row result of 200-byte rows).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use pgrouter::testing::relay::{Follow, Relay};
use pgrouter::testing::Shared;
use pgrouter::testing::Stream;
use pgrouter::testing::{Member, Role, Topology};
use pgrouter::testing::{Metrics, StateGauge};
use pgrouter::testing::{Port, Route, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::watch;

use crate::traffic;

/// What pgbench -S sends in simple-query mode.
const QUERY: &[u8] = b"Q\0\0\0\x2aSELECT abalance FROM t WHERE aid = 1;\0";

/// A server that answers every Query with `reply`.
async fn fake_server(reply: Bytes) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; QUERY.len()];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A router-side listener relaying every client to `server` with pgrouter's relay loop.
async fn relay_to(server: String) -> String {
    let mut config = crate::bench_config();
    config.routing.drain_timeout.0 = Duration::from_secs(60);
    let member = Member {
        name: "pg0".into(),
        addr: server,
        role: Role::Primary,
        state: "running".into(),
        wal_position: Some(0),
        noloadbalance: false,
        tags: Default::default(),
        timeline: Some(1),
        api_url: None,
    };
    let mut topology = Topology::empty("bench");
    topology.synced = true;
    topology.leader = Some("pg0".into());
    topology.members.insert("pg0".into(), member.clone().into());
    let (tx, rx) = watch::channel(Arc::new(topology));
    let shared = Arc::new(Shared::new(config, rx, Arc::new(Metrics::new())));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let _keep_topology = tx;
        while let Ok((client, _)) = listener.accept().await {
            let shared = shared.clone();
            let route = Route::new(member.clone(), Target::Leader, Port::PRIMARY);
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let server = TcpStream::connect(&route.member.addr).await.unwrap();
                let _ = server.set_nodelay(true);
                let (mut client, mut server) = (Stream::Plain(client), Stream::Plain(server));
                let mut state = StateGauge::new(&shared.metrics, "primary");
                let follow = Follow::new(&shared, Port::PRIMARY, &route.member.addr);
                Relay {
                    shared: &shared,
                    route: &route,
                    port: Port::PRIMARY,
                    database: "bench",
                    began: tokio::time::Instant::now(),
                }
                .run(&mut client, &mut server, follow, &mut state)
                .await;
            });
        }
    });
    addr
}

/// `n` queries, each answered by `reply_len` bytes, one after the other.
async fn round_trips(addr: &str, reply_len: usize, n: u64) -> Duration {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut reply = vec![0u8; reply_len];
    let start = Instant::now();
    for _ in 0..n {
        s.write_all(QUERY).await.unwrap();
        s.read_exact(&mut reply).await.unwrap();
    }
    start.elapsed()
}

fn runtime() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// A current-thread runtime on a thread of its own, as the server, the router and the client
/// each have their own process in a deployment: every message crosses threads, as it would.
fn runtime_thread() -> Handle {
    let rt = runtime();
    let handle = rt.handle().clone();
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    handle
}

pub fn bench(c: &mut Criterion) {
    let (server_rt, router_rt, client_rt) = (runtime_thread(), runtime_thread(), runtime());
    let pgbench = traffic::pgbench_select_reply();
    let bulk = traffic::data_rows(1024);
    for (group_name, reply, throughput) in [
        (
            "round_trip",
            &pgbench,
            Throughput::Elements(1 + traffic::messages(&pgbench)),
        ),
        ("bulk", &bulk, Throughput::Bytes(bulk.len() as u64)),
    ] {
        let server = server_rt.block_on(fake_server(reply.clone()));
        let relayed = router_rt.block_on(relay_to(server.clone()));
        let mut group = c.benchmark_group(group_name);
        group.throughput(throughput);
        for (name, addr) in [("direct", &server), ("through_relay", &relayed)] {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| client_rt.block_on(round_trips(addr, reply.len(), iters)))
            });
        }
        group.finish();
    }
}
