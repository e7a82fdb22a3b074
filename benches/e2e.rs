//! End-to-end bench (TARGETS.md W1-W5): direct, HAProxy, pgbouncer -> HAProxy (the seeds'
//! layout, two hops), pgbouncer-1hop (pgbouncer directly on the leader, the pooled anchor),
//! pgrouter (pass-through) and pgrouter-txn (pgrouter in transaction pooling mode) side by
//! side on one lab,
//! targets alternated within every round. Prints markdown tables and writes them to
//! benches/results/e2e-<UTC date>[-quick].md (never over an existing file), with SVG plots of W1
//! tps against clients when the ladder has more than one client count.
//!
//! Run: `cargo bench --bench e2e -- [--quick] [--rounds N] [--duration SECS] [--only w1,w2,w3,w4,w5]
//! [--targets direct,HAProxy,pgbouncer,pgbouncer-1hop,pgrouter,pgrouter-txn] [--clients 16,150]
//! [--modes simple,prepared] [--churn 1,16] [--idle N] [--txn-workers N]` (as root;
//! `--txn-workers` sets pgrouter-txn's runtime.worker_threads). A target that does not start (or, for pgrouter-txn, does not pool) is
//! reported as failed in every table; the others run.

#[path = "e2e/idle.rs"]
mod idle;
#[path = "e2e/pgbench.rs"]
mod pgbench;
#[path = "e2e/procs.rs"]
mod procs;
#[path = "e2e/report.rs"]
mod report;
#[path = "e2e/svg.rs"]
mod svg;
#[path = "e2e/workloads.rs"]
mod workloads;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use pgrouter_lab::{Lab, LabSpec};

use workloads::{Bench, Table, Target};

const BASE_PORT: u16 = 18700;
const HAPROXY_PORT: u16 = 18800;
const PGBOUNCER_PORT: u16 = 18801;
/// pgrouter pass-through: primary, replicas and admin on this port and the next two.
const PGROUTER_PORT: u16 = 18802;
/// pgrouter in transaction mode: primary, replicas and admin on this port and the next two.
const PGROUTER_TXN_PORT: u16 = 18805;
/// pgbouncer straight on the leader: one hop, as pgrouter is.
const PGBOUNCER_1HOP_PORT: u16 = 18808;

const TARGETS: [&str; 6] = [
    "direct",
    "HAProxy",
    "pgbouncer",
    "pgbouncer-1hop",
    "pgrouter",
    "pgrouter-txn",
];
const WORKLOADS: [&str; 5] = ["w1", "w2", "w3", "w4", "w5"];

