//! Test helpers: pgrouter as a real child process, raw sockets, driver shortcuts.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
pub use pgrouter_lab::probe::{connect, missing_rows, Probe, ProbeReport};
use pgrouter_lab::Lab;
use tokio_postgres::Client;

/// A pgrouter process in front of the lab, killed when dropped.
pub struct Router {
    child: Child,
    pub primary: u16,
    pub replicas: u16,
    pub admin: u16,
    pub log: PathBuf,
}

/// A router on `port` (primary) and `port + 1` (replicas) has its admin endpoint here.
const ADMIN_OFFSET: u16 = 2000;

pub struct RouterOptions<'a> {
    pub scope: &'a str,
    /// More `[cluster]` keys (etcd TLS and credentials, REST TLS).
    pub cluster_extra: &'a str,
    pub routing: &'a str,
    pub listen_extra: &'a str,
    /// More sections ([pool], [auth]) after [routing].
    pub sections: &'a str,
    /// Run pgrouter under this uid instead of root, so firewall rules can single it out.
    pub run_as: Option<u32>,
    /// The admin port, when not `port + 2000` (a scenario whose ports must stay in a range).
    pub admin: Option<u16>,
}

/// The lab's Patroni scope, which pgrouter's messages name.
pub const SCOPE: &str = "demo";

impl Default for RouterOptions<'_> {
    fn default() -> Self {
        RouterOptions {
            scope: SCOPE,
            cluster_extra: "",
            routing: "hold_timeout = \"30s\"\ndrain_timeout = \"5s\"\n",
            listen_extra: "",
            sections: "",
            run_as: None,
            admin: None,
        }
    }
}

impl Router {
    /// Starts pgrouter on `port` (primary), `port + 1` (replicas) and `port + 2000` (admin,
    /// unless `opts.admin` says) and waits until it accepts connections.
    pub fn start(lab: &Lab, port: u16, opts: RouterOptions) -> Result<Router> {
        let admin = opts.admin.unwrap_or(port + ADMIN_OFFSET);
        let dir = lab.spec().dir.join(format!("router-{port}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("pgrouter.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\nscope = \"{scope}\"\netcd = [{etcd}]\n{cluster_extra}\n[listen]\nprimary = \"127.0.0.1:{port}\"\nreplicas = \"127.0.0.1:{rport}\"\nadmin = \"127.0.0.1:{aport}\"\n{extra}\n[routing]\n{routing}\n{sections}",
                scope = opts.scope,
                cluster_extra = opts.cluster_extra,
                etcd = lab.etcd_toml_list(),
                rport = port + 1,
                aport = admin,
                extra = opts.listen_extra,
                routing = opts.routing,
                sections = opts.sections,
            ),
        )?;
        let log = dir.join("pgrouter.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_pgrouter"));
        command
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,pgrouter=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if let Some(uid) = opts.run_as {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
        }
        let child = command.spawn().context("spawning pgrouter")?;
        let router = Router {
            child,
            primary: port,
            replicas: port + 1,
            admin,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "pgrouter did not listen on {port}:\n{}",
                    router.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(router)
    }

    /// What `pgrouter status` prints for this router.
    pub fn status_printed(&self) -> Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
            .args([
                "status",
                "--admin",
                &format!("http://127.0.0.1:{}", self.admin),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn config_path(&self) -> PathBuf {
        self.log.with_file_name("pgrouter.toml")
    }

    /// Sends a signal (`-HUP`, `-TERM`) to the pgrouter process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill {sig} failed");
        Ok(())
    }

    /// Waits for pgrouter to exit by itself; its exit code, or None if it did not in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Recreates the pgbench tables (scale 1) on the leader, directly.
pub fn pgbench_init(lab: &Lab) -> Result<()> {
    let port = lab.pg_port(&lab.leader()?);
    lab.psql(
        port,
        "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
    )?;
    let init = pgrouter_lab::client_command("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-i", "-s", "1", "-q", "postgres"])
        .env("PGPASSWORD", "postgres")
        .output()?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    Ok(())
}

/// The backend port a connection landed on.
pub async fn server_port(client: &Client) -> Result<u16> {
    let row = client.query_one("select inet_server_port()", &[]).await?;
    Ok(row.get::<_, i32>(0) as u16)
}

/// Opens `n` short connections through `port` and returns the backend port of each.
pub async fn ports_of_new_connections(port: u16, n: usize) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    for _ in 0..n {
        let (client, _) = connect(port, "pgrouter-test-ports").await?;
        ports.push(server_port(&client).await?);
    }
    Ok(ports)
}

