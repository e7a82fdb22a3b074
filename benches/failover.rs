//! Failover bench (TARGETS.md W6): a writer probe through pgrouter (pass-through), one through
//! pgrouter in transaction pooling, and one through HAProxy with Patroni REST checks, side by
//! side in the same events: planned switchover, kill -9 of the leader, frozen leader. Prints a
//! markdown table of write gaps, errors and lost rows, and pgrouter's route-switch latency
//! (etcd event to routing by it) from its histogram.
//!
//! Run: `cargo bench --bench failover` (as root; add `-- --rounds 3` to repeat each event;
//! `-- --dcs zookeeper` runs the same events on a lab whose Patroni uses ZooKeeper, which
//! pgrouter reads through the members' REST APIs, `cluster.source = "patroni"`).

// Shared with the e2e bench; the pgbouncer and CPU helpers are not used here.
#[allow(dead_code)]
#[path = "e2e/procs.rs"]
mod procs;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use pgrouter_lab::probe::{missing_rows, Probe, ProbeReport};
use pgrouter_lab::{Lab, LabSpec};

const BASE_PORT: u16 = 18400;
const PGROUTER_PORT: u16 = 18500;
const HAPROXY_PORT: u16 = 18600;
const POOLED_PORT: u16 = 18510;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        // `cargo test --benches` and `cargo bench -- --test` smoke runs: nothing to check here.
        return Ok(());
    }
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(1), |n| n.parse())
        .context("--rounds takes a number")?;
    let zookeeper = args
        .iter()
        .position(|a| a == "--dcs")
        .and_then(|i| args.get(i + 1))
        .is_some_and(|d| d == "zookeeper");
    let dir = std::env::temp_dir().join("pgrouter-bench-failover");
    let mut spec = LabSpec::new(&dir, BASE_PORT);
    if zookeeper {
        spec.dcs = pgrouter_lab::Dcs::ZooKeeper;
    }
    let lab = Lab::start(spec)?;
    let _router = procs::start_pgrouter(&lab, &dir, PGROUTER_PORT)?;
    let secret = lab.psql(
        lab.pg_port(&lab.leader()?),
        "select rolpassword from pg_authid where rolname = 'postgres'",
    )?;
    let _pooled = procs::start_pgrouter_txn(&lab, &dir, POOLED_PORT, &secret, 1000, 0)?;
    let _haproxy = procs::start_haproxy(&lab, &dir, HAPROXY_PORT)?;
    procs::wait_primary("HAProxy", HAPROXY_PORT)?;
    let runtime = tokio::runtime::Runtime::new()?;

    let mut table = String::from(
        "| event | target | longest write gap | errors (query / connect) | connections | acked rows | acked rows lost |\n|---|---|---|---|---|---|---|\n",
    );
    for round in 1..=rounds {
        for event in [Event::Switchover, Event::Kill, Event::Freeze] {
            lab.wait_healthy(Duration::from_secs(180))?;
            let results = runtime.block_on(run_event(&lab, event, round))?;
            for (target, report, lost) in results {
                writeln!(
                    table,
                    "| {} | {target} | {:.2} s | {} / {} | {} | {} | {lost} |",
                    event.name(),
                    report.longest_gap.as_secs_f64(),
                    report.query_errors.len(),
                    report.connect_errors.len(),
                    report.connections,
                    report.acked.len(),
                )?;
            }
        }
    }
    let source = if zookeeper {
        "Patroni on ZooKeeper; pgrouter polls the members' REST APIs every 250 ms"
    } else {
        "Patroni on etcd; pgrouter watches its keys"
    };
    println!("\n{source}; Patroni ttl {} s, loop_wait {} s; HAProxy: inter 1s fall 2 rise 2, on-marked-down shutdown-sessions\n", lab.spec().ttl, lab.spec().loop_wait);
    println!("{table}");
    // The route-switch histogram times etcd events; the REST source has none.
    for (name, port) in [("pgrouter", PGROUTER_PORT), ("pgrouter-txn", POOLED_PORT)] {
        if !zookeeper {
            println!("{name}: {}", route_switch(port + 2)?);
        }
    }
    Ok(())
}

/// Route switches from pgrouter's `pgrouter_route_switch_seconds` histogram: the count and
/// the bucket bound under which 99% of them fell.
fn route_switch(admin: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut page = String::new();
    s.read_to_string(&mut page)?;
    let mut buckets = Vec::new();
    let mut count = 0.0;
    // Series carry a `cluster` label: `..._bucket{cluster="demo",le="0.001"} 3`.
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("pgrouter_route_switch_seconds_bucket{") {
            let (_, after) = rest.split_once("le=\"").context("bucket line")?;
            let (le, n) = after.split_once("\"} ").context("bucket line")?;
            buckets.push((le.to_owned(), n.trim().parse::<f64>()?));
        } else if let Some(rest) = line.strip_prefix("pgrouter_route_switch_seconds_count") {
            let n = rest.rsplit_once(' ').context("count line")?.1;
            count = n.trim().parse()?;
        }
    }
    let p99 = buckets
        .iter()
        .find(|(_, n)| count > 0.0 && *n >= 0.99 * count)
        .map(|(le, _)| le.clone())
        .unwrap_or_else(|| "-".into());
    Ok(format!(
        "{count} route switches (etcd event -> routing by it), p99 <= {p99} s (histogram bucket bound)"
    ))
}

#[derive(Clone, Copy)]
enum Event {
    Switchover,
    Kill,
    Freeze,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Switchover => "patronictl switchover --force",
            Event::Kill => "kill -9 leader (Patroni + postmaster)",
            Event::Freeze => "SIGSTOP leader (Patroni + postmaster)",
        }
    }
}

async fn run_event(
    lab: &Lab,
    event: Event,
    round: usize,
) -> Result<Vec<(&'static str, ProbeReport, usize)>> {
    let old = lab.leader()?;
    let targets = [
        ("pgrouter", PGROUTER_PORT),
        ("pgrouter-txn", POOLED_PORT),
        ("HAProxy", HAPROXY_PORT),
    ];
    let mut probes = Vec::new();
    for (name, port) in targets {
        let table = format!(
            "bench_{}_{round}_{}",
            name.to_lowercase().replace('-', "_"),
            event as u8
        );
        lab.psql(
            lab.pg_port(&old),
            &format!("drop table if exists {table}; create table {table}(id bigint primary key)"),
        )?;
        let probe = Probe::start(port, &table);
        probe.wait_for_acks(100, Duration::from_secs(30)).await?;
        probes.push((name, table, probe));
    }
    match event {
        Event::Switchover => lab.switchover(None)?,
        Event::Kill => lab.kill_member(&old)?,
        Event::Freeze => lab.freeze_member(&old)?,
    }
    let new = lab.wait_leader_other_than(&old, Duration::from_secs(120))?;
    for (_, _, probe) in &probes {
        probe.wait_for_acks(300, Duration::from_secs(120)).await?;
    }
    let mut results = Vec::new();
    for (name, table, probe) in probes {
        let report = probe.finish().await;
        let lost = missing_rows(lab, lab.pg_port(&new), &table, &report.acked)?.len();
        results.push((name, report, lost));
    }
    match event {
        Event::Switchover => {}
        Event::Kill => lab.start_member(&old)?,
        Event::Freeze => lab.thaw_member(&old)?,
    }
    Ok(results)
}
