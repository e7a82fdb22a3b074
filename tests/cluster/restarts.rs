//! Router restarts and several routers: kill -9 of pgrouter under load and a restart on the same
//! ports (clients reconnect, nothing acknowledged is lost, no server connection outlives its
//! router), and two routers side by side on one cluster (they agree on routing, before and after
//! a switchover, and a cancel sent to the other router works in passthrough and fails safely in
//! pooled mode).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgrouter_lab::Lab;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use crate::support::{
    client_backends, connect, eventually, http, missing_rows, pgbench_init, pgbench_run,
    ports_of_new_connections, scram_userlist, server_port, PgbenchRun, Probe, ProbeReport, Router,
    RouterOptions,
};

/// The password of `admin`, who may open the admin console of [`pooled_router`]s.
pub const CONSOLE_PASSWORD: &str = "console-secret";

/// A router whose two ports pool in transaction mode; `postgres` logs in with its SCRAM secret
/// from pg_authid, given in an auth_file (pgrouter logs in to the servers with the key recovered
/// from the client's proof); `admin` may open the admin console. `pool` is the body of the
/// `[pool]` section.
pub fn pooled_router(lab: &Lab, port: u16, pool: &str) -> Result<Router> {
    pooled_router_routing(lab, port, pool, RouterOptions::default().routing)
}

/// A [`pooled_router`] with `routing` as the body of its `[routing]` section.
pub fn pooled_router_routing(lab: &Lab, port: u16, pool: &str, routing: &str) -> Result<Router> {
    let userlist = scram_userlist(lab, port, &format!("\"admin\" \"{CONSOLE_PASSWORD}\"\n"))?;
    let sections = format!(
        "[pool]\n{pool}\n[auth]\nauth_file = \"{}\"\nadmin_users = [\"admin\"]\n",
        userlist.display()
    );
    Router::start(
        lab,
        port,
        RouterOptions {
            listen_extra:
                "primary_pool_mode = \"transaction\"\nreplicas_pool_mode = \"transaction\"\n",
            sections: &sections,
            routing,
            ..RouterOptions::default()
        },
    )
}

pub fn create_probe_table(lab: &Lab, table: &str) -> Result<()> {
    lab.psql(
        lab.pg_port(&lab.leader()?),
        &format!("drop table if exists {table}; create table {table}(id bigint primary key, at timestamptz default clock_timestamp())"),
    )?;
    Ok(())
}

fn probe_summary(what: &str, r: &ProbeReport) {
    println!(
        "  {what}: {} rows acknowledged, {} connections, {} query errors, {} connect errors, longest write gap {:.2}s",
        r.acked.len(),
        r.connections,
        r.query_errors.len(),
        r.connect_errors.len(),
        r.longest_gap.as_secs_f64()
    );
    for e in r.query_errors.iter().take(5) {
        println!("    query error: {e}");
    }
}

fn bench_summary(what: &str, r: &PgbenchRun) {
    println!(
        "  pgbench {what}: exit {:?}, {} transactions, {} failed, {} clients aborted, {:.0} tps",
        r.exit, r.processed, r.failed, r.aborted_clients, r.tps
    );
}

fn pgbench_in_background(
    port: u16,
    args: &'static [&'static str],
) -> tokio::task::JoinHandle<Result<PgbenchRun>> {
    tokio::task::spawn_blocking(move || pgbench_run(port, args))
}

/// A pgbench run that must have ended cleanly: every client to the end, nothing failed.
fn clean(what: &str, r: &PgbenchRun) -> Result<()> {
    bench_summary(what, r);
    ensure!(
        r.exit == Some(0) && r.failed == 0 && r.aborted_clients == 0 && r.processed > 0,
        "pgbench {what} did not run cleanly:\n{}",
        r.output
    );
    Ok(())
}

/// Client backends on every member, by member name.
fn backends(lab: &Lab) -> Result<Vec<(String, u64)>> {
    lab.member_names()
        .into_iter()
        .map(|m| {
            let n = client_backends(lab, lab.pg_port(&m))?;
            Ok((m, n))
        })
        .collect()
}

