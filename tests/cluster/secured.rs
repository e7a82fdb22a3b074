//! Issue 27, a production etcd and Patroni: a second lab whose etcd serves TLS only, wants
//! client certificates and RBAC users, and whose Patroni REST APIs are HTTPS requiring a client
//! certificate. pgrouter reads it with `cluster.etcd_ca`/`etcd_cert`/`etcd_key`, a read-only
//! etcd user and `cluster.rest_ca`/`rest_cert`/`rest_key`: routing, a switchover, kill -9 of
//! the leader and an etcd outage (the leader confirmed over HTTPS) behave as on the plain lab.
//! A wrong CA, a client certificate of another CA, a wrong password and a user without read
//! permission each give their own named error in /health and /status, and route nothing.
//! On the plain lab, a scope with no Patroni keys is reported the same way.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgrouter_lab::{Lab, LabSpec, Secure, ETCD_NOBODY, ETCD_PGROUTER};
use serde_json::Value;

use crate::support::{connect, eventually, http, server_port, Router, RouterOptions};

/// The secured lab's ports: etcd 17900-17905, PostgreSQL 17910-17912, REST 17920-17922.
const SECURED_BASE: u16 = 17900;
/// Routers on the secured lab: 17950 (and 17951, admin 19950) onwards.
const ROUTER: u16 = 17950;
const PATIENCE: Duration = Duration::from_secs(60);

pub async fn secured_etcd_and_https_rest(lab: &Lab) -> Result<()> {
    let dir = lab.spec().dir.with_file_name("pgrouter-secured-lab");
    let mut spec = LabSpec::new(dir, SECURED_BASE);
    spec.secure = Some(Secure {
        verify_client: true,
    });
    let secured = tokio::task::spawn_blocking(move || Lab::start(spec))
        .await?
        .context("starting the secured lab")?;
    let result = scenarios(&secured).await;
    drop(secured);
    result
}

/// `[cluster]` keys reaching the secured lab as `etcd_user`, with `ca` for etcd and `client`
/// ("pgrouter" or "rogue") as the client certificate.
fn cluster_keys(lab: &Lab, ca: &str, client: &str, etcd_user: (&str, &str)) -> String {
    let tls = lab.spec().tls().expect("the secured lab");
    let (cert, key) = tls.cert(client);
    let (rest_cert, rest_key) = tls.cert("pgrouter");
    let ca = match ca {
        "other" => tls.other_ca(),
        _ => tls.ca(),
    };
    format!(
        "etcd_ca = {:?}\netcd_cert = {:?}\netcd_key = {:?}\netcd_username = {:?}\netcd_password = {:?}\nrest_ca = {:?}\nrest_cert = {:?}\nrest_key = {:?}\n",
        ca, cert, key, etcd_user.0, etcd_user.1, tls.ca(), rest_cert, rest_key
    )
}

fn router(lab: &Lab, port: u16, cluster: &str) -> Result<Router> {
    Router::start(
        lab,
        port,
        RouterOptions {
            cluster_extra: cluster,
            routing: "hold_timeout = \"3s\"\ndrain_timeout = \"5s\"\n",
            ..RouterOptions::default()
        },
    )
}

async fn scenarios(lab: &Lab) -> Result<()> {
    let keys = cluster_keys(lab, "ca", "pgrouter", ETCD_PGROUTER);
    let good = router(lab, ROUTER, &keys)?;
    routes_as_on_the_plain_lab(lab, &good).await.map_err(|e| {
        anyhow::anyhow!("the secured router: {e:#}\nits log:\n{}", good.log_tail(30))
    })?;
    drop(good);
    let refused = [
        (
            "a CA that did not sign etcd's certificate",
            cluster_keys(lab, "other", "pgrouter", ETCD_PGROUTER),
            "TLS with etcd failed",
        ),
        (
            "a client certificate of another CA",
            cluster_keys(lab, "ca", "rogue", ETCD_PGROUTER),
            "TLS with etcd failed",
        ),
        (
            "a wrong password",
            cluster_keys(lab, "ca", "pgrouter", ("pgrouter", "not-the-password")),
            "etcd refused cluster.etcd_username \"pgrouter\"",
        ),
        (
            "a user without read permission",
            cluster_keys(lab, "ca", "pgrouter", ETCD_NOBODY),
            "etcd user \"nobody\" may not read /service/demo/",
        ),
    ];
    for (i, (what, keys, said)) in refused.iter().enumerate() {
        let port = ROUTER + 2 + 2 * i as u16;
        let r = router(lab, port, keys)?;
        refuses_with(&r, said)
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}\nthe router's log:\n{}", r.log_tail(20)))?;
    }
    Ok(())
}

/// /health's status and body.
fn health(router: &Router) -> Result<(u16, Value)> {
    let (status, body) = http("GET", router.admin, "/health", None)?;
    Ok((status, serde_json::from_str(&body)?))
}