/// For an [`eventually`] check: `Ok(true)` when `seen` is `want`, else an error saying what was
/// seen, which the timeout's message then names (a bare `false` says nothing).
pub fn is<T: PartialEq + std::fmt::Debug>(seen: T, want: T) -> Result<bool> {
    if seen == want {
        Ok(true)
    } else {
        bail!("saw {seen:?}, want {want:?}")
    }
}

/// Polls `check` until it returns Ok(true) or `timeout` passes; the timeout's error names the
/// last error `check` returned (what it saw), or says the condition stayed false.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => last = "condition false".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain HTTP/1.0 request to an admin endpoint on 127.0.0.1: (status, body).
pub fn http(method: &str, port: u16, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let mut s = StdTcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_owned()))
}

/// The value of one series (name with labels, exactly as exposed) in a Prometheus text page;
/// an error when the page has no such series (a renamed metric or label must fail a check,
/// not read as 0).
/// Every series carries its cluster's label (`cluster="demo"`): `series` names it without.
pub fn metric(text: &str, series: &str) -> Result<f64> {
    text.lines()
        .map(without_cluster_label)
        .filter_map(|l| Some(l.strip_prefix(series)?.strip_prefix(' ')?.to_owned()))
        .find_map(|v| v.trim().parse().ok())
        .with_context(|| format!("no series {series} on the metrics page"))
}

/// A metrics line without its `cluster` label: `m{cluster="demo",port="p"} 1` reads as
/// `m{port="p"} 1`, `m{cluster="demo"} 1` as `m 1`.
fn without_cluster_label(line: &str) -> String {
    let Some(at) = line.find("cluster=\"") else {
        return line.to_owned();
    };
    let end = line[at + 9..]
        .find('"')
        .map_or(line.len(), |e| at + 9 + e + 1);
    let (before, after) = (&line[..at], &line[end..]);
    match (before.ends_with('{'), after.strip_prefix(',')) {
        (true, Some(rest)) => format!("{before}{rest}"),
        (true, None) => format!(
            "{}{}",
            &before[..before.len() - 1],
            after.trim_start_matches('}')
        ),
        (false, _) => format!("{}{after}", before.trim_end_matches(',')),
    }
}

/// Sends raw bytes as a client and returns what the router answers before closing (up to 5 s).
pub fn raw_exchange(port: u16, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut s = StdTcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| anyhow!("reading the answer: {e}"))?;
    Ok(out)
}

/// The SQLSTATE and message of the first ErrorResponse in `bytes`.
pub fn error_fields(bytes: &[u8]) -> Option<(String, String)> {
    if bytes.first() != Some(&b'E') || bytes.len() < 5 {
        return None;
    }
    let mut code = String::new();
    let mut message = String::new();
    for field in bytes[5..].split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    Some((code, message))
}

/// A StartupMessage with the given protocol version and parameter bytes.
pub fn startup_packet(version: u32, body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&version.to_be_bytes());
    p.extend_from_slice(body);
    p
}

// Crash and restart (restarts.rs, soak.rs).
impl Router {
    /// The pgrouter process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL pgrouter and reap it: a crash, nothing drained, every socket closed by the kernel.
    pub fn kill_9(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL pgrouter")?;
        self.child.wait().context("reap pgrouter")?;
        Ok(())
    }

