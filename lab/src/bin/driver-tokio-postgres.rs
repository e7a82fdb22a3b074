//! `driver-tokio-postgres`: the driver checks of `tests/drivers/README.md` run with
//! tokio-postgres 0.7, so a direct connection, pgrouter and pgbouncer can be compared.
//!
//! Run it through its script (it execs this binary, built by
//! `cargo build -p pgrouter-lab --bin driver-tokio-postgres`):
//!
//! ```text
//! tests/drivers/tokio-postgres/run --host H --port P --user U --password PW --dbname D \
//!     --clients N [--seconds S] [--timeout T]
//! ```
//!
//! It prints `ok <check>`, `FAIL <check>: <reason>` or `skip <check>: <reason>` per check, then
//! `N passed, M failed`, and exits 0 exactly when M is 0. Every check is bounded by `--timeout`
//! seconds (`workload` by `--seconds` more). Its tables are named `pgr_tokio_postgres_<pid>_*`
//! and dropped at the end.
//!
//! What tokio-postgres sends:
//! - `Client::prepare` names statements `s0`, `s1`, ... from one counter per process (so names
//!   never repeat between the connections of one process) with Parse/Describe/Sync; executing a
//!   `Statement` is Bind/Execute/Sync; dropping its last clone sends Close/Sync.
//! - `Client::query(&str, ..)` does exactly that in three round trips: a named statement
//!   prepared, executed once and closed. Only `query_typed` uses the unnamed statement
//!   (Parse ""/Bind/Describe/Execute/Sync in one round trip); `unnamed_prepared` runs both.
//! - Concurrent requests on one `Client` are pipelined: each is written without waiting for
//!   the previous answer, each ends with its own Sync.
//! - `copy_out` returns a `futures` `Stream`; the lab crate has no direct dependency on
//!   `futures`/`futures-util`/`futures-core`, so the trait cannot be named and the rows cannot be
//!   read. `copy` therefore checks COPY FROM STDIN fully (binary format through the inherent
//!   methods of `BinaryCopyInWriter`) but of COPY TO STDOUT only that the server starts it
//!   (BindComplete, CopyOutResponse) and that the connection answers correctly after the
//!   stream is dropped (the connection reads the CopyData/CopyDone/CommandComplete through to
//!   ReadyForQuery and discards them).

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, SimpleQueryMessage, Statement};

const USAGE: &str = "usage: driver-tokio-postgres --host H --port P --user U --password PW \
--dbname D --clients N [--seconds S] [--timeout T] [--checks NAME,...]";

/// Executions per client in `named_prepared` and `unnamed_prepared`.
const ITERATIONS: i32 = 100;
/// Transactions per client in `transactions`.
const TRANSACTIONS: i32 = 30;
/// Rows copied in by `copy`.
const COPY_ROWS: i32 = 10_000;
/// Size of the parameter and the result of `large_messages`.
const LARGE: usize = 16 << 20;

/// The command line and what every check shares.
struct Ctx {
    config: Config,
    clients: i32,
    seconds: u64,
    timeout: Duration,
    /// `--checks`: the only checks to run; empty runs them all.
    only: Vec<String>,
    /// `pgr_tokio_postgres_<pid>`: the prefix of this run's tables, channels and SQL statements.
    prefix: String,
    /// Errors that ended connections (an ErrorResponse outside any query reaches only the
    /// connection task), taken by each check's FAIL line: checks run one at a time.
    ended: Mutex<Vec<String>>,
}

impl Ctx {
    fn table(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix)
    }
}

/// What a check found when it did not fail.
enum Verdict {
    Pass,
    PassWith(String),
    Skip(String),
}

type Start = fn(Arc<Ctx>) -> JoinHandle<Result<Verdict>>;