/// kill -9 of a passthrough and a pooled router while pgbench (read-write through the primary
/// port, -S through the replicas port) and a writer probe run through each; both restart on
/// the same ports.
///
/// Asserts: pgbench runs across the crash lost their connections (the crash was real); while
/// the routers are down no client backend is left on any member (server connections, pooled
/// ones included, die with their router); after the restart the probes reconnect and write
/// again, and fresh pgbench runs through both ports of both routers run cleanly; every row a
/// probe got acknowledged is on the leader (row by row) with at most one error per connection;
/// pgbench_history has at least as many rows as read-write transactions pgbench counted as done.
pub async fn kill_9_under_load(lab: &Lab) -> Result<()> {
    pgbench_init(lab)?;
    create_probe_table(lab, "restart_plain")?;
    create_probe_table(lab, "restart_pooled")?;
    let leader = lab.leader()?;
    let mut plain = Router::start(lab, 17590, RouterOptions::default())?;
    let mut pooled = pooled_router(lab, 17592, "pool_size = 6\n")?;
    let probe_plain = Probe::start(plain.primary, "restart_plain");
    let probe_pooled = Probe::start(pooled.primary, "restart_pooled");
    probe_plain
        .wait_for_acks(50, Duration::from_secs(60))
        .await?;
    probe_pooled
        .wait_for_acks(50, Duration::from_secs(60))
        .await?;

    const RW: &[&str] = &["-c", "4", "-j", "2", "-T", "120"];
    const RO: &[&str] = &["-S", "-c", "4", "-j", "2", "-T", "120"];
    let across = [
        (
            "read-write via passthrough",
            true,
            pgbench_in_background(plain.primary, RW),
        ),
        (
            "-S via passthrough replicas",
            false,
            pgbench_in_background(plain.replicas, RO),
        ),
        (
            "read-write via pooled",
            true,
            pgbench_in_background(pooled.primary, RW),
        ),
        (
            "-S via pooled replicas",
            false,
            pgbench_in_background(pooled.replicas, RO),
        ),
    ];
    // Until every pgbench client is connected and running transactions.
    eventually(
        "pgbench clients on the members",
        Duration::from_secs(60),
        || async {
            let total: u64 = backends(lab)?.iter().map(|(_, n)| n).sum();
            Ok(total >= 12)
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("  client backends before the crash: {:?}", backends(lab)?);

    plain.kill_9()?;
    pooled.kill_9()?;
    let killed = Instant::now();
    let mut rw_processed = 0;
    for (what, rw, run) in across {
        let run = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .with_context(|| format!("pgbench {what} went on after its router was killed"))???;
        bench_summary(&format!("{what} across the crash"), &run);
        ensure!(
            run.aborted_clients > 0 && run.exit != Some(0),
            "pgbench {what} did not notice its router's crash:\n{}",
            run.output
        );
        if rw {
            rw_processed += run.processed;
        }
    }
    // The kernel closed the routers' sockets; every backend behind them sees it and exits.
    eventually(
        "no client backend left on any member with both routers down",
        Duration::from_secs(60),
        || async { Ok(backends(lab)?.iter().all(|(_, n)| *n == 0)) },
    )
    .await
    .with_context(|| format!("backends: {:?}", backends(lab)))?;
    println!(
        "  every server connection closed {:.1}s after the crash",
        killed.elapsed().as_secs_f64()
    );

    plain.restart()?;
    pooled.restart()?;
    println!(
        "  both routers listening again {:.1}s after the crash",
        killed.elapsed().as_secs_f64()
    );
    probe_plain
        .wait_for_acks(100, Duration::from_secs(60))
        .await
        .context("the passthrough probe did not write again after the restart")?;
    probe_pooled
        .wait_for_acks(100, Duration::from_secs(60))
        .await
        .context("the pooled probe did not write again after the restart")?;
    for (what, port, args, rw) in [
        (
            "read-write via passthrough",
            plain.primary,
            &["-c", "4", "-j", "2", "-T", "5"][..],
            true,
        ),
        (
            "-S via passthrough replicas",
            plain.replicas,
            &["-S", "-c", "4", "-j", "2", "-T", "5"][..],
            false,
        ),
        (
            "read-write via pooled",
            pooled.primary,
            &["-c", "4", "-j", "2", "-T", "5"][..],
            true,
        ),
        (
            "-S via pooled replicas",
            pooled.replicas,
            &["-S", "-c", "4", "-j", "2", "-T", "5"][..],
            false,
        ),
    ] {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let run = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pgbench_run(port, &args)
        })
        .await??;
        clean(&format!("{what} after the restart"), &run)?;
        if rw {
            rw_processed += run.processed;
        }
    }
    let plain_report = probe_plain.finish().await;
    let pooled_report = probe_pooled.finish().await;
    probe_summary("passthrough probe", &plain_report);
    probe_summary("pooled probe", &pooled_report);

    let now = lab.leader()?;
    if now != leader {
        println!("  (the leader changed meanwhile: {leader} -> {now})");
    }
    let port = lab.pg_port(&now);
    for (table, report) in [
        ("restart_plain", &plain_report),
        ("restart_pooled", &pooled_report),
    ] {
        ensure!(
            report.connections >= 2,
            "{table}: the probe did not reconnect ({} connections)",
            report.connections
        );
        let missing = missing_rows(lab, port, table, &report.acked)?;
        ensure!(
            missing.is_empty(),
            "{table}: acknowledged rows missing on the leader {now}: {missing:?}"
        );
        // The probe reconnects after each error, so only a bound per event says anything: one
        // session was open when its router died, so exactly one error.
        ensure!(
            report.query_errors.len() == 1,
            "{table}: expected one error (the session open at the crash), saw {:?}",
            report.query_errors
        );
    }
    let history: u64 = lab
        .psql(port, "select count(*) from pgbench_history")?
        .parse()?;
    println!("  pgbench_history: {history} rows for {rw_processed} read-write transactions pgbench saw committed");
    ensure!(
        history >= rw_processed,
        "pgbench_history has {history} rows, fewer than the {rw_processed} transactions pgbench saw committed"
    );
    Ok(())
}

