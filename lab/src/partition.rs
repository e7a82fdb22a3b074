//! Cutting a member off the network on one machine. Each member's Patroni (and so its
//! PostgreSQL) runs in its own cgroup v2 group; cutting it off adds two iptables rules: drop
//! every packet its processes send (to etcd, to the other members, replies to clients), and
//! drop every packet sent to its PostgreSQL and REST ports. Packets vanish without a reset, as
//! in a real partition.

use crate::spec::{member_name, LabSpec};
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// The cgroup v2 hierarchy: `/sys/fs/cgroup` itself, or its `unified` part on hybrid hosts.
fn cgroup_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join("cgroup.controllers").exists())
}

/// The member's group, relative to the cgroup v2 root.
fn group(spec: &LabSpec, index: usize) -> String {
    format!("pgrouter-lab-{}-{}", spec.base_port, member_name(index))
}

/// Moves `pid` (a freshly spawned Patroni) into the member's group; what it starts later
/// follows it.
pub(crate) fn join(spec: &LabSpec, index: usize, pid: u32) -> Result<()> {
    let root = cgroup_root().context("no cgroup v2 hierarchy under /sys/fs/cgroup")?;
    let dir = root.join(group(spec, index));
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    fs::write(dir.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("move {pid} into {}", dir.display()))
}

/// Removes the member's group once its processes are gone.
pub(crate) fn remove_group(spec: &LabSpec, index: usize) {
    if let Some(root) = cgroup_root() {
        let _ = fs::remove_dir(root.join(group(spec, index)));
    }
}

/// Why member `index` cannot be cut off on this machine, if it cannot.
pub(crate) fn cannot_cut(spec: &LabSpec, index: usize) -> Option<String> {
    let Some(root) = cgroup_root() else {
        return Some("cannot cut a member off: no cgroup v2 hierarchy under /sys/fs/cgroup".into());
    };
    let name = group(spec, index);
    (!root.join(&name).join("cgroup.procs").exists()).then(|| {
        format!(
            "cannot cut {} off: its Patroni did not start in cgroup {name}",
            member_name(index)
        )
    })
}

/// Installs the rules cutting member `index` off; dropping them reconnects it.
pub(crate) fn cut(spec: &LabSpec, index: usize) -> Result<Vec<IptablesRule>> {
    if let Some(why) = cannot_cut(spec, index) {
        bail!(why);
    }
    let name = group(spec, index);
    let ports = format!("{},{}", spec.pg_port(index), spec.api_port(index));
    Ok(vec![
        IptablesRule::insert(&["OUTPUT", "-m", "cgroup", "--path", &name, "-j", "DROP"])?,
        IptablesRule::insert(&[
            "INPUT",
            "-i",
            "lo",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-j",
            "DROP",
        ])?,
    ])
}

/// An iptables rule, inserted first in its chain and deleted when dropped (a failure to delete
/// is printed).
pub struct IptablesRule {
    rule: Vec<String>,
}

impl IptablesRule {
    /// `iptables -I <rule...>`, e.g. `["INPUT", "-p", "tcp", ..., "-j", "DROP"]`.
    pub fn insert(rule: &[&str]) -> Result<IptablesRule> {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        iptables("-I", &rule)?;
        Ok(IptablesRule { rule })
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        if let Err(e) = iptables("-D", &self.rule) {
            eprintln!("pgrouter-lab: could not remove iptables rule: {e:#}");
        }
    }
}

fn iptables(action: &str, rule: &[String]) -> Result<()> {
    let out = Command::new("iptables")
        .arg(action)
        .args(rule)
        .output()
        .context("run iptables (installed? root?)")?;
    ensure!(
        out.status.success(),
        "iptables {action} {}: {}",
        rule.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