/// The checks, in the README's order.
fn checks() -> Vec<(&'static str, Start)> {
    vec![
        ("named_prepared", |c| tokio::spawn(named_prepared(c))),
        ("unnamed_prepared", |c| tokio::spawn(unnamed_prepared(c))),
        ("transactions", |c| tokio::spawn(transactions(c))),
        ("plan_invalidated", |c| tokio::spawn(plan_invalidated(c))),
        ("deallocate_simple", |c| tokio::spawn(deallocate_simple(c))),
        ("deallocate_extended", |c| {
            tokio::spawn(deallocate_extended(c))
        }),
        ("pipeline", |c| tokio::spawn(pipeline(c))),
        ("copy", |c| tokio::spawn(copy(c))),
        ("cancel", |c| tokio::spawn(cancel(c))),
        ("listen_notify", |c| tokio::spawn(listen_notify(c))),
        ("large_messages", |c| tokio::spawn(large_messages(c))),
        ("errors", |c| tokio::spawn(errors(c))),
        ("workload", |c| tokio::spawn(workload(c))),
    ]
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let ctx = match parse_args(&argv) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            eprintln!("driver-tokio-postgres: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, start) in checks() {
        if !ctx.only.is_empty() && !ctx.only.iter().any(|o| o == name) {
            continue;
        }
        let limit = match name {
            "workload" => ctx.timeout + Duration::from_secs(ctx.seconds),
            _ => ctx.timeout,
        };
        ctx.ended.lock().expect("ended").clear();
        let mut task = start(ctx.clone());
        let verdict = match tokio::time::timeout(limit, &mut task).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(panic)) => Err(anyhow!("panicked: {panic}")),
            Err(_) => {
                task.abort();
                Err(anyhow!("hang: no result in {} s", limit.as_secs()))
            }
        };
        match verdict {
            Ok(Verdict::Pass) => {
                passed += 1;
                println!("ok {name}");
            }
            Ok(Verdict::PassWith(note)) => {
                passed += 1;
                println!("ok {name}: {note}");
            }
            Ok(Verdict::Skip(why)) => println!("skip {name}: {why}"),
            Err(e) => {
                failed += 1;
                let mut reason = format!("{e:#}");
                if let Some(end) = ctx.ended.lock().expect("ended").first() {
                    reason += &format!(" (a connection ended with: {end})");
                }
                println!("FAIL {name}: {}", one_line(&reason));
            }
        }
    }
    if let Err(e) = drop_tables(&ctx).await {
        eprintln!("driver-tokio-postgres: dropping the run's tables: {e:#}");
    }
    println!("{passed} passed, {failed} failed");
    // Exit now rather than wait for tasks of a check that hung.
    std::process::exit(if failed == 0 { 0 } else { 1 })
}

fn parse_args(argv: &[String]) -> Result<Ctx> {
    let (mut host, mut port, mut user, mut password, mut dbname) = (None, None, None, None, None);
    let (mut clients, mut seconds, mut timeout) = (None, 0, 30);
    let mut only = Vec::new();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || -> Result<u64> {
            value
                .parse()
                .with_context(|| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--host" => host = Some(value.clone()),
            "--port" => port = Some(u16::try_from(number()?)?),
            "--user" => user = Some(value.clone()),
            "--password" => password = Some(value.clone()),
            "--dbname" => dbname = Some(value.clone()),
            "--clients" => clients = Some(i32::try_from(number()?)?),
            "--seconds" => seconds = number()?,
            "--timeout" => timeout = number()?,
            "--checks" => only = value.split(',').map(str::to_owned).collect(),
            _ => bail!("unknown argument {flag}"),
        }
    }
    let mut config = Config::new();
    config
        .host(&host.context("--host is required")?)
        .port(port.context("--port is required")?)
        .user(&user.context("--user is required")?)
        .password(password.context("--password is required")?)
        .dbname(&dbname.context("--dbname is required")?)
        .application_name("pgr-driver-tokio-postgres")
        .connect_timeout(Duration::from_secs(10));
    let clients = clients.context("--clients is required")?;
    if clients < 1 {
        bail!("--clients must be at least 1");
    }
    Ok(Ctx {
        config,
        clients,
        seconds,
        timeout: Duration::from_secs(timeout),
        only,
        prefix: format!("pgr_tokio_postgres_{}", std::process::id()),
        ended: Mutex::default(),
    })
}

/// Connects; the connection is driven by a task whose end (and its error) is reported on the
/// returned receiver.
async fn connect_watched(
    ctx: &Ctx,
) -> Result<(Client, oneshot::Receiver<Result<(), tokio_postgres::Error>>)> {
    let (client, connection) = ctx.config.connect(NoTls).await.step("connect")?;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(connection.await);
    });
    Ok((client, rx))
}

/// Connects; an error ending the connection is recorded in `ctx.ended`.
async fn connect(ctx: &Arc<Ctx>) -> Result<Client> {
    let (client, ended) = connect_watched(ctx).await?;
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Ok(Err(e)) = ended.await {
            ctx.ended.lock().expect("ended").push(describe(&e));
        }
    });
    Ok(client)
}

