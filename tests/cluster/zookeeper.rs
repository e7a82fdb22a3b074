//! Issue 27, Patroni on another DCS: a lab on ZooKeeper (Debian's zookeeper, Patroni's
//! `zookeeper:` with python3-kazoo), read by pgrouter through the members' REST APIs
//! (`cluster.source = "patroni"`): routing, then a planned switchover, kill -9 of the leader
//! and a frozen leader (SIGSTOP of Patroni and the postmaster), each under the acked-writes
//! probe. Every acknowledged row is on the new leader: none was acknowledged by a member that
//! had lost the leadership; new clients were held, not refused.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgrouter_lab::{Dcs, Lab, LabSpec};

use crate::failover::{create_table, summary};
use crate::support::{
    connect, eventually, http, in_synchronous_mode, missing_rows, server_port, Probe, ProbeReport,
    Router, RouterOptions,
};

/// The ZooKeeper lab: ZooKeeper 18000, PostgreSQL 18010-18012, REST 18020-18022.
const BASE: u16 = 18000;
const ROUTER: u16 = 18050;
const PATIENCE: Duration = Duration::from_secs(90);

pub async fn zookeeper_cluster_through_rest_apis(lab: &Lab) -> Result<()> {
    let dir = lab.spec().dir.with_file_name("pgrouter-zookeeper-lab");
    let mut spec = LabSpec::new(dir, BASE);
    spec.dcs = Dcs::ZooKeeper;
    let zk = tokio::task::spawn_blocking(move || Lab::start(spec))
        .await?
        .context("starting the ZooKeeper lab")?;
    let apis: Vec<String> = zk
        .member_names()
        .iter()
        .map(|m| format!("\"http://127.0.0.1:{}\"", zk.api_port(m)))
        .collect();
    let cluster = format!(
        "source = \"patroni\"\npatroni = [{}]\npoll_interval = \"250ms\"\n",
        apis.join(", ")
    );
    let router = Router::start(
        &zk,
        ROUTER,
        RouterOptions {
            cluster_extra: &cluster,
            ..RouterOptions::default()
        },
    )?;
    let result = events(&zk, &router)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nthe router's log:\n{}", router.log_tail(30)));
    drop(router);
    drop(zk);
    result
}

async fn events(lab: &Lab, router: &Router) -> Result<()> {
    eventually("/health 200 from the REST source", PATIENCE, || async {
        let (status, body) = http("GET", router.admin, "/health", None)?;
        ensure!(status == 200, "{status} {body}");
        Ok(true)
    })
    .await?;
    let leader = lab.leader()?;
    let (client, _c) = connect(router.primary, "zk-write").await?;
    ensure!(
        server_port(&client).await? == lab.pg_port(&leader),
        "writes not on the leader {leader}"
    );
    drop(client);
    let leader_port = lab.pg_port(&leader);
    eventually("reads on a replica", PATIENCE, || async {
        let (reader, _r) = connect(router.replicas, "zk-read").await?;
        let on = server_port(&reader).await?;
        ensure!(on != leader_port, "reads on the leader");
        Ok(true)
    })
    .await?;

    // A planned switchover.
    let old = lab.leader()?;
    create_table(lab, &old, "zk_switchover")?;
    let probe = Probe::start(router.primary, "zk_switchover");
    probe.wait_for_acks(50, PATIENCE).await?;
    tokio::task::block_in_place(|| lab.switchover(None))?;
    let new = lab.wait_leader_other_than(&old, PATIENCE)?;
    probe.wait_for_acks(100, PATIENCE).await?;
    let report = probe.finish().await;
    summary("ZooKeeper, switchover", &report);
    nothing_lost(lab, &new, "zk_switchover", &report)?;
    tokio::task::block_in_place(|| lab.wait_healthy(PATIENCE * 2))?;

    // kill -9 of the leader, with a synchronous standby (asynchronous replication may lose a
    // killed leader's last commits whatever a router does).
    in_synchronous_mode(lab, async {
        let old = lab.leader()?;
        create_table(lab, &old, "zk_kill")?;
        let probe = Probe::start(router.primary, "zk_kill");
        probe.wait_for_acks(50, PATIENCE).await?;
        tokio::task::block_in_place(|| lab.kill_member(&old))?;
        let new = lab.wait_leader_other_than(&old, PATIENCE);
        let acked = probe.wait_for_acks(100, PATIENCE).await;
        let report = probe.finish().await;
        tokio::task::block_in_place(|| lab.start_member(&old))?;
        let new = new?;
        acked?;
        summary("ZooKeeper, kill -9 of the leader", &report);
        nothing_lost(lab, &new, "zk_kill", &report)?;
        tokio::task::block_in_place(|| lab.wait_healthy(PATIENCE * 2))
    })
    .await?;

    // A frozen leader: Patroni and the postmaster stopped (SIGSTOP). It stops answering at
    // once; ZooKeeper's session outlives it by Patroni's ttl.
    let old = lab.leader()?;
    create_table(lab, &old, "zk_frozen")?;
    let probe = Probe::start(router.primary, "zk_frozen");
    probe.wait_for_acks(50, PATIENCE).await?;
    tokio::task::block_in_place(|| lab.freeze_member(&old))?;
    let result = async {
        let new = lab.wait_leader_other_than(&old, PATIENCE)?;
        probe.wait_for_acks(100, PATIENCE).await?;
        anyhow::Ok(new)
    }
    .await;
    let report = probe.finish().await;
    tokio::task::block_in_place(|| lab.thaw_member(&old))?;
    let new = result?;
    summary("ZooKeeper, frozen leader", &report);
    nothing_lost(lab, &new, "zk_frozen", &report)?;
    tokio::task::block_in_place(|| lab.wait_healthy(PATIENCE * 2))?;
    Ok(())
}

/// Every acknowledged row is on the new leader, and no new connection was refused.
fn nothing_lost(lab: &Lab, new: &str, table: &str, report: &ProbeReport) -> Result<()> {
    let missing = missing_rows(lab, lab.pg_port(new), table, &report.acked)?;
    ensure!(
        missing.is_empty(),
        "{table}: acknowledged rows missing on the new leader {new}: {missing:?}"
    );
    ensure!(
        report.connect_errors.is_empty(),
        "{table}: new connections were refused, not held: {:?}",
        report.connect_errors
    );
    Ok(())
}
