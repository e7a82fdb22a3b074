//! Fault injection and administration: kill, freeze, thaw, restart, tags, switchover.

use crate::config::effective_tags;
use crate::etcd;
use crate::lab::Lab;
use crate::poll::wait_for;
use crate::procs::{self, Signal};
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
        cmd.arg("-c")
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

    /// SIGKILL etcd: Patroni and pgrouter lose the DCS. Patroni demotes the leader once
    /// `retry_timeout` passes without etcd, so bring it back soon with [`Lab::start_etcd`].
    pub fn stop_etcd(&self) -> Result<()> {
        if let Some(mut child) = self.state().etcd.take() {
            child.kill().context("SIGKILL etcd")?;
            child.wait().context("reap etcd")?;
        }
        Ok(())
    }

    /// Start etcd again on its data directory after [`Lab::stop_etcd`]; waits until healthy.
    pub fn start_etcd(&self) -> Result<()> {
        let child = etcd::start(self.spec(), Duration::from_secs(30))?;
        self.state().etcd = Some(child);
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
}