/// `SEVERITY SQLSTATE message` of an ErrorResponse, else the error and its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} {} {}", db.severity(), db.code().code(), db.message()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => format!("{e}"),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Names the step a tokio-postgres error came from.
trait Step<T> {
    fn step(self, what: &str) -> Result<T>;
}

impl<T> Step<T> for Result<T, tokio_postgres::Error> {
    fn step(self, what: &str) -> Result<T> {
        self.map_err(|e| anyhow!("{what}: {}", describe(&e)))
    }
}

/// The message of the error `result` must be, with SQLSTATE `state`.
fn expect_state<T>(
    result: Result<T, tokio_postgres::Error>,
    state: &str,
    what: &str,
) -> Result<String> {
    match result {
        Ok(_) => bail!("{what}: succeeded, expected SQLSTATE {state}"),
        Err(e) => match e.as_db_error() {
            Some(db) if db.code().code() == state => Ok(db.message().to_owned()),
            _ => bail!("{what}: expected SQLSTATE {state}, got {}", describe(&e)),
        },
    }
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(got: T, want: T, what: &str) -> Result<()> {
    if got != want {
        bail!("{what}: got {got:?}, want {want:?}");
    }
    Ok(())
}

/// The values of the rows a simple query returned.
async fn simple_rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let messages = client.simple_query(sql).await.step(sql)?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Spawned tasks, aborted when dropped (when their check hangs and is given up).
struct Tasks(Vec<JoinHandle<Result<()>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Runs `client` for clients 0..N at once; fails with the first failure if any failed.
async fn each_client<F, Fut>(ctx: &Arc<Ctx>, client: F) -> Result<()>
where
    F: Fn(Arc<Ctx>, i32) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut tasks = Tasks(
        (0..ctx.clients)
            .map(|c| tokio::spawn(client(ctx.clone(), c)))
            .collect(),
    );
    let (mut failed, mut first) = (0, None);
    for (c, task) in tasks.0.iter_mut().enumerate() {
        if let Err(e) = task.await.map_err(anyhow::Error::from).and_then(|r| r) {
            failed += 1;
            first.get_or_insert_with(|| format!("client {c}: {e:#}"));
        }
    }
    match first {
        Some(first) => bail!("{failed} of {} clients failed; {first}", ctx.clients),
        None => Ok(()),
    }
}

/// N clients, each preparing three statements once and executing them with parameters.
async fn named_prepared(ctx: Arc<Ctx>) -> Result<Verdict> {
    each_client(&ctx, |ctx, c| async move {
        let client = connect(&ctx).await?;
        let add = client
            .prepare("select $1::int + $2::int")
            .await
            .step("prepare add")?;
        let tag = client
            .prepare(&format!("select $1::text || '/c{c}'"))
            .await
            .step("prepare tag")?;
        let series = client
            .prepare("select g from generate_series(1, $1::int) g order by g")
            .await
            .step("prepare series")?;
        for i in 0..ITERATIONS {
            let row = client.query_one(&add, &[&i, &c]).await.step("add")?;
            expect_eq(row.get::<_, i32>(0), i + c, "add")?;
            let text = format!("i{i}");
            let row = client.query_one(&tag, &[&text]).await.step("tag")?;
            expect_eq(row.get::<_, String>(0), format!("i{i}/c{c}"), "tag")?;
            let n = i % 5 + 1;
            let rows = client.query(&series, &[&n]).await.step("series")?;
            let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            expect_eq(got, (1..=n).collect(), "series")?;
        }
        Ok(())
    })
    .await?;
    Ok(Verdict::Pass)
}

/// N clients running parameterised queries by text: `query_typed` on the unnamed statement,
/// and `query(&str)` (a named statement prepared, executed and closed per call).
async fn unnamed_prepared(ctx: Arc<Ctx>) -> Result<Verdict> {
    each_client(&ctx, |ctx, c| async move {
        let client = connect(&ctx).await?;
        for i in 0..ITERATIONS {
            let rows = client
                .query_typed(
                    &format!("select $1::int * 2 + {c}, $2::text"),
                    &[(&i, Type::INT4), (&"u", Type::TEXT)],
                )
                .await
                .step("query_typed")?;
            expect_eq(rows.len(), 1, "query_typed rows")?;
            expect_eq(rows[0].get::<_, i32>(0), i * 2 + c, "query_typed")?;
            expect_eq(rows[0].get::<_, &str>(1), "u", "query_typed text")?;
            let (a, b) = (format!("a{i}"), format!("b{c}"));
            let row = client
                .query_one("select $1::text || $2::text", &[&a, &b])
                .await
                .step("query by text")?;
            expect_eq(
                row.get::<_, String>(0),
                format!("a{i}b{c}"),
                "query by text",
            )?;
        }
        Ok(())
    })
    .await?;
    Ok(Verdict::Pass)
}

/// N clients in explicit transactions (BEGIN, prepared INSERT and SELECT count, COMMIT or
/// ROLLBACK), each client's committed rows counted inside and after.
async fn transactions(ctx: Arc<Ctx>) -> Result<Verdict> {
    let table = ctx.table("tx");
    let setup = connect(&ctx).await?;
    setup
        .batch_execute(&format!(
            "create table {table} (client int, i int, primary key (client, i))"
        ))
        .await
        .step("create table")?;
    each_client(&ctx, |ctx, c| async move {
        let table = ctx.table("tx");
        let mut client = connect(&ctx).await?;
        let insert = client
            .prepare(&format!("insert into {table} (client, i) values ($1, $2)"))
            .await
            .step("prepare insert")?;
        let count = client
            .prepare(&format!("select count(*) from {table} where client = $1"))
            .await
            .step("prepare count")?;
        let mut committed: i64 = 0;
        for i in 0..TRANSACTIONS {
            let tx = client.transaction().await.step("begin")?;
            expect_eq(
                tx.execute(&insert, &[&c, &i]).await.step("insert")?,
                1,
                "inserted",
            )?;
            let seen: i64 = tx.query_one(&count, &[&c]).await.step("count")?.get(0);
            expect_eq(seen, committed + 1, "rows seen inside the transaction")?;
            if i % 3 == 2 {
                tx.rollback().await.step("rollback")?;
            } else {
                tx.commit().await.step("commit")?;
                committed += 1;
            }
        }
        let after: i64 = client.query_one(&count, &[&c]).await.step("count")?.get(0);
        expect_eq(after, committed, "rows committed")
    })
    .await?;
    Ok(Verdict::Pass)
}

/// A prepared `select *` whose table gains a column: PostgreSQL answers 0A000 (cached plan
/// must not change result type); tokio-postgres does not re-prepare, the application prepares
/// again and the new statement sees the new column.
async fn plan_invalidated(ctx: Arc<Ctx>) -> Result<Verdict> {
    let table = ctx.table("plan");
    let client = connect(&ctx).await?;
    client
        .batch_execute(&format!(
            "create table {table} (id int primary key, v text); insert into {table} values (1, 'a')"
        ))
        .await
        .step("create table")?;
    let select = format!("select * from {table} order by id");
    let before = client.prepare(&select).await.step("prepare")?;
    let rows = client.query(&before, &[]).await.step("select before")?;
    expect_eq(
        (rows.len(), rows[0].len()),
        (1, 2),
        "rows and columns before",
    )?;
    client
        .batch_execute(&format!(
            "alter table {table} add column extra int default 7"
        ))
        .await
        .step("alter table")?;
    let message = expect_state(
        client.query(&before, &[]).await,
        "0A000",
        "the statement prepared before ALTER TABLE",
    )?;
    if !message.starts_with("cached plan must not change result type") {
        bail!("0A000 with an unexpected message: {message}");
    }
    let after = client.prepare(&select).await.step("prepare again")?;
    let rows = client.query(&after, &[]).await.step("select after")?;
    expect_eq(rows.len(), 1, "rows after")?;
    expect_eq(
        (
            rows[0].get::<_, i32>(0),
            rows[0].get::<_, &str>(1),
            rows[0].get::<_, i32>(2),
        ),
        (1, "a", 7),
        "row after",
    )?;
    Ok(Verdict::Pass)
}

/// How `deallocate` sends DEALLOCATE.
#[derive(Clone, Copy)]
enum Protocol {
    /// `batch_execute`: a Query message.
    Simple,
    /// `execute(.., &[])`: Parse/Describe/Sync, Bind/Execute/Sync, Close/Sync.
    Extended,
}

async fn deallocate_simple(ctx: Arc<Ctx>) -> Result<Verdict> {
    deallocate(&ctx, Protocol::Simple, "ds").await
}

async fn deallocate_extended(ctx: Arc<Ctx>) -> Result<Verdict> {
    deallocate(&ctx, Protocol::Extended, "de").await
}

/// DEALLOCATE of statements made by SQL PREPARE (a tokio-postgres `Statement`'s name is
/// private; it only closes it with the protocol's Close): one of a table that exists, then
/// one whose table was dropped first. Each must succeed, leave the connection usable and the
/// statement gone (EXECUTE then fails with 26000). tokio-postgres does not expose the
/// CommandComplete tag, only success.
async fn deallocate(ctx: &Arc<Ctx>, protocol: Protocol, suffix: &str) -> Result<Verdict> {
    let table = ctx.table(suffix);
    let (plain, dropped) = (format!("{table}_plain"), format!("{table}_dropped"));
    let client = connect(ctx).await?;
    let run = |sql: String| {
        let client = &client;
        async move {
            match protocol {
                Protocol::Simple => client.batch_execute(&sql).await.step(&sql),
                Protocol::Extended => client.execute(&sql, &[]).await.step(&sql).map(|_| ()),
            }
        }
    };
    client
        .batch_execute(&format!(
            "create table {table} (id int); insert into {table} values (5); \
             prepare {plain} as select $1::int + 1; prepare {dropped} as select id from {table}"
        ))
        .await
        .step("create table and PREPARE")?;
    expect_eq(
        simple_rows(&client, &format!("execute {plain}(41)")).await?,
        vec![vec![Some("42".to_owned())]],
        "EXECUTE before DEALLOCATE",
    )?;
    expect_eq(
        simple_rows(&client, &format!("execute {dropped}")).await?,
        vec![vec![Some("5".to_owned())]],
        "EXECUTE of the table's statement",
    )?;
    run(format!("deallocate {plain}")).await?;
    client
        .batch_execute(&format!("drop table {table}"))
        .await
        .step("drop table")?;
    run(format!("deallocate {dropped}")).await?;
    let row = client
        .query_one("select 7::int", &[])
        .await
        .step("query after DEALLOCATE")?;
    expect_eq(row.get::<_, i32>(0), 7, "query after DEALLOCATE")?;
    for name in [plain, dropped] {
        expect_state(
            client.simple_query(&format!("execute {name}(1)")).await,
            "26000",
            &format!("EXECUTE {name} after DEALLOCATE"),
        )?;
    }
    Ok(Verdict::Pass)
}

/// Requests issued concurrently on one connection are pipelined by tokio-postgres: prepared
/// INSERTs and SELECTs with one division by zero among them, then the same with `query_typed`
/// (the unnamed statement). The failing one gets 22012, the others their results (each
/// request ends with its own Sync, so a failure spoils nothing else).
async fn pipeline(ctx: Arc<Ctx>) -> Result<Verdict> {
    let table = ctx.table("pipe");
    let client = connect(&ctx).await?;
    client
        .batch_execute(&format!("create table {table} (id int primary key)"))
        .await
        .step("create table")?;
    let insert = client
        .prepare(&format!("insert into {table} values ($1)"))
        .await
        .step("prepare insert")?;
    let divide = client
        .prepare("select 10 / $1::int")
        .await
        .step("prepare divide")?;
    // One parameter each: 1, 2, 3, 0 and 5.
    let [one, two, three, zero, five]: [[&(dyn ToSql + Sync); 1]; 5] =
        [[&1i32], [&2i32], [&3i32], [&0i32], [&5i32]];
    let (a, b, fails, c, d) = tokio::join!(
        client.execute(&insert, &one),
        client.execute(&insert, &two),
        client.query_one(&divide, &zero),
        client.execute(&insert, &three),
        client.query_one(&divide, &five),
    );
    for (n, inserted) in [a, b, c].into_iter().enumerate() {
        expect_eq(inserted.step(&format!("insert {n}"))?, 1, "inserted")?;
    }
    expect_state(fails, "22012", "10 / 0 in the pipeline")?;
    expect_eq(d.step("10 / 5")?.get::<_, i32>(0), 2, "10 / 5")?;
    let count = format!("select count(*) from {table} where id <= $1");
    let (plus, over, upto) = (
        [(one[0], Type::INT4)],
        [(zero[0], Type::INT4)],
        [(five[0], Type::INT4)],
    );
    let (e, fails, f) = tokio::join!(
        client.query_typed("select $1::int + 1", &plus),
        client.query_typed("select 1 / $1::int", &over),
        client.query_typed(&count, &upto),
    );
    expect_eq(e.step("$1 + 1")?[0].get::<_, i32>(0), 2, "unnamed $1 + 1")?;
    expect_state(fails, "22012", "unnamed 1 / 0 in the pipeline")?;
    expect_eq(f.step("count")?[0].get::<_, i64>(0), 3, "unnamed count")?;
    Ok(Verdict::Pass)
}

/// COPY FROM STDIN of many rows (binary), checked by queries; COPY TO STDOUT started and
/// abandoned (see the module comment: the lab crate cannot read its stream), the connection
/// then checked.
async fn copy(ctx: Arc<Ctx>) -> Result<Verdict> {
    let table = ctx.table("copy");
    let client = connect(&ctx).await?;
    client
        .batch_execute(&format!("create table {table} (id int, v text)"))
        .await
        .step("create table")?;
    let sink = client
        .copy_in(&format!("copy {table} (id, v) from stdin (format binary)"))
        .await
        .step("copy in")?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT]);
    let mut writer = std::pin::pin!(writer);
    for i in 0..COPY_ROWS {
        let v = format!("row {i}");
        writer
            .as_mut()
            .write(&[&i, &v])
            .await
            .step("copy in write")?;
    }
    let copied = writer.finish().await.step("copy in finish")?;
    expect_eq(copied, COPY_ROWS as u64, "rows copied in")?;
    let count = format!(
        "select count(*), coalesce(sum(id), 0), count(*) filter (where v = 'row ' || id) from {table}"
    );
    let check = |row: tokio_postgres::Row| -> Result<()> {
        let n = i64::from(COPY_ROWS);
        let got: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        expect_eq(got, (n, n * (n - 1) / 2, n), "count, sum and matching rows")
    };
    check(client.query_one(&count, &[]).await.step("count")?)?;
    let out = client
        .copy_out(&format!("copy {table} to stdout"))
        .await
        .step("copy out")?;
    drop(out);
    check(
        client
            .query_one(&count, &[])
            .await
            .step("count after copy out")?,
    )?;
    Ok(Verdict::Pass)
}

