//! Issue 25, a read path operators can trust: replicas stay in the read set while the leader
//! writes hard, leave it when replay stops (by delay, with hysteresis) and come back, the
//! synchronous port follows Patroni's sync standby, and tags, weights and least connections
//! choose members.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgrouter_lab::Lab;
use serde_json::{json, Value};
use tokio::sync::oneshot::Receiver;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::routing::replica_ports;
use crate::support::{
    connect, ended_with_error, eventually, http, is, server_port, Router, RouterOptions,
};

const PATIENCE: Duration = Duration::from_secs(60);

/// How a session's connection task reported its end (see [`connect`]).
type Ended = Receiver<Result<(), tokio_postgres::Error>>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The lab member whose PostgreSQL listens on `port` (the port itself when none does).
fn member_at(lab: &Lab, port: u16) -> String {
    lab.member_names()
        .into_iter()
        .find(|m| lab.pg_port(m) == port)
        .unwrap_or_else(|| format!("port {port}"))
}

/// Opens `n` short connections through `port`, one after another, and names the member each
/// landed on.
async fn landings(lab: &Lab, port: u16, n: usize) -> Result<Vec<String>> {
    let ports = crate::support::ports_of_new_connections(port, n).await?;
    Ok(ports.into_iter().map(|p| member_at(lab, p)).collect())
}

/// For [`eventually`]: `n` new connections through `port` all land on `member`.
async fn all_on(lab: &Lab, port: u16, n: usize, member: &str) -> Result<bool> {
    let seen = landings(lab, port, n).await?;
    ensure!(
        seen.iter().all(|m| m == member),
        "new connections landed on {seen:?}, want all on {member}"
    );
    Ok(true)
}

/// For [`eventually`]: `n` new connections through `port` reach exactly the members `want`.
fn reach<'a>(
    lab: &'a Lab,
    port: u16,
    n: usize,
    want: &[&str],
) -> impl std::future::Future<Output = Result<bool>> + 'a {
    let want: BTreeSet<String> = want.iter().map(|m| m.to_string()).collect();
    async move {
        let seen: BTreeSet<String> = landings(lab, port, n).await?.into_iter().collect();
        is(seen, want)
    }
}

/// The router's `GET /status`, parsed.
fn status(router: &Router) -> Result<Value> {
    let (code, body) = http("GET", router.admin, "/status", None)?;
    ensure!(code == 200, "/status: HTTP {code}: {body}");
    serde_json::from_str(&body).with_context(|| format!("/status is not JSON: {body}"))
}

/// `members[i]` of a `/status` answer.
fn member_status<'a>(status: &'a Value, name: &str) -> Result<&'a Value> {
    status["members"]
        .as_array()
        .with_context(|| format!("/status has no members array: {status}"))?
        .iter()
        .find(|m| m["name"] == name)
        .with_context(|| format!("/status has no member {name}: {status}"))
}

/// `listeners[name=listener].members[name=member]` of a `/status` answer.
fn on_listener<'a>(status: &'a Value, listener: &str, member: &str) -> Result<&'a Value> {
    let entry = status["listeners"]
        .as_array()
        .with_context(|| format!("/status has no listeners array: {status}"))?
        .iter()
        .find(|l| l["name"] == listener)
        .with_context(|| format!("/status has no listener {listener}: {status}"))?;
    entry["members"]
        .as_array()
        .with_context(|| format!("/status listener {listener} has no members array: {entry}"))?
        .iter()
        .find(|m| m["name"] == member)
        .with_context(|| format!("/status listener {listener} has no member {member}: {entry}"))
}

/// For [`eventually`]: `/status` shows each of `members` serving on `listener`.
fn serving_on(router: &Router, listener: &str, members: &[&str]) -> Result<bool> {
    let status = status(router)?;
    for m in members {
        let entry = on_listener(&status, listener, m)?;
        ensure!(
            entry["serving"] == true,
            "{m} is not serving on {listener}: {entry}"
        );
    }
    Ok(true)
}

/// The `sessions` count `/status` gives `member` on `listener`.
fn sessions_on(router: &Router, listener: &str, member: &str) -> Result<u64> {
    let status = status(router)?;
    let entry = on_listener(&status, listener, member)?;
    entry["sessions"]
        .as_u64()
        .with_context(|| format!("no sessions count for {member} on {listener}: {entry}"))
}

