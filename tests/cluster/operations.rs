//! The operations issue on the real lab: metrics that pass promtool and move with traffic and a
//! switchover, health endpoints through a switchover and an etcd stop, pause and resume under
//! pgbench, reload (bad file changes nothing, good file applies), SIGTERM under load.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgrouter_lab::Lab;

use crate::support::{
    connect, eventually, http, metric, metric_sum, server_port, startup_packet, Router,
    RouterOptions,
};

/// How long to wait for an event the scenario is about (a log line, a metric).
const PATIENCE: Duration = Duration::from_secs(30);

fn promtool_check(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus)")?;
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "promtool check metrics failed:\n{said}"
    );
    Ok(())
}

pub async fn metrics_and_health(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17520, RouterOptions::default())?;
    let admin = router.admin;
    eventually("health 200", Duration::from_secs(10), || async {
        Ok(http("GET", admin, "/health", None)?.0 == 200)
    })
    .await?;
    let (client, _conn) = connect(router.primary, "pgrouter-test-metrics").await?;
    for _ in 0..20 {
        client.simple_query("select 1").await?;
    }
    let text = http("GET", admin, "/metrics", None)?.1;
    promtool_check(&text)?;
    ensure!(
        metric(&text, "pgrouter_transactions_total{port=\"primary\"}")? >= 20.0,
        "transactions not counted:\n{text}"
    );
    ensure!(
        metric(
            &text,
            "pgrouter_bytes_total{direction=\"server_to_client\",port=\"primary\"}"
        )? > 0.0
    );
    ensure!(
        metric(
            &text,
            "pgrouter_client_connections{port=\"primary\",state=\"idle\"}"
        )? >= 1.0
    );
    ensure!(metric(&text, "pgrouter_dcs_connected")? == 1.0);
    let old = lab.leader()?;
    ensure!(
        metric(
            &text,
            &format!("pgrouter_member_leader{{member=\"{old}\"}}")
        )? == 1.0
    );
    for (path, want) in [("/primary", 200), ("/replica", 200)] {
        ensure!(
            http("GET", admin, path, None)?.0 == want,
            "{path} before the switchover"
        );
    }

    lab.switchover(None)?;
    let new = lab.wait_leader_other_than(&old, Duration::from_secs(60))?;
    eventually(
        "/primary names the new leader",
        Duration::from_secs(30),
        || async {
            let (status, body) = http("GET", admin, "/primary", None)?;
            Ok(status == 200 && body.contains(&format!("\"{new}\"")))
        },
    )
    .await?;
    let text = http("GET", admin, "/metrics", None)?.1;
    promtool_check(&text)?;
    ensure!(
        metric(&text, "pgrouter_leader_changes_total")? >= 1.0,
        "leader change not counted"
    );
    ensure!(
        metric(&text, "pgrouter_route_switch_seconds_count")? >= 1.0,
        "route switch not observed"
    );
    ensure!(
        metric(
            &text,
            &format!("pgrouter_member_leader{{member=\"{new}\"}}")
        )? == 1.0
    );
    let status = http("GET", admin, "/status", None)?.1;
    ensure!(
        status.contains(&format!("\"writable_leader\":\"{new}\"")),
        "status: {status}"
    );
    let printed = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .args(["status", "--admin", &format!("http://127.0.0.1:{admin}")])
        .output()?;
    let table = String::from_utf8_lossy(&printed.stdout);
    ensure!(
        printed.status.success() && table.contains(&format!("writes to: {new}")),
        "pgrouter status printed:\n{table}"
    );

    // etcd gone: no live view, so /health says 503; routing goes on from the last view.
    lab.stop_etcd()?;
    let during = async {
        eventually(
            "health 503 without etcd",
            Duration::from_secs(20),
            || async { crate::support::is(http("GET", admin, "/health", None)?.0, 503) },
        )
        .await?;
        ensure!(
            http("GET", admin, "/primary", None)?.0 == 200,
            "/primary refused while the last view still has a leader"
        );
        anyhow::Ok(())
    }
    .await;
    lab.start_etcd()?;
    during?;
    eventually(
        "health 200 after etcd returns",
        Duration::from_secs(30),
        || async { crate::support::is(http("GET", admin, "/health", None)?.0, 200) },
    )
    .await
}

