//! The workloads of TARGETS.md (W1 ladder, W2 fixed-rate latency, W3 churn, W5 bulk), each setting
//! run on every target in turn, round after round; results are kept per round for medians. W4
//! (idle clients) is in idle.rs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pgrouter_lab::stats::median;

use crate::pgbench;
use crate::procs::cpu_ticks;

const COPY_REPEATS: u32 = 5;

pub const MODES: [&str; 3] = ["simple", "extended", "prepared"];

/// One place a client can connect to, and the proxy processes whose CPU it costs (the first
/// is the one clients connect to).
pub struct Target {
    pub name: &'static str,
    pub port: u16,
    pub procs: Vec<(&'static str, u32)>,
    /// Why the target is not usable (it did not start, or failed its checks): every run on it
    /// is reported as failed instead of run.
    pub failed: Option<String>,
    /// pgbench runs on this target that timed out; after `MAX_TIMEOUTS` its remaining runs are
    /// skipped (a hung proxy would cost a minute per run).
    pub timeouts: std::cell::Cell<u32>,
}

pub const MAX_TIMEOUTS: u32 = 2;

impl Target {
    /// Why runs on this target are not made: it did not start, or it hung too often.
    pub fn skip_reason(&self) -> Option<String> {
        if self.failed.is_some() {
            Some(NOT_STARTED.to_string())
        } else if self.timeouts.get() >= MAX_TIMEOUTS {
            Some(format!(
                "skipped: {MAX_TIMEOUTS} earlier runs on it timed out"
            ))
        } else {
            None
        }
    }
}

/// What a cell of a target that did not start says; the reason is printed once under the tables.
pub const NOT_STARTED: &str = "not started (see the notes)";

/// One measured run on one target.
pub struct Measured {
    /// tps for pgbench runs, MB/s for COPY.
    pub value: f64,
    /// Proxy CPU per transaction (per MB for COPY) in microseconds, per proxy process.
    pub cpu_us: Vec<(&'static str, f64)>,
    /// p50 and p99 latency in microseconds (W2 only).
    pub latency: Option<(f64, f64)>,
}

pub type Outcome = Result<Measured, String>;

/// Every round's outcome of one setting on one target.
#[derive(Default)]
pub struct Cell(pub Vec<Outcome>);

impl Cell {
    /// Median value over rounds, or the first failure.
    pub fn value(&self) -> Result<f64, &str> {
        let mut v = Vec::new();
        for o in &self.0 {
            v.push(o.as_ref().map_err(String::as_str)?.value);
        }
        median(v).ok_or("no runs")
    }

    /// Median proxy CPU per transaction, per process, over the successful rounds.
    pub fn cpu_us(&self) -> Vec<(&'static str, f64)> {
        let ok: Vec<&Measured> = self.0.iter().filter_map(|o| o.as_ref().ok()).collect();
        let Some(first) = ok.first() else {
            return Vec::new();
        };
        (0..first.cpu_us.len())
            .filter_map(|i| {
                let v = ok
                    .iter()
                    .filter_map(|m| m.cpu_us.get(i).map(|c| c.1))
                    .collect();
                Some((first.cpu_us[i].0, median(v)?))
            })
            .collect()
    }

    /// Median p50 and p99 over the successful rounds.
    pub fn latency(&self) -> Option<(f64, f64)> {
        let l: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|o| o.as_ref().ok()?.latency)
            .collect();
        Some((
            median(l.iter().map(|x| x.0).collect())?,
            median(l.iter().map(|x| x.1).collect())?,
        ))
    }
}

/// Results of one workload: each setting with one cell per target (in target order).
pub type Table<K> = Vec<(K, Vec<Cell>)>;

pub struct Bench {
    pub targets: Vec<Target>,
    pub rounds: usize,
    pub duration: u32,
    pub clients: Vec<u32>,
    pub churn_clients: Vec<u32>,
    /// W1's pgbench protocol modes (of `MODES`).
    pub modes: Vec<&'static str>,
    pub work: PathBuf,
    pub clk_tck: f64,
    /// W4: idle clients to open per target.
    pub idle: usize,
    /// The lab leader's PostgreSQL port (W4 sizes pass-through by its free connection slots).
    pub leader_port: u16,
}

impl Bench {
    /// W1: `pgbench -n -S -M <mode> -c <clients> -j 2 -T <duration>`.
    pub fn w1(&self) -> Result<Table<(&'static str, u32)>> {
        let keys: Vec<_> = self
            .modes
            .iter()
            .flat_map(|m| self.clients.iter().map(move |c| (*m, *c)))
            .collect();
        self.each(keys, |&(mode, c), t| {
            self.pgbench(t, &w1_args(mode, c, self.duration), None)
        })
    }

    /// W2: W1 -c 16 simple at a fixed `rate`, with per-transaction logs.
    pub fn w2(&self, rate: u64) -> Result<Table<u64>> {
        let mut args = w1_args("simple", 16, self.duration);
        args.extend(["-R".into(), rate.to_string(), "-l".into()]);
        args.extend(["--log-prefix".into(), "w2log".into()]);
        self.each(vec![rate], |_, t| self.pgbench(t, &args, Some("w2log")))
    }

