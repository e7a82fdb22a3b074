//! The driver matrix (issue 24): every program in tests/drivers/ (see its README for the checks)
//! run directly against the leader, through pgrouter in transaction mode with fewer server
//! connections than clients, and through Debian's pgbouncer in transaction mode; then through
//! pgrouter once more, its write workload running across a switchover.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use pgrouter_lab::pgbouncer;
use pgrouter_lab::Lab;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::pooling::pooled_router;

/// tests/drivers/<name>/run, in the order they run.
const DRIVERS: [&str; 6] = [
    "pgjdbc",
    "node-pg",
    "activerecord",
    "django",
    "pgx",
    "tokio-postgres",
];
/// Clients per driver, against two server connections.
const CLIENTS: &str = "8";
/// Seconds each check may take (pgbouncer's failures are often hangs).
const CHECK_TIMEOUT: &str = "20";

const POOL_SIZE: u32 = 2;
/// A whole run of one driver; its checks bound themselves well under this.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// The write workload's length in the switchover run; the switchover starts soon after it.
const WORKLOAD_SECONDS: u64 = 12;

/// What one run of a driver printed.
struct Outcome {
    passed: u32,
    failed: u32,
    /// The `FAIL` lines.
    failures: Vec<String>,
    output: String,
}

impl Outcome {
    fn counts(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }
}

pub async fn matrix(lab: &Lab) -> Result<()> {
    let router = pooled_router(lab, 17590, "transaction", "transaction", POOL_SIZE, "30s")?;
    let leader = lab.pg_port(&lab.leader()?);
    let secret = lab.psql(
        leader,
        "select rolpassword from pg_authid where rolname = 'postgres'",
    )?;
    let bouncer_port = 17596;
    let _bouncer = Killed(pgbouncer::spawn(&pgbouncer::Settings {
        dir: &lab.spec().dir.join("pgbouncer-drivers"),
        port: bouncer_port,
        upstream: leader,
        scram_secret: secret.trim(),
        pool_size: POOL_SIZE as usize,
        max_client_conn: 200,
    })?);

    let mut wrong = Vec::new();
    for driver in DRIVERS {
        let direct = run(driver, leader, &[]).await?;
        let routed = run(driver, router.primary, &[]).await?;
        let bounced = run(driver, bouncer_port, &[]).await?;
        println!(
            "  {driver}: direct {}; pgrouter {}; pgbouncer 1.18 {}",
            direct.counts(),
            routed.counts(),
            bounced.counts()
        );
        for failure in &bounced.failures {
            println!("    pgbouncer: {failure}");
        }
        for failure in &routed.failures {
            println!("    pgrouter: {failure}");
        }
        for (target, outcome) in [("directly", &direct), ("through pgrouter", &routed)] {
            if outcome.failed > 0 || outcome.passed == 0 {
                wrong.push(format!("{driver} {target}: {:?}", outcome.failures));
            }
        }
    }

    // The write workload (prepared statements in short transactions, no retries) through
    // pgrouter across a planned switchover: no client may see it.
    for driver in DRIVERS {
        let old = lab.leader()?;
        let seconds = WORKLOAD_SECONDS.to_string();
        let args = ["--checks", "workload", "--seconds", seconds.as_str()];
        let (outcome, new) = tokio::try_join!(run(driver, router.primary, &args), async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            lab.switchover(None)?;
            lab.wait_leader_other_than(&old, Duration::from_secs(60))
        })?;
        println!(
            "  {driver}: write workload across the switchover {old} -> {new}: {}",
            outcome
                .output
                .lines()
                .find(|l| l.contains("workload"))
                .unwrap_or("no workload line")
        );
        if outcome.failed > 0 || outcome.passed != 1 {
            wrong.push(format!(
                "{driver} across a switchover: {}",
                outcome.output.trim_end()
            ));
        }
        // The next switchover needs the old leader streaming again.
        lab.wait_healthy(Duration::from_secs(180))?;
    }
    ensure!(wrong.is_empty(), "drivers failed:\n{}", wrong.join("\n"));
    Ok(())
}

/// Runs tests/drivers/`driver`/run against 127.0.0.1:`port` with `extra` arguments.
async fn run(driver: &str, port: u16, extra: &[&str]) -> Result<Outcome> {
    let script = format!("{}/tests/drivers/{driver}/run", env!("CARGO_MANIFEST_DIR"));
    let port = port.to_string();
    let mut child = tokio::process::Command::new(&script)
        .args(["--host", "127.0.0.1", "--port", &port, "--user", "postgres"])
        .args([
            "--password",
            "postgres",
            "--dbname",
            "postgres",
            "--clients",
            CLIENTS,
            "--timeout",
            CHECK_TIMEOUT,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {script}"))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut output = String::new();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            output.push_str(&line);
            output.push('\n');
        }
        anyhow::Ok(())
    };
    if tokio::time::timeout(RUN_LIMIT, read).await.is_err() {
        bail!("{driver} on port {port}: still running after {RUN_LIMIT:?}:\n{output}");
    }
    let status = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&status.stderr);
    let summary = output.lines().last().unwrap_or_default();
    let Some((passed, failed)) = parse_summary(summary) else {
        bail!("{driver} on port {port}: no `N passed, M failed` line:\n{output}{stderr}");
    };
    ensure!(
        status.status.success() == (failed == 0),
        "{driver} on port {port}: exit status {} with {summary}",
        status.status
    );
    let failures = output
        .lines()
        .filter(|l| l.starts_with("FAIL "))
        .map(str::to_owned)
        .collect();
    Ok(Outcome {
        passed,
        failed,
        failures,
        output,
    })
}

/// `N passed, M failed`.
fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let (passed, failed) = line.trim().split_once(" passed, ")?;
    Some((
        passed.parse().ok()?,
        failed.strip_suffix(" failed")?.parse().ok()?,
    ))
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
