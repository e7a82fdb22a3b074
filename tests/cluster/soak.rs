//! Soak: mixed pgbench through a passthrough and a transaction-pooling router (read-write
//! TPC-B-like on each primary port, `-S` on each replicas port) plus two writers, for
//! `PGROUTER_SOAK_SECS` seconds (default 120; the full soak is 1800), with a planned
//! switchover every quarter of the run and a kill -9 of the leader at 3/8 of it.
//!
//! The cluster runs in Patroni's `synchronous_mode` for the duration (restored afterwards): with
//! asynchronous replication PostgreSQL itself may lose the last acknowledged commits when the
//! leader is killed, whatever the router does, and this test asserts that nothing
//! acknowledged is lost.
//!
//! At the end it asserts:
//! - every acknowledged write of both writers is on the final leader, row by row;
//! - no write was accepted by a member after it lost the leader key (see [`after_key_loss`]);
//! - pgbench_history holds at least as many rows as read-write transactions pgbench counted,
//!   and every pgbench stream got work done;
//! - no leaked server connections: once clients stop, each member's client backends are exactly
//!   the pooled router's `pgrouter_pool_server_connections` for it (the passthrough router's
//!   `pgrouter_server_connections` drop to 0), and after `server_idle_timeout` none is left;
//! - no pgbench transaction counted as failed (clients cut by a switchover or the kill -9 abort,
//!   which pgbench counts apart);
//! - stable RSS: each router's last VmRSS under load is within a fifth of the one after warm-up.
//!
//! A summary line starting with `soak summary:` gives the numbers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;

use crate::restarts::pooled_router;
use crate::support::{
    client_backends, connect, eventually, healthy_and_synchronous, in_synchronous_mode, metric_sum,
    pgbench_init, pgbench_run, rss_kib, Router, RouterOptions,
};

const DEFAULT_SECS: u64 = 120;
const SERVER_IDLE_TIMEOUT_SECS: u64 = 10;
/// pgbench streams: (name, through the pooled router, replicas port, args before -T).
const STREAMS: [(&str, bool, bool, &[&str]); 4] = [
    (
        "passthrough rw",
        false,
        false,
        &["-c", "2", "-j", "1", "-R", "50"],
    ),
    (
        "passthrough -S",
        false,
        true,
        &["-S", "-c", "2", "-j", "1", "-R", "100"],
    ),
    (
        "pooled rw",
        true,
        false,
        &["-c", "2", "-j", "1", "-R", "50"],
    ),
    (
        "pooled -S",
        true,
        true,
        &["-S", "-c", "2", "-j", "1", "-R", "100"],
    ),
];

/// One acknowledged write: its id, the server port that ran it (`inet_server_port()`), when
/// it was sent and when its acknowledgement arrived.
struct Ack {
    id: i64,
    port: u16,
    sent: Instant,
    acked: Instant,
}

#[derive(Default)]
struct WriterReport {
    acks: Vec<Ack>,
    /// Ids whose INSERT failed: they may or may not have committed.
    uncertain: Vec<i64>,
    errors: BTreeMap<String, u64>,
    connect_errors: u64,
    connections: u64,
}