/// Runs pgbench against `port` for `seconds` in the background.
fn pgbench(port: u16, clients: u32, seconds: u32) -> Result<std::process::Child> {
    let (clients, seconds) = (clients.to_string(), seconds.to_string());
    Ok(
        crate::support::pgbench_command(port, &["-S", "-c", &clients, "-T", &seconds])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    )
}

pub async fn pause_and_resume(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17530, RouterOptions::default())?;
    let admin = router.admin;
    crate::support::pgbench_init(lab)?;
    let bench = pgbench(router.primary, 8, 10)?;
    let txns = || -> Result<f64> {
        metric(
            &http("GET", admin, "/metrics", None)?.1,
            "pgrouter_transactions_total{port=\"primary\"}",
        )
    };
    // Paused under load, not before pgbench got going.
    eventually("pgbench running through pgrouter", PATIENCE, || async {
        Ok(txns()? >= 100.0)
    })
    .await?;

    let (status, body) = http("POST", admin, "/pause?port=primary", None)?;
    ensure!(
        status == 200 && body.contains("\"active\":0"),
        "pause: {status} {body}"
    );
    let at_pause = txns()?;
    // A new client arriving while paused is held, not refused.
    let primary = router.primary;
    let late = tokio::spawn(async move {
        let (client, _conn) = connect(primary, "pgrouter-test-paused").await?;
        anyhow::Ok((Instant::now(), server_port(&client).await?))
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(txns()? == at_pause, "transactions ran while paused");
    ensure!(!late.is_finished(), "a new client got through while paused");
    let resumed_at = Instant::now();
    let (status, _) = http("POST", admin, "/resume?port=primary", None)?;
    ensure!(status == 200);
    let (served_at, _) = tokio::time::timeout(Duration::from_secs(10), late).await???;
    ensure!(served_at >= resumed_at, "held client served before resume");

    let out = bench.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "pgbench failed: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        report.contains("number of failed transactions: 0"),
        "pgbench saw failures:\n{report}"
    );
    ensure!(txns()? > at_pause, "no transactions after resume");
    Ok(())
}