/// `select pg_sleep(20)` cancelled with the cancel token after 0.5 s: 57014 within 10 s, the
/// connection usable after.
async fn cancel(ctx: Arc<Ctx>) -> Result<Verdict> {
    let client = connect(&ctx).await?;
    let token = client.cancel_token();
    let (slept, cancelled) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(10),
            client.query("select pg_sleep(20)", &[])
        ),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel_query(NoTls).await
        }
    );
    cancelled.step("cancel_query")?;
    let slept = slept.map_err(|_| anyhow!("pg_sleep(20) not cancelled within 10 s"))?;
    expect_state(slept, "57014", "the cancelled pg_sleep")?;
    let row = client
        .query_one("select 3::int", &[])
        .await
        .step("query after cancel")?;
    expect_eq(row.get::<_, i32>(0), 3, "query after cancel")?;
    Ok(Verdict::Pass)
}

/// LISTEN on one connection (driven by `poll_message` to see notifications), NOTIFY with a
/// payload from another, the notification received within 5 s.
async fn listen_notify(ctx: Arc<Ctx>) -> Result<Verdict> {
    let channel = ctx.table("channel");
    let (listener, mut connection) = ctx.config.connect(NoTls).await.step("connect")?;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n);
            }
        }
    });
    listener
        .batch_execute(&format!("listen {channel}"))
        .await
        .step("LISTEN")?;
    let notifier = connect(&ctx).await?;
    let payload = format!("hello from {}", std::process::id());
    notifier
        .execute("select pg_notify($1, $2)", &[&channel, &payload])
        .await
        .step("pg_notify")?;
    let n = tokio::time::timeout(Duration::from_secs(5), notifications.recv())
        .await
        .map_err(|_| anyhow!("no notification within 5 s of NOTIFY"))?
        .context("the listening connection ended")?;
    expect_eq(
        (n.channel(), n.payload()),
        (channel.as_str(), payload.as_str()),
        "notification",
    )?;
    listener
        .batch_execute(&format!("unlisten {channel}"))
        .await
        .step("UNLISTEN")?;
    Ok(Verdict::Pass)
}

