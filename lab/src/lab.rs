//! The [`Lab`]: laying out the directory, starting etcd and Patroni, accessors, and teardown on drop.

use crate::client::run_psql;
use crate::config;
use crate::partition;
use crate::poll::{remaining, wait_for, Abort};
use crate::procs;
use crate::spec::{member_name, LabSpec, ETCD_MEMBERS, MEMBERS};
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(180);
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 40;

/// A running lab: one etcd and three Patroni members. Dropping it SIGKILLs everything.
pub struct Lab {
    spec: LabSpec,
    owner: Option<(u32, u32)>,
    state: Mutex<State>,
}

/// What changes while the lab runs.
pub(crate) struct State {
    /// Each etcd member; `None` while stopped.
    pub etcd: Vec<Option<Child>>,
    /// Patroni child of each member; `None` after `kill_member`.
    pub patroni: Vec<Option<Child>>,
    /// Member whose REST API answered last; tried first.
    pub preferred: usize,
    /// Per member: frozen by `freeze_member` while holding the leader key.
    pub frozen_leader: Vec<bool>,
    /// Per member: the iptables rules of `cut_off_member`, until `reconnect_member`.
    pub cut_off: Vec<Vec<partition::IptablesRule>>,
    /// The ZooKeeper lab's ZooKeeper.
    pub zookeeper: Option<Child>,
}

impl Lab {
    /// Wipe `spec.dir` (killing whatever an earlier lab left there), start etcd, bootstrap pg0,
    /// then pg1 and pg2, and wait until the cluster is healthy (at most 180 s in all).
    pub fn start(mut spec: LabSpec) -> Result<Lab> {
        let deadline = Instant::now() + START_TIMEOUT;
        spec.dir = std::path::absolute(&spec.dir)
            .with_context(|| format!("make {} absolute", spec.dir.display()))?;
        ensure!(
            spec.base_port.checked_add(20 + MEMBERS as u16).is_some(),
            "base port {} too high: the lab needs ports up to base+22",
            spec.base_port
        );
        procs::clean_stale(&spec.dir)?;
        procs::check_ports_free(&spec.ports())?;
        let libpq = procs::libpq_variables();
        if !libpq.is_empty() {
            eprintln!(
                "pgrouter-lab: {} not passed to Patroni, PostgreSQL, psql or patronictl: the lab uses its own credentials and addresses",
                libpq.join(", ")
            );
        }
        let owner = procs::postgres_owner()?;
        lay_out(&spec, owner)?;
        if let Some(tls) = spec.tls() {
            tls.make()
                .context("making the secured lab's certificates")?;
        }
        let lab = Lab {
            state: Mutex::new(State {
                etcd: (0..ETCD_MEMBERS).map(|_| None).collect(),
                patroni: (0..MEMBERS).map(|_| None).collect(),
                preferred: 0,
                frozen_leader: vec![false; MEMBERS],
                cut_off: (0..MEMBERS).map(|_| Vec::new()).collect(),
                zookeeper: None,
            }),
            spec,
            owner,
        };
        match lab.spec.dcs {
            crate::spec::Dcs::Etcd if lab.spec.external_etcd.is_some() => {}
            crate::spec::Dcs::Etcd => {
                lab.start_etcd_members(&[0, 1, 2], ETCD_TIMEOUT.min(remaining(deadline)))?;
                if lab.spec.secure.is_some() {
                    crate::etcd::enable_auth(&lab.spec).context("turning on etcd's RBAC")?;
                }
            }
            crate::spec::Dcs::ZooKeeper => {
                let zk = crate::zookeeper::start(&lab.spec, ETCD_TIMEOUT.min(remaining(deadline)))?;
                lab.state().zookeeper = Some(zk);
            }
        }
        lab.spawn_patroni(0)?;
        wait_for(remaining(deadline), Duration::from_millis(250), || {
            lab.check_children()?;
            let members = lab.cluster()?;
            let pg0 = members.iter().find(|m| m.name == "pg0" && m.is_leader());
            Ok(pg0.filter(|m| m.state == "running").map(|_| ()))
        })
        .with_context(|| format!("pg0 did not become a running leader\n{}", lab.logs(&[0])))?;
        for i in 1..MEMBERS {
            lab.spawn_patroni(i)?;
        }
        lab.wait_healthy_inner(remaining(deadline), true)
            .with_context(|| format!("the lab did not become healthy\n{}", lab.logs(&[1, 2])))?;
        Ok(lab)
    }

