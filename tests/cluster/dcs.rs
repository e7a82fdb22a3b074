//! The etcd view: losing etcd keeps the last topology, and pgrouter resyncs when it returns.

use std::time::Duration;

use anyhow::{ensure, Result};
use pgrouter_lab::Lab;
use serde_json::json;

use crate::support::{
    connect, eventually, ports_of_new_connections, server_port, Router, RouterOptions,
};

pub async fn etcd_restart(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17518, RouterOptions::default())?;
    let leader = lab.leader()?;
    let (before, _conn) = connect(router.primary, "pgrouter-test").await?;

    lab.stop_etcd()?;
    // Patroni keeps its leader for retry_timeout (5 s) without etcd; so does pgrouter, from
    // its last view: existing sessions and new clients are still served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = async {
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
        log.contains("lost the etcd view"),
        "no log line about losing etcd"
    );
    ensure!(
        log.matches("read cluster state from etcd").count() >= 2,
        "pgrouter did not read the keys again"
    );
    Ok(())
}
