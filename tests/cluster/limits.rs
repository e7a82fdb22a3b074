//! Issue 26, pgbouncer's `[databases]` and `[users]` on a real cluster: under pgbench load
//! over aliased databases, a forced user and a reserve pool, the leader (sampled from its own
//! pg_stat_activity every few milliseconds) never holds more connections than
//! `max_db_connections`, `max_user_connections` and the pool sizes allow; a database entry's
//! `pool_mode = "session"` holds a server connection for a client's whole stay on a
//! transaction-pooled listener; SHOW DATABASES shows the entries; KILL <db> ends that
//! database's pooled and pass-through sessions and no other.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use pgrouter_lab::Lab;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::pooling::{pgbench_clean, pooled_router_with};
use crate::support::{ended_with_error, pgrouter_error, Router};

const PORT: u16 = 17650;

const POOL: &str = "reserve_pool_timeout = \"1s\"\nquery_wait_timeout = \"60s\"\n";

const ENTRIES: &str = "
[databases.limited]
dbname = \"lim_a\"
max_db_connections = 4

[databases.forced]
dbname = \"lim_b\"
user = \"app_plain\"
pool_size = 3

[databases.reserved]
dbname = \"lim_c\"
pool_size = 2
reserve_pool = 2

[databases.sessiondb]
dbname = \"lim_c\"
pool_size = 1
pool_mode = \"session\"

[users.app_plain]
max_user_connections = 5
";

const DATABASES: [&str; 3] = ["lim_a", "lim_b", "lim_c"];

pub async fn pooled_limits_and_database_entries(lab: &Lab) -> Result<()> {
    let leader = lab.pg_port(&lab.leader()?);
    for db in DATABASES {
        lab.psql(
            leader,
            &format!("drop database if exists {db} with (force)"),
        )?;
        lab.psql(leader, &format!("create database {db}"))?;
    }
    let modes = ("transaction", "passthrough");
    let router = pooled_router_with(lab, PORT, modes, 10, "30s", POOL, ENTRIES)?;
    let result = cases(lab, &router, leader).await;
    drop(router);
    for db in DATABASES {
        lab.psql(
            leader,
            &format!("drop database if exists {db} with (force)"),
        )?;
    }
    result
}

async fn cases(lab: &Lab, router: &Router, leader: u16) -> Result<()> {
    limits_under_load(lab, router, leader)
        .await
        .context("limits under load")?;
    console_shows_the_entries(router)
        .await
        .context("SHOW DATABASES")?;
    session_mode_by_database(router)
        .await
        .context("a database's pool_mode")?;
    kill_ends_one_database(router).await.context("KILL")?;
    Ok(())
}

/// Most backends seen at once on the leader, per what the settings bound.
#[derive(Debug, Default)]
struct Peaks {
    /// lim_a, reached as "limited": max_db_connections 4.
    lim_a: i64,
    /// app_plain over lim_a and lim_b: max_user_connections 5.
    app_plain: i64,
    /// lim_b, reached as "forced": pool_size 3, all logged in as app_plain.
    lim_b: i64,
    lim_b_not_forced: i64,
    /// lim_c, reached as "reserved": pool_size 2 and reserve_pool 2.
    lim_c: i64,
}