    /// Starts pgrouter again after [`Router::kill_9`] with the same config file, so on the same
    /// ports, appending to the same log; waits until it accepts connections.
    pub fn restart(&mut self) -> Result<()> {
        anyhow::ensure!(
            self.child.try_wait()?.is_some(),
            "pgrouter (pid {}) is still running",
            self.child.id()
        );
        let log = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        self.child = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info,pgrouter=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("respawning pgrouter")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while StdTcpStream::connect(("127.0.0.1", self.primary)).is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "restarted pgrouter exited ({status}):\n{}",
                    self.log_tail(30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "restarted pgrouter did not listen on {}:\n{}",
                    self.primary,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The admin endpoint's /metrics page.
    pub fn metrics(&self) -> Result<String> {
        let (status, body) = http("GET", self.admin, "/metrics", None)?;
        anyhow::ensure!(status == 200, "/metrics: HTTP {status}");
        Ok(body)
    }
}

/// The resident set size of process `pid` (VmRSS from /proc), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// The sum of every series of metric `name` whose labels contain all of `labels` (each
/// `key="value"`); 0 when none has them, an error when the page does not declare the metric
/// at all (a renamed metric must fail a check, not read as 0).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> Result<f64> {
    anyhow::ensure!(
        text.lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} "))),
        "no metric {name} on the metrics page"
    );
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = (rest.is_empty() || rest.starts_with('{'))
                && labels.iter().all(|want| rest.contains(want));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum())
}

/// What one pgbench run reported.
#[derive(Debug, Default, Clone)]
pub struct PgbenchRun {
    /// Exit code: 0 clean, 2 when clients aborted, 1 when it could not start.
    pub exit: Option<i32>,
    /// Transactions that completed (committed, for read-write scripts).
    pub processed: u64,
    pub failed: u64,
    /// Clients that gave up (pgbench does not reconnect after a lost connection).
    pub aborted_clients: u64,
    pub tps: f64,
    pub output: String,
}

/// pgbench (`-n`, as postgres, database postgres) through `port` with `args`.
pub fn pgbench_command(port: u16, args: &[&str]) -> Command {
    let mut c = pgrouter_lab::client_command("pgbench");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-n",
    ])
    .args(args)
    .arg("postgres")
    .env("PGPASSWORD", "postgres")
    .env("PGCONNECT_TIMEOUT", "60")
    .stdin(Stdio::null());
    c
}

/// Runs [`pgbench_command`] to its end (blocking).
pub fn pgbench_run(port: u16, args: &[&str]) -> Result<PgbenchRun> {
    let out = pgbench_command(port, args)
        .output()
        .context("running pgbench")?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |prefix: &str| -> Option<f64> {
        output
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().split([' ', '/']).next()?.parse().ok())
    };
    let processed = number("number of transactions actually processed: ");
    // pgbench (15) prints its failed count beside the processed one: a summary without it
    // must not read as 0 failed.
    let failed = match (processed, number("number of failed transactions: ")) {
        (Some(_), None) => bail!("pgbench printed no count of failed transactions:\n{output}"),
        (_, failed) => failed.unwrap_or(0.0) as u64,
    };
    Ok(PgbenchRun {
        exit: out.status.code(),
        processed: processed.unwrap_or(0.0) as u64,
        failed,
        aborted_clients: output
            .lines()
            .filter(|l| l.contains("client ") && l.contains(" aborted "))
            .count() as u64,
        tps: number("tps = ").unwrap_or(0.0),
        output,
    })
}

/// Client backends on the PostgreSQL at `pg_port`, leaving out Patroni's own connections and
/// the one asking.
pub fn client_backends(lab: &Lab, pg_port: u16) -> Result<u64> {
    let n = lab.psql(
        pg_port,
        "select count(*) from pg_stat_activity where backend_type = 'client backend' \
         and pid <> pg_backend_pid() and application_name not like 'Patroni%'",
    )?;
    Ok(n.trim().parse()?)
}