/// The routing view of a router from its /status: (leader, members eligible for reads).
fn status_view(router: &Router) -> Result<(String, BTreeSet<String>)> {
    let (code, body) = http("GET", router.admin, "/status", None)?;
    ensure!(code == 200, "/status: HTTP {code}: {body}");
    let v: Value = serde_json::from_str(&body)?;
    let leader = v["leader"]
        .as_str()
        .context("no leader in /status")?
        .to_owned();
    let eligible = v["members"]
        .as_array()
        .context("no members in /status")?
        .iter()
        .filter(|m| m["eligible_for_reads"] == Value::Bool(true))
        .filter_map(|m| Some(m["name"].as_str()?.to_owned()))
        .collect();
    Ok((leader, eligible))
}

/// Both routers see `leader` with the other two members eligible for reads, and new
/// connections through each land there: the primary port on the leader, the replicas port on
/// exactly the two replicas.
async fn routers_agree(lab: &Lab, routers: [&Router; 2], leader: &str) -> Result<bool> {
    let replicas: BTreeSet<String> = lab
        .member_names()
        .into_iter()
        .filter(|m| m != leader)
        .collect();
    let replica_ports: BTreeSet<u16> = replicas.iter().map(|m| lab.pg_port(m)).collect();
    let mut views = Vec::new();
    for r in routers {
        let view = status_view(r)?;
        if view != (leader.to_owned(), replicas.clone()) {
            return Ok(false);
        }
        let writes = ports_of_new_connections(r.primary, 3).await?;
        if writes.iter().any(|p| *p != lab.pg_port(leader)) {
            return Ok(false);
        }
        let reads: BTreeSet<u16> = ports_of_new_connections(r.replicas, 4)
            .await?
            .into_iter()
            .collect();
        if reads != replica_ports {
            return Ok(false);
        }
        views.push((view, writes[0], reads));
    }
    Ok(views[0] == views[1])
}