async fn limits_under_load(lab: &Lab, router: &Router, leader: u16) -> Result<()> {
    let dir = lab.spec().dir.join(format!("router-{PORT}"));
    let short = dir.join("short.sql");
    let long = dir.join("long.sql");
    std::fs::write(&short, "select pg_sleep(0.005);\n")?;
    std::fs::write(&long, "select pg_sleep(0.6);\n")?;
    let runs = [
        (
            "postgres on limited",
            "postgres",
            "postgres",
            "limited",
            8,
            &short,
        ),
        (
            "app_plain on limited",
            "app_plain",
            "plain-secret",
            "limited",
            6,
            &short,
        ),
        (
            "postgres on forced",
            "postgres",
            "postgres",
            "forced",
            6,
            &short,
        ),
        (
            "postgres on reserved",
            "postgres",
            "postgres",
            "reserved",
            8,
            &long,
        ),
    ];
    let mut children = Vec::new();
    for (what, user, password, db, clients, script) in runs {
        let child = pgbench(router.primary, user, password, db, clients, script)
            .with_context(|| format!("starting pgbench {what}"))?;
        children.push((what, child));
    }
    let peaks = peaks_until_done(leader, &mut children).await;
    let mut processed = Vec::new();
    for (what, child) in children {
        let out = child.wait_with_output()?;
        processed.push((what, pgbench_clean(what, &out)?));
    }
    let peaks = peaks?;
    let seen = format!("{peaks:?}, transactions {processed:?}");
    ensure!(
        processed.iter().all(|(_, n)| *n > 0),
        "a load ran nothing: {seen}"
    );
    ensure!(peaks.lim_a <= 4, "max_db_connections 4 exceeded: {seen}");
    ensure!(
        peaks.lim_a == 4,
        "14 clients on limited never used its 4 connections: {seen}"
    );
    ensure!(
        peaks.app_plain <= 5,
        "max_user_connections 5 exceeded: {seen}"
    );
    ensure!(
        (1..=3).contains(&peaks.lim_b),
        "forced's pool_size 3: {seen}"
    );
    ensure!(
        peaks.lim_b_not_forced == 0,
        "a lim_b backend not logged in as the forced user: {seen}"
    );
    ensure!(
        (3..=4).contains(&peaks.lim_c),
        "reserved: pool_size 2 with reserve_pool 2 after 1s waits: {seen}"
    );
    ensure!(
        router.log_text().contains("opening a reserve connection"),
        "no reserve connection logged"
    );
    Ok(())
}

fn pgbench(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    clients: u32,
    script: &std::path::Path,
) -> Result<Child> {
    let child = pgrouter_lab::client_command("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-n"])
        .args(["-c", &clients.to_string(), "-j", "2", "-T", "6", "-f"])
        .arg(script)
        .arg(db)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "60")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(child)
}