struct Opts {
    quick: bool,
    rounds: usize,
    duration: u32,
    only: Vec<&'static str>,
    targets: Vec<&'static str>,
    clients: Vec<u32>,
    churn: Vec<u32>,
    /// W1's pgbench protocol modes.
    modes: Vec<&'static str>,
    idle: usize,
    /// pgrouter-txn's `runtime.worker_threads` (0: one per core, the default).
    txn_workers: u32,
    /// Some flag narrowed the run: its results file says so and it draws no plots over the
    /// published ones.
    partial: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let known = [
            "--quick",
            "--rounds",
            "--duration",
            "--only",
            "--targets",
            "--clients",
            "--churn",
            "--modes",
            "--idle",
            "--txn-workers",
        ];
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if !known.contains(&a.as_str()) {
                bail!("unknown argument {a:?}; flags: {}", known.join(" "));
            }
            if a != "--quick" {
                it.next();
            }
        }
        let value = |flag: &str| -> Result<Option<&String>> {
            match args.iter().position(|a| a == flag) {
                None => Ok(None),
                Some(i) => Ok(Some(
                    args.get(i + 1)
                        .with_context(|| format!("{flag} takes a value"))?,
                )),
            }
        };
        let quick = args.iter().any(|a| a == "--quick");
        let number = |flag: &str, default: u32| -> Result<u32> {
            match value(flag)? {
                None => Ok(default),
                Some(v) => v.parse().with_context(|| format!("{flag} takes a number")),
            }
        };
        let numbers = |flag: &str, default: &[u32]| -> Result<Vec<u32>> {
            match value(flag)? {
                None => Ok(default.to_vec()),
                Some(v) => v
                    .split(',')
                    .map(|n| n.trim().parse::<u32>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<_>>>()
                    .with_context(|| format!("{flag} takes numbers, e.g. 16,150")),
            }
        };
        let names = |flag: &str, all: &[&'static str]| -> Result<Vec<&'static str>> {
            let Some(v) = value(flag)? else {
                return Ok(all.to_vec());
            };
            let wanted: Vec<String> = v.split(',').map(|w| w.trim().to_lowercase()).collect();
            for w in &wanted {
                if !all.iter().any(|a| a.to_lowercase() == *w) {
                    bail!("{flag}: unknown {w:?}; one or more of {}", all.join(","));
                }
            }
            // In canonical order, whatever the order given.
            Ok(all
                .iter()
                .copied()
                .filter(|a| wanted.contains(&a.to_lowercase()))
                .collect())
        };
        let partial = [
            "--only",
            "--targets",
            "--clients",
            "--churn",
            "--modes",
            "--txn-workers",
        ]
        .iter()
        .any(|f| args.iter().any(|a| a == f));
        Ok(Opts {
            quick,
            rounds: number("--rounds", if quick { 1 } else { 3 })?.max(1) as usize,
            duration: number("--duration", if quick { 5 } else { 15 })?.max(1),
            only: names("--only", &WORKLOADS)?,
            targets: names("--targets", &TARGETS)?,
            clients: numbers(
                "--clients",
                if quick { &[16, 150] } else { &[1, 16, 64, 150] },
            )?,
            churn: numbers("--churn", if quick { &[16] } else { &[1, 16] })?,
            modes: names("--modes", &workloads::MODES)?,
            idle: number("--idle", if quick { 2000 } else { 10000 })? as usize,
            txn_workers: number("--txn-workers", 0)?,
            partial,
        })
    }

    fn runs(&self, workload: &str) -> bool {
        self.only.contains(&workload)
    }

    fn wants(&self, target: &str) -> bool {
        self.targets.contains(&target)
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        // `cargo test --benches` and `cargo bench -- --test` smoke runs: nothing to check here.
        return Ok(());
    }
    let opts = Opts::parse(&args)?;
    let command = format!("cargo bench --bench e2e -- {}", args.join(" "));
    // Before any proxy starts: they inherit it. W4 holds the idle clients' sockets here and in
    // the proxy; pgbench, the pools and the lab need a few hundred more.
    let want_fds = opts.idle as u64 + 2000;
    let fds = procs::raise_nofile(want_fds)?;
    if fds < want_fds {
        eprintln!("RLIMIT_NOFILE is {fds} (hard limit; wanted {want_fds}): W4 opens at most {} idle clients", fds.saturating_sub(500));
    }
    let dir = std::env::temp_dir().join("pgrouter-bench-e2e");
    eprintln!("starting the lab in {}", dir.display());
    let lab = Lab::start(LabSpec::new(&dir, BASE_PORT)).context("starting the lab")?;
    let leader_port = lab.pg_port(&lab.leader()?);
    eprintln!("pgbench -i -s 10 on the leader (port {leader_port})");
    init_pgbench(leader_port)?;
    let work = dir.join("bench");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    // pgbouncer and pgrouter-txn get the SCRAM secret, not the password, so they do not derive
    // keys per login.
    let secret = lab.psql(
        leader_port,
        "select rolpassword from pg_authid where rolname = 'postgres'",
    )?;
    let max_client_conn = (opts.idle + 1000).max(2000);
    let haproxy = (opts.wants("HAProxy") || opts.wants("pgbouncer"))
        .then(|| procs::start_haproxy(&lab, &work, HAPROXY_PORT))
        .transpose()?;
    let pgbouncer = opts
        .wants("pgbouncer")
        .then(|| {
            procs::start_pgbouncer(
                &work,
                "pgbouncer",
                PGBOUNCER_PORT,
                HAPROXY_PORT,
                &secret,
                max_client_conn,
            )
        })
        .transpose()?;
    let pgbouncer_1hop = opts
        .wants("pgbouncer-1hop")
        .then(|| {
            procs::start_pgbouncer(
                &work,
                "pgbouncer-1hop",
                PGBOUNCER_1HOP_PORT,
                leader_port,
                &secret,
                max_client_conn,
            )
        })
        .transpose()?;
    let pgrouter = opts
        .wants("pgrouter")
        .then(|| procs::start_pgrouter(&lab, &work, PGROUTER_PORT))
        .transpose()?;
    let pgrouter_txn = opts.wants("pgrouter-txn").then(|| {
        procs::start_pgrouter_txn(
            &lab,
            &work,
            PGROUTER_TXN_PORT,
            &secret,
            max_client_conn.max(20_000),
            opts.txn_workers,
        )
    });
    let mut targets = Vec::new();
    let mut notes = Vec::new();
    for name in &opts.targets {
        let t = match (*name, &haproxy, &pgbouncer, &pgrouter, &pgrouter_txn) {
            ("direct", ..) => target(name, leader_port, &[]),
            ("HAProxy", Some(h), ..) => target(name, HAPROXY_PORT, &[("HAProxy", h)]),
            ("pgbouncer", Some(h), Some(b), ..) => {
                target(name, PGBOUNCER_PORT, &[("pgbouncer", b), ("HAProxy", h)])
            }
            ("pgbouncer-1hop", ..) => match &pgbouncer_1hop {
                Some(b) => target(name, PGBOUNCER_1HOP_PORT, &[("pgbouncer", b)]),
                None => unreachable!("{name} was started above"),
            },
            ("pgrouter", _, _, Some(r), _) => target(name, PGROUTER_PORT, &[("pgrouter", r)]),
            ("pgrouter-txn", .., Some(Ok(r))) => {
                target(name, PGROUTER_TXN_PORT, &[("pgrouter-txn", r)])
            }
            ("pgrouter-txn", .., Some(Err(e))) => {
                let mut t = target(name, PGROUTER_TXN_PORT, &[]);
                t.failed = Some(format!("did not start: {e:#}"));
                t
            }
            _ => unreachable!("{name} was started above"),
        };
        targets.push(t);
    }
    for t in &mut targets {
        if t.failed.is_some() {
            continue;
        }
        let pooled = matches!(t.name, "pgbouncer" | "pgbouncer-1hop" | "pgrouter-txn");
        let checked = procs::wait_primary(t.name, t.port).and_then(|()| {
            if !pooled {
                return Ok(());
            }
            // More clients than the pool size at once, one transaction each: a transaction
            // pooler reaches at most pool_size server backends, pass-through one per client.
            let clients = procs::POOL_SIZE + 10;
            let backends = idle::distinct_backends(t.port, clients)?;
            notes.push(format!(
                "{}: pooling check: {clients} clients connected at once, one `select pg_backend_pid()` each, reached {backends} server backend(s) (pool size {})",
                t.name,
                procs::POOL_SIZE
            ));
            anyhow::ensure!(
                backends <= procs::POOL_SIZE,
                "does not pool: {clients} clients reached {backends} server backends (pool size {})",
                procs::POOL_SIZE
            );
            Ok(())
        });
        match checked {
            Ok(()) => {}
            // pgrouter-txn is being built: report it, run the rest.
            Err(e) if t.name == "pgrouter-txn" => t.failed = Some(format!("{e:#}")),
            Err(e) => return Err(e),
        }
    }
    for t in &targets {
        if let Some(reason) = &t.failed {
            eprintln!("{} FAILED: {reason}", t.name);
            notes.push(format!("{}: {}", t.name, reason));
        }
    }
    let bench = Bench {
        targets,
        rounds: opts.rounds,
        duration: opts.duration,
        clients: opts.clients.clone(),
        churn_clients: opts.churn.clone(),
        modes: opts.modes.clone(),
        work,
        clk_tck: procs::clock_ticks_per_sec()?,
        idle: opts.idle,
        leader_port,
    };
    let md = run_all(&bench, &opts, &command, &notes)?;
    println!("{md}");
    write_results(&md, &results_suffix(&opts))
}