    /// W3: `pgbench -n -S -C -c <clients> -j 2 -T <duration>`, a new connection per transaction.
    pub fn w3(&self) -> Result<Table<u32>> {
        self.each(self.churn_clients.clone(), |&c, t| {
            self.pgbench(t, &w3_args(c, self.duration), None)
        })
    }

    /// W5: `COPY pgbench_accounts TO STDOUT` (COPY_REPEATS times) through each target; MB/s
    /// (MB = 10^6 bytes).
    pub fn w5(&self) -> Result<Table<&'static str>> {
        self.each(vec!["pgbench_accounts"], |table, t| {
            let before = self.ticks(t)?;
            let start = Instant::now();
            // Several COPYs per measurement: one takes ~0.4 s, too short for 10 ms CPU ticks.
            let mut bytes = 0;
            for _ in 0..COPY_REPEATS {
                match pgbench::copy_out(t.port, table) {
                    Ok(b) => bytes += b,
                    Err(e) => return Ok(Err(format!("{e:#}"))),
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let mb = bytes as f64 / 1e6;
            Ok(Ok(Measured {
                value: mb / secs,
                cpu_us: self.cpu_per(t, &before, mb)?,
                latency: None,
            }))
        })
    }

    /// Run `f` for every round, every key and every target (target order rotated per round).
    fn each<K>(
        &self,
        keys: Vec<K>,
        f: impl Fn(&K, &Target) -> Result<Outcome>,
    ) -> Result<Table<K>> {
        let n = self.targets.len();
        let mut table: Table<K> = keys
            .into_iter()
            .map(|k| (k, (0..n).map(|_| Cell::default()).collect()))
            .collect();
        for round in 0..self.rounds {
            for (key, cells) in table.iter_mut() {
                for i in (0..n).map(|i| (i + round) % n) {
                    let t = &self.targets[i];
                    let outcome = if let Some(reason) = t.skip_reason() {
                        Err(reason)
                    } else {
                        // A target that breaks (a proxy that died, say) fails its cells; the
                        // other targets go on.
                        f(key, t).unwrap_or_else(|e| {
                            let e = format!("round {} on {}: {e:#}", round + 1, t.name);
                            eprintln!("  {e}");
                            Err(e)
                        })
                    };
                    cells[i].0.push(outcome);
                }
            }
        }
        Ok(table)
    }

    pub fn pgbench(
        &self,
        t: &Target,
        args: &[String],
        log_prefix: Option<&str>,
    ) -> Result<Outcome> {
        let dir = self.work.join("run");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let before = self.ticks(t)?;
        // A hung target costs a minute per run, not the whole bench.
        let timeout = Duration::from_secs(u64::from(self.duration) + 60);
        let summary = match pgbench::run(t.port, args, &dir, timeout)? {
            Ok(s) => s,
            Err(e) => {
                eprintln!("  {:<10} {}: {e}", t.name, args.join(" "));
                if e.starts_with(pgbench::TIMED_OUT) {
                    t.timeouts.set(t.timeouts.get() + 1);
                }
                return Ok(Err(e));
            }
        };
        let cpu_us = self.cpu_per(t, &before, summary.transactions as f64)?;
        let latency = match log_prefix {
            Some(prefix) => {
                let p = pgbench::latency_percentiles(&dir, prefix, &[50.0, 99.0])?;
                Some((p[0], p[1]))
            }
            None => None,
        };
        eprintln!(
            "  {:<10} {}: {:.0} tps",
            t.name,
            args.join(" "),
            summary.tps
        );
        Ok(Ok(Measured {
            value: summary.tps,
            cpu_us,
            latency,
        }))
    }

    fn ticks(&self, t: &Target) -> Result<Vec<u64>> {
        t.procs.iter().map(|&(_, pid)| cpu_ticks(pid)).collect()
    }

    /// Proxy CPU since `before`, in microseconds per `units`.
    fn cpu_per(&self, t: &Target, before: &[u64], units: f64) -> Result<Vec<(&'static str, f64)>> {
        let after = self.ticks(t)?;
        Ok(t.procs
            .iter()
            .zip(before.iter().zip(after))
            .map(|(&(name, _), (b, a))| {
                (name, (a - b) as f64 * 1e6 / self.clk_tck / units.max(1.0))
            })
            .collect())
    }
}

pub fn w1_args(mode: &str, clients: u32, duration: u32) -> Vec<String> {
    let s = format!("-n -S -M {mode} -c {clients} -j 2 -T {duration}");
    s.split(' ').map(String::from).collect()
}

pub fn w3_args(clients: u32, duration: u32) -> Vec<String> {
    let s = format!("-n -S -C -c {clients} -j 2 -T {duration}");
    s.split(' ').map(String::from).collect()
}
