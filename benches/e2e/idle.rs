//! W4 (TARGETS.md): idle clients. Opens N fully authenticated client connections (tokio-postgres:
//! startup, SCRAM-SHA-256, ReadyForQuery) to a proxy and leaves them idle; measures the proxy's
//! VmRSS before and after, then runs W1 -c 16 -S simple beside them, bracketed by the same run
//! without them (before opening and after closing). Also the pooling check: how many server
//! backends a pooled target uses for more clients than its pool size.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pgrouter_lab::probe::db_error_text;
use pgrouter_lab::run_psql;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::procs::{nofile_limit, vm_rss, POOL_SIZE};
use crate::workloads::{w1_args, Bench, Outcome, Target};

/// Connections being opened at once.
const CONCURRENCY: usize = 32;
/// Opening stops after this many failed connections (a broken target would take forever).
const MAX_FAILURES: usize = 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// pgbench's own clients in the W4 runs.
const ACTIVE_CLIENTS: u32 = 16;
/// The W4 targets: the proxies that hold clients (direct and HAProxy are not among them).
pub const IDLE_TARGETS: [&str; 4] = ["pgrouter", "pgrouter-txn", "pgbouncer", "pgbouncer-1hop"];

/// Client connections held open, each with its connection task on `rt`.
pub struct Idle {
    rt: Runtime,
    clients: Vec<Arc<Client>>,
    pub secs: f64,
    pub failures: usize,
    pub first_error: Option<String>,
}