fn target(name: &'static str, port: u16, procs: &[(&'static str, &procs::Proc)]) -> Target {
    Target {
        name,
        port,
        procs: procs.iter().map(|(n, p)| (*n, p.pid())).collect(),
        failed: None,
        timeouts: Default::default(),
    }
}

fn run_all(bench: &Bench, opts: &Opts, command: &str, notes: &[String]) -> Result<String> {
    let mut md = format!(
        "# pgrouter e2e bench, {}\n\n`{command}`\n\n{} round(s), {} s per run, targets alternated within each round; medians over rounds. \
         Lab: PostgreSQL 15, 3 Patroni members, pgbench scale 10, {} cores shared by pgbench, PostgreSQL and the proxies. \
         pgbouncer: transaction mode, default_pool_size {pool}, in front of HAProxy. pgrouter: pass-through (default runtime.worker_threads: one per core). \
         pgrouter-txn: pgrouter with primary_pool_mode = \"transaction\", pool_size {pool}, pgbouncer's userlist (SCRAM secret), runtime.worker_threads {workers}. \
         pgbouncer-1hop: pgbouncer as above, directly on the leader. \
         Proxy CPU: utime+stime from /proc/<pid>/stat over the run / transactions.\n",
        utc("+%Y-%m-%d %H:%M UTC")?,
        opts.rounds,
        opts.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        pool = procs::POOL_SIZE,
        workers = match opts.txn_workers {
            0 => "0 (one per core)".to_owned(),
            n => n.to_string(),
        },
    );
    report::notes(&mut md, notes);
    let mut w1 = None;
    if opts.runs("w1") {
        eprintln!("W1 ladder");
        let t = bench.w1()?;
        report::w1(&mut md, &bench.targets, &t, bench.duration);
        w1 = Some(t);
    }
    if opts.runs("w2") {
        // 70% of the slowest target's maximum, so every target keeps up and the latency added
        // is the proxy's, not queueing behind a schedule it cannot meet.
        let slowest_c16 = w1.as_ref().and_then(|w1| {
            w1.iter()
                .find(|((mode, c), _)| *mode == "simple" && *c == 16)
                .and_then(|(_, cells)| cells.iter().filter_map(|c| c.value().ok()).reduce(f64::min))
        });
        match slowest_c16 {
            Some(tps) => {
                let rate = (tps * 0.7).round() as u64;
                eprintln!("W2 at {rate} tps");
                let w2 = bench.w2(rate)?;
                report::w2(&mut md, &bench.targets, &w2, bench.duration);
            }
            None => {
                eprintln!("W2 skipped: it needs a W1 -c 16 simple tps");
                md.push_str("\n### W2\n\nSkipped: its rate comes from W1 -c 16 simple, which did not run or gave no tps.\n");
            }
        }
    }
    let mut w3 = None;
    if opts.runs("w3") {
        eprintln!("W3 churn");
        let t = bench.w3()?;
        report::w3(&mut md, &bench.targets, &t, bench.duration);
        w3 = Some(t);
    }
    if opts.runs("w4") {
        eprintln!("W4 idle clients ({} per target)", bench.idle);
        let rows = idle::w4(bench);
        report::w4(&mut md, &rows, bench.idle, bench.duration);
    }
    if opts.runs("w5") {
        eprintln!("W5 bulk");
        let w5 = bench.w5()?;
        report::w5(&mut md, &bench.targets, &w5);
    }
    report::passthrough(&mut md, &bench.targets, w1.as_ref());
    report::pooled(&mut md, &bench.targets, w1.as_ref(), w3.as_ref());
    if let Some(w1) = &w1 {
        if bench.clients.len() > 1 {
            write_plots(bench, w1, &results_suffix(opts))?;
        }
    }
    Ok(md)
}

