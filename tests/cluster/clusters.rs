//! Issue 27, several clusters behind one router: a second Patroni cluster (scope "second",
//! its own PostgreSQL and Patroni on 18100+) in the lab's etcd, served by the same router
//! through `[clusters.second]` on ports of its own. Both route; a switchover in the first
//! leaves the second's sessions as they were; metrics carry a `cluster` label; /health,
//! `/health?cluster=`, /status and `pgrouter status` show each; both clusters share one etcd
//! connection. A reload that removes the second drains its sessions as a shutdown does
//! (FATAL 57P01 saying why) and closes its ports; one that adds it back serves it again.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgrouter_lab::{Lab, LabSpec};
use serde_json::Value;

use crate::support::{
    connect, ended_with_error, eventually, http, metric_sum, server_port, Router, RouterOptions,
};

const SECOND_BASE: u16 = 18100;
const ROUTER: u16 = 17656;
const SECOND_PRIMARY: u16 = 17670;
const SECOND_REPLICAS: u16 = 17671;
const PATIENCE: Duration = Duration::from_secs(90);

pub async fn two_clusters_behind_one_router(lab: &Lab) -> Result<()> {
    let dir = lab.spec().dir.with_file_name("pgrouter-second-cluster");
    let mut spec = LabSpec::new(dir, SECOND_BASE);
    spec.scope = "second".into();
    spec.external_etcd = Some(lab.etcd_endpoints());
    let second = tokio::task::spawn_blocking(move || Lab::start(spec))
        .await?
        .context("starting the second cluster")?;
    let clusters = format!(
        "[clusters.second]\nscope = \"second\"\netcd = [{}]\nprimary = \"127.0.0.1:{SECOND_PRIMARY}\"\nreplicas = \"127.0.0.1:{SECOND_REPLICAS}\"\n",
        lab.etcd_toml_list()
    );
    let router = Router::start(
        lab,
        ROUTER,
        RouterOptions {
            sections: &clusters,
            ..RouterOptions::default()
        },
    )?;
    let result = steps(lab, &second, &router)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\nthe router's log:\n{}", router.log_tail(30)));
    drop(router);
    drop(second);
    result
}

async fn writes_on(port: u16, want: u16) -> Result<bool> {
    let (client, _c) = connect(port, "two-clusters").await?;
    client
        .batch_execute(
            "create table if not exists two_clusters(x int); insert into two_clusters values (1)",
        )
        .await?;
    let on = server_port(&client).await?;
    ensure!(on == want, "writes through {port} on {on}, want {want}");
    Ok(true)
}

async fn pid(c: &tokio_postgres::Client) -> Result<i32> {
    Ok(c.query_one("select pg_backend_pid()", &[]).await?.get(0))
}