/// Values of every series of metric `name` whose labels include each of `labels`
/// (`key="value"`) in any order: the exposition sorts labels by key.
fn series(page: &str, name: &str, labels: &[String]) -> Vec<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let inside = series.strip_prefix(name)?.strip_prefix('{')?;
            let have: Vec<&str> = inside.strip_suffix('}')?.split(',').collect();
            let matches = labels.iter().all(|want| have.contains(&want.as_str()));
            matches.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .collect()
}

/// A counter's value; 0 when the page has no such series (a counter with labels is left off
/// the page until first incremented).
fn counter(page: &str, name: &str, labels: &[String]) -> f64 {
    series(page, name, labels).into_iter().sum()
}

/// A gauge that must be on the page.
fn gauge(page: &str, name: &str, labels: &[String]) -> Result<f64> {
    series(page, name, labels)
        .into_iter()
        .next()
        .with_context(|| {
            format!(
                "no series {name}{{{}}} on the metrics page",
                labels.join(",")
            )
        })
}

fn label(key: &str, value: &str) -> String {
    format!("{key}=\"{value}\"")
}

/// `pgrouter_read_set_changes_total{port="replicas",member,change}`.
fn read_set_changes(router: &Router, member: &str, change: &str) -> Result<f64> {
    let page = router.metrics()?;
    Ok(counter(
        &page,
        "pgrouter_read_set_changes_total",
        &[
            label("port", "replicas"),
            label("member", member),
            label("change", change),
        ],
    ))
}

/// `pgrouter_sessions_drained_total{reason="replica_ineligible"}`.
fn drained_ineligible(router: &Router) -> Result<f64> {
    let page = router.metrics()?;
    Ok(counter(
        &page,
        "pgrouter_sessions_drained_total",
        &[label("reason", "replica_ineligible")],
    ))
}

/// The session's connection must end within `within` with FATAL 57P01 (pgrouter closing it).
async fn closed_with_57p01(what: &str, ended: Ended, within: Duration) -> Result<()> {
    let e = ended_with_error(what, ended, within).await?;
    let db = e
        .as_db_error()
        .with_context(|| format!("{what}: closed without an ErrorResponse: {e}"))?;
    ensure!(
        db.severity() == "FATAL" && db.code().code() == "57P01",
        "{what}: ended with {} {} {:?}, want FATAL 57P01",
        db.severity(),
        db.code().code(),
        db.message()
    );
    println!("  {what}: closed with 57P01 {:?}", db.message());
    Ok(())
}

/// Opens sessions through `port` until one lands on the member at `want` (at most 20 tries).
async fn session_on(port: u16, want: u16, app: &str) -> Result<(Client, Ended)> {
    let mut seen = Vec::new();
    for _ in 0..20 {
        let (client, ended) = connect(port, app).await?;
        let landed = server_port(&client).await?;
        if landed == want {
            return Ok((client, ended));
        }
        seen.push(landed);
    }
    bail!("20 sessions through {port} never reached port {want}: {seen:?}")
}

/// Clears the Patroni tags of every member that publishes any (the lab runs untagged).
fn clear_tags(lab: &Lab) -> Result<()> {
    let mut first = Ok(());
    for m in lab.member_names() {
        let tagged = match lab.member_key(&m) {
            Ok(key) => key
                .and_then(|k| k["tags"].as_object().map(|t| !t.is_empty()))
                .unwrap_or(false),
            Err(e) => {
                first = first.and(Err(e));
                true
            }
        };
        if tagged {
            if let Err(e) = lab.set_tags(&m, &json!({})) {
                first = first.and(Err(e));
            }
        }
    }
    first
}

/// A client writing one small row every 200 ms straight to a PostgreSQL port, so the leader's
/// WAL position keeps moving, until stopped.
struct Writer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<u64>>,
}

