//! End-to-end bench (TARGETS.md W1-W5): direct, HAProxy, pgbouncer -> HAProxy and pgrouter side by
//! side on one lab, targets alternated within every round. Prints markdown tables and writes them
//! to benches/results/e2e-<UTC date>.md, with SVG plots of W1 tps against clients.
//!
//! Run: `cargo bench --bench e2e -- [--quick] [--rounds N] [--duration SECS]` (as root).

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

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use pgrouter_lab::{Lab, LabSpec};

use workloads::{Bench, Table, Target};

const BASE_PORT: u16 = 18700;
const HAPROXY_PORT: u16 = 18800;
const PGBOUNCER_PORT: u16 = 18801;
const PGROUTER_PORT: u16 = 18802;

struct Opts {
    quick: bool,
    rounds: usize,
    duration: u32,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args.get(i + 1));
        let quick = args.iter().any(|a| a == "--quick");
        let number = |flag: &str, default: u32| -> Result<u32> {
            match value(flag) {
                None => Ok(default),
                Some(v) => v
                    .with_context(|| format!("{flag} takes a number"))?
                    .parse()
                    .with_context(|| format!("{flag} takes a number")),
            }
        };
        Ok(Opts {
            quick,
            rounds: number("--rounds", if quick { 1 } else { 3 })?.max(1) as usize,
            duration: number("--duration", if quick { 5 } else { 15 })?.max(1),
        })
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
    let dir = std::env::temp_dir().join("pgrouter-bench-e2e");
    eprintln!("starting the lab in {}", dir.display());
    let lab = Lab::start(LabSpec::new(&dir, BASE_PORT)).context("starting the lab")?;
    let leader_port = lab.pg_port(&lab.leader()?);
    eprintln!("pgbench -i -s 10 on the leader (port {leader_port})");
    init_pgbench(leader_port)?;
    let work = dir.join("bench");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let haproxy = procs::start_haproxy(&lab, &work, HAPROXY_PORT)?;
    // pgbouncer gets the SCRAM secret, not the password, so it does not derive keys per login.
    let secret = lab.psql(
        leader_port,
        "select rolpassword from pg_authid where rolname = 'postgres'",
    )?;
    let pgbouncer = procs::start_pgbouncer(&work, PGBOUNCER_PORT, HAPROXY_PORT, &secret)?;
    let pgrouter = procs::start_pgrouter(&lab, &work, PGROUTER_PORT)?;
    let targets = vec![
        target("direct", leader_port, &[]),
        target("HAProxy", HAPROXY_PORT, &[("HAProxy", &haproxy)]),
        target(
            "pgbouncer",
            PGBOUNCER_PORT,
            &[("pgbouncer", &pgbouncer), ("HAProxy", &haproxy)],
        ),
        target("pgrouter", PGROUTER_PORT, &[("pgrouter", &pgrouter)]),
    ];
    for t in &targets {
        procs::wait_primary(t.name, t.port)?;
    }
    let bench = Bench {
        targets,
        rounds: opts.rounds,
        duration: opts.duration,
        clients: if opts.quick {
            vec![16]
        } else {
            vec![1, 16, 64, 150]
        },
        churn_clients: if opts.quick { vec![16] } else { vec![1, 16] },
        work,
        clk_tck: procs::clock_ticks_per_sec()?,
    };
    let md = run_all(&bench, &opts, &command)?;
    println!("{md}");
    write_results(&md, opts.quick)
}

fn target(name: &'static str, port: u16, procs: &[(&'static str, &procs::Proc)]) -> Target {
    Target {
        name,
        port,
        procs: procs.iter().map(|(n, p)| (*n, p.pid())).collect(),
    }
}

fn run_all(bench: &Bench, opts: &Opts, command: &str) -> Result<String> {
    let mut md = format!(
        "# pgrouter e2e bench, {}\n\n`{command}`\n\n{} round(s), {} s per run, targets alternated within each round; medians over rounds. \
         Lab: PostgreSQL 15, 3 Patroni members, pgbench scale 10, {} cores shared by pgbench, PostgreSQL and the proxies. \
         pgbouncer: transaction mode, default_pool_size 20, in front of HAProxy. Proxy CPU: utime+stime from /proc/<pid>/stat over the run / transactions.\n",
        utc("+%Y-%m-%d %H:%M UTC")?,
        opts.rounds,
        opts.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    eprintln!("W1 ladder");
    let w1 = bench.w1()?;
    report::w1(&mut md, &bench.targets, &w1, bench.duration);
    // 70% of the slowest target's maximum, so every target keeps up and the latency added is
    // the proxy's, not queueing behind a schedule it cannot meet.
    let slowest_c16 = w1
        .iter()
        .find(|((mode, c), _)| *mode == "simple" && *c == 16)
        .and_then(|(_, cells)| cells.iter().filter_map(|c| c.value().ok()).reduce(f64::min))
        .context("W1 -c 16 simple has no tps")?;
    let rate = (slowest_c16 * 0.7).round() as u64;
    eprintln!("W2 at {rate} tps");
    let w2 = bench.w2(rate)?;
    report::w2(&mut md, &bench.targets, &w2, bench.duration);
    eprintln!("W3 churn");
    let w3 = bench.w3()?;
    report::w3(&mut md, &bench.targets, &w3, bench.duration);
    md.push_str("\n### W4 idle clients\n\nW4: needs pooling (not built yet)\n");
    eprintln!("W4: needs pooling (not built yet)");
    eprintln!("W5 bulk");
    let w5 = bench.w5()?;
    report::w5(&mut md, &bench.targets, &w5);
    write_plots(bench, &w1)?;
    Ok(md)
}

fn write_plots(bench: &Bench, w1: &Table<(&str, u32)>) -> Result<()> {
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
        let path = results_dir().join(format!("w1-{mode}.svg"));
        std::fs::write(&path, chart).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn write_results(md: &str, quick: bool) -> Result<()> {
    let suffix = if quick { "-quick" } else { "" };
    let path = results_dir().join(format!("e2e-{}{suffix}.md", utc("+%Y-%m-%d")?));
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn results_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results")
}

fn init_pgbench(port: u16) -> Result<()> {
    let out = Command::new("pgbench")
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