async fn routes_as_on_the_plain_lab(lab: &Lab, router: &Router) -> Result<()> {
    eventually("/health 200", PATIENCE, || async {
        let (status, body) = health(router)?;
        ensure!(status == 200, "{status} {body}");
        Ok(true)
    })
    .await?;
    let writes_reach = |want: String| {
        let port = router.primary;
        async move {
            let (client, _c) = connect(port, "secured").await?;
            client
                .batch_execute(
                    "create table if not exists secured(x int); insert into secured values (1)",
                )
                .await?;
            let on = server_port(&client).await?;
            ensure!(
                on == lab.pg_port(&want),
                "writes on {on}, the leader {want}"
            );
            Ok(true)
        }
    };
    let leader = lab.leader()?;
    eventually("writes on the leader", PATIENCE, || {
        writes_reach(leader.clone())
    })
    .await?;
    let (reader, _c) = connect(router.replicas, "secured-read").await?;
    let read_on = server_port(&reader).await?;
    ensure!(
        read_on != lab.pg_port(&leader),
        "the replicas port reached the leader"
    );
    let (status, body) = http("GET", router.admin, "/status", None)?;
    let status_json: Value = serde_json::from_str(&body)?;
    ensure!(
        status == 200 && status_json["dcs"]["problem"].is_null(),
        "/status: {body}"
    );

    // A planned switchover.
    tokio::task::block_in_place(|| lab.switchover(None))?;
    let after = lab.wait_leader_other_than(&leader, PATIENCE)?;
    eventually(
        "writes on the new leader after a switchover",
        PATIENCE,
        || writes_reach(after.clone()),
    )
    .await?;
    tokio::task::block_in_place(|| lab.wait_healthy(PATIENCE * 2))?;

    // kill -9 of the leader.
    tokio::task::block_in_place(|| lab.kill_member(&after))?;
    let next = lab.wait_leader_other_than(&after, PATIENCE)?;
    eventually(
        "writes on the leader elected after kill -9",
        PATIENCE,
        || writes_reach(next.clone()),
    )
    .await?;
    tokio::task::block_in_place(|| lab.start_member(&after))?;
    tokio::task::block_in_place(|| lab.wait_healthy(PATIENCE * 2))?;

    // etcd lost: the leader keeps its writes while its Patroni confirms it over HTTPS, with
    // pgrouter's client certificate (verify_client: required).
    let leader = lab.leader()?;
    tokio::task::block_in_place(|| lab.stop_etcd())?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let kept = writes_reach(leader.clone()).await;
    tokio::task::block_in_place(|| lab.start_etcd())?;
    kept.context("a write while etcd was lost (the leader confirmed over HTTPS)")?;
    ensure!(
        !router
            .log_text()
            .contains("does not confirm it is the primary"),
        "the leader went unconfirmed during the outage"
    );
    tokio::task::block_in_place(|| lab.wait_healthy(PATIENCE * 2))?;
    Ok(())
}

/// /health stays 503 naming `said`, /status and `pgrouter status` say it too, and a client is
/// refused with 57P03 instead of reaching a member.
async fn refuses_with(router: &Router, said: &str) -> Result<()> {
    eventually(&format!("/health naming {said:?}"), PATIENCE, || async {
        let (status, body) = health(router)?;
        let reason = body["reason"].as_str().unwrap_or_default();
        ensure!(status == 503 && reason.contains(said), "{status} {body}");
        Ok(true)
    })
    .await?;
    let (_, body) = http("GET", router.admin, "/status", None)?;
    let status: Value = serde_json::from_str(&body)?;
    let problem = status["dcs"]["problem"].as_str().unwrap_or_default();
    ensure!(problem.contains(said), "/status: {body}");
    let printed = router.status_printed()?;
    ensure!(
        printed.contains("DCS problem: ") && printed.contains(said),
        "pgrouter status:\n{printed}"
    );
    // Passthrough: the login itself is held, then refused.
    let e = match connect(router.primary, "refused").await {
        Ok((client, _c)) => client
            .simple_query("select 1")
            .await
            .err()
            .context("a query ran without a view of the cluster")?,
        Err(e) => e
            .downcast::<tokio_postgres::Error>()
            .context("not a PostgreSQL error")?,
    };
    let db = e.as_db_error().with_context(|| format!("{e:?}"))?;
    ensure!(
        db.code().code() == "57P03" && db.message().contains(said),
        "the client was told: {} {}",
        db.code().code(),
        db.message()
    );
    Ok(())
}

/// On the plain lab: a scope with no Patroni keys is named in /health, /status and the log.
pub async fn empty_prefix_is_reported(lab: &Lab) -> Result<()> {
    let router = Router::start(
        lab,
        17654,
        RouterOptions {
            scope: "no-such-cluster",
            ..RouterOptions::default()
        },
    )?;
    let said = "no Patroni keys under /service/no-such-cluster/";
    eventually("/health naming the empty prefix", PATIENCE, || async {
        let (status, body) = health(&router)?;
        let reason = body["reason"].as_str().unwrap_or_default();
        ensure!(status == 503 && reason.contains(said), "{status} {body}");
        Ok(true)
    })
    .await?;
    ensure!(
        router.log_text().contains(said),
        "not warned in the log:\n{}",
        router.log_tail(20)
    );
    Ok(())
}