impl Writer {
    async fn start(port: u16, table: &str) -> Result<Writer> {
        let (client, _ended) = connect(port, "pgrouter-test-writer").await?;
        let (stop, mut stopped) = watch::channel(false);
        let insert = format!("insert into {table} default values");
        let task = tokio::spawn(async move {
            let mut written = 0;
            while !*stopped.borrow_and_update() {
                client
                    .execute(insert.as_str(), &[])
                    .await
                    .with_context(|| format!("the writer, after {written} rows"))?;
                written += 1;
                let _ = tokio::time::timeout(Duration::from_millis(200), stopped.changed()).await;
            }
            Ok(written)
        });
        Ok(Writer { stop, task })
    }

    /// Stops the writer; the rows it wrote, or the error that stopped it earlier.
    async fn stop(self) -> Result<u64> {
        let _ = self.stop.send(true);
        self.task.await.context("the writer task crashed")?
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Heavy writes on the leader move no replica out of the read set.
// ---------------------------------------------------------------------------------------------

/// pgbench's scale for the bulk load: 5 million rows, some 750 MB of WAL written in seconds.
const HEAVY_SCALE: u32 = 50;
/// Then this long of pgbench's own read-write transactions, 4 clients.
const WRITE_SECONDS: u32 = 10;
const HEAVY_DB: &str = "readload";
/// The routers' default max_replica_lag and lag_out_after.
const DEFAULT_MAX_LAG: i64 = 16 * 1024 * 1024;
const DEFAULT_OUT_AFTER: Duration = Duration::from_secs(5);
/// The longest the write-heavy job may take.
const HEAVY_LIMIT: Duration = Duration::from_secs(600);
const REPLAY_LAG_SQL: &str = "select coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::bigint from pg_stat_replication";

/// What the write-heavy job saw of the replicas' real replay lag.
struct HeavyRun {
    took: Duration,
    max_lag: i64,
    /// The longest the real lag stayed over max_replica_lag without a break.
    longest_over: Duration,
    samples: u32,
}

pub async fn reads_stay_put_while_the_leader_writes_hard(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17620, RouterOptions::default())?;
    let leader = lab.leader()?;
    let leader_port = lab.pg_port(&leader);
    let replicas = replica_ports(lab, &leader);
    let [(a, _), (b, _)] = &replicas[..] else {
        bail!("expected two replicas, found {replicas:?}");
    };
    let (a, b) = (a.as_str(), b.as_str());
    eventually("reads over both replicas", PATIENCE, || {
        reach(lab, router.replicas, 4, &[a, b])
    })
    .await?;

    let mut sessions = Vec::new();
    for _ in 0..6 {
        let (client, ended) = connect(router.replicas, "pgrouter-test-idle").await?;
        let on = member_at(lab, server_port(&client).await?);
        sessions.push((on, client, ended));
    }
    let on: BTreeSet<&str> = sessions.iter().map(|(m, _, _)| m.as_str()).collect();
    ensure!(
        on == BTreeSet::from([a, b]),
        "6 idle sessions landed on {on:?}, want both {a} and {b}"
    );

    let outs_before = [
        read_set_changes(&router, a, "out")?,
        read_set_changes(&router, b, "out")?,
    ];
    let drained_before = drained_ineligible(&router)?;

    lab.psql(
        leader_port,
        &format!("drop database if exists {HEAVY_DB} with (force)"),
    )?;
    lab.psql(leader_port, &format!("create database {HEAVY_DB}"))?;
    let result = async {
        let run = write_hard(leader_port).await?;
        println!(
            "  pgbench -i -s {HEAVY_SCALE}, then -T {WRITE_SECONDS} read-write, on the leader: {:.1}s; real replay lag at most {:.1} MB, over 16MB for {:.2}s at the longest ({} samples every 250 ms)",
            run.took.as_secs_f64(),
            run.max_lag as f64 / 1048576.0,
            run.longest_over.as_secs_f64(),
            run.samples
        );
        // A bulk load puts tens of MB between the leader's WAL and the replicas' replay for a
        // moment however fast they replay; real lag means staying behind.
        ensure!(
            run.longest_over < DEFAULT_OUT_AFTER,
            "the lab could not keep replay in step: the replicas' real replay lag stayed over max_replica_lag 16MB for {:.1}s (up to {} bytes), as long as lag_out_after, so taking one out would be right",
            run.longest_over.as_secs_f64(),
            run.max_lag
        );
        // A wrong reading near the job's end would take a replica out only lag_out_after (5 s)
        // later: let that time pass, with the replicas caught up.
        let (sampler, _ended) = connect(leader_port, "pgrouter-test-lag").await?;
        eventually("the replicas caught up", PATIENCE, || async {
            let lag: i64 = sampler.query_one(REPLAY_LAG_SQL, &[]).await?.get(0);
            ensure!(lag < 1 << 20, "real replay lag {lag} bytes");
            Ok(true)
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(7)).await;

        let page = router.metrics()?;
        for (m, before) in [a, b].into_iter().zip(outs_before) {
            let after = read_set_changes(&router, m, "out")?;
            ensure!(
                after == before,
                "{m} left the read set {} time(s) while the replicas kept replay in step",
                after - before
            );
            let serving = gauge(
                &page,
                "pgrouter_member_serving",
                &[label("port", "replicas"), label("member", m)],
            )?;
            ensure!(serving == 1.0, "pgrouter_member_serving for {m} is {serving}");
        }
        for (i, (m, client, _)) in sessions.iter().enumerate() {
            let answer = tokio::time::timeout(PATIENCE, client.simple_query("select 1"))
                .await
                .with_context(|| format!("idle session {i} on {m}: select 1 got no answer"))?;
            answer.with_context(|| format!("idle session {i} on {m}: select 1 failed"))?;
        }
        let drained = drained_ineligible(&router)? - drained_before;
        ensure!(
            drained == 0.0,
            "{drained} session(s) drained as replica_ineligible during the write-heavy job"
        );
        anyhow::Ok(())
    }
    .await;
    drop(sessions);
    let dropped = lab
        .psql(
            leader_port,
            &format!("drop database if exists {HEAVY_DB} with (force)"),
        )
        .map(drop);
    result.and(dropped)
}

/// Runs `pgbench -i` in the scratch database on the leader, then pgbench's read-write
/// transactions for [`WRITE_SECONDS`], sampling the replicas' real replay lag on the leader
/// every 250 ms while they run.
async fn write_hard(leader_port: u16) -> Result<HeavyRun> {
    let (sampler, _ended) = connect(leader_port, "pgrouter-test-lag").await?;
    let started = Instant::now();
    let mut run = HeavyRun {
        took: Duration::ZERO,
        max_lag: 0,
        longest_over: Duration::ZERO,
        samples: 0,
    };
    let mut over_since: Option<Instant> = None;
    let scale = HEAVY_SCALE.to_string();
    let seconds = WRITE_SECONDS.to_string();
    let jobs: [&[&str]; 2] = [
        &["-i", "-q", "-s", &scale],
        &["-n", "-c", "4", "-j", "2", "-T", &seconds],
    ];
    for args in jobs {
        let mut command = pgrouter_lab::client_command("pgbench");
        command
            .args(["-h", "127.0.0.1", "-p", &leader_port.to_string(), "-U"])
            .arg("postgres")
            .args(args)
            .arg(HEAVY_DB)
            .env("PGPASSWORD", "postgres")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let child = command.spawn().context("spawning pgbench")?;
        let mut job = Box::pin(child.wait_with_output());
        let output = loop {
            ensure!(
                started.elapsed() < HEAVY_LIMIT,
                "pgbench {args:?} still running after {HEAVY_LIMIT:?}"
            );
            let lag: i64 = sampler.query_one(REPLAY_LAG_SQL, &[]).await?.get(0);
            run.max_lag = run.max_lag.max(lag);
            run.samples += 1;
            let now = Instant::now();
            if lag > DEFAULT_MAX_LAG {
                let since = *over_since.get_or_insert(now);
                run.longest_over = run.longest_over.max(now - since);
            } else {
                over_since = None;
            }
            tokio::select! {
                output = &mut job => break output.context("pgbench")?,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        };
        ensure!(
            output.status.success(),
            "pgbench {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    run.took = started.elapsed();
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// 2. Paused replay: out by delay after lag_out_after, drained, back after lag_in_after.
// ---------------------------------------------------------------------------------------------

const PAUSE_TABLE: &str = "replay_pause_writes";

pub async fn paused_replay_leaves_the_read_set_and_returns(lab: &Lab) -> Result<()> {
    let routing = "hold_timeout = \"30s\"\ndrain_timeout = \"3s\"\nmax_replica_delay = \"2s\"\nlag_out_after = \"2s\"\nlag_in_after = \"2s\"\nlag_check_interval = \"250ms\"\n";
    let router = Router::start(
        lab,
        17624,
        RouterOptions {
            routing,
            ..RouterOptions::default()
        },
    )?;
    let leader = lab.leader()?;
    let leader_port = lab.pg_port(&leader);
    let replicas = replica_ports(lab, &leader);
    let [(a, _), (b, b_port)] = &replicas[..] else {
        bail!("expected two replicas, found {replicas:?}");
    };
    let (a, b, b_port) = (a.as_str(), b.as_str(), *b_port);
    lab.psql(
        leader_port,
        &format!("create table if not exists {PAUSE_TABLE}(id bigserial primary key, at timestamptz not null default now())"),
    )?;
    let writer = Writer::start(leader_port, PAUSE_TABLE).await?;
    // Patroni resumes a replay paused on PostgreSQL 14+ at its next HA loop unless the cluster
    // is in maintenance mode, where an operator pauses replay (to take a consistent backup, to
    // look at data before a bad change replays).
    let result = match maintenance_mode(lab, b, true).await {
        Ok(()) => replay_paused_and_resumed(lab, &router, a, b, b_port).await,
        Err(e) => Err(e),
    };
    let resumed = lab.psql(b_port, "select pg_wal_replay_resume()").map(drop);
    let unpaused = maintenance_mode(lab, b, false).await;
    let stopped = writer
        .stop()
        .await
        .map(|rows| println!("  the writer wrote {rows} rows on the leader"));
    let dropped = lab
        .psql(leader_port, &format!("drop table if exists {PAUSE_TABLE}"))
        .map(drop);
    result.and(resumed).and(unpaused).and(stopped).and(dropped)
}

/// Patroni's maintenance mode on or off, once `member`'s Patroni reports it.
pub async fn maintenance_mode(lab: &Lab, member: &str, on: bool) -> Result<()> {
    lab.patch_dcs_config(&json!({ "pause": on }))?;
    let port = lab.api_port(member);
    eventually(
        &format!("{member}'s Patroni in maintenance mode: {on}"),
        PATIENCE,
        || async move {
            let (_, body) = http("GET", port, "/patroni", None)?;
            let status: Value = serde_json::from_str(&body)?;
            is(status["pause"] == true, on)
        },
    )
    .await
}

async fn replay_paused_and_resumed(
    lab: &Lab,
    router: &Router,
    a: &str,
    b: &str,
    b_port: u16,
) -> Result<()> {
    eventually("reads over both replicas", PATIENCE, || {
        reach(lab, router.replicas, 4, &[a, b])
    })
    .await?;
    let (_idle, idle_ended) = session_on(router.replicas, b_port, "pgrouter-test-idle").await?;
    let out_before = read_set_changes(router, b, "out")?;
    let in_before = read_set_changes(router, b, "in")?;

    let paused_at = Instant::now();
    lab.psql(b_port, "select pg_wal_replay_pause()")?;
    let within = Duration::from_secs(30);
    eventually(
        &format!("new reads only on {a} while {b} replays nothing"),
        within,
        || all_on(lab, router.replicas, 4, a),
    )
    .await?;
    println!(
        "  reads left {b} {:.1}s after its replay paused (max_replica_delay 2s, lag_out_after 2s)",
        paused_at.elapsed().as_secs_f64()
    );
    closed_with_57p01(
        &format!("idle session on {b}, replaying nothing"),
        idle_ended,
        within,
    )
    .await?;
    eventually(&format!("/status shows {b} out"), within, || async {
        let m = member_status(&status(router)?, b)?.clone();
        let why = m["why_not"].as_str().unwrap_or_default();
        ensure!(
            m["eligible_for_reads"] == false
                && (why.contains("delay") || why.contains("lag"))
                && m["out_for_seconds"].as_f64().is_some_and(|s| s > 0.0),
            "want eligible_for_reads false, why_not naming delay or lag, out_for_seconds > 0: {m}"
        );
        Ok(true)
    })
    .await?;
    let shown = member_status(&status(router)?, b)?.clone();
    println!("  /status while out: {shown}");
    eventually(
        &format!("one change out of the read set for {b}"),
        Duration::from_secs(10),
        || async { is(read_set_changes(router, b, "out")? - out_before, 1.0) },
    )
    .await?;

    lab.psql(b_port, "select pg_wal_replay_resume()")?;
    let resumed_at = Instant::now();
    eventually(
        "reads over both replicas after replay resumed",
        PATIENCE,
        || reach(lab, router.replicas, 4, &[a, b]),
    )
    .await?;
    println!(
        "  reads back on {b} {:.1}s after its replay resumed (lag_in_after 2s)",
        resumed_at.elapsed().as_secs_f64()
    );
    eventually(
        &format!("one change into the read set for {b}"),
        Duration::from_secs(10),
        || async { is(read_set_changes(router, b, "in")? - in_before, 1.0) },
    )
    .await?;
    let outs = read_set_changes(router, b, "out")? - out_before;
    ensure!(
        outs == 1.0,
        "{b} left the read set {outs} times over one pause"
    );
    let m = member_status(&status(router)?, b)?.clone();
    ensure!(
        m["eligible_for_reads"] == true,
        "/status after resuming: {m}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. A synchronous listener follows Patroni's sync standby.
// ---------------------------------------------------------------------------------------------

const SYNC_LISTEN: u16 = 17703;
const SYNC_TABLE: &str = "sync_reads";

/// The standby Patroni's `sync` key names, if any.
fn sync_standby(lab: &Lab) -> Result<Option<String>> {
    let Some(raw) = lab.dcs_value("sync")? else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&raw).with_context(|| format!("sync key: {raw:?}"))?;
    Ok(v["sync_standby"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned))
}

fn synchronous_commit(lab: &Lab) -> Result<String> {
    lab.psql(lab.pg_port(&lab.leader()?), "show synchronous_commit")
}

pub async fn synchronous_port_follows_the_sync_standby(lab: &Lab) -> Result<()> {
    let result = follow_the_sync_standby(lab).await;
    // Each step runs whatever the others did; the first error is the one returned.
    let untagged = clear_tags(lab);
    let restored = async {
        lab.patch_dcs_config(&json!({
            "synchronous_mode": false,
            "postgresql": {"parameters": {"synchronous_commit": "on"}}
        }))?;
        eventually(
            "the sync key gone or naming nobody",
            Duration::from_secs(120),
            || async {
                match sync_standby(lab)? {
                    None => Ok(true),
                    Some(m) => bail!("the sync key still names {m}"),
                }
            },
        )
        .await?;
        eventually("synchronous_commit back on", PATIENCE, || async {
            is(synchronous_commit(lab)?, "on".to_owned())
        })
        .await?;
        lab.wait_healthy(Duration::from_secs(180))
    }
    .await;
    let dropped = lab
        .leader()
        .and_then(|l| {
            lab.psql(
                lab.pg_port(&l),
                &format!("drop table if exists {SYNC_TABLE}"),
            )
        })
        .map(drop);
    result.and(untagged).and(restored).and(dropped)
}

async fn follow_the_sync_standby(lab: &Lab) -> Result<()> {
    lab.patch_dcs_config(&json!({
        "synchronous_mode": true,
        "postgresql": {"parameters": {"synchronous_commit": "remote_apply"}}
    }))?;
    let leader = lab.leader()?;
    eventually(
        "the sync key naming a standby",
        Duration::from_secs(120),
        || async { Ok(sync_standby(lab)?.is_some()) },
    )
    .await?;
    let old = sync_standby(lab)?.context("the sync key lost its standby")?;
    ensure!(old != leader, "the sync key names the leader {leader}");
    eventually(
        "synchronous_commit remote_apply on the leader",
        PATIENCE,
        || async { is(synchronous_commit(lab)?, "remote_apply".to_owned()) },
    )
    .await?;
    let other = lab
        .member_names()
        .into_iter()
        .find(|m| *m != leader && *m != old)
        .context("a second replica")?;
    println!("  leader {leader}, sync standby {old}, asynchronous {other}");

    let sections =
        format!("[listeners.sync]\nlisten = \"127.0.0.1:{SYNC_LISTEN}\"\nrole = \"synchronous\"\n");
    let router = Router::start(
        lab,
        17628,
        RouterOptions {
            sections: &sections,
            ..RouterOptions::default()
        },
    )?;
    eventually(
        &format!("new sync-port connections on {old}"),
        PATIENCE,
        || all_on(lab, SYNC_LISTEN, 6, &old),
    )
    .await?;
    let shown = status(&router)?;
    for (m, want) in [(&old, true), (&other, false)] {
        let entry = member_status(&shown, m)?;
        ensure!(
            entry["sync_standby"] == want,
            "/status gives {m} sync_standby {}, want {want}: {entry}",
            entry["sync_standby"]
        );
    }

    // Read your writes: commit through the primary port, read at once through the sync port.
    let (writer, _writer_ended) = connect(router.primary, "pgrouter-test-sync-writer").await?;
    writer
        .batch_execute(&format!(
            "drop table if exists {SYNC_TABLE}; create table {SYNC_TABLE}(id int primary key)"
        ))
        .await?;
    let (reader, reader_ended) = connect(SYNC_LISTEN, "pgrouter-test-sync-reader").await?;
    let on = member_at(lab, server_port(&reader).await?);
    ensure!(on == old, "the sync-port reader landed on {on}, want {old}");
    let select = format!("select count(*) from {SYNC_TABLE} where id = $1");
    for id in 1..=20i32 {
        writer
            .execute(&format!("insert into {SYNC_TABLE} values ($1)"), &[&id])
            .await?;
        let n: i64 = reader.query_one(select.as_str(), &[&id]).await?.get(0);
        ensure!(
            n == 1,
            "row {id}, committed through the primary port, not visible through the sync port on {old} right after"
        );
    }
    println!(
        "  20 rows committed through the primary port, each visible at once through the sync port"
    );

    // Move the sync role: the old standby may no longer be synchronous.
    lab.set_tags(&old, &json!({"nosync": true}))?;
    eventually(
        &format!("the sync key naming {other}"),
        Duration::from_secs(120),
        || async { is(sync_standby(lab)?, Some(other.clone())) },
    )
    .await?;
    eventually(
        &format!("new sync-port connections on {other}"),
        PATIENCE,
        || all_on(lab, SYNC_LISTEN, 6, &other),
    )
    .await?;
    closed_with_57p01(
        &format!("idle sync-port session on {old}, no longer the sync standby"),
        reader_ended,
        PATIENCE,
    )
    .await?;
    drop(reader);
    writer
        .batch_execute(&format!("drop table {SYNC_TABLE}"))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Tags, read-only, least connections and weights choose members.
// ---------------------------------------------------------------------------------------------

const ZONE_B_LISTEN: u16 = 17700;
const RO_LISTEN: u16 = 17701;
const LC_LISTEN: u16 = 17702;

pub async fn tags_weights_and_least_connections_pick_members(lab: &Lab) -> Result<()> {
    let leader = lab.leader()?;
    let replicas = replica_ports(lab, &leader);
    let [(a, a_port), (b, _)] = &replicas[..] else {
        bail!("expected two replicas, found {replicas:?}");
    };
    let result = async {
        lab.set_tags(a, &json!({"zone": "a"}))?;
        lab.set_tags(b, &json!({"zone": "b"}))?;
        tags_read_only_and_least_connections(lab, &leader, (a, *a_port), b).await?;
        weights(lab, a, b).await
    }
    .await;
    let restored = clear_tags(lab);
    result.and(restored)
}

async fn tags_read_only_and_least_connections(
    lab: &Lab,
    leader: &str,
    (a, a_port): (&str, u16),
    b: &str,
) -> Result<()> {
    let sections = format!(
        "[listeners.zone_b]\nlisten = \"127.0.0.1:{ZONE_B_LISTEN}\"\nrole = \"replica\"\ntags = {{ zone = \"b\" }}\n\n\
         [listeners.ro]\nlisten = \"127.0.0.1:{RO_LISTEN}\"\nrole = \"read-only\"\n\n\
         [listeners.lc]\nlisten = \"127.0.0.1:{LC_LISTEN}\"\nrole = \"replica\"\nbalance = \"leastconn\"\n"
    );
    let router = Router::start(
        lab,
        17632,
        RouterOptions {
            sections: &sections,
            ..RouterOptions::default()
        },
    )?;

    eventually(
        &format!("zone_b (tags zone = b) connections all on {b}"),
        PATIENCE,
        || all_on(lab, ZONE_B_LISTEN, 6, b),
    )
    .await?;

    eventually(
        "9 read-only connections over all three members",
        PATIENCE,
        || reach(lab, RO_LISTEN, 9, &[leader, a, b]),
    )
    .await?;

    // Least connections: 2 and 2, then the two on `a` leave; the next two both go to `a`.
    eventually("lc serving both replicas", PATIENCE, || async {
        serving_on(&router, "lc", &[a, b])
    })
    .await?;
    let mut held = Vec::new();
    for _ in 0..4 {
        let (client, ended) = connect(LC_LISTEN, "pgrouter-test-lc").await?;
        let port = server_port(&client).await?;
        held.push((port, client, ended));
    }
    let count = |held: &[(u16, Client, Ended)]| -> BTreeMap<String, usize> {
        let mut by_member = BTreeMap::new();
        for (port, _, _) in held {
            *by_member.entry(member_at(lab, *port)).or_default() += 1;
        }
        by_member
    };
    let two_and_two = BTreeMap::from([(a.to_owned(), 2), (b.to_owned(), 2)]);
    ensure!(
        count(&held) == two_and_two,
        "4 sessions on lc: {:?}, want 2 on {a} and 2 on {b}",
        count(&held)
    );
    let sessions = |want_a: u64, want_b: u64| {
        let router = &router;
        move || async move {
            let seen = (sessions_on(router, "lc", a)?, sessions_on(router, "lc", b)?);
            is(seen, (want_a, want_b))
        }
    };
    eventually("/status lc sessions 2 and 2", PATIENCE, sessions(2, 2)).await?;
    held.retain(|(port, _, _)| *port != a_port);
    eventually(
        &format!("/status lc sessions 0 on {a} once its two closed"),
        PATIENCE,
        sessions(0, 2),
    )
    .await?;
    let mut more = Vec::new();
    for _ in 0..2 {
        let (client, ended) = connect(LC_LISTEN, "pgrouter-test-lc").await?;
        let port = server_port(&client).await?;
        more.push((port, client, ended));
    }
    let landed: Vec<String> = more.iter().map(|(p, _, _)| member_at(lab, *p)).collect();
    ensure!(
        more.iter().all(|(p, _, _)| *p == a_port),
        "with 0 sessions on {a} and 2 on {b}, 2 new lc sessions landed on {landed:?}, want both on {a}"
    );
    eventually(
        "/status lc sessions 2 and 2 again",
        PATIENCE,
        sessions(2, 2),
    )
    .await?;
    Ok(())
}

async fn weights(lab: &Lab, a: &str, b: &str) -> Result<()> {
    let sections = format!("[routing.weights]\n{a} = 3\n");
    let router = Router::start(
        lab,
        17636,
        RouterOptions {
            sections: &sections,
            ..RouterOptions::default()
        },
    )?;
    eventually("both replicas serving on replicas", PATIENCE, || async {
        serving_on(&router, "replicas", &[a, b])
    })
    .await?;
    let shown = status(&router)?;
    for (m, want) in [(a, 3), (b, 1)] {
        let entry = on_listener(&shown, "replicas", m)?;
        ensure!(
            entry["weight"] == want,
            "/status gives {m} weight {} on replicas, want {want}: {entry}",
            entry["weight"]
        );
    }
    let seen = landings(lab, router.replicas, 8).await?;
    let on = |m: &str| seen.iter().filter(|s| *s == m).count();
    ensure!(
        (on(a), on(b)) == (6, 2),
        "8 new connections with {a} weighted 3 and {b} 1 landed {} on {a}, {} on {b}: {seen:?}",
        on(a),
        on(b)
    );
    Ok(())
}