/// The leader's backends sampled every 10 ms until every pgbench has exited.
async fn peaks_until_done(leader: u16, children: &mut [(&str, Child)]) -> Result<Peaks> {
    let dsn =
        format!("host=127.0.0.1 port={leader} user=postgres password=postgres dbname=postgres");
    let (client, connection) = tokio_postgres::connect(&dsn, NoTls).await?;
    tokio::spawn(connection);
    let sql = "select count(*) filter (where datname = 'lim_a'),
                count(*) filter (where usename = 'app_plain' and datname in ('lim_a', 'lim_b')),
                count(*) filter (where datname = 'lim_b'),
                count(*) filter (where datname = 'lim_b' and usename <> 'app_plain'),
                count(*) filter (where datname = 'lim_c')
            from pg_stat_activity where backend_type = 'client backend'";
    let statement = client.prepare(sql).await?;
    let mut peaks = Peaks::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let row = client.query_one(&statement, &[]).await?;
        let n = |i: usize| row.get::<_, i64>(i);
        peaks.lim_a = peaks.lim_a.max(n(0));
        peaks.app_plain = peaks.app_plain.max(n(1));
        peaks.lim_b = peaks.lim_b.max(n(2));
        peaks.lim_b_not_forced = peaks.lim_b_not_forced.max(n(3));
        peaks.lim_c = peaks.lim_c.max(n(4));
        let mut running = false;
        for (_, child) in children.iter_mut() {
            running |= child.try_wait()?.is_none();
        }
        if !running {
            return Ok(peaks);
        }
        if std::time::Instant::now() > deadline {
            bail!("pgbench still running after 120s: {peaks:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn open(port: u16, user: &str, password: &str, db: &str) -> Result<(Client, Ended)> {
    let dsn = format!("host=127.0.0.1 port={port} user={user} password={password} dbname={db}");
    let (client, connection) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .with_context(|| format!("connecting to {db} on {port} as {user}"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(connection.await);
    });
    Ok((client, rx))
}

type Ended = tokio::sync::oneshot::Receiver<Result<(), tokio_postgres::Error>>;

async fn rows(client: &Client, sql: &str) -> Result<Vec<tokio_postgres::SimpleQueryRow>> {
    Ok(client
        .simple_query(sql)
        .await
        .with_context(|| sql.to_owned())?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect())
}

async fn console_shows_the_entries(router: &Router) -> Result<()> {
    let (console, _) = open(router.primary, "admin", "console-secret", "pgbouncer").await?;
    let databases = rows(&console, "SHOW DATABASES").await?;
    let find = |name: &str| {
        databases
            .iter()
            .find(|r| r.get("name") == Some(name))
            .with_context(|| format!("no row for {name}"))
    };
    let forced = find("forced")?;
    let seen = [
        "database",
        "force_user",
        "pool_size",
        "reserve_pool",
        "pool_mode",
    ]
    .map(|c| forced.get(c).unwrap_or_default());
    ensure!(
        seen == ["lim_b", "app_plain", "3", "0", "transaction"],
        "forced: {seen:?}"
    );
    let limited = find("limited")?;
    ensure!(
        limited.get("max_connections") == Some("4"),
        "limited: {:?}",
        limited.get("max_connections")
    );
    let reserved = find("reserved")?;
    ensure!(reserved.get("reserve_pool") == Some("2"), "reserved");
    let session = find("sessiondb")?;
    ensure!(session.get("pool_mode") == Some("session"), "sessiondb");
    let users = rows(&console, "SHOW USERS").await?;
    ensure!(
        users.iter().any(|r| r.get("name") == Some("app_plain")),
        "SHOW USERS lists no app_plain"
    );
    Ok(())
}

/// sessiondb (pool_size 1, pool_mode session) on the transaction-pooled listener: a second
/// client waits while the first is connected, though the first is between transactions, and
/// runs once it leaves.
async fn session_mode_by_database(router: &Router) -> Result<()> {
    let (first, _) = open(router.primary, "postgres", "postgres", "sessiondb").await?;
    rows(&first, "select 1").await?;
    let port = router.primary;
    let second = tokio::spawn(async move {
        let (second, _ended) = open(port, "postgres", "postgres", "sessiondb").await?;
        rows(&second, "select current_database()").await?;
        anyhow::Ok(())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        !second.is_finished(),
        "a second client ran while the first held sessiondb's only connection in session mode"
    );
    drop(first);
    tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .context("the second client did not run after the first left")???;
    Ok(())
}

/// KILL lim_a: the pooled client of lim_a and the pass-through one end with FATAL 57P01;
/// the client of the alias "limited" (another database name to pgrouter, as to pgbouncer)
/// goes on, and lim_a takes new clients.
async fn kill_ends_one_database(router: &Router) -> Result<()> {
    let (pooled, pooled_end) = open(router.primary, "postgres", "postgres", "lim_a").await?;
    let (through, through_end) = open(router.replicas, "postgres", "postgres", "lim_a").await?;
    let (alias, _alias_end) = open(router.primary, "postgres", "postgres", "limited").await?;
    for c in [&pooled, &through, &alias] {
        rows(c, "select 1").await?;
    }
    let (console, _) = open(router.primary, "admin", "console-secret", "pgbouncer").await?;
    console.simple_query("KILL lim_a").await.context("KILL")?;
    let within = Duration::from_secs(10);
    for (what, ended) in [("pooled", pooled_end), ("pass-through", through_end)] {
        let e = ended_with_error(what, ended, within).await?;
        let message = pgrouter_error(what, &e, "FATAL", "57P01", "closing")?;
        ensure!(message.contains("KILL"), "{what}: {message}");
    }
    let n = rows(&alias, "select current_database()").await?;
    ensure!(
        n.first().and_then(|r| r.get(0)) == Some("lim_a"),
        "the alias client after KILL lim_a"
    );
    let (again, _) = open(router.primary, "postgres", "postgres", "lim_a").await?;
    rows(&again, "select 1")
        .await
        .context("a new lim_a client")?;
    Ok(())
}