/// Runs `select pg_sleep(60)` on `client` in a task; returns once the server shows it running
/// on the member at `pg_port`.
async fn sleeping(
    lab: &Lab,
    client: Client,
    pg_port: u16,
    app: &str,
) -> Result<tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>> {
    let task =
        tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await.map(|_| ()) });
    let sql = format!(
        "select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(60)' and application_name = '{app}'"
    );
    eventually(
        &format!("{app}'s pg_sleep running on {pg_port}"),
        Duration::from_secs(30),
        || async { crate::support::is(lab.psql(pg_port, &sql)?.as_str(), "1") },
    )
    .await?;
    Ok(task)
}

/// The query in `task` ended with 57014 query_canceled.
async fn canceled(
    what: &str,
    task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> Result<()> {
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .with_context(|| format!("{what}: the cancel did not stop pg_sleep(60)"))??;
    let e = result
        .err()
        .with_context(|| format!("{what}: pg_sleep(60) ended without an error"))?;
    let code = e.as_db_error().map(|d| d.code().code().to_owned());
    ensure!(
        code.as_deref() == Some("57014"),
        "{what}: expected 57014 query_canceled, got {e}"
    );
    Ok(())
}

async fn send_cancel_to(token: &tokio_postgres::CancelToken, port: u16) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    token.cancel_query_raw(stream, NoTls).await?;
    Ok(())
}

fn count_forwarded(router: &Router) -> usize {
    router
        .log_text()
        .matches("forwarding cancel request")
        .count()
}

/// Two passthrough routers on one cluster, then two pooled ones.
///
/// Asserts: both routers report the same leader and read-eligible members as the cluster, and
/// new connections through each land on the leader (primary port) and on exactly the two
/// replicas (replicas port), before a switchover and again after it; a `pg_sleep(60)` opened
/// through router A is cancelled (57014) by a cancel sent to router B, on the primary and the
/// replicas ports, and the other way round. Pooled (transaction mode): a cancel for a session of
/// router C sent to router E, which has no peers, reaches E (its log shows it forwarded it to
/// the members) and cancels nothing: neither that session's query nor bystander queries on every
/// member. C and D are peers (`[peers]`): the same cancel sent to D is forwarded to C and cancels
/// the query, and a cancel for a session of D sent to C cancels that one.
pub async fn side_by_side(lab: &Lab) -> Result<()> {
    let a = Router::start(lab, 17594, RouterOptions::default())?;
    let b = Router::start(lab, 17596, RouterOptions::default())?;
    let old = lab.leader()?;
    eventually(
        "both routers agreeing with the cluster",
        Duration::from_secs(60),
        || routers_agree(lab, [&a, &b], &old),
    )
    .await?;
    println!("  both routers route writes to {old} and reads to the two replicas");
    lab.switchover(None)?;
    let new = lab.wait_leader_other_than(&old, Duration::from_secs(90))?;
    let switched = Instant::now();
    eventually(
        "both routers agreeing after the switchover",
        Duration::from_secs(120),
        || routers_agree(lab, [&a, &b], &new),
    )
    .await?;
    println!(
        "  after a switchover both routers route writes to {new} ({:.1}s) and reads to the two replicas",
        switched.elapsed().as_secs_f64()
    );

    // Passthrough: the key is the member's own; the other router asks every member.
    for (issuer, to, port_name) in [
        (&a, &b, "primary"),
        (&a, &b, "replicas"),
        (&b, &a, "primary"),
        (&b, &a, "replicas"),
    ] {
        let (via, other) = if port_name == "primary" {
            (issuer.primary, to.primary)
        } else {
            (issuer.replicas, to.replicas)
        };
        let app = format!("pgrouter-test-xcancel-{via}");
        let (client, _conn) = connect(via, &app).await?;
        let member_port = server_port(&client).await?;
        let token = client.cancel_token();
        let task = sleeping(lab, client, member_port, &app).await?;
        let sent = Instant::now();
        send_cancel_to(&token, other).await?;
        let what = format!("a session through {via}, cancel sent to {other}");
        canceled(&what, task).await?;
        println!(
            "  passthrough: {what} ({port_name} port, member port {member_port}): cancelled in {:.0} ms",
            sent.elapsed().as_secs_f64() * 1000.0
        );
    }
    drop((a, b));
    pooled_cancel_elsewhere(lab).await
}

