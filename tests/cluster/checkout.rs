//! The pool's checkout on the real lab, past its common step (an idle connection lent as it
//! is): an idle connection unused for `server_check_delay` is checked before it is lent, a
//! frozen backend fails its check and a fresh connection takes its place, and one past
//! `server_lifetime` is closed and replaced.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;

use crate::support::connect;

/// With `pool_size = 1` every transaction of the one client takes the same slot, so the
/// backend it lands on says which connection the checkout lent.
pub async fn checks_and_lifetime(lab: &Lab) -> Result<()> {
    let router = crate::restarts::pooled_router_routing(
        lab,
        17660,
        "pool_size = 1\nserver_check_delay = \"0s\"\nserver_lifetime = \"4s\"\n",
        "hold_timeout = \"30s\"\ndrain_timeout = \"5s\"\nconnect_timeout = \"2s\"\n",
    )?;
    let (client, _conn) = connect(router.primary, "pgrouter-test-checkout").await?;
    let pid = || async {
        let row = client.query_one("select pg_backend_pid()", &[]).await?;
        Ok::<i32, anyhow::Error>(row.get(0))
    };
    // Checked at each checkout (server_check_delay 0s) and healthy: the same connection.
    let first = pid().await?;
    let again = pid().await?;
    ensure!(
        first == again,
        "a healthy idle connection was not lent again: backend {first}, then {again}"
    );

    // Frozen: its check gets no answer within connect_timeout, and a new connection serves.
    let leader = lab.pg_port(&lab.leader()?);
    signal(first, "STOP")?;
    let started = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(60), pid()).await;
    signal(first, "CONT")?;
    let second = served.context("no answer with the idle connection's backend frozen")??;
    let waited = started.elapsed();
    ensure!(second != first, "the frozen backend {first} was lent again");
    ensure!(
        waited >= Duration::from_secs(2),
        "served after {waited:?}, before the check's connect_timeout (2s) ran out"
    );
    ensure!(
        wait_gone(lab, leader, first).await,
        "the backend that failed its check ({first}) was not closed"
    );

    // Past server_lifetime (4s): closed at its next checkout, a new one lent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let third = pid().await?;
    ensure!(
        third != second,
        "a connection past server_lifetime (backend {second}) was lent again"
    );
    ensure!(
        wait_gone(lab, leader, second).await,
        "the connection past server_lifetime (backend {second}) stayed open"
    );
    println!(
        "  checked and lent again: {first}; frozen, dropped after {:.1}s: {first} -> {second}; past its lifetime: {second} -> {third}",
        waited.as_secs_f64()
    );
    Ok(())
}

/// Sends SIG`name` to a backend of the lab (the test runs as root).
fn signal(pid: i32, name: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    ensure!(status.success(), "kill -{name} {pid}: {status}");
    Ok(())
}

/// Whether backend `pid` left the member within 20 seconds.
async fn wait_gone(lab: &Lab, pg_port: u16, pid: i32) -> bool {
    let query = format!("select count(*) from pg_stat_activity where pid = {pid}");
    for _ in 0..40 {
        if lab.psql(pg_port, &query).is_ok_and(|n| n == "0") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}