/// A 16 MiB text parameter echoed back, and a 16 MiB result made by the server.
async fn large_messages(ctx: Arc<Ctx>) -> Result<Verdict> {
    let client = connect(&ctx).await?;
    let big: String = (0..LARGE)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let row = client
        .query_one("select $1::text, length($1::text)", &[&big])
        .await
        .step("16 MiB parameter")?;
    expect_eq(row.get::<_, i32>(1), LARGE as i32, "length on the server")?;
    if row.get::<_, &str>(0) != big {
        bail!("the 16 MiB parameter came back different");
    }
    let row = client
        .query_one("select repeat('ab', $1::int)", &[&((LARGE / 2) as i32)])
        .await
        .step("16 MiB result")?;
    let result: &str = row.get(0);
    if result.len() != LARGE || result.as_bytes().chunks(2).any(|c| c != b"ab") {
        bail!("the 16 MiB result is not 'ab' x {}", LARGE / 2);
    }
    Ok(Verdict::Pass)
}

/// SQLSTATEs as PostgreSQL gives them, and the connection usable after each.
async fn errors(ctx: Arc<Ctx>) -> Result<Verdict> {
    let table = ctx.table("errors");
    let mut client = connect(&ctx).await?;
    let message = expect_state(client.query("selec 1", &[]).await, "42601", "selec 1")?;
    if !message.starts_with("syntax error at or near \"selec\"") {
        bail!("42601 with an unexpected message: {message}");
    }
    let missing = ctx.table("missing");
    let message = expect_state(
        client.query(&format!("select * from {missing}"), &[]).await,
        "42P01",
        "select from a missing table",
    )?;
    if !message.starts_with(&format!("relation \"{missing}\" does not exist")) {
        bail!("42P01 with an unexpected message: {message}");
    }
    let divide = client
        .prepare("select 1 / $1::int")
        .await
        .step("prepare divide")?;
    expect_state(client.query_one(&divide, &[&0i32]).await, "22012", "1 / 0")?;
    client
        .batch_execute(&format!("create table {table} (id int primary key)"))
        .await
        .step("create table")?;
    let insert = client
        .prepare(&format!("insert into {table} values ($1)"))
        .await
        .step("prepare insert")?;
    client
        .execute(&insert, &[&1i32])
        .await
        .step("first insert")?;
    expect_state(
        client.execute(&insert, &[&1i32]).await,
        "23505",
        "duplicate insert",
    )?;
    let one = client.prepare("select 1::int").await.step("prepare one")?;
    let tx = client.transaction().await.step("begin")?;
    expect_state(
        tx.query_one(&divide, &[&0i32]).await,
        "22012",
        "1 / 0 in a transaction",
    )?;
    expect_state(
        tx.query_one(&one, &[]).await,
        "25P02",
        "a query in the failed transaction",
    )?;
    tx.rollback().await.step("rollback")?;
    let unknown = ctx.table("no_such_statement");
    expect_state(
        client.batch_execute(&format!("execute {unknown}")).await,
        "26000",
        "EXECUTE of an unknown statement",
    )?;
    client
        .batch_execute("deallocate all")
        .await
        .step("deallocate all")?;
    let message = expect_state(
        client.query_one(&one, &[]).await,
        "26000",
        "a Statement after DEALLOCATE ALL",
    )?;
    if !(message.starts_with("prepared statement \"") && message.ends_with("does not exist")) {
        bail!("26000 with an unexpected message: {message}");
    }
    let row = client
        .query_one("select 9::int", &[])
        .await
        .step("query after the errors")?;
    expect_eq(row.get::<_, i32>(0), 9, "query after the errors")?;
    Ok(Verdict::Pass)
}

