//! The safety net under the pooled no-hang rule (`pool.stuck_check`): it leaves long queries
//! and a slow COPY alone, and closes a server connection whose server waits to read from its
//! client while owing it an answer, telling the client.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;

use crate::support::{connect, metric, pgrouter_error};

const STUCK_CHECK: u64 = 2;

pub async fn stuck_server_connection(lab: &Lab) -> Result<()> {
    let pool = format!("pool_size = 1\nstuck_check = \"{STUCK_CHECK}s\"\n");
    let router = crate::restarts::pooled_router(lab, 17598, &pool)?;
    let port = router.primary;
    let closed = || -> Result<f64> {
        metric(
            &router.metrics()?,
            "pgrouter_pool_stuck_closed_total{port=\"primary\"}",
        )
        .or(Ok(0.0))
    };
    let leader = lab.pg_port(&lab.leader()?);
    lab.psql(
        leader,
        "drop table if exists stuck_copy; create table stuck_copy(n int)",
    )?;
    let (client, _ended) = connect(port, "pgrouter-test-stuck").await?;

    // Silent for twice the bound, but not waiting on its client: left alone.
    client.batch_execute("select pg_sleep(5)").await?;
    // COPY FROM STDIN with the client pausing: the server waits for the client's data.
    let copied = copy_with_a_pause(port, Duration::from_secs(5))?;
    ensure!(copied == "COPY 2", "the paused COPY: {copied}");
    ensure!(
        closed()? == 0.0,
        "a long query or a slow COPY was taken for stuck"
    );

    // A backend stopped while it waits for its next message looks, in pg_stat_activity,
    // exactly like one waiting for a message pgrouter will never send (ClientRead).
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get(0);
    let stop = |signal: &str| {
        std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .context("kill")
    };
    stop("-STOP")?;
    let started = Instant::now();
    let answer =
        tokio::time::timeout(Duration::from_secs(60), client.simple_query("select 1")).await;
    stop("-CONT")?;
    let e = answer
        .context("no answer within 60s: the stuck server connection was not closed")?
        .err()
        .context("a stopped backend answered")?;
    let waited = started.elapsed();
    let message = pgrouter_error(
        "stuck",
        &e,
        "ERROR",
        "08006",
        &format!("lost the server connection to member \"{}\"", lab.leader()?),
    )?;
    ensure!(
        message.contains("pool.stuck_check") && waited >= Duration::from_secs(STUCK_CHECK),
        "after {waited:?}: {message}"
    );
    ensure!(closed()? == 1.0, "pgrouter_pool_stuck_closed_total not 1");
    // The client's connection stays; its next transaction gets a fresh server connection.
    let two: i32 = client.query_one("select 2", &[]).await?.get(0);
    ensure!(two == 2, "the client after the stuck connection was closed");
    ensure!(
        router
            .log_text()
            .contains("closing a stuck server connection"),
        "not logged"
    );
    println!(
        "  a long query and a paused COPY left alone; a stuck server connection closed after {:.1}s: {message}",
        waited.as_secs_f64()
    );
    Ok(())
}

/// Two rows through psql's COPY FROM STDIN on `port`, `pause` between them; psql's answer.
fn copy_with_a_pause(port: u16, pause: Duration) -> Result<String> {
    let mut psql = pgrouter_lab::client_command("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-X", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "copy stuck_copy from stdin"])
        .env("PGPASSWORD", "postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = psql.stdin.take().context("psql stdin")?;
    stdin.write_all(b"1\n")?;
    stdin.flush()?;
    std::thread::sleep(pause);
    stdin.write_all(b"2\n\\.\n")?;
    drop(stdin);
    let out = psql.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "psql COPY: {text}");
    Ok(text.trim().to_owned())
}
