//! Process plumbing: signals, finding a lab's processes in /proc, pid files, port checks, log tails.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Executable names (as in /proc/<pid>/comm) of processes a lab starts, directly or through Patroni.
const LAB_COMMS: &[&str] = &[
    "etcd",
    "patroni",
    "postgres",
    "pg_ctl",
    "initdb",
    "pg_basebackup",
    "pg_rewind",
];

/// Name of the pid file in the lab dir: one `<what> <pid>` line per process spawned.
const PID_FILE: &str = "lab.pids";

/// The signals the lab sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signal {
    Kill,
    Stop,
    Cont,
    Hup,
}

/// Send `sig` to `pid`.
pub(crate) fn signal(pid: u32, sig: Signal) -> Result<()> {
    let num = match sig {
        Signal::Kill => libc::SIGKILL,
        Signal::Stop => libc::SIGSTOP,
        Signal::Cont => libc::SIGCONT,
        Signal::Hup => libc::SIGHUP,
    };
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, num) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| format!("kill -{sig:?} {pid}"));
    }
    Ok(())
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Every process id in /proc, with its directory there.
fn all_pids() -> Vec<(u32, std::path::PathBuf)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect()
}

/// `comm` of a live (non-zombie) process, `None` if it is gone.
pub(crate) fn live_comm(pid: u32) -> Option<String> {
    let state = stat_fields(pid)?.into_iter().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim().to_string())
}

/// Whether `pid` is stopped (SIGSTOP: state `T`).
pub(crate) fn is_stopped(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|state| state == "T"))
}

/// The postmaster pid from `<data_dir>/postmaster.pid`, if that process is still a live postgres.
pub(crate) fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    (live_comm(pid)? == "postgres").then_some(pid)
}

/// Live lab-type processes whose working directory or command line lies under `dir`.
pub(crate) fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let me = std::process::id();
    let prefix = format!("{}/", dir.display());
    let mut found = Vec::new();
    for (pid, path) in all_pids() {
        let Some(comm) = live_comm(pid).filter(|c| pid != me && LAB_COMMS.contains(&c.as_str()))
        else {
            continue;
        };
        let cwd_under = fs::read_link(path.join("cwd")).is_ok_and(|p| p.starts_with(dir));
        let cmdline = fs::read(path.join("cmdline")).unwrap_or_default();
        let cmd_under = cmdline
            .split(|&b| b == 0)
            .map(String::from_utf8_lossy)
            .any(|arg| arg == dir.to_string_lossy() || arg.contains(&prefix));
        if cwd_under || cmd_under {
            found.push((pid, comm));
        }
    }
    found
}

/// SIGKILL every lab-type process under `dir` (see [`processes_under`]) until none is left or
/// `timeout` passes; returns what is still alive.
pub(crate) fn kill_all_under(dir: &Path, timeout: Duration) -> Vec<(u32, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_under(dir);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        for (pid, _) in &left {
            let _ = signal(*pid, Signal::Kill);
        }
        sleep(Duration::from_millis(100));
    }
}

/// Record a spawned process in the lab's pid file.
pub(crate) fn record_pid(dir: &Path, what: &str, pid: u32) -> Result<()> {
    let path = dir.join(PID_FILE);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    writeln!(file, "{what} {pid}").with_context(|| format!("write {}", path.display()))
}

/// Kill what an earlier lab in `dir` left running, then remove `dir`.
pub(crate) fn clean_stale(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let empty = fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    let lab_like = dir.join(PID_FILE).exists() || dir.join("pg0/patroni.yml").exists();
    if !empty && !lab_like {
        bail!(
            "refusing to wipe {}: it exists and is not a pgrouter-lab directory (no {PID_FILE} or pg0/patroni.yml)",
            dir.display()
        );
    }
    // Only what is found under `dir` (its working directory or arguments there), never a pid
    // from the old pid file alone: with pid_max at 32768 a long run reuses pids, and a recorded
    // one can by now be another lab's Patroni (this killed the shared lab's pg1 in CI).
    let left = kill_all_under(dir, Duration::from_secs(10));
    if !left.is_empty() {
        bail!(
            "processes from an earlier lab in {} survive SIGKILL: {left:?}",
            dir.display()
        );
    }
    fs::remove_dir_all(dir).with_context(|| format!("remove old lab dir {}", dir.display()))
}

/// Fail naming the first port in `ports` that cannot be bound on 127.0.0.1.
pub(crate) fn check_ports_free(ports: &[(u16, String)]) -> Result<()> {
    for (port, what) in ports {
        if let Err(e) = TcpListener::bind(("127.0.0.1", *port)) {
            bail!("port {port} ({what}) on 127.0.0.1 is not free: {e}");
        }
    }
    Ok(())
}

/// Wait until none of `ports` is listened on (binding works), up to `timeout`.
pub(crate) fn wait_ports_free(ports: &[(u16, String)], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match check_ports_free(ports) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => sleep(Duration::from_millis(100)),
        }
    }
}

/// uid/gid to run Patroni as: user `postgres` when we are root, `None` (ourselves) otherwise.
pub(crate) fn postgres_owner() -> Result<Option<(u32, u32)>> {
    let euid = fs::metadata("/proc/self").context("stat /proc/self")?.uid();
    if euid != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .context("run `id`")?;
        if !out.status.success() {
            bail!(
                "`id {flag} postgres` failed (is PostgreSQL installed?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .with_context(|| format!("`id {flag} postgres` printed {text:?}"))
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// The last `lines` lines of a text file, or a note saying why there are none.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Names of the caller's libpq variables (`PGPASSWORD`, `PGHOST`, `PGSSLMODE`, ...), which the
/// lab keeps from Patroni, PostgreSQL, psql and patronictl: libpq prefers them to what the lab
/// sets (a `PGPASSWORD` from a DBA's shell wins over the passfile Patroni writes for
/// `pg_basebackup`, and the replicas never start). pgrouter's own `PGROUTER_*` are not libpq's.
pub fn libpq_variables() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("PG") && !name.starts_with("PGROUTER"))
        .collect()
}

/// Removes the caller's libpq variables (see [`libpq_variables`]) from `command`'s environment.
pub(crate) fn without_libpq_env(command: &mut Command) -> &mut Command {
    for name in libpq_variables() {
        command.env_remove(name);
    }
    command
}

/// SIGKILL every live child process of this process (pgrouter routers, pgbench, Patroni): for
/// a run that must end while a scenario still owns them.
pub(crate) fn kill_own_children() {
    let me = std::process::id().to_string();
    for (pid, _) in all_pids() {
        let ppid = stat_fields(pid).and_then(|f| f.into_iter().nth(1));
        if ppid.as_deref() == Some(me.as_str()) {
            let _ = signal(pid, Signal::Kill);
        }
    }
}
