//! Tests 2 and 3 of the router issue: planned switchover, kill -9 of the leader and a frozen
//! leader, each with a writer probe inserting every 10 ms through the primary port.
//!
//! The probe reconnects after every error, so its error count is bounded by the event, not by
//! its connections: one session was open on the old leader, so it sees exactly one error, and
//! that error is pgrouter's, naming the cluster, with the SQLSTATE the event calls for.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;

use crate::support::{
    connect, ended_with_error, eventually, in_synchronous_mode, missing_rows, Arrivals, Probe,
    ProbeReport, Refusals, Router, RouterOptions, SCOPE,
};

pub(crate) fn create_table(lab: &Lab, leader: &str, table: &str) -> Result<()> {
    lab.psql(
        lab.pg_port(leader),
        &format!("drop table if exists {table}; create table {table}(id bigint primary key, at timestamptz default clock_timestamp())"),
    )?;
    Ok(())
}

/// Every acknowledged row is on the new leader; no new connection was refused (they are held);
/// the one session open on the old leader ended with exactly one error, a FATAL from pgrouter
/// naming the cluster, with one of the SQLSTATEs in `codes`, whose message contains `says`.
fn nothing_lost_one_named_error(
    lab: &Lab,
    new: &str,
    table: &str,
    report: &ProbeReport,
    codes: &[&str],
    says: &str,
) -> Result<()> {
    let missing = missing_rows(lab, lab.pg_port(new), table, &report.acked)?;
    ensure!(
        missing.is_empty(),
        "acknowledged rows missing on the new leader {new}: {missing:?}"
    );
    ensure!(
        report.connect_errors.is_empty(),
        "new connections were refused, not held: {:?}",
        report.connect_errors
    );
    ensure!(
        report.query_errors.len() == 1,
        "expected exactly one error (the session open on the old leader), saw {}: {:?}",
        report.query_errors.len(),
        report.query_errors
    );
    let error = &report.query_errors[0];
    ensure!(
        codes.iter().any(|code| error
            .starts_with(&format!("FATAL {code} pgrouter: cluster \"{SCOPE}\": ")))
            && error.contains(says),
        "expected pgrouter's FATAL {codes:?} naming cluster {SCOPE:?} and saying {says:?}, saw: {error}"
    );
    Ok(())
}

pub(crate) fn summary(event: &str, r: &ProbeReport) {
    println!(
        "  {event}: longest write gap {:.2}s, {} query errors, {} connect errors, {} connections, {} rows acknowledged",
        r.longest_gap.as_secs_f64(),
        r.query_errors.len(),
        r.connect_errors.len(),
        r.connections,
        r.acked.len()
    );
    for e in r.query_errors.iter().chain(&r.connect_errors) {
        println!("    error: {e}");
    }
}

// Lab calls block the test's own thread; the probe and the router's clients run on the
// runtime's worker threads meanwhile.

pub async fn switchover(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17504, RouterOptions::default())?;
    let old = lab.leader()?;
    create_table(lab, &old, "probe_switchover")?;
    let (idle, idle_conn) = connect(router.primary, "pgrouter-idle").await?;
    let probe = Probe::start(router.primary, "probe_switchover");
    probe.wait_for_acks(50, Duration::from_secs(30)).await?;
    // The old leader refuses connections while it shuts down, before it gives up the key:
    // clients arriving then are held for the new leader, not handed the refusal.
    let arrivals = Arrivals::start(router.primary);

    lab.switchover(None)?;
    let new = lab.wait_leader_other_than(&old, Duration::from_secs(60))?;
    probe.wait_for_acks(100, Duration::from_secs(60)).await?;
    let report = probe.finish().await;
    summary("switchover", &report);
    arrivals
        .finish()
        .await?
        .check("clients arriving through the switchover", Refusals::None)?;

    nothing_lost_one_named_error(
        lab,
        &new,
        "probe_switchover",
        &report,
        &["57P01"],
        &format!("\"{old}\""),
    )?;
    // Patroni stops PostgreSQL before it releases the key: the idle session gets the member's
    // own 57P01, relayed naming pgrouter, the cluster and the member; were the key to move
    // first, pgrouter's own 57P01 naming the new leader.
    let what = format!("the idle session on the old leader {old}");
    let told = ended_with_error(&what, idle_conn, Duration::from_secs(10)).await?;
    let told = crate::support::pgrouter_error(&what, &told, "FATAL", "57P01", "")?;
    ensure!(
        told.contains(&format!("member \"{old}\": terminating connection"))
            || told.contains(&format!("lost the leader key to \"{new}\"")),
        "the idle session's 57P01 names neither the old member's shutdown nor the new leader: {told}"
    );
    println!("  the idle session on {old} ended with 57P01: {told}");
    drop(idle);
    let old_port = lab.pg_port(&old);
    eventually(
        &format!("no pgrouter session left on {old}"),
        Duration::from_secs(30),
        || async {
            let n = lab.psql(
                old_port,
                "select count(*) from pg_stat_activity where application_name like 'pgrouter-%'",
            )?;
            Ok(n == "0")
        },
    )
    .await?;
    let after =
        crate::support::server_port(&connect(router.primary, "pgrouter-test").await?.0).await?;
    ensure!(
        after == lab.pg_port(&new),
        "new sessions not on the new leader {new}"
    );
    Ok(())
}

