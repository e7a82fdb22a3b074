//! End-to-end check of the lab against real etcd, Patroni and PostgreSQL. Both tests start labs
//! of their own (root, ports 16400-16422 and 16500-16522), so they are `#[ignore]`d: a plain
//! `cargo test` lists them as ignored, and `cargo test -p pgrouter-lab --test lab -- --ignored`
//! (what `scripts/test.sh` runs) runs them.

use anyhow::{anyhow, ensure, Context, Result};
use pgrouter_lab::{Lab, LabSpec};
use serde_json::json;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

const DIR: &str = "/tmp/pgrouter-labtest";
const BASE_PORT: u16 = 16400;
const LEADER_TIMEOUT: Duration = Duration::from_secs(60);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);

/// Records and prints how long each step took.
#[derive(Default)]
struct Timings(Vec<(String, Duration)>);

impl Timings {
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f().with_context(|| format!("step {name:?}"));
        let took = start.elapsed();
        eprintln!(
            "[lab test] {name}: {:.1}s{}",
            took.as_secs_f64(),
            if out.is_ok() { "" } else { " FAILED" }
        );
        self.0.push((name.to_string(), took));
        out
    }

    fn summary(&self) -> String {
        let lines: Vec<String> = self
            .0
            .iter()
            .map(|(n, d)| format!("{:>7.1}s  {n}", d.as_secs_f64()))
            .collect();
        lines.join("\n")
    }
}

/// Poll until `member`'s etcd key says `role` (what pgrouter sees).
fn wait_key_role(lab: &Lab, member: &str, role: &str) -> Result<()> {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let key = lab.member_key(member)?;
        let have = key
            .as_ref()
            .and_then(|k| k["role"].as_str().map(str::to_string));
        if have.as_deref() == Some(role) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{member} key role is {have:?}, want {role}"
        );
        sleep(Duration::from_millis(50));
    }
}

/// Poll until `member` accepts writes.
fn wait_writable(lab: &Lab, member: &str) -> Result<()> {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let r = lab.psql(lab.pg_port(member), "select pg_is_in_recovery()");
        if matches!(r.as_deref(), Ok("f")) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{member} still not writable: {r:?}"
        );
        sleep(Duration::from_millis(50));
    }
}

fn replicas(lab: &Lab, leader: &str) -> Vec<String> {
    lab.member_names()
        .into_iter()
        .filter(|m| m != leader)
        .collect()
}

/// Lab-type processes whose command line or working directory mentions `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    let comms = [
        "etcd",
        "patroni",
        "postgres",
        "pg_ctl",
        "pg_basebackup",
        "pg_rewind",
    ];
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if zombie || !comms.contains(&comm.trim()) {
            continue;
        }
        let cwd = fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        let cmdline =
            String::from_utf8_lossy(&fs::read(entry.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
        if cwd.starts_with(dir) || cmdline.contains(&*dir.to_string_lossy()) {
            found.push(format!(
                "{:?} {}: {cmdline}",
                entry.file_name(),
                comm.trim()
            ));
        }
    }
    found
}

fn assert_gone(dir: &str, base_port: u16) -> Result<()> {
    for port in [0, 1, 10, 11, 12, 20, 21, 22].map(|o| base_port + o) {
        TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("port {port} still in use"))?;
    }
    let left = leftovers(Path::new(dir));
    ensure!(left.is_empty(), "processes left after drop: {left:#?}");
    Ok(())
}