impl Idle {
    /// Open `n` connections to 127.0.0.1:`port` as postgres, `CONCURRENCY` at a time; stops
    /// early after `MAX_FAILURES` failures.
    pub fn open(port: u16, n: usize) -> Result<Idle> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("building a tokio runtime")?;
        let start = Instant::now();
        let (clients, failures, first_error) = rt.block_on(open_all(port, n));
        Ok(Idle {
            rt,
            clients,
            secs: start.elapsed().as_secs_f64(),
            failures,
            first_error,
        })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Run `sql` (simple protocol) on every client, `CONCURRENCY` at a time; the first column
    /// of the first row of each answer (`None` for an error), and the first error.
    pub fn query_all(&self, sql: &'static str) -> (Vec<Option<String>>, Option<String>) {
        self.rt.block_on(async {
            let sem = Arc::new(Semaphore::new(CONCURRENCY));
            let mut set = JoinSet::new();
            for (i, c) in self.clients.iter().enumerate() {
                let (c, sem) = (c.clone(), sem.clone());
                set.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    (i, query(&c, sql).await)
                });
            }
            let mut out = vec![None; self.clients.len()];
            let mut first_error = None;
            while let Some(r) = set.join_next().await {
                match r {
                    Ok((i, Ok(v))) => out[i] = Some(v),
                    Ok((_, Err(e))) => {
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            (out, first_error)
        })
    }

    /// Close every client (Terminate), then stop their runtime.
    pub fn close(self) {
        let Idle { rt, clients, .. } = self;
        drop(clients);
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

async fn open_all(port: u16, n: usize) -> (Vec<Arc<Client>>, usize, Option<String>) {
    let sem = Arc::new(Semaphore::new(CONCURRENCY));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        if failed.load(Ordering::Relaxed) >= MAX_FAILURES {
            break;
        }
        let failed = failed.clone();
        set.spawn(async move {
            let r = connect(port).await;
            if r.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
            r
        });
    }
    let mut clients = Vec::with_capacity(n);
    let (mut failures, mut first_error) = (0, None);
    while let Some(r) = set.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(c) => clients.push(Arc::new(c)),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    (clients, failures, first_error)
}

async fn connect(port: u16) -> Result<Client, String> {
    let dsn = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres application_name=w4-idle"
    );
    let (client, conn) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(&dsn, NoTls))
            .await
            .map_err(|_| format!("connect timed out after {} s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| db_error_text(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn query(c: &Client, sql: &str) -> Result<String, String> {
    let msgs = tokio::time::timeout(QUERY_TIMEOUT, c.simple_query(sql))
        .await
        .map_err(|_| format!("{sql}: timed out after {} s", QUERY_TIMEOUT.as_secs()))?
        .map_err(|e| db_error_text(&e))?;
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

/// The pooling check: `clients` connections held open at once, each running
/// `select pg_backend_pid()` once; the number of distinct server backends they reached. A pooler
/// in transaction mode stays within its pool size; a pass-through proxy uses one per client.
pub fn distinct_backends(port: u16, clients: usize) -> Result<usize> {
    let idle = Idle::open(port, clients)?;
    anyhow::ensure!(
        idle.len() == clients,
        "opened {} of {clients} connections: {}",
        idle.len(),
        idle.first_error.as_deref().unwrap_or("?")
    );
    let (pids, err) = idle.query_all("select pg_backend_pid()");
    idle.close();
    if let Some(e) = err {
        anyhow::bail!("select pg_backend_pid(): {e}");
    }
    Ok(pids.into_iter().flatten().collect::<HashSet<_>>().len())
}

/// One W4 measurement of one target.
pub struct Row {
    pub round: usize,
    /// Idle clients asked for, and why fewer than `--idle` when so.
    pub asked: usize,
    pub note: Option<String>,
    pub opened: usize,
    pub open_secs: f64,
    pub open_error: Option<String>,
    /// Proxy VmRSS in bytes: before opening, with the idle clients open, after closing them.
    pub rss: [Option<u64>; 3],
    /// Proxy VmRSS before the first W4 opening on this process: the allocator keeps what the
    /// first round's clients used, so later rounds measure against this.
    pub rss_fresh: Option<u64>,
    /// Idle clients answering `select 1` after the loaded run.
    pub alive: usize,
    pub alive_error: Option<String>,
    /// W1 -c 16 simple before opening, beside the idle clients, after closing them.
    pub runs: [Outcome; 3],
}

impl Row {
    /// Proxy RSS added per idle client, in bytes, against the RSS before the first opening.
    pub fn bytes_per_client(&self) -> Option<f64> {
        match (self.rss_fresh, self.rss[1]) {
            (Some(b), Some(a)) if self.opened > 0 => {
                Some((a as f64 - b as f64) / self.opened as f64)
            }
            _ => None,
        }
    }

    /// tps without idle clients: the mean of the runs before and after (either, if one failed).
    pub fn tps_without(&self) -> Option<f64> {
        let v: Vec<f64> = [&self.runs[0], &self.runs[2]]
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|m| m.value))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// W4 on every idle target (`IDLE_TARGETS` among the bench's targets), `bench.rounds` times,
/// target order rotated per round. `Err` for a target that did not start or broke.
pub fn w4(bench: &Bench) -> Vec<(&'static str, Result<Row, String>)> {
    let targets: Vec<&Target> = bench
        .targets
        .iter()
        .filter(|t| IDLE_TARGETS.contains(&t.name))
        .collect();
    let mut out = Vec::new();
    let mut fresh: Vec<Option<u64>> = vec![None; targets.len()];
    for round in 0..bench.rounds {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let t = targets[i];
            let row = match t.skip_reason() {
                Some(reason) => Err(reason),
                None => one(bench, t, round, &mut fresh[i]).map_err(|e| {
                    let e = format!("round {} on {}: {e:#}", round + 1, t.name);
                    eprintln!("  W4 {e}");
                    e
                }),
            };
            out.push((t.name, row));
        }
    }
    out
}

/// `fresh`: the proxy's RSS before its first W4 opening, set by the first round on it.
fn one(bench: &Bench, t: &Target, round: usize, fresh: &mut Option<u64>) -> Result<Row> {
    let (asked, note) = idle_count(bench, t)?;
    let args = w1_args("simple", ACTIVE_CLIENTS, bench.duration);
    let pid = t.procs.first().context("no proxy process")?.1;
    let run = || match t.skip_reason() {
        Some(reason) => Ok(Err(reason)),
        None => bench.pgbench(t, &args, None),
    };
    let before = run()?;
    let rss_before = vm_rss(pid).ok();
    if fresh.is_none() {
        *fresh = rss_before;
    }
    eprintln!("  {:<12} opening {asked} idle clients", t.name);
    let idle = Idle::open(t.port, asked)?;
    eprintln!(
        "  {:<12} {} idle clients open in {:.1} s ({} failed{})",
        t.name,
        idle.len(),
        idle.secs,
        idle.failures,
        idle.first_error
            .as_deref()
            .map_or(String::new(), |e| format!(": {e}"))
    );
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = vm_rss(pid).ok();
    let with = run()?;
    let (answers, alive_error) = idle.query_all("select 1");
    let alive = answers.iter().flatten().count();
    let (opened, open_secs, open_error) = (idle.len(), idle.secs, idle.first_error.clone());
    idle.close();
    std::thread::sleep(Duration::from_secs(2));
    let rss_closed = vm_rss(pid).ok();
    let after = run()?;
    Ok(Row {
        round,
        asked,
        note,
        opened,
        open_secs,
        open_error,
        rss: [rss_before, rss_idle, rss_closed],
        rss_fresh: *fresh,
        alive,
        alive_error,
        runs: [before, with, after],
    })
}

/// How many idle clients to open on `t`: `--idle`, within this process's file descriptor limit
/// and, for pass-through (one server connection per client), within the leader's free
/// connection slots less pgbench's clients and room for the pools to grow.
fn idle_count(bench: &Bench, t: &Target) -> Result<(usize, Option<String>)> {
    let mut n = bench.idle;
    let mut note = None;
    let fds = nofile_limit()?.0 as usize;
    if n + 500 > fds {
        n = fds.saturating_sub(500);
        note = Some(format!("RLIMIT_NOFILE {fds}"));
    }
    if t.name == "pgrouter" {
        let sql = "select current_setting('max_connections')::int \
                   - current_setting('superuser_reserved_connections')::int - count(*) \
                   from pg_stat_activity where backend_type = 'client backend'";
        let free: i64 = run_psql("127.0.0.1", bench.leader_port, sql)?
            .parse()
            .context("free connection slots")?;
        let room = (free - i64::from(ACTIVE_CLIENTS) - 2 * POOL_SIZE as i64 - 10).max(0) as usize;
        if room < n {
            n = room;
            note = Some(format!(
                "pass-through: one PostgreSQL backend per client; {free} free slots of max_connections, less {ACTIVE_CLIENTS} for pgbench and {} for the pools",
                2 * POOL_SIZE + 10
            ));
        }
    }
    Ok((n, note))
}
