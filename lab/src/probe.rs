//! A writer probe: one client inserting a row every 10 ms through a port, reconnecting on
//! error, recording what was acknowledged, the errors seen and the longest gap between writes.
//!
//! Because it reconnects after every error, its error count never exceeds its connection count:
//! a check of "at most one error per connection" cannot fail. Checks bound the errors of an
//! event instead (the open session's one), and read what each error said.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use crate::Lab;

pub fn dsn(port: u16, app: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres application_name={app} connect_timeout=60")
}

/// Connects with tokio-postgres; the connection task's end (and its error) is reported on
/// the returned receiver.
pub async fn connect(
    port: u16,
    app: &str,
) -> Result<(
    Client,
    tokio::sync::oneshot::Receiver<Result<(), tokio_postgres::Error>>,
)> {
    let (client, connection) = tokio_postgres::connect(&dsn(port, app), NoTls).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(connection.await);
    });
    Ok((client, rx))
}

/// A client inserting one row every 10 ms through a port, reconnecting on error, as the
/// failover tests of the router issue describe.
pub struct Probe {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<ProbeReport>,
    acked: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
pub struct ProbeReport {
    /// Row ids whose INSERT returned success, with the time of the acknowledgement.
    pub acked: Vec<(i64, Instant)>,
    /// Errors seen on queries of an open connection, as `SEVERITY SQLSTATE message` when the
    /// server (or pgrouter) said why, read from the connection's end when the query only saw
    /// it close.
    pub query_errors: Vec<String>,
    /// Errors of connection attempts.
    pub connect_errors: Vec<String>,
    pub connections: u32,
    pub longest_gap: Duration,
}

impl Probe {
    pub fn start(port: u16, table: &str) -> Probe {
        let (stop, stopped) = watch::channel(false);
        let acked = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(probe_loop(port, table.to_owned(), stopped, acked.clone()));
        Probe { stop, task, acked }
    }

    pub async fn wait_for_acks(&self, n: u64, timeout: Duration) -> Result<()> {
        let start = self.acked.load(Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        while self.acked.load(Ordering::Relaxed) < start + n {
            if Instant::now() > deadline {
                bail!("the probe acknowledged fewer than {n} writes in {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the probe; a write still unanswered [`STOP_GRACE`] later is ended and counted as
    /// an error (a hang is a failure too, not a wait without end).
    pub async fn finish(self) -> ProbeReport {
        let _ = self.stop.send(true);
        self.task.await.expect("probe task")
    }
}

/// How long a write may stay unanswered once the probe is asked to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// Resolves [`STOP_GRACE`] after `stopped` turns true.
async fn stop_grace_over(mut stopped: watch::Receiver<bool>) {
    if stopped.wait_for(|stop| *stop).await.is_ok() {
        tokio::time::sleep(STOP_GRACE).await;
    } else {
        std::future::pending::<()>().await;
    }
}

async fn probe_loop(
    port: u16,
    table: String,
    stop: watch::Receiver<bool>,
    acked: Arc<AtomicU64>,
) -> ProbeReport {
    let mut report = ProbeReport::default();
    let mut next_id: i64 = 1;
    let mut last_ack = Instant::now();
    let sql = format!("insert into {table}(id) values ($1)");
    while !*stop.borrow() {
        let (client, mut ended) = match connect(port, "pgrouter-probe").await {
            Ok(connected) => connected,
            Err(e) => {
                report.connect_errors.push(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        report.connections += 1;
        while !*stop.borrow() {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&next_id];
            let written = tokio::select! {
                written = client.execute(sql.as_str(), &params) => written,
                () = stop_grace_over(stop.clone()) => {
                    report.query_errors.push(format!(
                        "no answer to a write {}s after the probe was stopped (it hangs)",
                        STOP_GRACE.as_secs()
                    ));
                    return report;
                }
            };
            match written {
                Ok(_) => {
                    let now = Instant::now();
                    report.longest_gap = report.longest_gap.max(now - last_ack);
                    last_ack = now;
                    report.acked.push((next_id, now));
                    acked.fetch_add(1, Ordering::Relaxed);
                    next_id += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    report
                        .query_errors
                        .push(error_text_with_cause(&e, &mut ended).await);
                    // The id may or may not have committed; never reuse it.
                    next_id += 1;
                    break;
                }
            }
        }
    }
    report
}

/// [`db_error_text`] of a query's error; when the query only saw the connection close, what the
/// connection's end said (an ErrorResponse that arrived between queries goes to the connection
/// task, not to a query), if it says so within a second.
pub async fn error_text_with_cause(
    e: &tokio_postgres::Error,
    ended: &mut tokio::sync::oneshot::Receiver<Result<(), tokio_postgres::Error>>,
) -> String {
    if e.as_db_error().is_some() {
        return db_error_text(e);
    }
    match tokio::time::timeout(Duration::from_secs(1), ended).await {
        Ok(Ok(Err(told))) if told.as_db_error().is_some() => db_error_text(&told),
        _ => db_error_text(e),
    }
}

/// `SEVERITY SQLSTATE message` of a server's (or pgrouter's) ErrorResponse, else the error.
pub fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {} {}", db.severity(), db.code().code(), db.message()),
        None => format!("{e}"),
    }
}

/// Ids from `acked` missing from `table` on the member at `pg_port`.
pub fn missing_rows(
    lab: &Lab,
    pg_port: u16,
    table: &str,
    acked: &[(i64, Instant)],
) -> Result<Vec<i64>> {
    let present = lab.psql(pg_port, &format!("select id from {table} order by id"))?;
    let present: HashSet<i64> = present
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    Ok(acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !present.contains(id))
        .collect())
}
