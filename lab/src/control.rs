//! Fault injection and administration: kill, freeze, thaw, restart, tags, switchover.

use crate::config::effective_tags;
use crate::etcd;
use crate::lab::Lab;
use crate::partition;
use crate::poll::wait_for;
use crate::procs::{self, Signal};
use crate::spec::ETCD_MEMBERS;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

const TAGS_TIMEOUT: Duration = Duration::from_secs(30);

impl Lab {
    /// SIGKILL `member`'s Patroni, then its postmaster (pid from postmaster.pid) and any backend
    /// left under its data dir: a node crash. Bring it back with [`Lab::start_member`].
    pub fn kill_member(&self, member: &str) -> Result<()> {
        let i = self.index(member)?;
        if let Some(mut child) = self.state().patroni[i].take() {
            child
                .kill()
                .with_context(|| format!("SIGKILL {member}'s patroni"))?;
            child
                .wait()
                .with_context(|| format!("reap {member}'s patroni"))?;
        }
        self.kill_postgres(i)
    }

    /// Cuts `member` off the network: every packet its Patroni and PostgreSQL send, and every
    /// packet to its PostgreSQL and REST ports, is dropped without a reset (iptables, cgroup v2).
    /// Undo with [`Lab::reconnect_member`]; dropping the lab undoes it too.
    pub fn cut_off_member(&self, member: &str) -> Result<()> {
        let i = self.index(member)?;
        ensure!(
            self.state().cut_off[i].is_empty(),
            "{member} is already cut off"
        );
        let rules = partition::cut(self.spec(), i)?;
        self.state().cut_off[i] = rules;
        Ok(())
    }

    /// Why [`Lab::cut_off_member`] cannot work for `member` on this machine (no cgroup v2), if
    /// it cannot.
    pub fn cannot_cut_off(&self, member: &str) -> Result<Option<String>> {
        Ok(partition::cannot_cut(self.spec(), self.index(member)?))
    }

    /// Removes the rules of [`Lab::cut_off_member`].
    pub fn reconnect_member(&self, member: &str) -> Result<()> {
        let i = self.index(member)?;
        self.state().cut_off[i].clear();
        Ok(())
    }

    /// SIGSTOP `member`'s Patroni and postmaster (backends keep running): a hung node.
    pub fn freeze_member(&self, member: &str) -> Result<()> {
        let i = self.index(member)?;
        let (patroni, postmaster) = self.pids(member)?;
        let was_leader = self.leader_key_holder()?.as_deref() == Some(member);
        procs::signal(patroni, Signal::Stop)
            .with_context(|| format!("freeze {member}'s patroni"))?;
        if let Some(pid) = postmaster {
            procs::signal(pid, Signal::Stop)
                .with_context(|| format!("freeze {member}'s postmaster"))?;
        }
        self.state().frozen_leader[i] = was_leader;
        Ok(())
    }

    /// SIGCONT `member`'s postmaster and Patroni after [`Lab::freeze_member`].
    ///
    /// Patroni 3.0.2 with etcd3 has a bug (fixed in 3.0.3, patroni PR #2689): a leader resumed
    /// after its lease expired rewrites the leader key unconditionally from its stale cache,
    /// stealing it back from the member that took over, which then demotes itself. So when
    /// `member` was frozen as leader and no longer holds the leader key, its Patroni
    /// is restarted (SIGKILL, then spawned afresh) instead of resumed; the fresh Patroni finds the
    /// new leader and demotes the resumed postmaster, as a fixed Patroni would.
    pub fn thaw_member(&self, member: &str) -> Result<()> {
        let i = self.index(member)?;
        let (patroni, postmaster) = self.pids(member)?;
        let was_leader = std::mem::take(&mut self.state().frozen_leader[i]);
        let restart = was_leader && self.leader_key_holder()?.as_deref() != Some(member);
        if restart {
            let child = self.state().patroni[i].take();
            if let Some(mut child) = child {
                child
                    .kill()
                    .with_context(|| format!("SIGKILL {member}'s frozen patroni"))?;
                child
                    .wait()
                    .with_context(|| format!("reap {member}'s patroni"))?;
            }
        }
        if let Some(pid) = postmaster {
            procs::signal(pid, Signal::Cont)
                .with_context(|| format!("thaw {member}'s postmaster"))?;
        }
        if restart {
            return self.spawn_patroni(i);
        }
        procs::signal(patroni, Signal::Cont).with_context(|| format!("thaw {member}'s patroni"))
    }

