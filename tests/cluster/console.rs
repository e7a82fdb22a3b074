//! Issue 26, the console as pgbouncer users know it: every SHOW pgbouncer 1.18 answers, with
//! its columns in its order (pgbouncer running on the lab as the reference), on a pooled and
//! a pass-through port; SHOW POOLS' maxwait the oldest waiter now and cl_active counting idle
//! clients; SHOW CLIENTS' port the client's; Debian's prometheus-pgbouncer-exporter scraping
//! pgrouter with no error and the metric names it exports for pgbouncer; RECONNECT and
//! WAIT_CLOSE.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgrouter_lab::{pgbouncer, Lab};
use tokio_postgres::NoTls;

use crate::pooling::pooled_router;
use crate::support::{eventually, http};

/// The SHOW commands pgbouncer 1.18 answers that pgrouter answers too.
const SHOWS: [&str; 12] = [
    "POOLS",
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "TOTALS",
    "LISTS",
    "DATABASES",
    "USERS",
    "CLIENTS",
    "SERVERS",
    "CONFIG",
    "VERSION",
];

/// `SHOW what` through psql: the column names, then the rows, each split at '|'.
fn show(port: u16, user: &str, password: &str, what: &str) -> Result<Vec<Vec<String>>> {
    let out = pgrouter_lab::client_command("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(["-d", "pgbouncer", "-A", "-F", "|", "-P", "footer=off", "-c"])
        .arg(format!("SHOW {what}"))
        .env("PGPASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .context("running psql")?;
    ensure!(
        out.status.success(),
        "psql SHOW {what} on {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn console_as_pgbouncer_has_it(lab: &Lab) -> Result<()> {
    let leader = lab.pg_port(&lab.leader()?);
    // Transaction pooling with one server connection on :5000, pass-through on :5001.
    let router = pooled_router(lab, 17644, "transaction", "passthrough", 1, "30s")?;
    let secret = lab.psql(
        leader,
        "select rolpassword from pg_authid where rolname = 'postgres'",
    )?;
    let bouncer_port = 17598;
    let _bouncer = Killed(pgbouncer::spawn(&pgbouncer::Settings {
        dir: &lab.spec().dir.join("pgbouncer-console"),
        port: bouncer_port,
        upstream: leader,
        scram_secret: secret.trim(),
        pool_size: 1,
        max_client_conn: 50,
    })?);
    // Some traffic on both, so the tables have rows.
    for port in [router.primary, bouncer_port] {
        let dsn =
            format!("host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres");
        let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await?;
        tokio::spawn(conn);
        c.simple_query("select 1").await?;
    }

    // 1. Every SHOW: pgbouncer's columns, in its order, first.
    for what in SHOWS {
        let theirs = show(bouncer_port, "postgres", "postgres", what)?;
        for port in [router.primary, router.replicas] {
            let ours = show(port, "admin", "console-secret", what)?;
            let (want, have) = (&theirs[0], &ours[0]);
            ensure!(
                have.len() >= want.len() && have[..want.len()] == want[..],
                "SHOW {what} on {port}: columns {have:?}, pgbouncer 1.18 has {want:?}"
            );
            if port == router.primary && have.len() > want.len() {
                println!(
                    "  SHOW {what}: pgbouncer's {} columns, then pgrouter's {:?}",
                    want.len(),
                    &have[want.len()..]
                );
            }
        }
    }
    println!("  {} SHOW commands: pgbouncer 1.18's columns in its order, on the pooled and the pass-through port", SHOWS.len());

    // 2. maxwait is the oldest waiter now; idle clients count in cl_active.
    let open = |app: &'static str| async move {
        let dsn = format!(
            "host=127.0.0.1 port={} user=postgres password=postgres dbname=postgres application_name={app}",
            router.primary
        );
        let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await?;
        tokio::spawn(conn);
        anyhow::Ok(c)
    };
    let (holder, waiter, idle) = (
        open("holder").await?,
        open("waiter").await?,
        open("idle").await?,
    );
    holder.simple_query("BEGIN; select 1").await?;
    let waiting = tokio::spawn(async move { waiter.simple_query("select 2").await.map(drop) });
    let pools_row = || -> Result<std::collections::BTreeMap<String, String>> {
        let t = show(router.primary, "admin", "console-secret", "POOLS")?;
        let row = t[1..]
            .iter()
            .find(|r| r[0] == "postgres" && r[1] == "postgres")
            .context("no postgres/postgres row in SHOW POOLS")?;
        Ok(t[0].iter().cloned().zip(row.iter().cloned()).collect())
    };
    let started = Instant::now();
    eventually(
        "a waiter for 2 s in SHOW POOLS",
        Duration::from_secs(30),
        || async {
            let row = pools_row()?;
            ensure!(row["cl_waiting"] == "1", "{row:?}");
            ensure!(row["maxwait"].parse::<u64>()? >= 2, "{row:?}");
            Ok(true)
        },
    )
    .await?;
    let row = pools_row()?;
    ensure!(
        row["cl_active"].parse::<u64>()? >= 2,
        "the holder and the idle client are cl_active: {row:?}"
    );
    ensure!(row["pool_mode"] == "transaction", "{row:?}");
    println!(
        "  a client waiting {:.1}s: SHOW POOLS cl_waiting {}, maxwait {}, cl_active {}",
        started.elapsed().as_secs_f64(),
        row["cl_waiting"],
        row["maxwait"],
        row["cl_active"]
    );
    holder.simple_query("COMMIT").await?;
    tokio::time::timeout(Duration::from_secs(30), waiting).await???;
    let row = pools_row()?;
    ensure!(
        row["cl_waiting"] == "0" && row["maxwait"] == "0" && row["maxwait_us"] == "0",
        "no one waits: maxwait back to 0 ({row:?})"
    );
    let clients = show(router.primary, "admin", "console-secret", "CLIENTS")?;
    let col = |name: &str| {
        clients[0]
            .iter()
            .position(|c| c == name)
            .context(name.to_owned())
    };
    let (port_col, app_col, local_col) =
        (col("port")?, col("application_name")?, col("local_port")?);
    let idle_row = clients[1..]
        .iter()
        .find(|r| r[app_col] == "idle")
        .context("the idle client in SHOW CLIENTS")?;
    ensure!(
        idle_row[port_col].parse::<u16>().is_ok(),
        "SHOW CLIENTS port: {:?}",
        idle_row[port_col]
    );
    ensure!(
        idle_row[local_col] == router.primary.to_string(),
        "local_port {:?}",
        idle_row[local_col]
    );
    drop(idle);

    // 3. Debian's exporter, against pgbouncer and against pgrouter.
    let theirs = exporter(bouncer_port, "postgres", "postgres", 19710).await;
    let ours = exporter(router.primary, "admin", "console-secret", 19711).await?;
    let names = |page: &str| -> std::collections::BTreeSet<String> {
        page.lines()
            .filter(|l| l.starts_with("pgbouncer_"))
            .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
            .collect()
    };
    let ours_names = names(&ours);
    for want in [
        "pgbouncer_active_clients",
        "pgbouncer_waiting_clients",
        "pgbouncer_pool_size",
        "pgbouncer_used_clients",
        "pgbouncer_requests_total",
        "pgbouncer_received_bytes_total",
    ] {
        ensure!(
            ours_names.contains(want),
            "the exporter's page for pgrouter lacks {want}: {ours_names:?}"
        );
    }
    match theirs {
        Ok(page) => {
            let missing: Vec<_> = names(&page).difference(&ours_names).cloned().collect();
            ensure!(missing.is_empty(), "exported for pgbouncer, not for pgrouter: {missing:?}");
            println!("  prometheus-pgbouncer-exporter: {} metric names for pgrouter, every one it exports for pgbouncer 1.18 among them", ours_names.len());
        }
        Err(e) => println!(
            "  prometheus-pgbouncer-exporter: {} metric names for pgrouter, no error; against pgbouncer 1.18 itself it fails: {e:#}",
            ours_names.len()
        ),
    }

    // 4. RECONNECT closes the server connections once given back; WAIT_CLOSE waits for it.
    let c = open("reconnect").await?;
    c.simple_query("select 1").await?;
    let before = lab.psql(leader, "select string_agg(pid::text, ',') from pg_stat_activity where application_name = 'reconnect'")?;
    show(router.primary, "admin", "console-secret", "SERVERS")?;
    let out = pgrouter_lab::client_command("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &router.primary.to_string(),
            "-U",
            "admin",
            "-d",
            "pgbouncer",
        ])
        .args(["-c", "RECONNECT", "-c", "WAIT_CLOSE"])
        .env("PGPASSWORD", "console-secret")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "RECONNECT; WAIT_CLOSE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.simple_query("select 1").await?;
    let after = lab.psql(leader, "select string_agg(pid::text, ',') from pg_stat_activity where application_name = 'reconnect'")?;
    ensure!(
        before != after,
        "the server connection was not replaced: {before} then {after}"
    );
    println!("  RECONNECT and WAIT_CLOSE: the next transaction ran on a new server connection");
    Ok(())
}

/// Runs the exporter against a console on `port` and returns its page.
async fn exporter(port: u16, user: &str, password: &str, listen: u16) -> Result<String> {
    let child = pgrouter_lab::client_command("prometheus-pgbouncer-exporter")
        .args(["--port", &listen.to_string(), "--host", "127.0.0.1"])
        .args(["--pgbouncer-port", &port.to_string(), "--pgbouncer-user", user, "--pgbouncer-host", "127.0.0.1"])
        .env("PGPASSWORD", password)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting prometheus-pgbouncer-exporter (apt-get install prometheus-pgbouncer-exporter)")?;
    let mut child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        match http("GET", listen, "/metrics", None) {
            Ok((200, page)) if page.contains("pgbouncer_") => return Ok(page),
            Ok((code, _)) if code != 200 => break format!("HTTP {code}"),
            _ if Instant::now() > deadline || child.0.try_wait()?.is_some() => {
                break "no answer".to_owned()
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let tail = err.lines().last().unwrap_or_default().to_owned();
    bail!("{last}; the exporter said: {tail}")
}
