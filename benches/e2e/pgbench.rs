//! Running pgbench and psql against one target: the summary line, per-transaction latency logs and
//! COPY throughput.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::procs::Proc;

const PASSWORD: &str = "postgres";

/// How a pgbench run that did not finish in time is reported.
pub const TIMED_OUT: &str = "timed out";

/// What pgbench printed for a successful run.
pub struct Summary {
    pub tps: f64,
    pub transactions: u64,
}

/// The pgbench command line for `args` against `port`, as it is run.
pub fn command_line(args: &[String], port: &str) -> String {
    format!(
        "pgbench {} -h 127.0.0.1 -p {port} -U postgres postgres",
        args.join(" ")
    )
}

/// Run pgbench with `args` against 127.0.0.1:`port`, output in `dir`. `Ok(Err(reason))` when
/// pgbench failed (non-zero exit, or a server error it logged and went on from), e.g. prepared
/// statements through a transaction pooler.
pub fn run(
    port: u16,
    args: &[String],
    dir: &Path,
    timeout: Duration,
) -> Result<Result<Summary, String>> {
    let (out_path, err_path) = (dir.join("pgbench.out"), dir.join("pgbench.err"));
    let child = pgrouter_lab::client_command("pgbench")
        .args(args)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .arg("postgres")
        .env("PGPASSWORD", PASSWORD)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .context("starting pgbench (apt-get install postgresql-contrib)")?;
    let mut proc = Proc(child);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = proc.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            return Ok(Err(format!("{TIMED_OUT} after {} s", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path)?;
    let stderr = std::fs::read_to_string(&err_path)?;
    if !status.success() {
        return Ok(Err(first_error(&stderr, &status.to_string())));
    }
    // pgbench 15 logs a failed PREPARE and goes on: through a transaction pooler whose every
    // server connection already holds another client's P_0, each client's own Parse fails
    // ("already exists") while its Binds find the P_0 of whoever prepared it, and pgbench
    // exits 0. A server error is a failed run whatever the exit status.
    if let Some(line) = stderr.lines().find(|l| l.contains("ERROR:")) {
        return Ok(Err(format!(
            "pgbench logged a server error: {}",
            line.trim()
        )));
    }
    let find = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .map(|v| v.split('/').next().unwrap_or(v).to_string())
    };
    let parse = || -> Option<Summary> {
        Some(Summary {
            tps: find("tps = ")?.parse().ok()?,
            transactions: find("number of transactions actually processed: ")?
                .parse()
                .ok()?,
        })
    };
    Ok(parse().ok_or_else(|| format!("no tps in pgbench output: {}", stdout.trim())))
}

/// The most telling line of pgbench's stderr.
fn first_error(stderr: &str, status: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("error") || l.contains("FATAL"))
        .or_else(|| stderr.lines().last())
        .unwrap_or("no output");
    format!("pgbench {status}: {}", line.trim())
}

/// Latency percentiles in microseconds from pgbench `-l` logs (every file in `dir` starting with
/// `prefix`); with `-R` pgbench measures from each transaction's scheduled start.
pub fn latency_percentiles(dir: &Path, prefix: &str, pcts: &[f64]) -> Result<Vec<f64>> {
    let mut lat = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        // client_id transaction_no time script_no time_epoch time_us [schedule_lag]
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    anyhow::ensure!(
        !lat.is_empty(),
        "no transactions in {}/{prefix}*",
        dir.display()
    );
    lat.sort_unstable();
    Ok(pcts
        .iter()
        .map(|p| {
            let i = ((p / 100.0) * lat.len() as f64).ceil() as usize;
            lat[i.clamp(1, lat.len()) - 1] as f64
        })
        .collect())
}

/// `COPY <table> TO STDOUT` through 127.0.0.1:`port` with psql; returns bytes received.
pub fn copy_out(port: u16, table: &str) -> Result<u64> {
    let child = pgrouter_lab::client_command("psql")
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", &format!("COPY {table} TO STDOUT")])
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting psql")?;
    let mut proc = Proc(child);
    let mut stdout = proc.0.stdout.take().context("psql stdout")?;
    let bytes = std::io::copy(&mut stdout, &mut std::io::sink()).context("reading COPY output")?;
    let mut stderr = String::new();
    if let Some(mut e) = proc.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr)?;
    }
    let status = proc.0.wait()?;
    anyhow::ensure!(
        status.success(),
        "psql COPY on {port}: {status}: {}",
        stderr.trim()
    );
    Ok(bytes)
}
