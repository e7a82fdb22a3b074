//! Issue 26, startup parameters and RESET as PostgreSQL handles them: `options` settings on
//! every transaction of a transaction-pooled client over few server connections, a SET of
//! `search_path` carried, RESET and RESET ALL back to the startup values (both pooled modes),
//! what pgrouter cannot honour refused by name. Each case is also run directly on the leader
//! and the answers compared.

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;
use tokio_postgres::{Client, NoTls};

use crate::pooling::pooled_router;
use crate::support::Router;

const OPTIONS: &str =
    r"-c search_path=tenant_app,public -c statement_timeout=1500 -c DateStyle=German";

async fn open(port: u16, options: &str, app: &str) -> Result<Client> {
    let dsn = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres application_name={app} options='{options}'"
    );
    let (client, connection) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .with_context(|| format!("connecting to {port} with options {options:?}"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn one(client: &Client, sql: &str) -> Result<String> {
    let rows = client
        .simple_query(sql)
        .await
        .with_context(|| sql.to_owned())?;
    for row in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = row {
            return Ok(r.get(0).unwrap_or("NULL").to_owned());
        }
    }
    Ok(String::new())
}

/// What a client with [`OPTIONS`] sees of its settings, in one transaction.
const SEEN: &str = "select current_setting('search_path') || ' | ' || current_setting('statement_timeout') || ' | ' || current_setting('DateStyle') || ' | ' || (select x from marker)";

pub async fn pooled_startup_options_and_reset(lab: &Lab) -> Result<()> {
    let router = pooled_router(lab, 17640, "transaction", "session", 2, "30s")?;
    let leader = lab.pg_port(&lab.leader()?);
    lab.psql(
        leader,
        "drop schema if exists tenant_app cascade; create schema tenant_app;
         create table tenant_app.marker(x text); insert into tenant_app.marker values ('tenant_app');
         create schema if not exists other_app; drop table if exists other_app.marker;
         create table other_app.marker(x text); insert into other_app.marker values ('other_app');
         drop table if exists public.marker; create table public.marker(x text); insert into public.marker values ('public');",
    )?;
    let result = cases(lab, &router, leader).await;
    let dropped = lab
        .psql(
            leader,
            "drop schema if exists tenant_app cascade; drop schema if exists other_app cascade; drop table if exists public.marker",
        )
        .map(drop);
    result.and(dropped)
}

async fn cases(lab: &Lab, router: &Router, leader: u16) -> Result<()> {
    // Directly, for comparison.
    let direct = open(leader, OPTIONS, "direct").await?;
    let want = one(&direct, SEEN).await?;
    ensure!(
        want == "tenant_app,public | 1500ms | German, DMY | tenant_app",
        "directly: {want}"
    );

    // 1. Six clients with options and one without, interleaved over pool_size 2.
    let mut with = Vec::new();
    for i in 0..6 {
        with.push(open(router.primary, OPTIONS, &format!("opts{i}")).await?);
    }
    let plain = open(router.primary, "", "plain").await?;
    let plain_seen = "select current_setting('search_path') || ' | ' || current_setting('statement_timeout') || ' | ' || (select x from marker)";
    let plain_want = one(&open(leader, "", "direct-plain").await?, plain_seen).await?;
    for round in 0..20 {
        for (i, c) in with.iter().enumerate() {
            let seen = one(c, SEEN).await?;
            ensure!(
                seen == want,
                "round {round}, client {i}: {seen:?}, directly {want:?}"
            );
        }
        let seen = one(&plain, plain_seen).await?;
        ensure!(
            seen == plain_want,
            "round {round}, the client without options: {seen:?}, directly {plain_want:?}"
        );
    }
    println!("  6 clients with options and 1 without over pool_size 2, 20 rounds: every transaction saw its own settings");
    // statement_timeout from options is in force on every connection.
    let timed_out = with[0].simple_query("select pg_sleep(3)").await;
    let code = timed_out
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_owned()));
    ensure!(
        code.as_deref() == Some("57014"),
        "pg_sleep(3) under statement_timeout 1500: {code:?}"
    );

    // psycopg 3, as Django 4.2+ passes OPTIONS {'options': ...}: every transaction of every
    // connection sees its options over the two server connections.
    let script = format!(
        r#"
import psycopg
conns = [psycopg.connect("host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres", options={OPTIONS:?}, autocommit=True) for _ in range(4)]
for round in range(10):
    for c in conns:
        with c.transaction():
            seen = c.execute("{SEEN}").fetchone()[0]
            assert seen == {want:?}, (round, seen)
print("ok")
"#,
        port = router.primary,
    );
    let out = pgrouter_lab::client_command("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .context("running python3 with psycopg")?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "psycopg 3 with options: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("  psycopg 3 with options, 4 connections x 10 transactions: each saw its settings");

    // 2. A SET of search_path is carried to the client's next transactions, not to others.
    let setter = &with[1];
    one(setter, "SET search_path TO other_app, public").await?;
    for round in 0..10 {
        let seen = one(setter, "select x from marker").await?;
        ensure!(
            seen == "other_app",
            "round {round}: after SET search_path, marker from {seen}"
        );
        for (i, c) in with.iter().enumerate().filter(|(i, _)| *i != 1) {
            let seen = one(c, "select x from marker").await?;
            ensure!(
                seen == "tenant_app",
                "round {round}: client {i} saw another client's search_path: {seen}"
            );
        }
        ensure!(
            one(&plain, "select x from marker").await? == "public",
            "the plain client saw a search_path not its own"
        );
    }
    // A SET rolled back is not carried.
    one(setter, "BEGIN; SET search_path TO tenant_app; ROLLBACK").await?;
    ensure!(
        one(setter, "select x from marker").await? == "other_app",
        "a rolled-back SET was carried"
    );

    // 3. RESET goes back to the startup values, in transaction mode and (replicas port) session mode.
    for (port, mode) in [(router.primary, "transaction"), (leader, "direct")] {
        let c = open(port, OPTIONS, "reset").await?;
        let sequence = [
            "SET datestyle = 'SQL, MDY'",
            "SET search_path = other_app",
            "RESET datestyle",
            "RESET search_path",
        ];
        for sql in sequence {
            one(&c, sql).await?;
        }
        let seen = one(&c, SEEN).await?;
        ensure!(seen == want, "{mode}: after RESET: {seen:?}, want {want:?}");
        one(
            &c,
            "SET datestyle = 'Postgres'; SET search_path = other_app; SET statement_timeout = 0",
        )
        .await?;
        one(&c, "RESET ALL").await?;
        let seen = one(&c, SEEN).await?;
        ensure!(
            seen == want,
            "{mode}: after RESET ALL: {seen:?}, want {want:?}"
        );
    }
    let replica_seen =
        "select current_setting('search_path') || ' | ' || current_setting('DateStyle')";
    let direct_replica = {
        let leader_name = lab.leader()?;
        let replica = crate::routing::replica_ports(lab, &leader_name)[0].1;
        let c = open(replica, OPTIONS, "direct-replica").await?;
        one(&c, "SET datestyle = 'SQL, MDY'").await?;
        one(&c, "RESET ALL").await?;
        one(&c, replica_seen).await?
    };
    let session = open(router.replicas, OPTIONS, "session-reset").await?;
    one(&session, "SET datestyle = 'SQL, MDY'").await?;
    one(&session, "RESET ALL").await?;
    let seen = one(&session, replica_seen).await?;
    ensure!(
        seen == direct_replica,
        "session mode after RESET ALL: {seen:?}, directly {direct_replica:?}"
    );
    one(&session, "RESET datestyle").await?;
    let seen = one(&session, replica_seen).await?;
    ensure!(
        seen == direct_replica,
        "session mode after RESET datestyle: {seen:?}, directly {direct_replica:?}"
    );
    println!("  RESET and RESET ALL went back to the startup values, as directly: {want}");

    // 4. What cannot be honoured is refused by name, as PostgreSQL refuses a bad setting.
    for (options, code) in [
        ("-c no_such_setting=1", "42704"),
        ("-c statement_timeout=soon", "22023"),
        ("-e", "0A000"),
    ] {
        let refused = open(router.primary, options, "bad").await;
        let e = match refused {
            Ok(_) => anyhow::bail!("options {options:?} were accepted"),
            Err(e) => e,
        };
        let db = e
            .chain()
            .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| {
                e.as_db_error()
                    .map(|d| (d.code().code().to_owned(), d.message().to_owned()))
            });
        ensure!(
            db.as_ref().is_some_and(|(c, _)| c == code),
            "options {options:?}: want FATAL {code}, got {db:?} ({e:#})"
        );
        println!(
            "  options {options:?}: FATAL {code} {:?}",
            db.map(|(_, m)| m).unwrap_or_default()
        );
    }
    Ok(())
}

