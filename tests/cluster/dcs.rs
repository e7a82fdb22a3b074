//! The etcd view: losing etcd keeps the last leader only while its Patroni confirms it, one
//! etcd member of three changes nothing, and pgrouter resyncs when etcd returns.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use pgrouter_lab::{IptablesRule, Lab};
use serde_json::json;

use crate::support::{
    connect, eventually, ports_of_new_connections, server_port, Arrivals, Refusals, Router,
    RouterOptions,
};

pub async fn etcd_restart(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17518, RouterOptions::default())?;
    let leader = lab.leader()?;
    let (before, _conn) = connect(router.primary, "pgrouter-test").await?;

    lab.stop_etcd()?;
    // Patroni keeps its leader for retry_timeout (5 s) without etcd; so does pgrouter, from
    // its last view: existing sessions and new clients are still served, once pgrouter knows
    // etcd is gone (before that it would serve them from its live view).
    let served = async {
        eventually(
            "pgrouter to notice etcd is gone",
            Duration::from_secs(5),
            || async { Ok(router.log_text().contains("lost the etcd view")) },
        )
        .await?;
        let (during, _conn) = connect(router.primary, "pgrouter-test").await?;
        ensure!(
            server_port(&during).await? == lab.pg_port(&leader),
            "not routed to the leader while etcd was down"
        );
        let one: i32 = before.query_one("select 1", &[]).await?.get(0);
        anyhow::Ok(one)
    }
    .await;
    lab.start_etcd()?;
    ensure!(served? == 1);

    // A change made after etcd returned reaches pgrouter: it reconnected and read the keys again.
    let replica = lab
        .member_names()
        .into_iter()
        .find(|m| *m != leader)
        .expect("a replica");
    let replica_port = lab.pg_port(&replica);
    lab.set_tags(&replica, &json!({"noloadbalance": true}))?;
    let reads = router.replicas;
    let skipped = eventually(
        "reads skip the replica tagged after etcd returned",
        Duration::from_secs(30),
        || async {
            Ok(!ports_of_new_connections(reads, 4)
                .await?
                .contains(&replica_port))
        },
    )
    .await;
    lab.set_tags(&replica, &json!({}))?;
    skipped?;
    let log = router.log_text();
    ensure!(
        log.matches("read cluster state from etcd").count() >= 2,
        "pgrouter did not read the keys again"
    );
    Ok(())
}

/// Where one new connection through `port` ended up.
enum Landing {
    /// On the member listening on this port, which is not in recovery.
    Primary(u16),
    /// Refused with 57P03 and this message.
    Refused(String),
    /// The connection failed or broke (a member restarting while it is demoted or promoted).
    Broken,
}

/// A session that landed and was ended under it, as Patroni demotes the leader or pgrouter
/// drops it: the server's own 57P01, or pgrouter's 57P01 or 08006.
fn cut_short(db: &tokio_postgres::error::DbError) -> bool {
    match db.code().code() {
        "57P01" => true,
        "08006" => db.message().starts_with("pgrouter: "),
        _ => false,
    }
}

/// Connects through `port`. A connection must land on a member that is not in recovery (a
/// write reaching a demoted member is the failure this file guards against); a refusal must
/// be 57P03 naming pgrouter and the cluster.
async fn land(port: u16) -> Result<Landing> {
    let err = match connect(port, "pgrouter-test-dcs").await {
        Ok((client, _conn)) => {
            let row = match client
                .query_one("select inet_server_port(), pg_is_in_recovery()", &[])
                .await
            {
                Ok(row) => row,
                Err(e) if e.as_db_error().is_none_or(cut_short) => return Ok(Landing::Broken),
                Err(e) => return Err(e.into()),
            };
            let (server, in_recovery): (i32, bool) = (row.get(0), row.get(1));
            ensure!(
                !in_recovery,
                "routed to a member in recovery (port {server})"
            );
            return Ok(Landing::Primary(server as u16));
        }
        Err(err) => err,
    };
    let Some(db) = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
    else {
        return Ok(Landing::Broken);
    };
    if cut_short(db) {
        return Ok(Landing::Broken);
    }
    let message = db.message().to_owned();
    ensure!(
        db.code().code() == "57P03",
        "SQLSTATE {}: {message}",
        db.code().code()
    );
    ensure!(
        message.starts_with("pgrouter: cluster \"demo\""),
        "message: {message}"
    );
    Ok(Landing::Refused(message))
}

/// Connects until the router refuses with 57P03; every connection before that lands on a
/// primary.
async fn until_refused(port: u16, timeout: Duration) -> Result<String> {
    until_refused_with(port, "", timeout).await
}