pub async fn reload(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17540, RouterOptions::default())?;
    let admin = router.admin;
    let path = router.config_path();
    let good = std::fs::read_to_string(&path)?;
    let (kept, _conn) = connect(router.replicas, "pgrouter-test-kept").await?;

    // Two bad files, each through POST /reload and through SIGHUP, refused with the key and
    // the reason: one that does not parse, and one that parses but names a certificate that
    // cannot be read (found only once the file's parts are loaded). Neither changes anything,
    // not even what its valid lines say: the replica port moved to 17549.
    let moved_replicas = good.replace(&format!("127.0.0.1:{}", router.replicas), "127.0.0.1:17549");
    let missing = "/nonexistent/pgrouter-test.crt";
    let bad_files = [
        (
            moved_replicas.replace("[routing]", "[routing]\nconnect_timeout = \"soon\""),
            "routing.connect_timeout: invalid duration",
        ),
        (
            format!("{moved_replicas}\n[tls]\nmode = \"allow\"\ncert = \"{missing}\"\nkey = \"{missing}\"\n"),
            "tls.cert",
        ),
    ];
    for (n, (file, says)) in bad_files.iter().enumerate() {
        std::fs::write(&path, file)?;
        let (status, body) = http("POST", admin, "/reload", None)?;
        ensure!(
            status == 400 && body.contains(says),
            "bad reload answered {status} {body}, expected 400 saying {says:?}"
        );
        router.signal("-HUP")?;
        // Each refusal is logged: the POST's, then the SIGHUP's.
        eventually(
            "the SIGHUP refusal logged",
            Duration::from_secs(10),
            || async {
                let log = router.log_text();
                let refusals: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("reload refused"))
                    .collect();
                Ok(refusals.len() == 2 * (n + 1)
                    && refusals.last().is_some_and(|l| l.contains(says)))
            },
        )
        .await?;
    }
    ensure!(
        std::net::TcpStream::connect(("127.0.0.1", 17549)).is_err(),
        "a refused file moved the replica port to 17549"
    );
    // (Closed again: the good file below leaves room for three clients.)
    let on_replica: bool = connect(router.replicas, "pgrouter-test")
        .await?
        .0
        .query_one("select pg_is_in_recovery()", &[])
        .await?
        .get(0);
    ensure!(
        on_replica,
        "after a refused file the replica port reached a primary"
    );
    let one: i32 = kept.query_one("select 1", &[]).await?.get(0);
    ensure!(one == 1, "the session kept across a refused file");

    // A good file: the replica port moves, and a lower client limit applies at once.
    let moved = good
        .replace(&format!("127.0.0.1:{}", router.replicas), "127.0.0.1:17549")
        .replace("[listen]\n", "[listen]\nmax_client_conn = 3\n");
    std::fs::write(&path, moved)?;
    let (status, body) = http("POST", admin, "/reload", None)?;
    ensure!(status == 200, "good reload answered {status} {body}");
    let (client, _conn) = connect(17549, "pgrouter-test-moved").await?;
    let on_replica: bool = client
        .query_one("select pg_is_in_recovery()", &[])
        .await?
        .get(0);
    ensure!(on_replica, "the moved replica port reached a primary");
    ensure!(
        std::net::TcpStream::connect(("127.0.0.1", router.replicas)).is_err(),
        "the old replica port still listens"
    );
    let one: i32 = kept.query_one("select 1", &[]).await?.get(0);
    ensure!(one == 1, "the session on the old port was dropped");
    // kept + client = 2 of 3 permits; the fourth client is refused with 53300.
    let (_third, _c3) = connect(router.primary, "pgrouter-test-limit").await?;
    match connect(router.primary, "pgrouter-test-limit").await {
        Ok(_) => bail!("max_client_conn = 3 did not apply"),
        Err(e) => {
            let code = e
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(|e| e.as_db_error())
                .map(|d| d.code().code().to_owned());
            ensure!(
                code.as_deref() == Some("53300"),
                "expected 53300, got {e:#}"
            );
        }
    }
    Ok(())
}

/// SIGTERM under pgbench load: pgrouter stops accepting, lets an open transaction commit (it
/// closes sessions at their idle points), and exits 0.
pub async fn sigterm_drains(lab: &Lab) -> Result<()> {
    // Its own pgbench tables: a scenario must not lean on one that ran before it.
    crate::support::pgbench_init(lab)?;
    let mut router = Router::start(lab, 17550, RouterOptions::default())?;
    let admin = router.admin;
    let bench = pgbench(router.primary, 4, 30)?;
    let (in_tx, in_tx_end) = connect(router.primary, "pgrouter-test-drain").await?;
    in_tx.batch_execute("begin; select 1").await?;
    eventually("pgbench running through pgrouter", PATIENCE, || async {
        let page = http("GET", admin, "/metrics", None)?.1;
        Ok(metric(&page, "pgrouter_transactions_total{port=\"primary\"}")? >= 100.0)
    })
    .await?;
    router.signal("-TERM")?;
    // Drain has begun (not merely the signal sent): the transaction is open across it.
    eventually("pgrouter to say it is draining", PATIENCE, || async {
        Ok(router
            .log_text()
            .contains("shutting down: draining sessions"))
    })
    .await?;
    eventually("the primary port to stop accepting", PATIENCE, || async {
        Ok(std::net::TcpStream::connect(("127.0.0.1", router.primary)).is_err())
    })
    .await?;
    // The open transaction still commits: pgrouter waits for its idle point, then closes it.
    in_tx
        .batch_execute("commit")
        .await
        .context("commit during shutdown")?;
    let what = "the session that committed during the drain";
    let told = crate::support::ended_with_error(what, in_tx_end, PATIENCE).await?;
    let told = crate::support::pgrouter_error(what, &told, "FATAL", "57P01", "closing session on")?;
    println!("  the session that committed during the drain then got: {told}");
    let exited =
        tokio::task::spawn_blocking(move || router.wait_exit(Duration::from_secs(20))).await??;
    ensure!(exited == Some(0), "pgrouter exit status {exited:?}");
    let out = bench.wait_with_output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(
        report.contains("number of transactions actually processed"),
        "pgbench did not run: {report}"
    );
    Ok(())
}

