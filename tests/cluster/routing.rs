//! Test 1 of the router issue: writes land on the leader, reads alternate over the replicas,
//! and a replica tagged `noloadbalance` or lagging is skipped (its sessions drained).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;
use serde_json::json;

use crate::support::{
    connect, eventually, http, metric, ports_of_new_connections, server_port, Router, RouterOptions,
};

pub fn replica_ports(lab: &Lab, leader: &str) -> Vec<(String, u16)> {
    lab.member_names()
        .into_iter()
        .filter(|m| m != leader)
        .map(|m| {
            let port = lab.pg_port(&m);
            (m, port)
        })
        .collect()
}

pub async fn writes_and_reads(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17500, RouterOptions::default())?;
    let leader = lab.leader()?;
    let (client, _conn) = connect(router.primary, "pgrouter-test").await?;
    ensure!(
        server_port(&client).await? == lab.pg_port(&leader),
        "primary port not on the leader {leader}"
    );
    client
        .batch_execute(
            "drop table if exists routed; create table routed(id int primary key, note text)",
        )
        .await?;
    client
        .execute("insert into routed values (1, 'via pgrouter')", &[])
        .await?;
    let on_leader = lab.psql(lab.pg_port(&leader), "select note from routed where id = 1")?;
    ensure!(
        on_leader == "via pgrouter",
        "row not on the leader: {on_leader:?}"
    );
    let recovery: bool = client
        .query_one("select pg_is_in_recovery()", &[])
        .await?
        .get(0);
    ensure!(!recovery, "primary port reached a member in recovery");

    // psql sends an SSLRequest first (sslmode=prefer); pgrouter answers 'N' and goes on.
    let via_psql = lab.psql(router.primary, "select inet_server_port()")?;
    ensure!(
        via_psql == lab.pg_port(&leader).to_string(),
        "psql through the primary port: {via_psql}"
    );

    // Running first on a fresh lab, a replica's lag may still read as a WAL segment or more
    // (Patroni updates each member's key every loop_wait, and the lab's start switched
    // segments): wait until both have caught up and count for reads.
    let names: Vec<String> = replica_ports(lab, &leader)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let caught_up = || async {
        let page = http("GET", router.admin, "/metrics", None)?.1;
        let series =
            |name: &str, m: &str| metric(&page, &format!("pgrouter_{name}{{member=\"{m}\"}}"));
        let mut all = true;
        for m in &names {
            all &= series("member_eligible", m)? == 1.0 && series("member_lag_bytes", m)? == 0.0;
        }
        Ok(all)
    };
    eventually(
        "both replicas caught up and eligible",
        Duration::from_secs(60),
        caught_up,
    )
    .await?;
    let replicas: BTreeSet<u16> = replica_ports(lab, &leader)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let ports = ports_of_new_connections(router.replicas, 6).await?;
    ensure!(
        ports.iter().all(|p| replicas.contains(p)),
        "a read went outside the replicas {replicas:?}: {ports:?}"
    );
    ensure!(
        ports.windows(2).all(|w| w[0] != w[1]),
        "reads did not alternate: {ports:?}"
    );
    let (reader, _conn) = connect(router.replicas, "pgrouter-test").await?;
    let recovery: bool = reader
        .query_one("select pg_is_in_recovery()", &[])
        .await?
        .get(0);
    ensure!(recovery, "replica port reached the primary");
    Ok(())
}

pub async fn tagged_and_lagging(lab: &Lab) -> Result<()> {
    let routing = "hold_timeout = \"30s\"\ndrain_timeout = \"3s\"\nmax_replica_lag = \"1MB\"\nreplica_fallback = \"primary\"\n";
    let router = Router::start(
        lab,
        17502,
        RouterOptions {
            routing,
            ..RouterOptions::default()
        },
    )?;
    let leader = lab.leader()?;
    let replicas = replica_ports(lab, &leader);
    let ((a, a_port), (b, b_port)) = (replicas[0].clone(), replicas[1].clone());
    let both: BTreeSet<u16> = [a_port, b_port].into();
    let reads = router.replicas;
    let only = |port: u16| {
        move || async move {
            let ports = ports_of_new_connections(reads, 4).await?;
            ensure!(ports.iter().all(|p| *p == port), "reads went to {ports:?}");
            Ok(true)
        }
    };
    let balanced = || async {
        let ports: BTreeSet<u16> = ports_of_new_connections(reads, 4)
            .await?
            .into_iter()
            .collect();
        crate::support::is(ports, both.clone())
    };
    eventually(
        "reads over both replicas",
        Duration::from_secs(30),
        balanced,
    )
    .await?;

    // Sessions on `a` before it is tagged: one idle, one busy in a long query.
    let mut on_a = Vec::new();
    while on_a.len() < 2 {
        let (client, conn) = connect(router.replicas, "pgrouter-test-drain").await?;
        if server_port(&client).await? == a_port {
            on_a.push((client, conn));
        }
    }
    let (busy, _busy_conn) = on_a.pop().context("busy session")?;
    let (idle, idle_conn) = on_a.pop().context("idle session")?;
    let busy_query =
        tokio::spawn(async move { busy.simple_query("select pg_sleep(60)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let tagged_at = Instant::now();
    lab.set_tags(&a, &json!({"noloadbalance": true}))?;
    eventually(
        &format!("reads skip {a} tagged noloadbalance"),
        Duration::from_secs(30),
        only(b_port),
    )
    .await?;
    let idle_end = tokio::time::timeout(Duration::from_secs(20), idle_conn)
        .await
        .context("idle session on the tagged replica stayed open")?;
    let code = idle_end
        .ok()
        .and_then(|r| r.err())
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned()));
    ensure!(
        code.as_deref() == Some("57P01"),
        "idle session should end with 57P01, got {code:?}"
    );
    drop(idle);
    let busy_end = tokio::time::timeout(Duration::from_secs(30), busy_query)
        .await
        .context("busy session not cut after drain_timeout")??;
    ensure!(
        busy_end.is_err(),
        "pg_sleep(60) finished instead of being cut"
    );
    println!(
        "  busy session on the tagged replica cut {:.1}s after tagging (drain_timeout 3s)",
        tagged_at.elapsed().as_secs_f64()
    );

    lab.set_tags(&a, &json!({}))?;
    eventually(
        "reads over both replicas again",
        Duration::from_secs(30),
        balanced,
    )
    .await?;

    // Lag: stop b's WAL receiver so its received position stays behind while the leader writes.
    let receiver_pid = lab.psql(b_port, "select pid from pg_stat_wal_receiver")?;
    ensure!(!receiver_pid.is_empty(), "{b} has no WAL receiver");
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &receiver_pid])
            .status()
    };
    signal("-STOP")?;
    let lagged = async {
        lab.psql(
            lab.pg_port(&leader),
            "create table if not exists filler(x text); insert into filler select repeat('x', 1000) from generate_series(1, 8000)",
        )?;
        eventually(&format!("reads skip {b} lagging over 1MB"), Duration::from_secs(30), only(a_port)).await
    }
    .await;
    signal("-CONT")?;
    lagged?;
    eventually(
        "reads over both replicas after catching up",
        Duration::from_secs(60),
        balanced,
    )
    .await?;
    lab.psql(lab.pg_port(&leader), "drop table filler")?;
    Ok(())
}