/// Writes `<lab dir>/router-<port>/userlist.txt` (pgbouncer's format) giving `postgres` its SCRAM
/// secret from pg_authid, then `more` lines; returns its path, for a pooled router's auth_file.
pub fn scram_userlist(lab: &Lab, port: u16, more: &str) -> Result<PathBuf> {
    let secret = lab.psql(
        lab.pg_port(&lab.leader()?),
        "select rolpassword from pg_authid where rolname = 'postgres'",
    )?;
    anyhow::ensure!(secret.starts_with("SCRAM-SHA-256$"), "lab secret: {secret}");
    let dir = lab.spec().dir.join(format!("router-{port}"));
    std::fs::create_dir_all(&dir)?;
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, format!("\"postgres\" \"{secret}\"\n{more}"))?;
    Ok(userlist)
}

/// The error a session's connection ended with (the receiver [`connect`] returns), which must
/// come within `within`: a session pgrouter closes is told why before it is closed.
pub async fn ended_with_error(
    what: &str,
    ended: tokio::sync::oneshot::Receiver<Result<(), tokio_postgres::Error>>,
    within: Duration,
) -> Result<tokio_postgres::Error> {
    let ended = tokio::time::timeout(within, ended)
        .await
        .with_context(|| format!("{what}: still open after {within:?}"))?
        .with_context(|| format!("{what}: its connection task vanished"))?;
    ended
        .err()
        .with_context(|| format!("{what}: closed without an error"))
}

/// `e` must be pgrouter's ErrorResponse of `severity` (`ERROR`, `FATAL`) with SQLSTATE `code`
/// whose message goes on, after `pgrouter: cluster "demo": `, with `begins`; returns the message.
pub fn pgrouter_error(
    what: &str,
    e: &tokio_postgres::Error,
    severity: &str,
    code: &str,
    begins: &str,
) -> Result<String> {
    let db = e
        .as_db_error()
        .with_context(|| format!("{what}: not an ErrorResponse: {e}"))?;
    let message = db.message();
    let prefix = format!("pgrouter: cluster \"{SCOPE}\": {begins}");
    anyhow::ensure!(
        db.severity() == severity && db.code().code() == code && message.starts_with(&prefix),
        "{what}: expected {severity} {code} \"{prefix}...\", saw {} {} {message:?}",
        db.severity(),
        db.code().code()
    );
    Ok(message.to_owned())
}

/// New clients arriving all the time on a primary port (four at once, each leaving and coming
/// back every 5 ms), asking whether they landed on a primary.
pub struct Arrivals {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<ArrivalsReport>>,
}

#[derive(Debug, Default)]
pub struct ArrivalsReport {
    pub served: u32,
    /// Landed on a member in recovery.
    pub on_replica: u32,
    /// Refused at connect.
    pub refused: Vec<String>,
    /// Connected, then the session ended before its answer.
    pub cut: Vec<String>,
}

impl Arrivals {
    pub fn start(port: u16) -> Arrivals {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = (0..4)
            .map(|_| tokio::spawn(arrive(port, stopped.clone())))
            .collect();
        Arrivals { stop, tasks }
    }

    /// Stops the arrivals and adds up their reports; a crashed arrival task is an error, not
    /// an empty report.
    pub async fn finish(self) -> Result<ArrivalsReport> {
        let _ = self.stop.send(true);
        let mut all = ArrivalsReport::default();
        for task in self.tasks {
            let report = task.await.context("an arrivals task crashed")?;
            all.served += report.served;
            all.on_replica += report.on_replica;
            all.refused.extend(report.refused);
            all.cut.extend(report.cut);
        }
        Ok(all)
    }
}

