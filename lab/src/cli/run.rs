//! `up` and `demo`: start the lab (and pgrouter), show how to connect, wait for Ctrl-C, tear down.

use super::args::{Mode, Options};
use anyhow::{bail, Context, Result};
use pgrouter_lab::{run_psql, Lab, LabSpec};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const PGROUTER_READY_TIMEOUT: Duration = Duration::from_secs(60);
const PGROUTER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(200);

/// Run `opts`; the exit code is 0 after Ctrl-C, 1 if pgrouter exits by itself.
pub fn run(opts: &Options) -> Result<ExitCode> {
    let (tx, interrupted) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("install the Ctrl-C handler")?;
    let pid_file = opts.dir.join("pgrouter.pid");
    if opts.mode == Mode::Demo {
        if opts.pgrouter.components().count() > 1 && !opts.pgrouter.is_file() {
            bail!(
                "no pgrouter binary at {} (build it with `cargo build --release`, or pass --pgrouter)",
                opts.pgrouter.display()
            );
        }
        kill_stale_pgrouter(&pid_file, &opts.dir);
    }
    eprintln!(
        "starting etcd and 3 Patroni members in {} ...",
        opts.dir.display()
    );
    let lab = Lab::start(LabSpec::new(&opts.dir, opts.base_port))?;
    let mut pgrouter = None;
    if opts.mode == Mode::Demo {
        let config = lab.spec().dir.join("pgrouter.toml");
        fs::write(&config, pgrouter_toml(&lab, opts))
            .with_context(|| format!("write {}", config.display()))?;
        let child = Command::new(&opts.pgrouter)
            .arg("--config")
            .arg(&config)
            .process_group(0) // Ctrl-C reaches us only; we stop pgrouter ourselves
            .spawn()
            .with_context(|| format!("spawn {}", opts.pgrouter.display()))?;
        let _ = fs::write(&pid_file, child.id().to_string());
        let mut child = Stopper(child);
        if let Err(e) = wait_ready(&mut child.0, &opts.primary, &interrupted) {
            return Err(e.context(format!("pgrouter at {} not usable", opts.primary)));
        }
        pgrouter = Some(child);
    }
    print_banner(&lab, opts)?;
    loop {
        match interrupted.recv_timeout(TICK) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(status) = pgrouter
            .as_mut()
            .and_then(|c| c.0.try_wait().ok().flatten())
        {
            eprintln!("pgrouter exited by itself ({status}); tearing down the lab");
            return Ok(ExitCode::FAILURE);
        }
    }
    eprintln!("stopping ...");
    drop(pgrouter);
    drop(lab);
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Owns the pgrouter child: SIGTERM on drop, SIGKILL if it has not exited 10 s later.
struct Stopper(Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + PGROUTER_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `select 1` works through pgrouter's primary listener.
fn wait_ready(child: &mut Child, primary: &str, interrupted: &Receiver<()>) -> Result<()> {
    let (host, port) = split_addr(primary)?;
    let deadline = Instant::now() + PGROUTER_READY_TIMEOUT;
    loop {
        let err = match run_psql(&host, port, "select 1") {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if let Some(status) = child.try_wait()? {
            bail!("pgrouter exited with {status}");
        }
        if Instant::now() >= deadline {
            return Err(err.context("select 1 still failing after 60s"));
        }
        if interrupted.recv_timeout(Duration::from_millis(500)).is_ok() {
            bail!("interrupted");
        }
    }
}

/// Host (0.0.0.0 and [::] mapped to loopback) and port of a `host:port` listen address.
fn split_addr(addr: &str) -> Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("bad address {addr:?}"))?;
    let port = port
        .parse()
        .with_context(|| format!("bad port in {addr:?}"))?;
    let host = match host.trim_matches(|c| c == '[' || c == ']') {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    Ok((host.to_string(), port))
}

fn print_banner(lab: &Lab, opts: &Options) -> Result<()> {
    let members = lab.cluster()?;
    println!(
        "\n{:<6} {:<10} {:<10} {:<6} lag",
        "member", "role", "state", "port"
    );
    for m in &members {
        let lag = m.lag.map_or("-".to_string(), |l| l.to_string());
        println!(
            "{:<6} {:<10} {:<10} {:<6} {lag}",
            m.name, m.role, m.state, m.pg_port
        );
    }
    println!("\netcd: {}", lab.etcd_endpoints().join(","));
    match opts.mode {
        Mode::Demo => {
            println!(
                "read-write: postgres://postgres:postgres@{}/postgres",
                opts.primary
            );
            println!(
                "read-only:  postgres://postgres:postgres@{}/postgres",
                opts.replicas
            );
        }
        Mode::Up => {
            for m in &members {
                println!("{}: {}", m.name, lab.superuser_dsn(m.pg_port));
            }
        }
    }
    println!(
        "\nPress Ctrl-C to stop everything (logs stay in {}).",
        lab.spec().dir.display()
    );
    Ok(())
}

/// A basic TOML string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn pgrouter_toml(lab: &Lab, opts: &Options) -> String {
    let spec = lab.spec();
    format!(
        "[cluster]\nscope = {}\nnamespace = {}\netcd = [{}]\n\n\
         [listen]\nprimary = {}\nreplicas = {}\n\n\
         [routing]\nmax_replica_lag = \"16MB\"\nreplica_fallback = \"primary\"\n\
         hold_timeout = \"10s\"\ndrain_timeout = \"30s\"\n",
        toml_str(&spec.scope),
        toml_str(&spec.namespace),
        lab.etcd_toml_list(),
        toml_str(&opts.primary),
        toml_str(&opts.replicas),
    )
}

/// SIGKILL a pgrouter an earlier demo in `dir` left behind (if its command line names this dir).
fn kill_stale_pgrouter(pid_file: &Path, dir: &Path) {
    let Some(pid) = fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = dir.join("pgrouter.toml");
    if String::from_utf8_lossy(&cmdline).contains(needle.to_string_lossy().as_ref()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses() {
        assert_eq!(
            split_addr("127.0.0.1:5000").unwrap(),
            ("127.0.0.1".into(), 5000)
        );
        assert_eq!(
            split_addr("0.0.0.0:5001").unwrap(),
            ("127.0.0.1".into(), 5001)
        );
        assert_eq!(split_addr("[::1]:5001").unwrap(), ("::1".into(), 5001));
        assert!(split_addr("nope").is_err());
    }

    #[test]
    fn escapes_toml() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
