//! The pooling issue on the real lab: transaction pooling under pgbench's three query modes
//! and three real drivers (PHP PDO, psycopg 3, asyncpg), a planned switchover that pooled
//! clients do not see, cancel, LISTEN, the admin console, session mode and auth_query.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgrouter_lab::Lab;
use tokio_postgres::NoTls;

use crate::support::{
    connect, http, metric, missing_rows, pgbench_command, pgbench_init, pgrouter_error,
    scram_userlist, Arrivals, Probe, Refusals, Router, RouterOptions,
};

/// A router whose two ports pool; `postgres` logs in with the SCRAM secret from pg_authid
/// (pgrouter logs in to the servers with the key recovered from the client's proof),
/// `app_plain` with a plain password, `pgrouter_auth` runs auth_query.
pub fn pooled_router(
    lab: &Lab,
    port: u16,
    primary_mode: &str,
    replicas_mode: &str,
    pool_size: u32,
    hold_timeout: &str,
) -> Result<Router> {
    let modes = (primary_mode, replicas_mode);
    pooled_router_with(lab, port, modes, pool_size, hold_timeout, "", "")
}

/// [`pooled_router`] with more `[pool]` settings and more sections after the rest.
pub fn pooled_router_with(
    lab: &Lab,
    port: u16,
    (primary_mode, replicas_mode): (&str, &str),
    pool_size: u32,
    hold_timeout: &str,
    pool_extra: &str,
    tail: &str,
) -> Result<Router> {
    let leader = lab.pg_port(&lab.leader()?);
    lab.psql(
        leader,
        "do $$ begin
           if not exists (select from pg_roles where rolname = 'app_plain') then
             create role app_plain login password 'plain-secret'; end if;
           if not exists (select from pg_roles where rolname = 'pgrouter_auth') then
             create role pgrouter_auth login password 'auth-secret'; end if;
           if not exists (select from pg_roles where rolname = 'aq_user') then
             create role aq_user login password 'looked-up'; end if;
         end $$;
         create or replace function public.pgrouter_lookup(text)
           returns table(usename name, passwd text) language sql security definer
           as 'select usename, passwd from pg_catalog.pg_shadow where usename = $1';
         revoke all on function public.pgrouter_lookup(text) from public;
         grant execute on function public.pgrouter_lookup(text) to pgrouter_auth;
         grant all on schema public to app_plain;",
    )?;
    let userlist = scram_userlist(
        lab,
        port,
        "\"app_plain\" \"plain-secret\"\n\"pgrouter_auth\" \"auth-secret\"\n\"admin\" \"console-secret\"\n",
    )?;
    let listen = format!(
        "primary_pool_mode = \"{primary_mode}\"\nreplicas_pool_mode = \"{replicas_mode}\"\n"
    );
    let sections = format!(
        "[pool]\npool_size = {pool_size}\n{pool_extra}\n[auth]\nauth_file = \"{}\"\nauth_user = \"pgrouter_auth\"\nauth_query = \"select usename, passwd from public.pgrouter_lookup($1)\"\nadmin_users = [\"admin\"]\n{tail}",
        userlist.display()
    );
    let routing = format!("hold_timeout = \"{hold_timeout}\"\ndrain_timeout = \"5s\"\n");
    Router::start(
        lab,
        port,
        RouterOptions {
            listen_extra: &listen,
            routing: &routing,
            sections: &sections,
            ..RouterOptions::default()
        },
    )
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// pgbench ran to its end with every transaction committed and no client aborted.
pub fn pgbench_clean(what: &str, out: &Output) -> Result<u64> {
    let t = text(out);
    ensure!(out.status.success(), "{what}: pgbench failed:\n{t}");
    ensure!(
        t.contains("number of failed transactions: 0 ") && !t.contains("aborted"),
        "{what}: pgbench saw failures:\n{t}"
    );
    let processed = t
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next()?.trim().parse().ok())
        .context("no transaction count")?;
    Ok(processed)
}

fn psql(port: u16, user: &str, password: &str, db: &str, sql: &str) -> Result<Output> {
    run(pgrouter_lab::client_command("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            db,
        ])
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "30"))
}