/// The code of the error a connection ended with, if it ended within `within`.
async fn ended_with(
    ended: tokio::sync::oneshot::Receiver<Result<(), tokio_postgres::Error>>,
    within: std::time::Duration,
) -> Result<Option<String>> {
    let end = tokio::time::timeout(within, ended)
        .await
        .context("the connection stayed open")?;
    Ok(end
        .ok()
        .and_then(|r| r.err())
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned())))
}

/// pgbouncer's session settings: client_idle_timeout, idle_transaction_timeout,
/// application_name_add_host, log_connections and log_disconnections.
pub async fn pooled_timeouts_and_pgbouncer_session_settings(lab: &Lab) -> Result<()> {
    use std::time::Duration;
    let router = crate::restarts::pooled_router(
        lab,
        17648,
        "pool_size = 2\nclient_idle_timeout = \"2s\"\nidle_transaction_timeout = \"2s\"\napplication_name_add_host = true\n",
    )?;
    let port = router.primary;
    // A client idle between transactions past client_idle_timeout: FATAL 57P05.
    let (idle, idle_end) = crate::support::connect(port, "idle-client").await?;
    idle.simple_query("select 1").await?;
    let code = ended_with(idle_end, Duration::from_secs(30)).await?;
    ensure!(
        code.as_deref() == Some("57P05"),
        "idle client closed with {code:?}"
    );
    // Idle inside a transaction past idle_transaction_timeout: FATAL 25P03, and its server
    // connection gone (the transaction rolled back, its row never seen).
    lab.psql(
        lab.pg_port(&lab.leader()?),
        "drop table if exists idle_tx; create table idle_tx(x int)",
    )?;
    let (busy, busy_end) = crate::support::connect(port, "idle-in-tx").await?;
    busy.simple_query("begin; insert into idle_tx values (1)")
        .await?;
    let code = ended_with(busy_end, Duration::from_secs(30)).await?;
    ensure!(
        code.as_deref() == Some("25P03"),
        "idle-in-transaction client closed with {code:?}"
    );
    let leader = lab.pg_port(&lab.leader()?);
    crate::support::eventually(
        "the abandoned transaction rolled back",
        Duration::from_secs(30),
        || async {
            crate::support::is(
                lab.psql(leader, "select count(*) from idle_tx")?,
                "0".to_owned(),
            )
        },
    )
    .await?;
    // application_name_add_host: the server sees who is behind the pooled connection.
    let (named, _end) = crate::support::connect(port, "named").await?;
    let rows = named
        .simple_query("select current_setting('application_name')")
        .await?;
    let app = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default();
    ensure!(
        app.starts_with("named - 127.0.0.1:"),
        "application_name on the server: {app:?}"
    );
    let log = router.log_text();
    ensure!(
        log.contains("pooled client logged in") && log.contains("client session ended"),
        "no connection log lines:\n{}",
        router.log_tail(10)
    );
    lab.psql(leader, "drop table idle_tx")?;
    println!("  client_idle_timeout 57P05, idle_transaction_timeout 25P03 (its insert rolled back), application_name {app:?}");
    Ok(())
}