async fn arrive(port: u16, mut stopped: tokio::sync::watch::Receiver<bool>) -> ArrivalsReport {
    let mut report = ArrivalsReport::default();
    while !*stopped.borrow_and_update() {
        match connect(port, "pgrouter-test-arrival").await {
            // The server ending a session it had let in (57P01) is a cut, not a refusal.
            Err(e)
                if e.downcast_ref::<tokio_postgres::Error>()
                    .and_then(|e| e.as_db_error())
                    .is_some_and(|db| db.code().code() == "57P01") =>
            {
                report.cut.push(format!("{e:#}"))
            }
            Err(e) => report.refused.push(format!("{e:#}")),
            Ok((client, conn)) => {
                match client.query_one("select pg_is_in_recovery()", &[]).await {
                    Ok(row) if row.get::<_, bool>(0) => report.on_replica += 1,
                    Ok(_) => report.served += 1,
                    Err(e) if e.as_db_error().is_some() => {
                        report.cut.push(format!("{:#}", anyhow::Error::from(e)))
                    }
                    // An ErrorResponse that came before the query was sent went to the
                    // connection's task, not to the query.
                    Err(e) => report.cut.push(
                        match tokio::time::timeout(Duration::from_secs(5), conn).await {
                            Ok(Ok(Err(told))) => format!("{:#}", anyhow::Error::from(told)),
                            _ => format!("{e}"),
                        },
                    ),
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(5), stopped.changed()).await;
    }
    report
}

fn kinds(errors: &[String]) -> Vec<&str> {
    let mut kinds: Vec<&str> = errors.iter().map(String::as_str).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

impl ArrivalsReport {
    /// Prints the counts and fails when no client was served by the primary at all, on a
    /// landing on a replica, on a refusal that is not pgrouter's own (when `refusals` allows
    /// them at all) and on a session cut without an ErrorResponse saying why.
    pub fn check(&self, what: &str, refusals: Refusals) -> Result<()> {
        println!(
            "  {what}: {} new clients served by the primary, {} on a replica, {} refused {:?}, {} cut {:?}",
            self.served,
            self.on_replica,
            self.refused.len(),
            kinds(&self.refused),
            self.cut.len(),
            kinds(&self.cut)
        );
        anyhow::ensure!(
            self.served > 0,
            "{what}: no client was served by the primary (nothing was checked)"
        );
        anyhow::ensure!(
            self.on_replica == 0,
            "{what}: {} on a replica",
            self.on_replica
        );
        let bad_refusals: Vec<&str> = match refusals {
            Refusals::None => kinds(&self.refused),
            Refusals::FromPgrouter => kinds(&self.refused)
                .into_iter()
                .filter(|e| !e.contains("pgrouter: cluster"))
                .collect(),
        };
        anyhow::ensure!(
            bad_refusals.is_empty(),
            "{what}: refused by {bad_refusals:?}"
        );
        let silent: Vec<&str> = kinds(&self.cut)
            .into_iter()
            .filter(|e| !e.starts_with("db error"))
            .collect();
        anyhow::ensure!(silent.is_empty(), "{what}: cut without a word: {silent:?}");
        Ok(())
    }
}

pub enum Refusals {
    None,
    FromPgrouter,
}

fn members_with_role(lab: &Lab, role: &str) -> Result<Vec<String>> {
    Ok(lab
        .cluster()?
        .into_iter()
        .filter(|m| m.role == role)
        .map(|m| m.name)
        .collect())
}

/// Waits until the cluster is healthy with a synchronous standby, so a kill -9 of the leader
/// cannot lose an acknowledged commit and a switchover has a candidate.
pub async fn healthy_and_synchronous(lab: &Lab) -> Result<()> {
    lab.wait_healthy(Duration::from_secs(180))?;
    eventually(
        "a synchronous standby",
        Duration::from_secs(120),
        || async { Ok(!members_with_role(lab, "sync_standby")?.is_empty()) },
    )
    .await
}

/// Runs `body` with Patroni's `synchronous_mode` on and a synchronous standby in place, so a
/// kill -9 of the leader cannot lose an acknowledged commit (with asynchronous replication
/// PostgreSQL itself may, whatever the router does); turns it off again afterwards.
pub async fn in_synchronous_mode(
    lab: &Lab,
    body: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    lab.patch_dcs_config(&serde_json::json!({"synchronous_mode": true}))?;
    let result = match healthy_and_synchronous(lab).await {
        Ok(()) => body.await,
        Err(e) => Err(e),
    };
    let restored = async {
        lab.patch_dcs_config(&serde_json::json!({"synchronous_mode": false}))?;
        eventually(
            "no synchronous standby left",
            Duration::from_secs(120),
            || async { Ok(members_with_role(lab, "sync_standby")?.is_empty()) },
        )
        .await
    }
    .await;
    result.and(restored)
}