pub async fn drivers_and_pgbench(lab: &Lab) -> Result<()> {
    pgbench_init(lab)?;
    // Fewer server connections than clients: statements must follow clients across them.
    let router = pooled_router(lab, 17540, "transaction", "transaction", 4, "30s")?;
    let port = router.primary;
    for mode in ["simple", "extended", "prepared"] {
        let out = run(&mut pgbench_command(
            port,
            &["-S", "-M", mode, "-c", "20", "-j", "2", "-T", "4"],
        ))?;
        let n = pgbench_clean(&format!("pgbench -S -M {mode} -c 20"), &out)?;
        println!("  pgbench -S -M {mode} -c 20 through 4 server connections: {n} transactions");
    }
    // Read-write transactions (BEGIN ... END) with prepared statements, as many clients as
    // server connections (pgbench prepares synchronously, which needs a free one).
    let out = run(&mut pgbench_command(
        port,
        &["-M", "prepared", "-c", "4", "-j", "2", "-T", "3"],
    ))?;
    pgbench_clean("pgbench tpcb-like -M prepared -c 4", &out)?;

    let scripts: [(&str, &[&str]); 3] = [
        (
            "PHP PDO (emulated prepares off)",
            &["php", "tests/clients/pdo_prepared.php"],
        ),
        (
            "psycopg 3 (prepare_threshold=0)",
            &["/usr/bin/python3", "tests/clients/psycopg_prepared.py"],
        ),
        (
            "asyncpg pool",
            &["/usr/bin/python3", "tests/clients/asyncpg_pool.py"],
        ),
    ];
    for (name, cmd) in scripts {
        let out = run(Command::new(cmd[0])
            .args(&cmd[1..])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--user",
                "postgres",
                "--password",
                "postgres",
                "--dbname",
                "postgres",
            ])
            .args(["--clients", "8", "--iterations", "150"])
            .current_dir(env!("CARGO_MANIFEST_DIR")))?;
        let t = text(&out);
        ensure!(
            out.status.success() && t.starts_with("ok: "),
            "{name} failed through transaction pooling:\n{t}"
        );
        println!("  {name}: {}", t.trim());
    }

    // A plain auth_file secret, auth_query for a user not in the file, and wrong passwords.
    let out = psql(
        port,
        "app_plain",
        "plain-secret",
        "postgres",
        "select current_user",
    )?;
    ensure!(
        text(&out).trim() == "app_plain",
        "plain secret: {}",
        text(&out)
    );
    let out = psql(
        port,
        "aq_user",
        "looked-up",
        "postgres",
        "select current_user",
    )?;
    ensure!(text(&out).trim() == "aq_user", "auth_query: {}", text(&out));
    for (user, wrong) in [("postgres", "nope"), ("aq_user", "nope"), ("nobody", "x")] {
        let out = psql(port, user, wrong, "postgres", "select 1")?;
        let t = text(&out);
        ensure!(
            !out.status.success()
                && t.contains(&format!(
                    "password authentication failed for user \"{user}\""
                )),
            "wrong password for {user}: {t}"
        );
        ensure!(!t.contains(wrong) || wrong.len() < 3, "secret echoed: {t}");
    }
    let log = router.log_text();
    let metrics = router.metrics()?;
    for secret in ["plain-secret", "auth-secret", "looked-up", "SCRAM-SHA-256$"] {
        ensure!(!log.contains(secret), "the log shows a secret ({secret})");
        ensure!(
            !metrics.contains(secret),
            "/metrics shows a secret ({secret})"
        );
    }
    Ok(())
}