/// With `--seconds S`: N clients running BEGIN, prepared INSERT, COMMIT for S seconds, never
/// retrying, reconnecting when their connection broke. Passes when no transaction failed and
/// every acknowledged commit is in the table.
async fn workload(ctx: Arc<Ctx>) -> Result<Verdict> {
    if ctx.seconds == 0 {
        return Ok(Verdict::Skip("no --seconds given".to_owned()));
    }
    let table = ctx.table("work");
    let setup = connect(&ctx).await?;
    setup
        .batch_execute(&format!(
            "create table {table} (client int, n int, at timestamptz default now())"
        ))
        .await
        .step("create table")?;
    let deadline = Instant::now() + Duration::from_secs(ctx.seconds);
    let tasks: Vec<_> = (0..ctx.clients)
        .map(|c| tokio::spawn(work(ctx.clone(), c, deadline)))
        .collect();
    let (mut committed, mut failed, mut first) = (0u64, 0u64, None);
    for task in tasks {
        let tally = task.await?;
        committed += tally.committed;
        failed += tally.failed;
        if first.is_none() {
            first = tally.first_error;
        }
    }
    if failed > 0 {
        bail!(
            "{failed} transactions failed ({committed} committed); first: {}",
            first.unwrap_or_default()
        );
    }
    // A simple query: checking the count is no part of what the driver is checked for.
    let rows = simple_rows(&setup, &format!("select count(*) from {table}")).await?;
    expect_eq(
        rows,
        vec![vec![Some(committed.to_string())]],
        "rows in the table",
    )?;
    Ok(Verdict::PassWith(format!("{committed} transactions")))
}