pub async fn admin_token(lab: &Lab) -> Result<()> {
    let token = "s3cret-admin-token-123";
    let extra = format!("admin_token = \"{token}\"\n");
    let router = Router::start(
        lab,
        17560,
        RouterOptions {
            listen_extra: &extra,
            ..RouterOptions::default()
        },
    )?;
    for path in ["/metrics", "/health", "/status"] {
        let (status, _) = http("GET", router.admin, path, None)?;
        ensure!(status == 401, "{path} without a token answered {status}");
        let (status, _) = http("GET", router.admin, path, Some("wrong-token-wrong-token"))?;
        ensure!(status == 401, "{path} with a wrong token answered {status}");
    }
    eventually("health with the token", Duration::from_secs(10), || async {
        Ok(http("GET", router.admin, "/health", Some(token))?.0 == 200)
    })
    .await?;
    let (status, body) = http("POST", router.admin, "/resume", Some(token))?;
    ensure!(status == 200, "resume with the token: {status} {body}");
    let text = http("GET", router.admin, "/metrics", Some(token))?.1;
    ensure!(!text.contains(token), "the token leaked into the metrics");
    ensure!(
        !router.log_text().contains(token),
        "the token leaked into the log"
    );
    Ok(())
}

/// A client held while the port is paused that closes its connection is dropped at once: counted,
/// never routed when the port resumes.
pub async fn held_client_that_leaves_is_dropped(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17600, RouterOptions::default())?;
    let admin = router.admin;
    let (status, body) = http("POST", admin, "/pause?port=primary", None)?;
    ensure!(status == 200, "pause: {status} {body}");
    let mut leaver = std::net::TcpStream::connect(("127.0.0.1", router.primary))?;
    std::io::Write::write_all(
        &mut leaver,
        &startup_packet(
            196608,
            b"user\0postgres\0database\0postgres\0application_name\0pgrouter-test-left\0\0",
        ),
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = http("GET", admin, "/metrics", None)?.1;
    ensure!(
        metric_sum(&page, "pgrouter_client_connections", &["state=\"held\""])? == 1.0,
        "the client is not held while paused"
    );
    drop(leaver);
    let left = "pgrouter_clients_left_waiting_total{port=\"primary\"}";
    eventually(
        "the held client to be counted as gone",
        Duration::from_secs(10),
        || async {
            let page = http("GET", admin, "/metrics", None)?.1;
            Ok(metric(&page, left)? == 1.0
                && metric_sum(&page, "pgrouter_client_connections", &["state=\"held\""])? == 0.0)
        },
    )
    .await?;
    let (status, _) = http("POST", admin, "/resume?port=primary", None)?;
    ensure!(status == 200);
    let (client, _conn) = connect(router.primary, "pgrouter-test-after-leaver").await?;
    ensure!(client.query_one("select 1", &[]).await?.get::<_, i32>(0) == 1);
    let page = http("GET", admin, "/metrics", None)?.1;
    let routed = metric(&page, "pgrouter_hold_seconds_count{port=\"primary\"}")?;
    ensure!(
        routed == 1.0,
        "{routed} clients routed or refused on the primary port; only the one after resume should be"
    );
    ensure!(
        router.log_text().matches(": routed ").count() == 1,
        "the client that left was routed after resume:\n{}",
        router.log_tail(20)
    );
    Ok(())
}