/// Connects until pgrouter refuses with a message containing `needle`; other refusals on the
/// way are printed.
async fn until_refused_with(port: u16, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        if let Landing::Refused(message) = land(port).await? {
            if message.contains(needle) {
                return Ok(message);
            }
            if !seen.contains(&message) {
                println!("  refused on the way: {message}");
                seen.push(message);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no refusal with {needle:?} after {timeout:?}; others: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects until a connection lands on `want`; refusals in between are fine.
async fn until_landing_on(port: u16, want: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Landing::Primary(server) = land(port).await? {
            if server == want {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "never reached port {want} in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// All of etcd stopped, no failsafe mode: Patroni demotes its leader after retry_timeout, so
/// the leader's REST API stops confirming; pgrouter then holds and refuses writes with 57P03
/// (never routing to the demoted member) and follows the cluster again once etcd is back.
pub async fn etcd_lost_without_failsafe(lab: &Lab) -> Result<()> {
    let opts = RouterOptions {
        routing: "hold_timeout = \"2s\"\n",
        ..RouterOptions::default()
    };
    let router = Router::start(lab, 17570, opts)?;
    let pooled = crate::restarts::pooled_router_routing(lab, 17588, "", "hold_timeout = \"2s\"\n")?;
    let leader = lab.leader()?;
    // Both routers serve the leader before the outage (the pooled one has a server connection
    // and its users' defaults then, as in service: a cold one has none to start from).
    for port in [router.primary, pooled.primary] {
        ensure!(
            matches!(land(port).await?, Landing::Primary(p) if p == lab.pg_port(&leader)),
            "port {port} does not reach the leader before the outage"
        );
    }
    // Clients keep arriving, through both routers, while Patroni demotes the leader: none may
    // land on the member once it runs as a replica, nor be handed its own "shutting down" or
    // "starting up", nor be refused for it: they are held, then refused for want of a leader.
    let arrivals = Arrivals::start(router.primary);
    let pooled_arrivals = Arrivals::start(pooled.primary);
    lab.stop_etcd()?;
    // A refusal for the leader not confirmed yet after a re-read (etcd members stop one by
    // one) may come first; the one awaited says etcd is unreachable.
    let refused = until_refused_with(
        router.primary,
        "etcd is unreachable and the last leader",
        Duration::from_secs(60),
    )
    .await;
    // Until the demoted leader runs again, read-only.
    let demoted = eventually(
        "the old leader running as a replica",
        Duration::from_secs(60),
        || async {
            crate::support::is(
                lab.psql(lab.pg_port(&leader), "select pg_is_in_recovery()")?
                    .as_str(),
                "t",
            )
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let arrived = arrivals.finish().await;
    let pooled_arrived = pooled_arrivals.finish().await;
    lab.start_etcd()?;
    let message = refused?;
    demoted?;
    let (arrived, pooled_arrived) = (arrived?, pooled_arrived?);
    arrived.check(
        "clients arriving through the outage",
        Refusals::FromPgrouter,
    )?;
    pooled_arrived.check(
        "pooled clients arriving through the outage",
        Refusals::FromPgrouter,
    )?;
    let not_held: Vec<&String> = (arrived.refused.iter().chain(&pooled_arrived.refused))
        .filter(|e| {
            e.contains("not accepting connections") || e.contains("refused a server connection")
        })
        .collect();
    ensure!(
        not_held.is_empty(),
        "refused for a member shutting down, not held: {not_held:?}"
    );
    println!("  without etcd, once unconfirmed: {message}");
    ensure!(
        message.contains("etcd is unreachable and the last leader"),
        "message: {message}"
    );
    ensure!(
        router
            .log_text()
            .contains("the last leader's Patroni does not confirm it is the primary"),
        "no log line about the unconfirmed leader:\n{}",
        router.log_tail(20)
    );
    lab.wait_healthy(Duration::from_secs(120))?;
    let leader = lab.leader()?;
    until_landing_on(
        router.primary,
        lab.pg_port(&leader),
        Duration::from_secs(60),
    )
    .await
}

/// With Patroni's failsafe mode the leader stays primary while every member still answers it,
/// longer than the leader key's ttl; pgrouter keeps routing to it because its Patroni keeps
/// confirming it, and sessions opened before survive.
pub async fn etcd_lost_with_failsafe(lab: &Lab) -> Result<()> {
    lab.patch_dcs_config(&json!({"failsafe_mode": true}))?;
    let result = failsafe_outage(lab).await;
    let restored = lab.start_etcd().and_then(|()| {
        lab.wait_healthy(Duration::from_secs(120))?;
        lab.patch_dcs_config(&json!({"failsafe_mode": null}))
    });
    result?;
    restored
}

async fn failsafe_outage(lab: &Lab) -> Result<()> {
    // The leader writes the failsafe key (the members it must reach) once it runs in the mode.
    let armed = eventually(
        "Patroni writes the failsafe key",
        Duration::from_secs(30),
        || async { Ok(lab.dcs_value("failsafe")?.is_some()) },
    );
    armed.await?;
    let router = Router::start(lab, 17572, RouterOptions::default())?;
    let leader = lab.leader()?;
    let leader_port = lab.pg_port(&leader);
    let (before, _conn) = connect(router.primary, "pgrouter-test-dcs").await?;
    before
        .batch_execute("create table if not exists failsafe_writes(at timestamptz default now())")
        .await?;
    lab.stop_etcd()?;
    // Past the leader key's ttl and Patroni's retry_timeout: without failsafe mode the leader
    // would have demoted itself by now.
    let spec = lab.spec();
    tokio::time::sleep(Duration::from_secs(
        u64::from(spec.ttl + spec.retry_timeout) + 3,
    ))
    .await;
    let Landing::Primary(port) = land(router.primary).await? else {
        bail!("refused although the leader runs in failsafe mode");
    };
    ensure!(
        port == leader_port,
        "routed to port {port}, the leader is {leader_port}"
    );
    let (during, _conn2) = connect(router.primary, "pgrouter-test-dcs").await?;
    during
        .execute("insert into failsafe_writes default values", &[])
        .await?;
    before
        .execute("insert into failsafe_writes default values", &[])
        .await?;
    let log = router.log_text();
    ensure!(
        log.contains("lost the etcd view"),
        "pgrouter did not notice etcd going"
    );
    ensure!(
        !log.contains("does not confirm it is the primary"),
        "the failsafe leader was dropped:\n{}",
        router.log_tail(20)
    );
    Ok(())
}

/// etcd0, the first endpoint in pgrouter's list, stopped: the other two keep the quorum and
/// pgrouter follows a switchover through them.
pub async fn one_etcd_member_lost(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17574, RouterOptions::default())?;
    lab.stop_etcd_member(0)?;
    let result = async {
        let old = lab.leader()?;
        // Patroni's own etcd client may take a few requests to leave the dead member.
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = lab.switchover(None) {
            ensure!(Instant::now() < deadline, "no switchover in 60 s: {e:#}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let new = lab.wait_leader_other_than(&old, Duration::from_secs(60))?;
        until_landing_on(router.primary, lab.pg_port(&new), Duration::from_secs(60)).await
    }
    .await;
    lab.start_etcd_member(0)?;
    result?;
    ensure!(
        !router
            .log_text()
            .contains("does not confirm it is the primary"),
        "the leader was dropped although etcd kept its quorum"
    );
    Ok(())
}

/// pgrouter runs as this uid (`nobody`) where a firewall rule singles it out.
const ROUTER_UID: u32 = 65534;

/// An iptables rule that silently drops packets from processes of [`ROUTER_UID`] to the etcd
/// client ports: pgrouter loses etcd; Patroni, etcd (whose JSON gateway dials its own client
/// port) and the test do not. Removed when dropped.
fn blackhole_etcd(lab: &Lab) -> Result<IptablesRule> {
    let endpoints = lab.etcd_endpoints();
    let ports: Vec<&str> = endpoints
        .iter()
        .filter_map(|e| e.rsplit(':').next())
        .collect();
    let (ports, uid) = (ports.join(","), ROUTER_UID.to_string());
    IptablesRule::insert(&[
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "-m",
        "multiport",
        "--dports",
        &ports,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "DROP",
    ])
}

/// [`blackhole_etcd`] once `router` (run as [`ROUTER_UID`]) has noticed it lost etcd.
async fn cut_off_from_etcd(lab: &Lab, router: &Router) -> Result<IptablesRule> {
    let blackhole = blackhole_etcd(lab)?;
    eventually(
        "pgrouter notices etcd is unreachable",
        Duration::from_secs(60),
        || async { Ok(router.log_text().contains("lost the etcd view")) },
    )
    .await?;
    Ok(blackhole)
}

/// etcd unreachable for pgrouter alone (packets dropped, no reset): the leader keeps
/// confirming, so pgrouter keeps routing to it. A switchover that pgrouter cannot see makes
/// the old leader stop confirming: writes are refused with 57P03 and never reach the demoted
/// member. When etcd is reachable again pgrouter finds the new leader.
pub async fn etcd_unreachable_for_the_router(lab: &Lab) -> Result<()> {
    let opts = RouterOptions {
        routing: "hold_timeout = \"2s\"\n",
        run_as: Some(ROUTER_UID),
        ..RouterOptions::default()
    };
    let router = Router::start(lab, 17576, opts)?;
    let old = lab.leader()?;
    let candidate = lab
        .member_names()
        .into_iter()
        .find(|m| *m != old)
        .expect("a replica");
    let blackhole = cut_off_from_etcd(lab, &router).await?;
    let result = async {
        ensure!(
            matches!(land(router.primary).await?, Landing::Primary(p) if p == lab.pg_port(&old)),
            "not routed to the confirmed leader"
        );
        lab.switchover_via_rest(&candidate)?;
        let message = until_refused(router.primary, Duration::from_secs(60)).await?;
        println!("  etcd unreachable, after an unseen switchover: {message}");
        anyhow::Ok(())
    }
    .await;
    drop(blackhole);
    result?;
    let new = lab.wait_leader_other_than(&old, Duration::from_secs(60))?;
    until_landing_on(router.primary, lab.pg_port(&new), Duration::from_secs(60)).await
}

/// etcd unreachable for pgrouter alone while a replica stops replaying: the member keys
/// pgrouter last read cannot tell, but the replica's own Patroni reports its replay position,
/// so reads leave it once it lags past max_replica_lag and return once it has caught up.
pub async fn etcd_unreachable_reads_follow_replica_lag(lab: &Lab) -> Result<()> {
    let opts = RouterOptions {
        routing: "max_replica_lag = \"1MB\"\nlag_check_interval = \"250ms\"\nlag_out_after = \"1s\"\nlag_in_after = \"1s\"\n",
        run_as: Some(ROUTER_UID),
        ..RouterOptions::default()
    };
    let router = Router::start(lab, 17604, opts)?;
    let leader = lab.leader()?;
    let leader_port = lab.pg_port(&leader);
    let replicas = crate::routing::replica_ports(lab, &leader);
    let [(_, a_port), (b, b_port)] = &replicas[..] else {
        bail!("expected two replicas, found {replicas:?}");
    };
    let (a_port, b_port) = (*a_port, *b_port);
    let reads = router.replicas;
    let only_a = || async move {
        let ports = ports_of_new_connections(reads, 4).await?;
        ensure!(
            ports.iter().all(|p| *p == a_port),
            "reads went to {ports:?}"
        );
        Ok(true)
    };
    let balanced = || async move {
        let ports: BTreeSet<u16> = ports_of_new_connections(reads, 4)
            .await?
            .into_iter()
            .collect();
        crate::support::is(ports, BTreeSet::from([a_port, b_port]))
    };
    eventually(
        "reads over both replicas",
        Duration::from_secs(60),
        balanced,
    )
    .await?;
    // Patroni resumes a paused replay at its next loop unless in maintenance mode.
    crate::reads::maintenance_mode(lab, b, true).await?;
    let blackhole = cut_off_from_etcd(lab, &router).await?;
    let result = async {
        lab.psql(b_port, "select pg_wal_replay_pause()")?;
        let lagged = async {
            lab.psql(
                leader_port,
                "create table if not exists outage_filler(x text); insert into outage_filler select repeat('x', 1000) from generate_series(1, 8000)",
            )?;
            eventually(
                &format!("reads skip {b}, replaying nothing, while etcd is unreachable"),
                Duration::from_secs(30),
                only_a,
            )
            .await
        }
        .await;
        lab.psql(b_port, "select pg_wal_replay_resume()")?;
        lagged?;
        let log = router.log_text();
        ensure!(
            log.contains(&format!("replica {b} leaves replicas: replay ")),
            "no log line about {b} lagging:\n{}",
            router.log_tail(20)
        );
        eventually(
            "reads over both replicas once it caught up, etcd still unreachable",
            Duration::from_secs(60),
            balanced,
        )
        .await?;
        // The view came from the members' Patroni: etcd was read once, before the blackhole.
        let reads_of_etcd = router
            .log_text()
            .matches("read cluster state from etcd")
            .count();
        ensure!(
            reads_of_etcd == 1,
            "pgrouter read etcd {reads_of_etcd} times"
        );
        lab.psql(leader_port, "drop table outage_filler")?;
        anyhow::Ok(())
    }
    .await;
    drop(blackhole);
    let unpaused = crate::reads::maintenance_mode(lab, b, false).await;
    result.and(unpaused)
}