#[derive(Default)]
struct Tally {
    committed: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Tally {
    fn fail(&mut self, c: i32, error: String) {
        self.failed += 1;
        self.first_error
            .get_or_insert_with(|| format!("client {c}: {}", one_line(&error)));
    }
}

/// One workload client until `deadline`.
async fn work(ctx: Arc<Ctx>, c: i32, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let insert = format!(
        "insert into {} (client, n) values ($1, $2)",
        ctx.table("work")
    );
    let mut open = None;
    let mut n = 0i32;
    while Instant::now() < deadline {
        if open.is_none() {
            match connect_prepared(&ctx, &insert).await {
                Ok(connected) => open = Some(connected),
                Err(e) => {
                    tally.fail(c, format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some((client, statement, ended)) = open.as_mut() else {
            continue;
        };
        n += 1;
        match tokio::time::timeout(ctx.timeout, one_transaction(client, statement, c, n)).await {
            Ok(Ok(())) => tally.committed += 1,
            Ok(Err(e)) => {
                tally.fail(c, error_with_cause(&e, ended).await);
                if client.is_closed() {
                    open = None;
                }
            }
            Err(_) => {
                tally.fail(c, format!("hang: no answer in {} s", ctx.timeout.as_secs()));
                open = None;
            }
        }
    }
    tally
}

type Open = (
    Client,
    Statement,
    oneshot::Receiver<Result<(), tokio_postgres::Error>>,
);

async fn connect_prepared(ctx: &Ctx, insert: &str) -> Result<Open> {
    let (client, ended) = connect_watched(ctx).await?;
    let statement = client.prepare(insert).await.step("prepare insert")?;
    Ok((client, statement, ended))
}

async fn one_transaction(
    client: &mut Client,
    insert: &Statement,
    c: i32,
    n: i32,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let params: [&(dyn ToSql + Sync); 2] = [&c, &n];
    tx.execute(insert, &params).await?;
    tx.commit().await
}

/// [`describe`] of a query's error; when the query only saw the connection close, what the
/// connection's end said (an ErrorResponse between queries goes to the connection task).
async fn error_with_cause(
    e: &tokio_postgres::Error,
    ended: &mut oneshot::Receiver<Result<(), tokio_postgres::Error>>,
) -> String {
    if e.as_db_error().is_none() && e.is_closed() {
        if let Ok(Ok(Err(told))) = tokio::time::timeout(Duration::from_secs(1), ended).await {
            return format!("{}; the connection ended: {}", describe(e), describe(&told));
        }
    }
    describe(e)
}

/// Drops every table of this run (simple queries: they work through any pooler).
async fn drop_tables(ctx: &Arc<Ctx>) -> Result<()> {
    let dropping = async {
        let client = connect(ctx).await?;
        let tables = simple_rows(
            &client,
            &format!(
                "select tablename from pg_tables where starts_with(tablename, '{}_')",
                ctx.prefix
            ),
        )
        .await?;
        for table in tables.into_iter().flatten().flatten() {
            client
                .batch_execute(&format!("drop table if exists {table}"))
                .await
                .step(&format!("drop table {table}"))?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(ctx.timeout, dropping)
        .await
        .map_err(|_| anyhow!("hang: no result in {} s", ctx.timeout.as_secs()))?
}