/// `-quick`, plus `-partial` when flags narrowed the run.
fn results_suffix(opts: &Opts) -> String {
    let mut s = String::new();
    if opts.quick {
        s.push_str("-quick");
    }
    if opts.partial {
        s.push_str("-partial");
    }
    s
}

fn write_plots(bench: &Bench, w1: &Table<(&str, u32)>, suffix: &str) -> Result<()> {
    for mode in ["simple", "prepared"] {
        let series = bench
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| svg::Series {
                name: t.name.to_string(),
                values: w1
                    .iter()
                    .filter(|((m, _), _)| *m == mode)
                    .map(|(_, cells)| cells[i].value().ok())
                    .collect(),
            })
            .collect::<Vec<_>>();
        let chart = svg::line_chart(
            &format!("W1: pgbench -S -M {mode}, -j 2, {} s runs", bench.duration),
            "clients (-c)",
            "transactions per second",
            &bench.clients,
            &series,
        );
        let path = results_dir().join(format!("w1-{mode}{suffix}.svg"));
        std::fs::write(&path, chart).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// benches/results/e2e-<date><suffix>.md, or e2e-<date>-<HHMM><suffix>.md when that exists
/// (earlier results of the day are cited from BENCHMARKS.md).
fn write_results(md: &str, suffix: &str) -> Result<()> {
    let mut path = results_dir().join(format!("e2e-{}{suffix}.md", utc("+%Y-%m-%d")?));
    if path.exists() {
        path = results_dir().join(format!("e2e-{}{suffix}.md", utc("+%Y-%m-%d-%H%M")?));
    }
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results")
}

fn init_pgbench(port: u16) -> Result<()> {
    let out = pgrouter_lab::client_command("pgbench")
        .args([
            "-i",
            "-s",
            "10",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-U", "postgres", "postgres"])
        .env("PGPASSWORD", "postgres")
        .output()
        .context("running pgbench -i")?;
    anyhow::ensure!(
        out.status.success(),
        "pgbench -i -s 10 on {port}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The current UTC time formatted by `date -u <format>`.
fn utc(format: &str) -> Result<String> {
    let out = Command::new("date")
        .arg("-u")
        .arg(format)
        .output()
        .context("running date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
