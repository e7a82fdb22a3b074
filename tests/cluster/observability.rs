//! Issue 29's logs and metrics on the real lab: the per-connection line for sessions that
//! end in different ways, a refusal at max_client_conn logged at info, and the new series
//! (accepted connections, build and process, reload state, the etcd event timestamp).
//! Router ports 20600-20602 and, pooled, 20610-20612 (the balancers scenario has 20500-20599).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;

use crate::support::{connect, eventually, http, metric, scram_userlist, Router, RouterOptions};

/// The log lines of `router` that end a session of application `app`.
fn ended(router: &Router, app: &str) -> Vec<String> {
    router
        .log_text()
        .lines()
        .filter(|l| l.contains("client session ended") && l.contains(app))
        .map(str::to_owned)
        .collect()
}

pub async fn connection_log_and_new_metrics(lab: &Lab) -> Result<()> {
    let mut router = Router::start(
        lab,
        20600,
        RouterOptions {
            listen_extra: "max_client_conn = 2\n",
            admin: Some(20602),
            ..RouterOptions::default()
        },
    )?;
    let admin = router.admin;
    eventually("health 200", Duration::from_secs(10), || async {
        Ok(http("GET", admin, "/health", None)?.0 == 200)
    })
    .await?;
    let leader = lab.leader()?;

    // A session that ends by the client's Terminate, with its bytes.
    let (client, conn) = connect(router.primary, "obs-closed").await?;
    client.simple_query("select repeat('x', 5000)").await?;
    drop(client);
    let _ = conn.await;
    eventually(
        "the closed session's line",
        Duration::from_secs(10),
        || async { Ok(!ended(&router, "obs-closed").is_empty()) },
    )
    .await?;
    let line = &ended(&router, "obs-closed")[0];
    for field in [
        " INFO pgrouter::connections: client session ended ",
        "cluster=\"demo\"",
        "listener=\"primary\"",
        "user=\"postgres\"",
        "database=\"postgres\"",
        "application_name=\"obs-closed\"",
        &format!("member=\"{leader}\""),
        "end=\"client_closed\"",
    ] {
        ensure!(line.contains(field), "{field} not in {line}");
    }
    let bytes_out: u64 = line
        .split("bytes_out=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ensure!(bytes_out > 5000, "bytes_out {bytes_out} in {line}");
    ensure!(
        !line.contains("password") && !line.contains("sqlstate"),
        "{line}"
    );

    // A session pgrouter ends: a third client past max_client_conn = 2 is refused with 53300
    // and logged at info.
    let (a, _ca) = connect(router.primary, "obs-one").await?;
    let (b, _cb) = connect(router.replicas, "obs-two").await?;
    let third = connect(router.primary, "obs-three").await;
    ensure!(
        third.is_err(),
        "a third client past max_client_conn = 2 was let in"
    );
    let refused = router
        .log_text()
        .lines()
        .any(|l| l.contains(" INFO ") && l.contains("client past listen.max_client_conn"));
    ensure!(
        refused,
        "no info line for the refusal:\n{}",
        router.log_tail(20)
    );
    drop((a, b));

    let text = http("GET", admin, "/metrics", None)?.1;
    ensure!(
        metric(
            &text,
            "pgrouter_client_connections_accepted_total{port=\"primary\"}"
        )? >= 3.0
    );
    ensure!(
        metric(
            &text,
            "pgrouter_client_connections_accepted_total{port=\"replicas\"}"
        )? >= 1.0
    );
    ensure!(metric(&text, "pgrouter_client_errors_total{sqlstate=\"53300\"}")? >= 1.0);
    ensure!(metric(&text, "pgrouter_config_last_reload_successful")? == 1.0);
    ensure!(metric(&text, "pgrouter_max_client_connections")? == 2.0);
    ensure!(metric(&text, "process_open_fds")? > 5.0);
    ensure!(metric(&text, "process_resident_memory_bytes")? > 1e6);
    ensure!(
        text.contains(&format!(
            "pgrouter_build_info{{arch=\"{}\",os=\"linux\",version=\"{}\"}} 1",
            std::env::consts::ARCH,
            env!("CARGO_PKG_VERSION")
        )),
        "no build info:\n{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let last = metric(&text, "pgrouter_dcs_last_event_timestamp_seconds")?;
    ensure!(
        now - last < 60.0 && last <= now + 1.0,
        "last etcd event at {last}, now {now}"
    );

    pooled_session_line(lab).await?;

    // A session pgrouter ends: drained at shutdown, told 57P01.
    let (idle, _conn) = connect(router.replicas, "obs-drained").await?;
    idle.simple_query("select 1").await?;
    router.signal("-TERM")?;
    ensure!(
        router.wait_exit(Duration::from_secs(20))? == Some(0),
        "no clean exit"
    );
    let drained = ended(&router, "obs-drained");
    ensure!(drained.len() == 1, "{drained:?}");
    for field in [
        "listener=\"replicas\"",
        "end=\"shutdown\"",
        "sqlstate=\"57P01\"",
    ] {
        ensure!(drained[0].contains(field), "{field} not in {}", drained[0]);
    }
    Ok(())
}

/// A pooled client's line: written when it leaves, naming the member its transactions used,
/// without byte counts (pooled bytes are per pool).
async fn pooled_session_line(lab: &Lab) -> Result<()> {
    let userlist = scram_userlist(lab, 20610, "")?;
    let sections = format!(
        "[pool]\npool_size = 7\n[auth]\nauth_file = \"{}\"\n",
        userlist.display()
    );
    let router = Router::start(
        lab,
        20610,
        RouterOptions {
            listen_extra: "primary_pool_mode = \"transaction\"\n",
            sections: &sections,
            admin: Some(20612),
            ..RouterOptions::default()
        },
    )?;
    let leader = lab.leader()?;
    let (client, conn) = connect(router.primary, "obs-pooled").await?;
    for _ in 0..3 {
        client.simple_query("select 1").await?;
    }
    drop(client);
    let _ = conn.await;
    eventually(
        "the pooled session's line",
        Duration::from_secs(10),
        || async { Ok(!ended(&router, "obs-pooled").is_empty()) },
    )
    .await?;
    let line = &ended(&router, "obs-pooled")[0];
    for field in [
        "listener=\"primary\"",
        "user=\"postgres\"",
        &format!("member=\"{leader}\""),
        "end=\"client_closed\"",
    ] {
        ensure!(line.contains(field), "{field} not in {line}");
    }
    // Three `select 1` and their answers (the login's bytes are not a transaction's).
    let field = |name: &str| -> Result<u64> {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in {line}"))
    };
    let (bytes_in, bytes_out) = (field("bytes_in")?, field("bytes_out")?);
    ensure!(
        bytes_in == 3 * 14 && bytes_out > 3 * 40,
        "bytes_in {bytes_in}, bytes_out {bytes_out} for three `select 1`: {line}"
    );
    ensure!(
        !router.log_text().contains("pooled client left"),
        "the old pooled line is still written"
    );
    // The pool's size beside its connections (the upkeep exports it every second), and the
    // three transactions timed.
    let pool = format!(
        "pgrouter_pool_size{{database=\"postgres\",member=\"{leader}\",role=\"leader\",user=\"postgres\"}}"
    );
    eventually("pool_size exported", Duration::from_secs(10), || async {
        let text = http("GET", router.admin, "/metrics", None)?.1;
        Ok(metric(&text, &pool).ok() == Some(7.0))
    })
    .await?;
    let text = http("GET", router.admin, "/metrics", None)?.1;
    let timed = metric(
        &text,
        "pgrouter_transaction_seconds_count{port=\"primary\"}",
    )?;
    ensure!(timed >= 3.0, "{timed} transactions timed");
    Ok(())
}