pub async fn switchover_unseen(lab: &Lab) -> Result<()> {
    pgbench_init(lab)?;
    let router = pooled_router(lab, 17544, "transaction", "transaction", 10, "30s")?;
    let old = lab.leader()?;
    lab.psql(
        lab.pg_port(&old),
        "drop table if exists probe_pooled; create table probe_pooled(id bigint primary key, at timestamptz default clock_timestamp())",
    )?;
    let bench = pgbench_command(
        router.primary,
        &["-S", "-M", "prepared", "-c", "100", "-j", "2", "-T", "30"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let probe = Probe::start(router.primary, "probe_pooled");
    probe.wait_for_acks(50, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let arrivals = Arrivals::start(router.primary);

    lab.switchover(None)?;
    let new = lab.wait_leader_other_than(&old, Duration::from_secs(60))?;
    probe.wait_for_acks(200, Duration::from_secs(60)).await?;
    let report = probe.finish().await;
    arrivals.finish().await?.check(
        "pooled clients arriving through the switchover",
        Refusals::None,
    )?;
    println!(
        "  pooled writer probe: longest write gap {:.2}s, {} query errors, {} connect errors, {} connections, {} rows",
        report.longest_gap.as_secs_f64(),
        report.query_errors.len(),
        report.connect_errors.len(),
        report.connections,
        report.acked.len()
    );
    ensure!(
        report.query_errors.is_empty()
            && report.connect_errors.is_empty()
            && report.connections == 1,
        "the pooled writer saw the switchover: {:?} {:?}",
        report.query_errors,
        report.connect_errors
    );
    let missing = missing_rows(lab, lab.pg_port(&new), "probe_pooled", &report.acked)?;
    ensure!(
        missing.is_empty(),
        "acknowledged rows missing on {new}: {missing:?}"
    );

    let out = tokio::task::spawn_blocking(move || bench.wait_with_output()).await??;
    let n = pgbench_clean("pgbench -S -M prepared -c 100 across a switchover", &out)?;
    println!("  pgbench -S -M prepared -c 100 across the switchover: {n} transactions, 0 failed, no client dropped");
    Ok(())
}

pub async fn cancel_listen_console_session(lab: &Lab) -> Result<()> {
    let router = pooled_router(lab, 17548, "transaction", "session", 2, "30s")?;
    let port = router.primary;

    // Cancel: pgrouter's own key, mapped to the server running the query.
    let (sleeper, _c) = connect(port, "pgrouter-test-cancel").await?;
    let token = sleeper.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move {
        let r = sleeper.simple_query("select pg_sleep(60)").await;
        (r.map(|_| ()), sleeper)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(NoTls).await?;
    let (result, sleeper) = tokio::time::timeout(Duration::from_secs(20), sleeping).await??;
    let e = result.err().context("pg_sleep(60) was not cancelled")?;
    ensure!(
        e.as_db_error().map(|d| d.code().code()) == Some("57014"),
        "cancel: {e:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "cancel took too long"
    );
    let one: i32 = sleeper.query_one("select 1", &[]).await?.get(0);
    ensure!(one == 1, "the cancelled client is still usable");

    // A server that ends itself inside a query string, with the first statement's answer
    // queued before its FATAL: the client gets that answer and pgrouter's error, not a closed
    // connection, and goes on.
    let e = sleeper
        .simple_query("select 1; select pg_terminate_backend(pg_backend_pid())")
        .await
        .err()
        .context("a server terminating itself went unnoticed")?;
    let message = pgrouter_error(
        "a server terminating itself",
        &e,
        "ERROR",
        "08006",
        "lost the server connection",
    )?;
    println!("  a server terminating itself mid-query: 08006 {message}");
    let two: i32 = sleeper.query_one("select 2", &[]).await?.get(0);
    ensure!(two == 2, "the client is usable after its server died");

    // LISTEN pins the client to its server connection, so notifications reach it even
    // while other clients' transactions use the pool.
    let (listener, mut connection) = tokio_postgres::connect(
        &pgrouter_lab::probe::dsn(port, "pgrouter-test-listen"),
        NoTls,
    )
    .await?;
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN pgrouter_jobs").await?;
    let (other, _c2) = connect(port, "pgrouter-test-notify").await?;
    for i in 0..5 {
        other
            .batch_execute(&format!("NOTIFY pgrouter_jobs, 'job {i}'"))
            .await?;
    }
    for i in 0..5 {
        let got = tokio::time::timeout(Duration::from_secs(10), notes.recv())
            .await
            .context("a notification did not arrive")?;
        ensure!(
            got.as_deref() == Some(format!("job {i}").as_str()),
            "notification {i}: {got:?}"
        );
    }
    listener.batch_execute("UNLISTEN *").await?;

    // Each client keeps its own settings whichever server connection runs its statement.
    let (a, _ca) = connect(port, "pgrouter-test-a").await?;
    let (b, _cb) = connect(port, "pgrouter-test-b").await?;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'").await?;
    for _ in 0..10 {
        for (client, app, zone) in [
            (&a, "pgrouter-test-a", "Asia/Tokyo"),
            (&b, "pgrouter-test-b", "UTC"),
        ] {
            let row = client
                .query_one(
                    "select current_setting('application_name'), current_setting('TimeZone')",
                    &[],
                )
                .await?;
            let (got_app, got_zone): (String, String) = (row.get(0), row.get(1));
            ensure!(
                got_app == app && (got_zone == zone || zone == "UTC" && got_zone != "Asia/Tokyo"),
                "{app} saw application_name {got_app:?}, TimeZone {got_zone:?}"
            );
        }
    }

    // The admin console.
    let out = psql(port, "admin", "console-secret", "pgrouter", "SHOW POOLS")?;
    let t = text(&out);
    ensure!(
        out.status.success() && t.contains("|postgres|") && t.contains("(leader)"),
        "SHOW POOLS:\n{t}"
    );
    for command in ["SHOW CLIENTS", "SHOW SERVERS", "SHOW STATS", "SHOW CONFIG"] {
        let out = psql(port, "admin", "console-secret", "pgrouter", command)?;
        ensure!(out.status.success(), "{command}: {}", text(&out));
    }
    let config = text(&psql(
        port,
        "admin",
        "console-secret",
        "pgrouter",
        "SHOW CONFIG",
    )?);
    ensure!(
        config.contains("listen.primary_pool_mode|transaction"),
        "SHOW CONFIG lacks the pool mode:\n{config}"
    );
    for secret in ["console-secret", "SCRAM-SHA-256$"] {
        ensure!(
            !config.contains(secret),
            "SHOW CONFIG shows a secret ({secret}):\n{config}"
        );
    }
    let out = psql(port, "postgres", "postgres", "pgrouter", "SHOW POOLS")?;
    ensure!(
        text(&out).contains("not in auth.admin_users"),
        "non-admin console: {}",
        text(&out)
    );
    // Another console session left open (an exporter polling SHOW, say) runs no transaction:
    // PAUSE waits for neither it nor its own session (were they counted, it would end in
    // ERROR 57014 after drain_timeout, 5s here).
    let dsn =
        format!("host=127.0.0.1 port={port} user=admin password=console-secret dbname=pgrouter");
    let (console, console_io) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .context("a second admin console session")?;
    let console_io = tokio::spawn(console_io);
    let out = psql(port, "admin", "console-secret", "pgrouter", "PAUSE")?;
    ensure!(out.status.success(), "PAUSE: {}", text(&out));
    drop(console);
    let _ = console_io.await;
    let held = tokio::spawn(async move {
        let r = other.query_one("select 41 + 1", &[]).await;
        r.map(|row| row.get::<_, i32>(0))
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(!held.is_finished(), "a transaction ran while paused");
    let out = psql(port, "admin", "console-secret", "pgrouter", "RESUME")?;
    ensure!(out.status.success(), "RESUME: {}", text(&out));
    let v = tokio::time::timeout(Duration::from_secs(10), held).await???;
    ensure!(v == 42, "after RESUME");
    let out = psql(port, "admin", "console-secret", "pgrouter", "RELOAD")?;
    ensure!(out.status.success(), "RELOAD: {}", text(&out));

    // Session mode (the replicas port here): a server connection goes back reset.
    let replicas = router.replicas;
    let (a, _ca) = connect(replicas, "pgrouter-test-session").await?;
    a.batch_execute("SET search_path = pgrouter_was_here")
        .await?;
    let pid_a: i32 = a.query_one("select pg_backend_pid()", &[]).await?.get(0);
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut reused = false;
    for _ in 0..4 {
        let (b, _cb) = connect(replicas, "pgrouter-test-session").await?;
        let row = b
            .query_one(
                "select pg_backend_pid(), current_setting('search_path')",
                &[],
            )
            .await?;
        let (pid, path): (i32, String) = (row.get(0), row.get(1));
        ensure!(
            !path.contains("pgrouter_was_here"),
            "session state leaked to the next client: {path}"
        );
        reused |= pid == pid_a;
    }
    if !reused {
        bail!("session mode did not reuse the server connection");
    }
    Ok(())
}

pub async fn kill_leader_keeps_clients(lab: &Lab) -> Result<()> {
    // A short hold, so a transaction in the leaderless gap times out rather than waits.
    let router = pooled_router(lab, 17552, "transaction", "transaction", 4, "2s")?;
    let port = router.primary;
    let old = lab.leader()?;
    lab.psql(
        lab.pg_port(&old),
        "drop table if exists pooled_kill; create table pooled_kill(id int primary key)",
    )?;
    let (idle, _ci) = connect(port, "pgrouter-test-idle").await?;
    let (busy, _cb) = connect(port, "pgrouter-test-busy").await?;
    idle.execute("insert into pooled_kill values (1)", &[])
        .await?;
    busy.batch_execute("BEGIN; INSERT INTO pooled_kill VALUES (2)")
        .await?;

    lab.kill_member(&old)?;
    let result = after_kill(lab, &old, &idle, &busy).await;
    lab.start_member(&old)?;
    result
}

async fn after_kill(
    lab: &Lab,
    old: &str,
    idle: &tokio_postgres::Client,
    busy: &tokio_postgres::Client,
) -> Result<()> {
    // The open transaction is gone with its server: an error, and the connection stays.
    let e = busy
        .batch_execute("INSERT INTO pooled_kill VALUES (3)")
        .await
        .err()
        .context("a statement of a transaction on the killed leader succeeded")?;
    let code = e.as_db_error().map(|d| d.code().code().to_owned());
    ensure!(
        matches!(code.as_deref(), Some("08006") | Some("57P01")),
        "transaction on the killed leader: {e:?}"
    );
    // In the gap (the dead leader's key not yet expired, then no leader) a transaction waits
    // hold_timeout, then gets an ERROR naming why; the connection stays.
    let started = Instant::now();
    let e = idle
        .query_one("select 1", &[])
        .await
        .err()
        .context("a query ran with no leader")?;
    let db = e.as_db_error().context("not a server error")?;
    let why_ok = match db.code().code() {
        "57P03" => db.message().contains("no leader"),
        "08006" => db
            .message()
            .contains(&format!("cannot reach member \"{old}\"")),
        _ => false,
    };
    ensure!(
        why_ok && db.message().starts_with("pgrouter: cluster \"demo\""),
        "error in the leaderless gap: {db:?}"
    );
    ensure!(started.elapsed() >= Duration::from_millis(1500), "not held");
    let new = lab.wait_leader_other_than(old, Duration::from_secs(90))?;
    // Both clients go on, on the new leader, without reconnecting.
    crate::support::eventually(
        "pooled clients served by the new leader",
        Duration::from_secs(30),
        || async {
            let a: i32 = idle
                .query_one("select inet_server_port()", &[])
                .await?
                .get(0);
            busy.execute(
                "insert into pooled_kill values (4) on conflict do nothing",
                &[],
            )
            .await?;
            Ok(a as u16 == lab.pg_port(&new))
        },
    )
    .await?;
    let rows = lab.psql(
        lab.pg_port(&new),
        "select string_agg(id::text, ',' order by id) from pooled_kill",
    )?;
    ensure!(
        rows == "1,4",
        "rows on the new leader: {rows} (2 and 3 belonged to the lost transaction)"
    );
    Ok(())
}

/// A transaction that finds every server connection taken waits `query_wait_timeout`, then
/// gets ERROR 57P03 naming pgrouter and the pool; the client's connection stays usable, and a
/// transaction whose wait ends in time (the holder commits) runs.
pub async fn wait_timeout(lab: &Lab) -> Result<()> {
    let router =
        crate::restarts::pooled_router(lab, 17556, "pool_size = 1\nquery_wait_timeout = \"2s\"\n")?;
    let port = router.primary;
    // Both log in first: a login asking for settings other than the defaults borrows a
    // server connection too.
    let (holder, _h) = connect(port, "pgrouter-test-holder").await?;
    let (waiter, _w) = connect(port, "pgrouter-test-waiter").await?;
    // An open transaction keeps the only server connection.
    holder.batch_execute("begin; select 1").await?;
    let started = Instant::now();
    let first = tokio::spawn(async move {
        let r = waiter.simple_query("select 2").await.map(|_| ());
        (r, waiter)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let in_line = waiting_in_console(port)?;
    let (r, waiter) = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .context("the waiting transaction got no answer")??;
    let refused = r
        .err()
        .context("a transaction ran while the only server connection was held")?;
    let message = pgrouter_error(
        "refusal",
        &refused,
        "ERROR",
        "57P03",
        "no server connection free",
    )?;
    let waited = started.elapsed();
    ensure!(
        waited >= Duration::from_secs(2),
        "refused after {waited:?}, before query_wait_timeout"
    );
    ensure!(
        (in_line.as_str(), waiting_in_console(port)?.as_str()) == ("1", "0"),
        "SHOW POOLS cl_waiting while waiting: {in_line}, after the refusal: not 0"
    );
    let waiting = tokio::spawn(async move {
        let r = waiter.query_one("select 3", &[]).await;
        (r, waiter)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.batch_execute("commit").await?;
    let (r, waiter) = tokio::time::timeout(Duration::from_secs(60), waiting).await??;
    ensure!(r?.get::<_, i32>(0) == 3, "the served waiter's answer");
    let four: i32 = waiter.query_one("select 4", &[]).await?.get(0);
    let five: i32 = holder.query_one("select 5", &[]).await?.get(0);
    ensure!((four, five) == (4, 5), "both clients usable afterwards");
    println!(
        "  refused after {:.1}s with 57P03: {message}",
        waited.as_secs_f64()
    );
    Ok(())
}

/// cl_waiting of the pool for `postgres`, from the admin console's SHOW POOLS.
fn waiting_in_console(port: u16) -> Result<String> {
    Ok(leader_pool_in_console(port)?.swap_remove(3))
}

/// The row for `postgres` in the admin console's SHOW POOLS (pgbouncer's columns: database,
/// user, cl_active, cl_waiting, ...; then pgrouter's members).
fn leader_pool_in_console(port: u16) -> Result<Vec<String>> {
    let out = psql(
        port,
        "admin",
        crate::restarts::CONSOLE_PASSWORD,
        "pgrouter",
        "SHOW POOLS",
    )?;
    let t = text(&out);
    t.lines()
        .find(|l| l.starts_with("postgres|postgres|") && l.contains("(leader)"))
        .map(|l| l.split('|').map(str::to_owned).collect::<Vec<_>>())
        .filter(|fields| fields.len() == 17)
        .with_context(|| format!("no leader pool for postgres in SHOW POOLS:\n{t}"))
}

/// A client in line for the only server connection that closes its connection leaves the line
/// at once, and the query it sent never runs.
pub async fn waiter_that_leaves(lab: &Lab) -> Result<()> {
    let router = crate::restarts::pooled_router(lab, 17602, "pool_size = 1\n")?;
    let port = router.primary;
    lab.psql(
        lab.pg_port(&lab.leader()?),
        "drop table if exists left_behind; create table left_behind(id int)",
    )?;
    let (holder, _h) = connect(port, "pgrouter-test-holder").await?;
    let (leaver, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres application_name=pgrouter-test-leaver"),
        NoTls,
    )
    .await?;
    let connection = tokio::spawn(connection);
    // Both log in first (a login may borrow a server connection); then an open transaction
    // keeps the only one.
    holder.batch_execute("begin; select 1").await?;
    let insert = tokio::spawn(async move {
        let r = leaver
            .simple_query("insert into left_behind values (1)")
            .await;
        (r, leaver)
    });
    crate::support::eventually(
        "the insert in line (cl_waiting 1)",
        Duration::from_secs(10),
        || async { crate::support::is(waiting_in_console(port)?.as_str(), "1") },
    )
    .await?;
    // The leaver's socket closes.
    connection.abort();
    let _ = connection.await;
    crate::support::eventually(
        "the leaver to leave the line",
        Duration::from_secs(10),
        || async { crate::support::is(waiting_in_console(port)?.as_str(), "0") },
    )
    .await?;
    let page = http("GET", router.admin, "/metrics", None)?.1;
    let left = metric(
        &page,
        "pgrouter_clients_left_waiting_total{port=\"primary\"}",
    )?;
    ensure!(left == 1.0, "clients counted as left: {left}");
    holder.batch_execute("commit").await?;
    // The only server connection back in the pool, idle, nobody in line: had the leaver's
    // INSERT been kept, it would have been handed the connection on the commit.
    crate::support::eventually(
        "the server connection idle in the pool after the commit",
        Duration::from_secs(10),
        || async {
            let pool = leader_pool_in_console(port)?;
            // cl_waiting, sv_active, sv_idle in pgbouncer's columns.
            Ok(pool[3] == "0" && pool[6] == "0" && pool[9] == "1")
        },
    )
    .await?;
    let rows: i64 = holder
        .query_one("select count(*) from left_behind", &[])
        .await?
        .get(0);
    ensure!(
        rows == 0,
        "the query of a client that left ran: {rows} rows"
    );
    let _ = insert.await;
    ensure!(
        holder.query_one("select 2", &[]).await?.get::<_, i32>(0) == 2,
        "the holder is usable after"
    );
    Ok(())
}

/// Two worker threads share one pool: clients dealt to both, all running at once through
/// `pool_size = 1`, reach the same single backend, and the connection moves between the
/// threads' event loops to serve them.
pub async fn worker_threads_share_one_pool(lab: &Lab) -> Result<()> {
    let router = crate::restarts::pooled_router(
        lab,
        17610,
        "pool_size = 1\n\n[runtime]\nworker_threads = 2\n",
    )?;
    let port = router.primary;
    let mut clients = Vec::new();
    // Dealt in turn: two consecutive clients land on different threads.
    for i in 0..4 {
        clients.push(connect(port, &format!("pgrouter-test-worker-{i}")).await?);
    }
    let mut runs = Vec::new();
    for (client, _) in clients {
        runs.push(tokio::spawn(async move {
            let mut pids = std::collections::BTreeSet::new();
            for _ in 0..25 {
                let pid: i32 = client
                    .query_one("select pg_backend_pid()", &[])
                    .await?
                    .get(0);
                pids.insert(pid);
            }
            anyhow::Ok(pids)
        }));
    }
    let mut backends = std::collections::BTreeSet::new();
    for run in runs {
        let pids = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .context("a client's transactions did not finish")???;
        backends.extend(pids);
    }
    ensure!(
        backends.len() == 1,
        "pool_size = 1 on two worker threads reached {} backends: {backends:?}",
        backends.len()
    );
    let stats = text(&psql(
        port,
        "admin",
        crate::restarts::CONSOLE_PASSWORD,
        "pgrouter",
        "SHOW STATS",
    )?);
    // pgbouncer's 15 columns, total_requests, total_server_opened, then total_server_moved.
    let moved: u64 = stats
        .lines()
        .find(|l| l.starts_with("postgres|"))
        .and_then(|l| l.split('|').nth(17)?.trim().parse().ok())
        .with_context(|| format!("no total_server_moved for postgres in SHOW STATS:\n{stats}"))?;
    ensure!(
        moved > 0,
        "the one server connection never moved between the worker threads:\n{stats}"
    );
    println!("  100 transactions from 4 clients on 2 threads, 1 backend, moved {moved} times");
    Ok(())
}