async fn pooled_cancel_elsewhere(lab: &Lab) -> Result<()> {
    let peers = |id: usize| {
        format!("pool_size = 4\n\n[peers]\nid = {id}\nrouters = [\"127.0.0.1:17590\", \"127.0.0.1:17592\"]\n")
    };
    let c = pooled_router(lab, 17590, &peers(1))?;
    let d = pooled_router(lab, 17592, &peers(2))?;
    let e = pooled_router(lab, 17606, "pool_size = 4\n")?;
    let leader = lab.leader()?;
    let leader_port = lab.pg_port(&leader);
    let app = "pgrouter-test-pooled-xcancel";
    let (client, _conn) = connect(c.primary, app).await?;
    ensure!(
        server_port(&client).await? == leader_port,
        "pooled session not on the leader"
    );
    let token = client.cancel_token();
    let task = sleeping(lab, client, leader_port, app).await?;
    // Bystanders: a query on every member, directly; none of them may be cancelled.
    let mut bystanders = Vec::new();
    for m in lab.member_names() {
        let port = lab.pg_port(&m);
        let app = format!("pgrouter-test-bystander-{m}");
        let (client, _conn) = connect(port, &app).await?;
        let token = client.cancel_token();
        let task = sleeping(lab, client, port, &app).await?;
        bystanders.push((m, token, task, _conn));
    }

    let before = count_forwarded(&e);
    send_cancel_to(&token, e.primary).await?;
    send_cancel_to(&token, e.replicas).await?;
    eventually(
        "router E logging that it forwarded both cancels",
        Duration::from_secs(30),
        || async { Ok(count_forwarded(&e) >= before + 2) },
    )
    .await?;
    // E sends to the members concurrently and logs a warning for any it could not reach.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !e.log_text().contains("could not forward cancel request"),
        "router E could not forward the cancel:\n{}",
        e.log_tail(20)
    );
    ensure!(
        !task.is_finished(),
        "the pooled query ended after a cancel sent to a router without peers: {:?}",
        task.await?
    );
    let still = lab.psql(
        leader_port,
        &format!("select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(60)' and application_name = '{app}'"),
    )?;
    ensure!(
        still == "1",
        "the pooled pg_sleep is no longer running on {leader}"
    );
    for (m, _, task, _) in &bystanders {
        ensure!(
            !task.is_finished(),
            "a bystander query on {m} ended after the stray cancel"
        );
    }
    println!("  pooled: a cancel for a session of router C sent to router E, not its peer, cancelled nothing (E forwarded it to every member, which ignored pgrouter's key)");
    for m in lab.member_names() {
        let log = lab.log_tail(&m, 200);
        if let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.contains("in cancel request did not match any process"))
        {
            println!("    {m}: {}", line.trim());
        }
    }

    // The same key sent to C's peer D: D forwards it to C, which maps it to the server
    // running the query.
    send_cancel_to(&token, d.replicas).await?;
    canceled("the pooled session of C, cancel sent to its peer D", task).await?;
    ensure!(
        d.log_text()
            .contains("forwarding cancel request to the peer router that issued the key"),
        "router D did not say it forwarded the cancel to C:\n{}",
        d.log_tail(20)
    );
    println!("  pooled: the same cancel sent to router D, C's peer, cancelled the query");
    // And the other way round: a session of D, cancelled through C.
    let app_d = "pgrouter-test-pooled-xcancel-d";
    let (client, _conn_d) = connect(d.primary, app_d).await?;
    let token = client.cancel_token();
    let task = sleeping(lab, client, leader_port, app_d).await?;
    send_cancel_to(&token, c.primary).await?;
    canceled("the pooled session of D, cancel sent to its peer C", task).await?;
    println!("  pooled: a session of router D cancelled through router C");
    for (m, token, task, _conn) in bystanders {
        token.cancel_query(NoTls).await?;
        canceled(&format!("the bystander on {m}"), task).await?;
    }
    drop((c, d, e));
    if lab.leader()? != leader {
        bail!("the leader changed during the test");
    }
    Ok(())
}