/// kill -9 of the leader's Patroni and postmaster under the writer probe, in Patroni's
/// `synchronous_mode`: with asynchronous replication PostgreSQL itself may lose the last
/// acknowledged commits of a killed leader, whatever the router does; with a synchronous
/// standby it may not, so every acknowledged row must be on the new leader.
pub async fn kill_leader(lab: &Lab) -> Result<()> {
    in_synchronous_mode(lab, kill_leader_synchronous(lab)).await
}

async fn kill_leader_synchronous(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17506, RouterOptions::default())?;
    let old = lab.leader()?;
    create_table(lab, &old, "probe_kill")?;
    let probe = Probe::start(router.primary, "probe_kill");
    probe.wait_for_acks(50, Duration::from_secs(30)).await?;

    let killed = Instant::now();
    lab.kill_member(&old)?;
    // Clients arriving in the gap, before the lease expires and after, are held, then served.
    let mut late = Vec::new();
    for delay in [500u64, 3000, 8000] {
        let port = router.primary;
        late.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let (client, _conn) = connect(port, "pgrouter-test-late").await?;
            client
                .execute(
                    "insert into probe_kill(id) values ($1)",
                    &[&-(delay as i64)],
                )
                .await?;
            anyhow::Ok(killed.elapsed())
        }));
    }
    let new = lab.wait_leader_other_than(&old, Duration::from_secs(90));
    let mut served = Vec::new();
    for client in late {
        served.push(client.await?);
    }
    probe.wait_for_acks(100, Duration::from_secs(60)).await?;
    let report = probe.finish().await;
    let restarted = lab.start_member(&old);
    let new = new?;
    for (served_after, delay) in served.into_iter().zip([500, 3000, 8000]) {
        let served_after = served_after.with_context(|| {
            format!("a client arriving {delay} ms after the kill was not held and served")
        })?;
        println!(
            "  a client arriving in the gap was held and served {:.1}s after the kill",
            served_after.as_secs_f64()
        );
    }
    summary("kill -9 of the leader", &report);
    // What the held clients inserted is on the new leader.
    let held: Vec<(i64, Instant)> = [500, 3000, 8000]
        .map(|delay| (-delay, Instant::now()))
        .to_vec();
    let lost = missing_rows(lab, lab.pg_port(&new), "probe_kill", &held)?;
    ensure!(
        lost.is_empty(),
        "rows inserted by clients held through the gap missing on the new leader {new}: {lost:?}"
    );
    // The member's connection dies with it: pgrouter tells the open session 08006 `lost the
    // server connection to member "pgN"`, or relays the backend's own 57P01 `terminating
    // connection due to unexpected postmaster exit` when it saw the postmaster die first.
    nothing_lost_one_named_error(
        lab,
        &new,
        "probe_kill",
        &report,
        &["08006", "57P01"],
        &format!("member \"{old}\""),
    )?;
    restarted
}

pub async fn frozen_leader(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17508, RouterOptions::default())?;
    let old = lab.leader()?;
    create_table(lab, &old, "probe_frozen")?;
    let probe = Probe::start(router.primary, "probe_frozen");
    probe.wait_for_acks(50, Duration::from_secs(30)).await?;

    lab.freeze_member(&old)?;
    let result = async {
        let new = lab.wait_leader_other_than(&old, Duration::from_secs(90))?;
        probe.wait_for_acks(100, Duration::from_secs(60)).await?;
        anyhow::Ok(new)
    }
    .await;
    let report = probe.finish().await;
    lab.thaw_member(&old)?;
    let new = result?;
    summary("frozen leader", &report);
    // The old leader's backends kept running; pgrouter must have cut its sessions when the
    // lease expired (57P01, naming the new leader), so every acknowledged row is on the new
    // leader.
    nothing_lost_one_named_error(
        lab,
        &new,
        "probe_frozen",
        &report,
        &["57P01"],
        &format!("member \"{old}\" lost the leader key"),
    )?;
    Ok(())
}

/// The leader cut off the network (its packets and packets to it dropped, no resets) under
/// the writer probe: its lease expires, a replica takes over, and pgrouter follows etcd. The
/// probe's session on the old leader hangs until pgrouter closes it (the leader key moved);
/// every acknowledged row is on the new leader.
pub async fn partitioned_leader(lab: &Lab) -> Result<()> {
    let opts = RouterOptions {
        routing: "hold_timeout = \"30s\"\nconnect_timeout = \"1s\"\n",
        ..RouterOptions::default()
    };
    let old = lab.leader()?;
    if let Some(why) = lab.cannot_cut_off(&old)? {
        return Err(crate::runner::Skip(why).into());
    }
    let router = Router::start(lab, 17578, opts)?;
    create_table(lab, &old, "probe_partition")?;
    let probe = Probe::start(router.primary, "probe_partition");
    probe.wait_for_acks(50, Duration::from_secs(30)).await?;

    lab.cut_off_member(&old)?;
    let result = async {
        let new = lab.wait_leader_other_than(&old, Duration::from_secs(90))?;
        probe.wait_for_acks(100, Duration::from_secs(90)).await?;
        anyhow::Ok(new)
    }
    .await;
    let report = probe.finish().await;
    lab.reconnect_member(&old)?;
    let new = result?;
    summary("partitioned leader", &report);
    nothing_lost_one_named_error(
        lab,
        &new,
        "probe_partition",
        &report,
        &["57P01"],
        &format!("member \"{old}\" lost the leader key"),
    )?;
    Ok(())
}