    /// Start `member`'s Patroni again after [`Lab::kill_member`]; it rejoins by itself (as a
    /// replica if another member took over, via pg_rewind or a fresh basebackup).
    pub fn start_member(&self, member: &str) -> Result<()> {
        let i = self.index(member)?;
        if let Some(child) = self.state().patroni[i].as_mut() {
            if child.try_wait()?.is_none() {
                bail!(
                    "{member}'s patroni (pid {}) is still running; kill_member first",
                    child.id()
                );
            }
        }
        self.spawn_patroni(i)
    }

    /// Replace `member`'s Patroni `tags` (a JSON object), SIGHUP it, and wait (30 s) until its
    /// etcd member key shows exactly the tags Patroni publishes for them.
    pub fn set_tags(&self, member: &str, tags: &Value) -> Result<()> {
        let i = self.index(member)?;
        ensure!(
            tags.is_object(),
            "tags for {member} must be a JSON object, got {tags}"
        );
        let (patroni, _) = self.pids(member)?;
        self.write_config(i, tags)?;
        procs::signal(patroni, Signal::Hup)
            .with_context(|| format!("SIGHUP {member}'s patroni"))?;
        let want = effective_tags(tags);
        wait_for(TAGS_TIMEOUT, Duration::from_millis(200), || {
            let key = self
                .member_key(member)?
                .ok_or_else(|| anyhow!("no member key"))?;
            let mut have = key["tags"].as_object().cloned().unwrap_or_default();
            if !want.contains_key("nosync") {
                have.remove("nosync"); // Patroni adds it by itself in some sync-mode states
            }
            if have == want {
                return Ok(Some(()));
            }
            bail!("member key tags are {}", Value::Object(have))
        })
        .with_context(|| {
            let log = self.log_tail(member, 20);
            format!("{member} did not publish tags {tags}; its log:\n{log}")
        })
    }