/// A client inserting a row every 10 ms through `port`, reconnecting on error; ids from
/// `first_id` up.
async fn writer(port: u16, first_id: i64, stop: Arc<AtomicBool>) -> WriterReport {
    let mut r = WriterReport::default();
    let mut id = first_id;
    while !stop.load(Ordering::Relaxed) {
        let client = match connect(port, "pgrouter-soak-writer").await {
            Ok((c, _)) => c,
            Err(e) => {
                r.connect_errors += 1;
                *r.errors
                    .entry(first_line(&format!("connect: {e:#}")))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        r.connections += 1;
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let result = client
                .query_one(
                    "insert into soak_writes(id, port) values ($1, inet_server_port()) returning port",
                    &[&id],
                )
                .await;
            match result {
                Ok(row) => {
                    let port: i32 = row.get(0);
                    r.acks.push(Ack {
                        id,
                        port: port as u16,
                        sent,
                        acked: Instant::now(),
                    });
                }
                Err(e) => {
                    r.uncertain.push(id);
                    let text = pgrouter_lab::probe::db_error_text(&e);
                    *r.errors.entry(first_line(&text)).or_default() += 1;
                    id += 1;
                    break;
                }
            }
            id += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    r
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect()
}

/// One read of the leader key from etcd: its holder (None: no key) at some moment between
/// `start` and `end`.
struct Sample {
    start: Instant,
    end: Instant,
    holder: Option<String>,
}

/// The leader key's holder, read from the first etcd member that answers.
fn leader_key_holder(
    endpoints: &[String],
    key: &str,
    members: &[String],
) -> Result<Option<String>> {
    let mut last = anyhow::anyhow!("no etcd endpoint");
    for addr in endpoints {
        match pgrouter_lab::etcd_get(addr, key) {
            Ok(None) => return Ok(None),
            Ok(Some(value)) => {
                return members
                    .iter()
                    .find(|m| **m == value)
                    .map(|m| Some(m.clone()))
                    .with_context(|| format!("leader key holds an unknown value {value}"))
            }
            Err(e) => last = e.context(format!("etcd {addr}")),
        }
    }
    Err(last)
}

/// Reads the leader key every 100 ms until `stop`.
fn monitor_leader_key(
    endpoints: Vec<String>,
    key: String,
    members: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (Vec<Sample>, u64) {
    let mut samples = Vec::new();
    let mut errors = 0;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match leader_key_holder(&endpoints, &key, &members) {
            Ok(holder) => samples.push(Sample {
                start,
                end: Instant::now(),
                holder,
            }),
            Err(_) => errors += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (samples, errors)
}

/// Acknowledged writes run by a member that did not hold the leader key at any moment between
/// the write being sent and its acknowledgement, so its commit happened while another member,
/// or none, held the key; `member_of` maps server ports (`inet_server_port()` as returned by
/// each INSERT) to member names.
///
/// The leader key is read linearizably from etcd every ~100 ms, each read true at some moment
/// within its request. For a write sent at `s` and acknowledged at `a` by member X, take the
/// last read that ended before `s`, the first that started after `a`, and every read between:
/// if none of them names X, X did not hold the key anywhere in [s, a], unless the key went to X
/// and away again between two consecutive reads, which takes a leader race or a switchover
/// (seconds), never 100 ms. So a flagged write is a real one; what the check can miss is a
/// commit within one sampling interval of the loss (its surrounding reads still name X).
///
/// Why not compare timelines instead: rows on a deposed member's timeline that the leader
/// lacks cannot be read afterwards (pg_rewind removes them when the member rejoins). Any such
/// row that was acknowledged also shows up as lost in the row-by-row check on the final leader.
fn after_key_loss(
    samples: &[Sample],
    acks: &[&Ack],
    member_of: &HashMap<u16, String>,
) -> Result<Vec<String>> {
    let mut violations = Vec::new();
    for ack in acks {
        let member = member_of
            .get(&ack.port)
            .with_context(|| format!("write {} ran on unknown port {}", ack.id, ack.port))?;
        let first = samples.partition_point(|s| s.end <= ack.sent);
        let last = samples.partition_point(|s| s.start < ack.acked);
        ensure!(
            first > 0 && last < samples.len(),
            "write {} is outside the sampled time",
            ack.id
        );
        let around = &samples[first - 1..=last];
        if around.iter().all(|s| s.holder.as_ref() != Some(member)) {
            violations.push(format!(
                "write {} acknowledged by {member}, whose key samples around it were {:?}",
                ack.id,
                around.iter().map(|s| s.holder.clone()).collect::<Vec<_>>()
            ));
        }
    }
    Ok(violations)
}

/// The check above flags a write it should: the middle acknowledged write, attributed to a
/// member that held no key around it (a replica then), must come out as a violation.
fn checker_flags_a_replica_write(
    samples: &[Sample],
    acks: &[&Ack],
    member_of: &HashMap<u16, String>,
) -> Result<()> {
    let ack = acks.get(acks.len() / 2).context("no acknowledged write")?;
    let first = samples
        .partition_point(|s| s.end <= ack.sent)
        .saturating_sub(1);
    let last = samples.partition_point(|s| s.start < ack.acked);
    let around = &samples[first..=last.min(samples.len() - 1)];
    let replica = member_of
        .iter()
        .find(|(_, m)| around.iter().all(|s| s.holder.as_ref() != Some(*m)));
    let Some((&port, _)) = replica else {
        return Ok(()); // every member held the key around it: nothing to pretend
    };
    let fake = Ack {
        id: ack.id,
        port,
        sent: ack.sent,
        acked: ack.acked,
    };
    let flagged = after_key_loss(samples, &[&fake], member_of)?;
    ensure!(
        flagged.len() == 1,
        "the leader key check does not flag a write by a replica"
    );
    Ok(())
}

#[derive(Debug, Default)]
struct BenchTotals {
    runs: u64,
    processed: u64,
    failed: u64,
    aborted_clients: u64,
    /// Runs that could not start at all (no connection).
    failed_starts: u64,
    seconds: f64,
    last_error: String,
}

/// pgbench runs of at most 15 s, one after another, until `deadline` (or `stop`).
fn bench_loop(port: u16, args: &[&str], deadline: Instant, stop: Arc<AtomicBool>) -> BenchTotals {
    let mut t = BenchTotals::default();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        if left < 2 {
            break;
        }
        let secs = left.min(15).to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-T", &secs]);
        match pgbench_run(port, &all) {
            Ok(run) => {
                t.runs += 1;
                t.processed += run.processed;
                t.failed += run.failed;
                t.aborted_clients += run.aborted_clients;
                if run.exit != Some(0) {
                    t.last_error = run
                        .output
                        .lines()
                        .filter(|l| l.contains("error"))
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" / ");
                }
                if run.exit == Some(1) && run.processed == 0 {
                    t.failed_starts += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Err(e) => {
                t.last_error = format!("{e:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    t.seconds = started.elapsed().as_secs_f64();
    t
}

/// Sets the stop flag when dropped, so background loops end on every path out of the test.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The soak's length from `PGROUTER_SOAK_SECS` (a bad value: the default here, refused by the
/// scenario itself), for the runner's time limit.
pub fn duration() -> Duration {
    Duration::from_secs(
        std::env::var("PGROUTER_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_SECS),
    )
}

pub async fn soak(lab: &Lab) -> Result<()> {
    let secs = match std::env::var("PGROUTER_SOAK_SECS") {
        Ok(s) => s.parse().context("PGROUTER_SOAK_SECS: seconds")?,
        Err(_) => DEFAULT_SECS,
    };
    ensure!(secs >= 60, "PGROUTER_SOAK_SECS: at least 60");
    in_synchronous_mode(lab, run(lab, Duration::from_secs(secs))).await
}

async fn run(lab: &Lab, duration: Duration) -> Result<()> {
    pgbench_init(lab)?;
    lab.psql(
        lab.pg_port(&lab.leader()?),
        "drop table if exists soak_writes; create table soak_writes(id bigint primary key, port int not null, at timestamptz default clock_timestamp())",
    )?;
    let plain = Router::start(lab, 17598, RouterOptions::default())?;
    let pooled = pooled_router(
        lab,
        17590,
        &format!("pool_size = 10\nserver_idle_timeout = \"{SERVER_IDLE_TIMEOUT_SECS}s\"\n"),
    )?;
    let members = lab.member_names();
    let member_of: HashMap<u16, String> = members
        .iter()
        .map(|m| (lab.pg_port(m), m.clone()))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    // The leader key is sampled from before the first write to after the last one.
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let _monitor_stop_guard = StopOnDrop(monitor_stop.clone());
    let monitor = {
        let (endpoints, key, members, stop) = (
            lab.etcd_endpoints(),
            format!(
                "/{}/{}/leader",
                lab.spec().namespace.trim_matches('/'),
                lab.spec().scope
            ),
            members.clone(),
            monitor_stop.clone(),
        );
        tokio::task::spawn_blocking(move || monitor_leader_key(endpoints, key, members, stop))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writers = [
        (
            "passthrough",
            tokio::spawn(writer(plain.primary, 1, stop.clone())),
        ),
        (
            "pooled",
            tokio::spawn(writer(pooled.primary, 1_000_000_000_000, stop.clone())),
        ),
    ];
    let start = Instant::now();
    let deadline = start + duration;
    let mut benches = Vec::new();
    for (name, via_pooled, replicas, args) in STREAMS {
        let router = if via_pooled { &pooled } else { &plain };
        let port = if replicas {
            router.replicas
        } else {
            router.primary
        };
        let stop = stop.clone();
        benches.push((
            name,
            !replicas,
            tokio::task::spawn_blocking(move || bench_loop(port, args, deadline, stop)),
        ));
    }
    // VmRSS of both routers every few seconds while the load runs.
    let rss: Arc<Mutex<Vec<(f64, u64, u64)>>> = Arc::default();
    let sampler = {
        let (rss, stop) = (rss.clone(), stop.clone());
        let (plain_pid, pooled_pid) = (plain.pid(), pooled.pid());
        let every = (duration / 60).max(Duration::from_secs(2));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let (Ok(a), Ok(b)) = (rss_kib(plain_pid), rss_kib(pooled_pid)) {
                    rss.lock()
                        .unwrap()
                        .push((start.elapsed().as_secs_f64(), a, b));
                }
                tokio::time::sleep(every).await;
            }
        })
    };

    let d = duration.as_secs_f64();
    let events = [(0.25, false), (0.375, true), (0.5, false), (0.75, false)];
    let (mut switchovers, mut failovers) = (0, 0);
    for (at, kill) in events {
        let when = start + Duration::from_secs_f64(d * at);
        tokio::time::sleep_until(when.into()).await;
        healthy_and_synchronous(lab).await?;
        let old = lab.leader()?;
        let t0 = Instant::now();
        if kill {
            lab.kill_member(&old)?;
            let new = lab.wait_leader_other_than(&old, Duration::from_secs(120))?;
            println!(
                "  t={:.0}s: kill -9 of the leader {old}; {new} took over in {:.1}s",
                start.elapsed().as_secs_f64() - t0.elapsed().as_secs_f64(),
                t0.elapsed().as_secs_f64()
            );
            lab.start_member(&old)?;
            failovers += 1;
        } else {
            lab.switchover(None)?;
            let new = lab.wait_leader_other_than(&old, Duration::from_secs(120))?;
            println!(
                "  t={:.0}s: switchover {old} -> {new} in {:.1}s",
                start.elapsed().as_secs_f64() - t0.elapsed().as_secs_f64(),
                t0.elapsed().as_secs_f64()
            );
            switchovers += 1;
        }
    }
    tokio::time::sleep_until(deadline.into()).await;

    // Clients stop: pgbench runs end by the deadline, then the writers, then the sampling.
    let mut bench_totals = Vec::new();
    for (name, rw, task) in benches {
        let t = match tokio::time::timeout(Duration::from_secs(180), task).await {
            Ok(t) => t?,
            Err(_) => anyhow::bail!(
                "pgbench {name} did not end 180s after the deadline; state now:\n{}",
                diagnostics(lab, &plain, &pooled)
            ),
        };
        bench_totals.push((name, rw, t));
    }
    let rss_last_under_load = (rss_kib(plain.pid())?, rss_kib(pooled.pid())?);
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for (name, task) in writers {
        match tokio::time::timeout(Duration::from_secs(120), task).await {
            Ok(report) => reports.push((name, report?)),
            Err(_) => anyhow::bail!(
                "the {name} writer did not stop; state now:\n{}",
                diagnostics(lab, &plain, &pooled)
            ),
        }
    }
    sampler.await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    monitor_stop.store(true, Ordering::Relaxed);
    let (samples, monitor_errors) = monitor.await?;
    lab.wait_healthy(Duration::from_secs(180))?;
    let leader = lab.leader()?;
    let leader_port = lab.pg_port(&leader);

    // Nothing acknowledged lost, row by row.
    let present: HashSet<i64> = lab
        .psql(leader_port, "select id from soak_writes")?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let mut lost = Vec::new();
    let mut uncertain_committed = 0;
    for (name, r) in &reports {
        lost.extend(
            r.acks
                .iter()
                .filter(|a| !present.contains(&a.id))
                .map(|a| format!("{name} {}", a.id)),
        );
        uncertain_committed += r.uncertain.iter().filter(|id| present.contains(id)).count();
    }
    // Nothing accepted by a member after it lost the leader key.
    let all_acks: Vec<&Ack> = reports.iter().flat_map(|(_, r)| &r.acks).collect();
    let late = after_key_loss(&samples, &all_acks, &member_of);
    checker_flags_a_replica_write(&samples, &all_acks, &member_of)?;
    let max_sample_gap = samples
        .windows(2)
        .map(|w| w[1].start - w[0].end)
        .max()
        .unwrap_or_default();
    let key_changes = samples
        .windows(2)
        .filter(|w| w[0].holder != w[1].holder)
        .count();
    let mut acks_by_member: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &all_acks {
        *acks_by_member
            .entry(member_of[&a.port].as_str())
            .or_default() += 1;
    }
    // pgbench: every stream worked; nothing it saw committed is missing.
    let history: u64 = lab
        .psql(leader_port, "select count(*) from pgbench_history")?
        .parse()?;
    let rw_processed: u64 = bench_totals
        .iter()
        .filter(|(_, rw, _)| *rw)
        .map(|(_, _, t)| t.processed)
        .sum();

    // Leaks: with every client gone, each member's backends are the pooled router's idle
    // server connections, then none once they pass server_idle_timeout.
    let leaks_now = eventually(
        "client backends matching the routers' gauges",
        Duration::from_secs(60),
        || async {
            let plain_servers = metric_sum(&plain.metrics()?, "pgrouter_server_connections", &[])?;
            let pooled_metrics = pooled.metrics()?;
            let active = metric_sum(
                &pooled_metrics,
                "pgrouter_pool_server_connections",
                &["state=\"active\""],
            )?;
            let mut all_match = plain_servers == 0.0 && active == 0.0;
            for m in &members {
                let gauge = metric_sum(
                    &pooled_metrics,
                    "pgrouter_pool_server_connections",
                    &[&format!("member=\"{m}\"")],
                )?;
                all_match &= client_backends(lab, lab.pg_port(m))? as f64 == gauge;
            }
            Ok(all_match)
        },
    )
    .await;
    let idle_pooled = describe_backends(lab, &pooled)?;
    let leaks_later = eventually(
        "no client backend left after server_idle_timeout",
        Duration::from_secs(SERVER_IDLE_TIMEOUT_SECS + 60),
        || async {
            let gauge = metric_sum(&pooled.metrics()?, "pgrouter_pool_server_connections", &[])?;
            let mut none = gauge == 0.0;
            for m in &members {
                none &= client_backends(lab, lab.pg_port(m))? == 0;
            }
            Ok(none)
        },
    )
    .await;
    let leaked_after = describe_backends(lab, &pooled)?;

    let rss = rss.lock().unwrap().clone();
    let warm = rss
        .iter()
        .find(|(t, _, _)| *t >= (d / 8.0).max(15.0))
        .or(rss.last())
        .map(|&(_, a, b)| (a, b))
        .context("no RSS sample")?;
    let first = rss.first().map(|&(_, a, b)| (a, b)).unwrap_or_default();
    let rss_after_idle = (rss_kib(plain.pid())?, rss_kib(pooled.pid())?);

    // The report, then the assertions.
    for (name, _, t) in &bench_totals {
        println!(
            "  pgbench {name}: {} runs, {} transactions ({:.0} tps), {} failed, {} clients aborted, {} runs could not start{}",
            t.runs,
            t.processed,
            t.processed as f64 / t.seconds.max(1.0),
            t.failed,
            t.aborted_clients,
            t.failed_starts,
            if t.last_error.is_empty() { String::new() } else { format!("; last error: {}", t.last_error) }
        );
    }
    for (name, r) in &reports {
        println!(
            "  writer {name}: {} acknowledged, {} uncertain, {} connections, {} connect errors, errors {:?}",
            r.acks.len(),
            r.uncertain.len(),
            r.connections,
            r.connect_errors,
            r.errors
        );
    }
    println!(
        "  leader key: {} samples, {} changes seen, {} read errors, longest gap between samples {:.2}s; acknowledged writes by member {:?}",
        samples.len(),
        key_changes,
        monitor_errors,
        max_sample_gap.as_secs_f64(),
        acks_by_member
    );
    println!("  client backends once clients stopped: {idle_pooled}; after server_idle_timeout: {leaked_after}");
    println!(
        "  RSS KiB (passthrough, pooled): first {first:?}, after warm-up {warm:?}, last under load {rss_last_under_load:?}, idle {rss_after_idle:?}; samples {:?}",
        rss.iter().map(|(t, a, b)| format!("{t:.0}s:{a}/{b}")).collect::<Vec<_>>()
    );
    let acked: usize = reports.iter().map(|(_, r)| r.acks.len()).sum();
    let tps = |pick: &dyn Fn(&(&str, bool, BenchTotals)) -> bool| -> (f64, u64, u64) {
        bench_totals
            .iter()
            .filter(|b| pick(b))
            .fold((0.0, 0, 0), |acc, (_, _, t)| {
                (
                    acc.0 + t.processed as f64 / t.seconds.max(1.0),
                    acc.1 + t.failed,
                    acc.2 + t.aborted_clients,
                )
            })
    };
    let (rw_tps, rw_failed, rw_aborted) = tps(&|b| b.1);
    let (ro_tps, ro_failed, ro_aborted) = tps(&|b| !b.1);
    println!(
        "soak summary: {}s, {switchovers} switchovers, {failovers} kill -9 failovers, writes acknowledged {acked}, lost {}, accepted after key loss {}, uncertain {} ({uncertain_committed} committed), pgbench rw {rw_tps:.0} tps ({rw_processed} tx, {rw_failed} failed, {rw_aborted} clients aborted), -S {ro_tps:.0} tps ({ro_failed} failed, {ro_aborted} clients aborted), pgbench_history {history} rows, leaked server connections {}, RSS KiB passthrough {}->{}->{} pooled {}->{}->{} (first, after warm-up, last)",
        duration.as_secs(),
        lost.len(),
        match &late {
            Ok(v) => v.len().to_string(),
            Err(e) => format!("unchecked ({e:#})"),
        },
        reports.iter().map(|(_, r)| r.uncertain.len()).sum::<usize>(),
        if leaks_later.is_ok() { "0".to_owned() } else { leaked_after.clone() },
        first.0,
        warm.0,
        rss_last_under_load.0,
        first.1,
        warm.1,
        rss_last_under_load.1,
    );

    ensure!(
        lost.is_empty(),
        "acknowledged writes missing on the final leader {leader}: {lost:?}"
    );
    let late = late?;
    ensure!(
        late.is_empty(),
        "writes accepted after losing the leader key: {late:?}"
    );
    ensure!(
        switchovers == 3 && failovers == 1 && key_changes >= 4,
        "the leader key changed {key_changes} times, expected at least 4"
    );
    ensure!(
        history >= rw_processed,
        "pgbench_history has {history} rows, fewer than the {rw_processed} transactions pgbench saw committed"
    );
    for (name, _, t) in &bench_totals {
        ensure!(
            t.processed > 0,
            "pgbench {name} got nothing done: {}",
            t.last_error
        );
    }
    for (name, r) in &reports {
        ensure!(
            r.acks.len() > 100,
            "the {name} writer got almost nothing acknowledged"
        );
    }
    leaks_now.context("server connections not accounted for once clients stopped")?;
    leaks_later.context("server connections left after server_idle_timeout")?;
    ensure!(
        rw_failed == 0 && ro_failed == 0,
        "pgbench counted failed transactions: read-write {rw_failed}, -S {ro_failed}"
    );
    // Stable: within a fifth of the value after warm-up (a fifth of ~18 MiB: a leak of some
    // tens of bytes per transaction crosses it within the default 120 s).
    let grown = |last: u64, warm: u64| last * 5 > warm * 6;
    ensure!(
        !grown(rss_last_under_load.0, warm.0) && !grown(rss_last_under_load.1, warm.1),
        "RSS grew by more than a fifth after warm-up: {warm:?} -> {rss_last_under_load:?} KiB (passthrough, pooled)"
    );
    Ok(())
}

/// Per member: client backends, and the pooled router's gauge for it.
fn describe_backends(lab: &Lab, pooled: &Router) -> Result<String> {
    let metrics = pooled.metrics()?;
    let parts: Result<Vec<String>> = lab
        .member_names()
        .iter()
        .map(|m| {
            let gauge = metric_sum(
                &metrics,
                "pgrouter_pool_server_connections",
                &[&format!("member=\"{m}\"")],
            )?;
            Ok(format!(
                "{m} {} backends/{gauge} pooled",
                client_backends(lab, lab.pg_port(m))?
            ))
        })
        .collect();
    Ok(parts?.join(", "))
}

/// What the routers and the members show, for a failure message: pgbench processes, the
/// pooled router's console (SHOW POOLS, CLIENTS, SERVERS) and gauges, each member's client
/// backends and both routers' last log lines.
fn diagnostics(lab: &Lab, plain: &Router, pooled: &Router) -> String {
    let mut out = String::new();
    let mut add = |title: &str, text: String| {
        out.push_str(&format!("--- {title}\n{}\n", text.trim_end()));
    };
    let run = |cmd: &mut std::process::Command| match cmd.output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("<{e}>"),
    };
    add(
        "pgbench processes",
        run(std::process::Command::new("sh").args(["-c", "ps -o pid,etime,args -C pgbench"])),
    );
    for show in ["SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS"] {
        add(
            &format!("pooled router: {show}"),
            run(pgrouter_lab::client_command("psql")
                .args(["-h", "127.0.0.1", "-p", &pooled.primary.to_string()])
                .args(["-U", "admin", "-d", "pgrouter", "-X", "-c", show])
                .env("PGPASSWORD", crate::restarts::CONSOLE_PASSWORD)
                .env("PGCONNECT_TIMEOUT", "10")),
        );
    }
    for (name, router) in [("passthrough", plain), ("pooled", pooled)] {
        let metrics = router.metrics().unwrap_or_else(|e| format!("<{e:#}>"));
        let gauges: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("pgrouter_client_connections")
                    || l.starts_with("pgrouter_pool_")
                    || l.starts_with("pgrouter_server_connections")
            })
            .collect();
        add(&format!("{name} router gauges"), gauges.join("\n"));
    }
    for m in lab.member_names() {
        add(
            &format!("{m} client backends"),
            lab.psql(
                lab.pg_port(&m),
                "select pid, application_name, state, wait_event_type, wait_event, \
                 now() - state_change as for, left(query, 60) from pg_stat_activity \
                 where backend_type = 'client backend' and pid <> pg_backend_pid()",
            )
            .unwrap_or_else(|e| format!("<{e:#}>")),
        );
    }
    add("pooled router log", pooled.log_tail(40));
    add("passthrough router log", plain.log_tail(20));
    out
}