async fn steps(lab: &Lab, second: &Lab, router: &Router) -> Result<()> {
    eventually("/health 200 for both clusters", PATIENCE, || async {
        let (status, body) = http("GET", router.admin, "/health", None)?;
        ensure!(status == 200, "{status} {body}");
        let (status, body) = http("GET", router.admin, "/health?cluster=second", None)?;
        ensure!(status == 200, "?cluster=second: {status} {body}");
        Ok(true)
    })
    .await?;
    let (status, _) = http("GET", router.admin, "/health?cluster=nope", None)?;
    ensure!(status == 404, "/health?cluster=nope: {status}");
    let second_leader = second.pg_port(&second.leader()?);
    eventually(
        "the second cluster's writes on its leader",
        PATIENCE,
        || writes_on(SECOND_PRIMARY, second_leader),
    )
    .await?;
    let old = lab.leader()?;
    eventually("the first cluster's writes on its leader", PATIENCE, || {
        writes_on(router.primary, lab.pg_port(&old))
    })
    .await?;

    // Sessions on the second cluster, then a switchover in the first.
    let (writer, writer_end) = connect(SECOND_PRIMARY, "second-writer").await?;
    let (reader, _reader_end) = connect(SECOND_REPLICAS, "second-reader").await?;
    let (writer_pid, reader_pid) = (pid(&writer).await?, pid(&reader).await?);
    tokio::task::block_in_place(|| lab.switchover(None))?;
    let new = lab.wait_leader_other_than(&old, PATIENCE)?;
    eventually(
        "the first cluster's writes on its new leader",
        PATIENCE,
        || writes_on(router.primary, lab.pg_port(&new)),
    )
    .await?;
    ensure!(
        (pid(&writer).await?, pid(&reader).await?) == (writer_pid, reader_pid),
        "the second cluster's sessions changed"
    );
    writer
        .execute("insert into two_clusters values (2)", &[])
        .await
        .context("the second cluster's writer after the first's switchover")?;
    tokio::task::block_in_place(|| lab.wait_healthy(PATIENCE * 2))?;

    // Metrics by cluster; status of each; one etcd connection for both.
    let (_, page) = http("GET", router.admin, "/metrics", None)?;
    for cluster in ["demo", "second"] {
        let label = format!("cluster=\"{cluster}\"");
        let connected = metric_sum(&page, "pgrouter_dcs_connected", &[&label])?;
        ensure!(
            connected == 1.0,
            "pgrouter_dcs_connected{{{label}}} {connected}"
        );
    }
    let changes = |c: &str| metric_sum(&page, "pgrouter_leader_changes_total", &[c]);
    ensure!(
        changes("cluster=\"demo\"")? >= 1.0 && changes("cluster=\"second\"")? == 0.0,
        "leader changes counted in the wrong cluster"
    );
    let (_, body) = http("GET", router.admin, "/status", None)?;
    let status: Value = serde_json::from_str(&body)?;
    let scopes: Vec<&str> = status["clusters"]
        .as_array()
        .context("/status has no clusters")?
        .iter()
        .filter_map(|c| c["cluster"].as_str())
        .collect();
    ensure!(scopes == ["demo", "second"], "/status clusters: {scopes:?}");
    let printed = router.status_printed()?;
    ensure!(
        printed.contains("Cluster: demo") && printed.contains("Cluster: second"),
        "pgrouter status:\n{printed}"
    );
    let etcd = etcd_connections(lab, router.pid())?;
    ensure!(
        etcd == 1,
        "{etcd} connections to etcd for two clusters in it"
    );

    // Removed by a reload: drained as in a shutdown, its ports closed.
    let path = router.config_path();
    let with_second = std::fs::read_to_string(&path)?;
    let at = with_second
        .find("[clusters.second]")
        .context("no [clusters.second]")?;
    std::fs::write(&path, &with_second[..at])?;
    let (status, body) = http("POST", router.admin, "/reload", None)?;
    ensure!(
        status == 200,
        "reload without the second cluster: {status} {body}"
    );
    let e = ended_with_error("the second cluster's idle writer", writer_end, PATIENCE).await?;
    let db = e.as_db_error().context("not an ErrorResponse")?;
    ensure!(
        db.severity() == "FATAL"
            && db.code().code() == "57P01"
            && db
                .message()
                .starts_with("pgrouter: cluster \"second\": closing session on ")
            && db
                .message()
                .contains("is no longer served: it was removed from pgrouter's config"),
        "the second cluster's idle writer was told: {} {} {}",
        db.severity(),
        db.code().code(),
        db.message()
    );
    eventually("the second cluster's ports closed", PATIENCE, || async {
        Ok(std::net::TcpStream::connect(("127.0.0.1", SECOND_PRIMARY)).is_err())
    })
    .await?;
    let (status, _) = http("GET", router.admin, "/health?cluster=second", None)?;
    ensure!(
        status == 404,
        "/health?cluster=second after removal: {status}"
    );

    // Added back by another.
    std::fs::write(&path, &with_second)?;
    let (status, body) = http("POST", router.admin, "/reload", None)?;
    ensure!(
        status == 200,
        "reload adding the second cluster back: {status} {body}"
    );
    let leader = second.pg_port(&second.leader()?);
    eventually("the second cluster served again", PATIENCE, || {
        writes_on(SECOND_PRIMARY, leader)
    })
    .await?;
    Ok(())
}

/// Established TCP connections of process `pid` to the lab's etcd client ports.
fn etcd_connections(lab: &Lab, pid: u32) -> Result<usize> {
    let out = std::process::Command::new("ss")
        .args(["-Htnp", "state", "established"])
        .output()
        .context("running ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ports: Vec<String> = lab
        .etcd_endpoints()
        .iter()
        .filter_map(|e| e.rsplit_once(':').map(|(_, p)| format!(":{p} ")))
        .collect();
    Ok(text
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter(|l| {
            // The peer is the fourth column (local, then peer, after the queues).
            l.split_whitespace().nth(3).is_some_and(|peer| {
                ports
                    .iter()
                    .any(|p| format!("{peer} ").ends_with(p.as_str()))
            })
        })
        .count())
}