    /// `patronictl switchover --force [--candidate <candidate>]`; the current leader is taken from
    /// the DCS. Returns once patronictl reports success (the new leader holds the leader key).
    pub fn switchover(&self, candidate: Option<&str>) -> Result<()> {
        if let Some(c) = candidate {
            self.index(c)?;
        }
        let mut cmd = Command::new("patronictl");
        procs::without_libpq_env(&mut cmd)
            .arg("-c")
            .arg(self.spec().yml_path(0))
            .args(["switchover", "--force"])
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        if let Some(c) = candidate {
            cmd.args(["--candidate", c]);
        }
        let out = cmd
            .output()
            .context("run patronictl (is it installed in PATH?)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // patronictl 3.0.2 exits 0 even when the REST call is refused ("Switchover failed, ...").
        if !out.status.success() || stdout.contains("failed, details") {
            bail!(
                "patronictl switchover failed ({}):\n{stdout}\n{stderr}",
                out.status
            );
        }
        Ok(())
    }

    /// A planned switchover asked of the leader's Patroni REST API (`POST /switchover`), without
    /// patronictl, so it works while this process cannot reach etcd. Returns once Patroni
    /// reports success.
    pub fn switchover_via_rest(&self, candidate: &str) -> Result<()> {
        let leader = self.leader()?;
        let body = serde_json::json!({"leader": leader, "candidate": candidate}).to_string();
        let at = self.index(&leader)?;
        let resp = self.rest(
            at,
            "POST",
            "/switchover",
            Some(&body),
            Duration::from_secs(60),
        )?;
        ensure!(
            resp.status == 200,
            "switchover {leader} -> {candidate}: HTTP {}: {}",
            resp.status,
            resp.body
        );
        Ok(())
    }

    /// Asks Patroni to rebuild each replica that does not stream from the leader (`POST
    /// /reinitialize`, forced), as an operator runs `patronictl reinit` on a replica Patroni
    /// cannot bring back by itself. After failovers seconds apart it can leave one ahead of the
    /// new leader's WAL on the same timeline ("requested starting point ... is ahead of the WAL
    /// flush position of this server"), where it neither streams nor rewinds. Returns the
    /// replicas it asked to rebuild.
    pub fn reinit_replicas_not_streaming(&self) -> Result<Vec<String>> {
        let (_, missing) = crate::status::not_streaming(&self.cluster()?)?;
        for member in &missing {
            let body = serde_json::json!({"force": true}).to_string();
            let at = self.index(member)?;
            let resp = self.rest(
                at,
                "POST",
                "/reinitialize",
                Some(&body),
                Duration::from_secs(60),
            )?;
            ensure!(
                resp.status == 200,
                "reinitialize {member}: HTTP {}: {}",
                resp.status,
                resp.body
            );
        }
        Ok(missing)
    }

    /// Patches the cluster's dynamic configuration through Patroni's `PATCH /config`, e.g.
    /// `{"failsafe_mode": true}`; members apply it on their next HA cycle.
    pub fn patch_dcs_config(&self, patch: &Value) -> Result<()> {
        let at = self.index(&self.leader()?)?;
        let patch_text = patch.to_string();
        let resp = self.rest(
            at,
            "PATCH",
            "/config",
            Some(&patch_text),
            Duration::from_secs(10),
        )?;
        ensure!(
            resp.status == 200,
            "PATCH /config {patch}: HTTP {}: {}",
            resp.status,
            resp.body
        );
        Ok(())
    }

    /// SIGKILL every etcd member: Patroni and pgrouter lose the DCS. Patroni demotes the leader
    /// once `retry_timeout` passes without etcd (unless failsafe mode keeps it), so bring it back
    /// soon with [`Lab::start_etcd`].
    pub fn stop_etcd(&self) -> Result<()> {
        (0..ETCD_MEMBERS).try_for_each(|i| self.stop_etcd_member(i))
    }

    /// Start every stopped etcd member again on its data directory; waits until healthy.
    pub fn start_etcd(&self) -> Result<()> {
        let stopped: Vec<usize> = {
            let state = self.state();
            (0..ETCD_MEMBERS)
                .filter(|&i| state.etcd[i].is_none())
                .collect()
        };
        self.start_etcd_members(&stopped, Duration::from_secs(30))
    }

    /// SIGKILL etcd member `index` (0, 1 or 2); the other two keep a quorum.
    pub fn stop_etcd_member(&self, index: usize) -> Result<()> {
        ensure!(index < ETCD_MEMBERS, "no etcd member {index}");
        if let Some(mut child) = self.state().etcd[index].take() {
            child
                .kill()
                .with_context(|| format!("SIGKILL etcd{index}"))?;
            child.wait().with_context(|| format!("reap etcd{index}"))?;
        }
        Ok(())
    }

    /// Start etcd member `index` again after [`Lab::stop_etcd_member`]; waits until healthy.
    pub fn start_etcd_member(&self, index: usize) -> Result<()> {
        ensure!(index < ETCD_MEMBERS, "no etcd member {index}");
        self.start_etcd_members(&[index], Duration::from_secs(30))
    }

    pub(crate) fn start_etcd_members(&self, members: &[usize], timeout: Duration) -> Result<()> {
        let children = etcd::start(self.spec(), members, timeout)?;
        let mut state = self.state();
        for (&i, child) in members.iter().zip(children) {
            state.etcd[i] = Some(child);
        }
        Ok(())
    }

    /// Pids of `member`'s running Patroni and (if any) its postmaster.
    fn pids(&self, member: &str) -> Result<(u32, Option<u32>)> {
        let i = self.index(member)?;
        let patroni = {
            let mut state = self.state();
            let Some(child) = state.patroni[i].as_mut() else {
                bail!("{member}'s patroni is not running (killed)");
            };
            if let Some(status) = child.try_wait()? {
                bail!("{member}'s patroni is not running (exited with {status})");
            }
            child.id()
        };
        Ok((patroni, procs::postmaster_pid(&self.spec().data_dir(i))))
    }

    /// Undoes what a scenario that failed midway may have left: members cut off are
    /// reconnected, frozen ones thawed, killed ones started, stopped etcd members started,
    /// Patroni's synchronous and failsafe modes turned off.
    /// Returns what it did (empty when there was nothing to undo).
    pub fn undo_faults(&self) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for member in self.member_names() {
            let i = self.index(&member)?;
            if !self.state().cut_off[i].is_empty() {
                self.reconnect_member(&member)?;
                done.push(format!("reconnected {member}"));
            }
            match self.pids(&member) {
                Ok((patroni, postmaster)) => {
                    let frozen = std::iter::once(patroni)
                        .chain(postmaster)
                        .any(procs::is_stopped);
                    if frozen {
                        self.thaw_member(&member)?;
                        done.push(format!("thawed {member}"));
                    }
                }
                Err(_) => {
                    self.start_member(&member)?;
                    done.push(format!("started {member}"));
                }
            }
        }
        let stopped = (0..ETCD_MEMBERS)
            .filter(|&i| self.state().etcd[i].is_none())
            .count();
        if stopped > 0 {
            self.start_etcd()?;
            done.push(format!("started {stopped} etcd members"));
        }
        // Modes a scenario turns on for its own length (and turns off when it ends normally).
        let config: Value = match self.dcs_value("config")? {
            Some(text) => serde_json::from_str(&text).context("the DCS config key")?,
            None => Value::Null,
        };
        for mode in ["synchronous_mode", "failsafe_mode"] {
            if config[mode] == Value::Bool(true) {
                self.patch_dcs_config(&serde_json::json!({ mode: null }))?;
                done.push(format!("turned {mode} off"));
            }
        }
        Ok(done)
    }
}