    /// The spec the lab runs with (`dir` made absolute).
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// `127.0.0.1:<client port>` of each etcd member, `etcd0` first.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.spec.etcd_endpoints()
    }

    /// The etcd endpoints as a TOML array body: `"127.0.0.1:B", "127.0.0.1:B+2", ...`.
    pub fn etcd_toml_list(&self) -> String {
        let quoted: Vec<String> = self
            .etcd_endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        quoted.join(", ")
    }

    /// The client endpoint of a running etcd member, for the lab's own reads.
    pub(crate) fn running_etcd(&self) -> Result<String> {
        if let Some(external) = &self.spec.external_etcd {
            return external
                .first()
                .cloned()
                .ok_or_else(|| anyhow!("no external etcd"));
        }
        let state = self.state();
        let running = state.etcd.iter().position(Option::is_some);
        let i = running.ok_or_else(|| anyhow!("no etcd member is running"))?;
        Ok(self.spec.etcd_endpoints()[i].clone())
    }

    /// `["pg0", "pg1", "pg2"]`.
    pub fn member_names(&self) -> Vec<String> {
        (0..MEMBERS).map(member_name).collect()
    }

    /// The value of etcd key `key` (as etcd's root user in the secured lab), `None` if absent.
    pub(crate) fn etcd_value(&self, key: &str) -> Result<Option<String>> {
        let addr = self.running_etcd()?;
        let tls = self.spec.tls();
        let mut to = crate::http::Target {
            addr: &addr,
            tls: tls.as_ref(),
            token: None,
        };
        let token = match &tls {
            Some(_) => Some(crate::etcd::root_token(&to)?),
            None => None,
        };
        to.token = token.as_deref();
        crate::etcd::read(&to, key)
    }

    /// Sends `method path` with a JSON `body` to `member`'s Patroni REST API (HTTPS with the
    /// lab's client certificate in the secured lab).
    pub(crate) fn rest(
        &self,
        member_index: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<crate::http::Response> {
        let addr = format!("127.0.0.1:{}", self.spec.api_port(member_index));
        let tls = self.spec.tls();
        let to = crate::http::Target {
            addr: &addr,
            tls: tls.as_ref(),
            token: None,
        };
        match (method, body) {
            ("GET", _) => crate::http::get(&to, path, timeout),
            ("PATCH", Some(b)) => crate::http::patch_json(&to, path, b, timeout),
            (_, b) => crate::http::post_json(&to, path, b.unwrap_or("{}"), timeout),
        }
    }

    /// PostgreSQL port of `member`. Panics on an unknown member name.
    pub fn pg_port(&self, member: &str) -> u16 {
        self.spec.pg_port(self.index_or_panic(member))
    }

    /// Patroni REST port of `member`. Panics on an unknown member name.
    pub fn api_port(&self, member: &str) -> u16 {
        self.spec.api_port(self.index_or_panic(member))
    }

    /// Run `sql` with psql as superuser on 127.0.0.1:`port`; stdout trimmed, or an error with stderr.
    pub fn psql(&self, port: u16, sql: &str) -> Result<String> {
        run_psql("127.0.0.1", port, sql)
    }

    /// `postgres://postgres:postgres@127.0.0.1:<port>/postgres`.
    pub fn superuser_dsn(&self, port: u16) -> String {
        let (user, password) = config::SUPERUSER;
        format!("postgres://{user}:{password}@127.0.0.1:{port}/postgres")
    }

    /// The last `lines` lines of `member`'s patroni.log (Patroni and PostgreSQL output).
    pub fn log_tail(&self, member: &str, lines: usize) -> String {
        match self.index(member) {
            Ok(i) => procs::tail(&self.spec.log_path(i), lines),
            Err(e) => format!("<{e}>"),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn index(&self, member: &str) -> Result<usize> {
        (0..MEMBERS)
            .find(|&i| member_name(i) == member)
            .ok_or_else(|| anyhow!("unknown lab member {member:?} (members are pg0, pg1, pg2)"))
    }

    fn index_or_panic(&self, member: &str) -> usize {
        self.index(member).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawn member `index`'s Patroni (as user postgres when we are root), logging to patroni.log.
    pub(crate) fn spawn_patroni(&self, index: usize) -> Result<()> {
        let name = member_name(index);
        let dir = self.spec.member_dir(index);
        let log_path = self.spec.log_path(index);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut cmd = Command::new("patroni");
        procs::without_libpq_env(&mut cmd)
            .arg(self.spec.yml_path(index))
            .current_dir(&dir)
            .env("HOME", &dir)
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid).env("USER", "postgres");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn patroni for {name} (is it installed in PATH?)"))?;
        procs::record_pid(&self.spec.dir, &name, child.id())?;
        // Best effort: without cgroup v2 only `cut_off_member` is unavailable, and says so.
        if let Err(e) = partition::join(&self.spec, index, child.id()) {
            eprintln!("pgrouter-lab: {name} runs outside its own cgroup: {e:#}");
        }
        self.state().patroni[index] = Some(child);
        Ok(())
    }

    /// Rewrite member `index`'s patroni.yml with `tags`.
    pub(crate) fn write_config(&self, index: usize, tags: &Value) -> Result<()> {
        let path = self.spec.yml_path(index);
        fs::write(&path, config::render(&self.spec, index, tags))
            .with_context(|| format!("write {}", path.display()))
    }

    /// Fail (with [`Abort`], so waits stop) if a Patroni child that should run has exited.
    pub(crate) fn check_children(&self) -> Result<()> {
        let mut state = self.state();
        for (i, slot) in state.patroni.iter_mut().enumerate() {
            if let Some(status) = slot.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let name = member_name(i);
                let log = procs::tail(&self.spec.log_path(i), LOG_TAIL_LINES);
                let msg = format!("patroni {name} exited with {status}; its log:\n{log}");
                return Err(Abort(msg).into());
            }
        }
        Ok(())
    }

    /// Tails of the given members' logs, for error messages.
    fn logs(&self, indexes: &[usize]) -> String {
        let tails = indexes.iter().map(|&i| {
            let log = procs::tail(&self.spec.log_path(i), LOG_TAIL_LINES);
            format!("--- tail of {}:\n{log}", self.spec.log_path(i).display())
        });
        tails.collect::<Vec<_>>().join("\n")
    }

    /// SIGKILL member `index`'s postmaster and any PostgreSQL process left under its data dir.
    pub(crate) fn kill_postgres(&self, index: usize) -> Result<()> {
        let data_dir = self.spec.data_dir(index);
        if let Some(pid) = procs::postmaster_pid(&data_dir) {
            procs::signal(pid, procs::Signal::Kill)?;
        }
        let left = procs::kill_all_under(&data_dir, Duration::from_secs(10));
        if !left.is_empty() {
            bail!("{} processes survive SIGKILL: {left:?}", member_name(index));
        }
        Ok(())
    }

    fn teardown(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        state.cut_off.iter_mut().for_each(Vec::clear);
        for child in state.patroni.iter_mut().filter_map(Option::take) {
            kill_child(child);
        }
        for i in 0..MEMBERS {
            let _ = self.kill_postgres(i);
        }
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for child in state.etcd.iter_mut().filter_map(Option::take) {
            kill_child(child);
        }
        if let Some(zk) = state.zookeeper.take() {
            kill_child(zk);
        }
        procs::kill_all_under(&self.spec.dir, Duration::from_secs(5));
        (0..MEMBERS).for_each(|i| partition::remove_group(&self.spec, i));
        let _ = procs::wait_ports_free(&self.spec.ports(), Duration::from_secs(5));
    }
}

impl Lab {
    /// Ends the lab from another thread while a scenario may still hold it: SIGKILLs every child
    /// of this process (routers, clients, Patroni) and every lab process under the directory,
    /// and drops the iptables rules of cut-off members. For a run that must stop at once (a
    /// scenario stuck past its time limit); the lab is unusable afterwards.
    pub fn abort(&self) {
        procs::kill_own_children();
        procs::kill_all_under(&self.spec.dir, Duration::from_secs(5));
        self.state().cut_off.iter_mut().for_each(Vec::clear);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn kill_child(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Create the lab dir (0755) and member dirs (owned by `owner`) with their patroni.yml.
fn lay_out(spec: &LabSpec, owner: Option<(u32, u32)>) -> Result<()> {
    let dir = &spec.dir;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 0755 {}", dir.display()))?;
    for i in 0..MEMBERS {
        let member_dir = spec.member_dir(i);
        fs::create_dir(&member_dir).with_context(|| format!("create {}", member_dir.display()))?;
        fs::set_permissions(&member_dir, fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&member_dir, Some(uid), Some(gid))
                .with_context(|| format!("chown postgres {}", member_dir.display()))?;
        }
        let yml = spec.yml_path(i);
        fs::write(&yml, config::render(spec, i, &json!({})))
            .with_context(|| format!("write {}", yml.display()))?;
    }
    Ok(())
}
