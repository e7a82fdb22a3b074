//! Child processes of the e2e bench: HAProxy, pgbouncer and pgrouter, each in a guard that kills it
//! on drop, plus CPU accounting from /proc.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgrouter_lab::{run_psql, Lab};

/// A child process, SIGKILLed and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy on `port` to the primary, with Patroni REST checks as TARGETS.md sets them.
pub fn start_haproxy(lab: &Lab, dir: &Path, port: u16) -> Result<Proc> {
    let mut servers = String::new();
    for m in lab.member_names() {
        writeln!(
            servers,
            "    server {m} 127.0.0.1:{} maxconn 1000 check port {}",
            lab.pg_port(&m),
            lab.api_port(&m)
        )?;
    }
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 4000\ndefaults\n    mode tcp\n    retries 2\n    timeout client 30m\n    timeout connect 4s\n    timeout server 30m\n    timeout check 5s\n\
             listen primary\n    bind 127.0.0.1:{port}\n    maxconn 3000\n    option httpchk OPTIONS /primary\n    http-check expect status 200\n    \
             default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions\n{servers}"
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&config)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(log_file(dir, "haproxy.log")?)
        .spawn()
        .context("starting haproxy (apt-get install haproxy)")?;
    let proc = Proc(child);
    pgrouter_lab::pgbouncer::wait_port(port)?;
    Ok(proc)
}

/// pgbouncer in transaction mode on `port` (its files in `dir/name`), in front of `upstream`
/// (HAProxy, or the leader itself), with pgrouter's pool size. `max_client_conn` must cover
/// W4's idle clients plus pgbench's.
pub fn start_pgbouncer(
    dir: &Path,
    name: &str,
    port: u16,
    upstream: u16,
    scram_secret: &str,
    max_client_conn: usize,
) -> Result<Proc> {
    let child = pgrouter_lab::pgbouncer::spawn(&pgrouter_lab::pgbouncer::Settings {
        dir: &dir.join(name),
        port,
        upstream,
        scram_secret,
        pool_size: POOL_SIZE,
        max_client_conn,
    })?;
    Ok(Proc(child))
}

/// pgrouter (this crate's binary) in pass-through mode with primary on `port`, replicas on
/// `port + 1`, admin on `port + 2`.
pub fn start_pgrouter(lab: &Lab, dir: &Path, port: u16) -> Result<Proc> {
    spawn_pgrouter(lab, dir, "pgrouter", port, "")
}

/// pgrouter in transaction pooling mode on both listeners (ports as [`start_pgrouter`]), with
/// pgbouncer's pool size and the same userlist (the SCRAM secret from pg_authid), and
/// `worker_threads` (0: one per core). An error when
/// it exits or does not listen within 10 s, with the end of its log.
pub fn start_pgrouter_txn(
    lab: &Lab,
    dir: &Path,
    port: u16,
    scram_secret: &str,
    max_client_conn: usize,
    worker_threads: u32,
) -> Result<Proc> {
    let userlist = dir.join("pgrouter-txn-userlist.txt");
    std::fs::write(&userlist, userlist_line(scram_secret))
        .with_context(|| format!("writing {}", userlist.display()))?;
    let extra = format!(
        "primary_pool_mode = \"transaction\"\nreplicas_pool_mode = \"transaction\"\nmax_client_conn = {max_client_conn}\n\
         [pool]\npool_size = {POOL_SIZE}\n[auth]\nauth_file = \"{}\"\n[runtime]\nworker_threads = {worker_threads}\n",
        userlist.display()
    );
    spawn_pgrouter(lab, dir, "pgrouter-txn", port, &extra)
}

/// Server connections per pool, pgbouncer's `default_pool_size` and pgrouter's `pool.pool_size`.
pub const POOL_SIZE: usize = 20;

/// A pgbouncer userlist line for user postgres.
fn userlist_line(secret: &str) -> String {
    format!("\"postgres\" \"{secret}\"\n")
}

/// Start pgrouter with config `<name>.toml` and log `<name>.log`; `listen_extra` is appended to
/// the `[listen]` table (and may open further tables).
fn spawn_pgrouter(
    lab: &Lab,
    dir: &Path,
    name: &str,
    port: u16,
    listen_extra: &str,
) -> Result<Proc> {
    let config = dir.join(format!("{name}.toml"));
    // A lab on another DCS is read through its members' REST APIs.
    let source = match lab.spec().dcs {
        pgrouter_lab::Dcs::Etcd => String::new(),
        _ => {
            let apis: Vec<String> = lab
                .member_names()
                .iter()
                .map(|m| format!("\"http://127.0.0.1:{}\"", lab.api_port(m)))
                .collect();
            format!(
                "source = \"patroni\"\npatroni = [{}]\npoll_interval = \"250ms\"\n",
                apis.join(", ")
            )
        }
    };
    std::fs::write(
        &config,
        format!(
            "[cluster]\nscope = \"{}\"\netcd = [{}]\n{source}[routing]\nhold_timeout = \"30s\"\n[listen]\nprimary = \"127.0.0.1:{port}\"\nreplicas = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n{listen_extra}",
            lab.spec().scope,
            lab.etcd_toml_list(),
            port + 1,
            port + 2,
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let mut proc = Proc(child);
    for _ in 0..200 {
        if let Some(status) = proc.0.try_wait()? {
            bail!("{name} exited ({status}): {}", tail(&log, 5));
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(proc);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{name} does not listen on {port} after 10 s: {}",
        tail(&log, 5)
    )
}

/// The last `n` lines of a file, joined with " / ".
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Wait (up to 30 s) until a query through `port` reaches a primary.
pub fn wait_primary(name: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match run_psql("127.0.0.1", port, "select pg_is_in_recovery()") {
            Ok(out) if out == "f" => return Ok(()),
            Ok(out) if Instant::now() > deadline => {
                bail!("{name} on {port} reaches a replica (pg_is_in_recovery = {out})")
            }
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{name} on {port} never reached the primary")))
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// utime + stime of process `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: no ')'"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after "pid (comm) state".
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{path}: short line"))?
            .parse()
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Resident memory of process `pid` (VmRSS from /proc/<pid>/status), in bytes.
pub fn vm_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path}: no VmRSS"))?;
    Ok(kb * 1024)
}

/// The soft and hard RLIMIT_NOFILE of this process, from /proc/self/limits.
pub fn nofile_limit() -> Result<(u64, u64)> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("/proc/self/limits: no Max open files")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match v.as_slice() {
        [soft, hard, ..] => Ok((*soft, *hard)),
        _ => bail!("/proc/self/limits: cannot parse {line:?}"),
    }
}

/// Raise this process's RLIMIT_NOFILE (inherited by the proxies it starts) towards `want` with
/// `prlimit` (util-linux; no libc binding among the bench's dependencies). Raising the hard limit
/// needs CAP_SYS_RESOURCE; without it the soft limit goes up to the hard one. Returns the soft
/// limit in force afterwards.
pub fn raise_nofile(want: u64) -> Result<u64> {
    let (soft, hard) = nofile_limit()?;
    if soft >= want {
        return Ok(soft);
    }
    let pid = std::process::id().to_string();
    let set = |soft: u64, hard: u64| {
        Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:{hard}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !set(want, want.max(hard)) {
        set(want.min(hard), hard);
    }
    Ok(nofile_limit()?.0)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks_per_sec() -> Result<f64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("parsing getconf CLK_TCK")
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    let path = dir.join(name);
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}