/// Dropping a lab with a frozen and a killed member, and restarting over a lab that was never
/// dropped (as after a crashed test run), leave nothing behind.
#[test]
#[ignore = "starts a Patroni lab: cargo test -p pgrouter-lab --test lab -- --ignored"]
fn lab_cleans_up_after_faults() -> Result<()> {
    const DIR2: &str = "/tmp/pgrouter-labtest-faults";
    const PORT2: u16 = 16500;
    let lab = Lab::start(LabSpec::new(DIR2, PORT2))?;
    let err = Lab::start(LabSpec::new("/tmp/pgrouter-labtest-clash", PORT2))
        .err()
        .context("clash")?;
    ensure!(
        format!("{err:#}").contains("port 16500 (etcd0 client)"),
        "clash error: {err:#}"
    );
    lab.freeze_member("pg1")?;
    lab.kill_member("pg2")?;
    let err = lab.start_member("pg1").err().context("pg1 still runs")?;
    ensure!(format!("{err:#}").contains("still running"), "{err:#}");
    std::mem::forget(lab); // as if the test process died: nothing cleaned up
    let leaked = fs::read_to_string(Path::new(DIR2).join("lab.pids"))?;
    let lab = Lab::start(LabSpec::new(DIR2, PORT2))?;
    // Reap the forgotten lab's children, which the new start() has SIGKILLed.
    for pid in leaked
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
    {
        // SAFETY: waitpid(2) with a null status pointer has no memory-safety preconditions.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
    lab.freeze_member("pg0")?;
    lab.kill_member("pg1")?;
    drop(lab);
    assert_gone(DIR2, PORT2)
}

#[test]
#[ignore = "starts a Patroni lab: cargo test -p pgrouter-lab --test lab -- --ignored"]
fn lab_end_to_end() -> Result<()> {
    let mut t = Timings::default();
    let result = scenario(&mut t);
    eprintln!("[lab test] timings:\n{}", t.summary());
    result
}

fn scenario(t: &mut Timings) -> Result<()> {
    let lab = t.step("start: etcd + pg0 leader + pg1/pg2 healthy", || {
        Lab::start(LabSpec::new(DIR, BASE_PORT))
    })?;
    let fail = |e: anyhow::Error, member: &str| {
        anyhow!("{e:#}\n--- {member} log:\n{}", lab.log_tail(member, 30))
    };

    let members = lab.cluster()?;
    ensure!(members.len() == 3, "want 3 members: {members:?}");
    let leader = lab.leader()?;
    ensure!(leader == "pg0", "pg0 bootstraps, leader is {leader}");
    lab.psql(
        lab.pg_port(&leader),
        "create table t(x int); insert into t values (1)",
    )?;
    t.step("insert on leader visible on both replicas", || {
        for r in replicas(&lab, &leader) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while lab
                .psql(lab.pg_port(&r), "select count(*) from t")
                .ok()
                .as_deref()
                != Some("1")
            {
                ensure!(Instant::now() < deadline, "row not replicated to {r}");
                sleep(Duration::from_millis(50));
            }
            ensure!(lab.psql(lab.pg_port(&r), "select pg_is_in_recovery()")? == "t");
        }
        Ok(())
    })?;

    // Switchover to a chosen candidate.
    let target = "pg1";
    t.step("switchover pg0 -> pg1 (patronictl returns)", || {
        lab.switchover(Some(target))
    })?;
    let new = t.step("  /cluster shows the new leader", || {
        lab.wait_leader_other_than(&leader, LEADER_TIMEOUT)
    })?;
    ensure!(new == target, "switchover went to {new}, not {target}");
    t.step("  new leader's etcd key role=master", || {
        wait_key_role(&lab, &new, "master")
    })?;
    t.step("  new leader writable", || wait_writable(&lab, &new))?;
    t.step("  old leader's etcd key role=replica", || {
        wait_key_role(&lab, &leader, "replica")
    })?;
    t.step("  healthy again (old leader streaming)", || {
        lab.wait_healthy(HEALTHY_TIMEOUT)
    })
    .map_err(|e| fail(e, &leader))?;

    // Crash the leader, let the others fail over, bring it back.
    let old = lab.leader()?;
    t.step("kill leader (patroni + postmaster)", || {
        lab.kill_member(&old)
    })?;
    let new = t.step("  failover: /cluster shows a new leader", || {
        lab.wait_leader_other_than(&old, LEADER_TIMEOUT)
    })?;
    t.step("  new leader's etcd key role=master", || {
        wait_key_role(&lab, &new, "master")
    })?;
    t.step("  new leader writable", || wait_writable(&lab, &new))?;
    t.step("  start_member(killed)", || lab.start_member(&old))?;
    t.step("  healthy again (killed leader rejoined)", || {
        lab.wait_healthy(HEALTHY_TIMEOUT)
    })
    .map_err(|e| fail(e, &old))?;
    ensure!(lab.psql(lab.pg_port(&old), "select count(*) from t")? == "1");

    // Hang the leader (SIGSTOP), let the others fail over, resume it.
    let old = lab.leader()?;
    t.step("freeze leader", || lab.freeze_member(&old))?;
    let new = t.step("  failover: /cluster shows a new leader", || {
        lab.wait_leader_other_than(&old, LEADER_TIMEOUT)
    })?;
    t.step("  new leader's etcd key role=master", || {
        wait_key_role(&lab, &new, "master")
    })?;
    t.step("  thaw", || lab.thaw_member(&old))?;
    t.step("  thawed leader's etcd key role=replica", || {
        wait_key_role(&lab, &old, "replica")
    })?;
    t.step("  healthy again (thawed leader rejoined)", || {
        lab.wait_healthy(HEALTHY_TIMEOUT)
    })
    .map_err(|e| fail(e, &old))?;

    // Tags.
    let leader = lab.leader()?;
    let replica = replicas(&lab, &leader).remove(0);
    t.step("set_tags noloadbalance=true (etcd key shows it)", || {
        lab.set_tags(&replica, &json!({"noloadbalance": true}))
    })?;
    let m = lab
        .cluster()?
        .into_iter()
        .find(|m| m.name == replica)
        .context("replica gone")?;
    ensure!(
        m.tags == json!({"noloadbalance": true}),
        "/cluster tags of {replica}: {}",
        m.tags
    );
    t.step("set_tags {} (tag gone from etcd key)", || {
        lab.set_tags(&replica, &json!({}))
    })?;
    let m = lab
        .cluster()?
        .into_iter()
        .find(|m| m.name == replica)
        .context("replica gone")?;
    ensure!(
        m.tags == json!({}),
        "/cluster tags of {replica}: {}",
        m.tags
    );
    ensure!(lab
        .set_tags(&replica, &json!(["not", "an", "object"]))
        .is_err());

    t.step("drop the lab", || {
        drop(lab);
        Ok(())
    })?;
    assert_gone(DIR, BASE_PORT)?;
    Ok(())
}
