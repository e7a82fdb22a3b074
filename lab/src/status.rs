//! Reading the cluster's state (Patroni REST `/cluster`, etcd member keys) and waiting on it.

use crate::client::psql_with_timeout;
use crate::lab::Lab;
use crate::poll::wait_for;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::time::Duration;

/// Replicas lagging more than this (bytes) are not healthy.
const MAX_HEALTHY_LAG: u64 = 1 << 20;
const POLL_STEP: Duration = Duration::from_millis(250);
const REST_TIMEOUT: Duration = Duration::from_secs(2);

/// One member as Patroni's REST `/cluster` reports it.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    /// Member name (`pg0`..`pg2`).
    pub name: String,
    /// `leader`, `replica`, `sync_standby` or `standby_leader` (derived from the leader key).
    pub role: String,
    /// e.g. `running`, `starting`, `stopped`, `creating replica`, `crashed`.
    pub state: String,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// Replication lag in bytes behind the leader; `None` for the leader or when unknown.
    pub lag: Option<u64>,
    /// Timeline, when known.
    pub timeline: Option<u64>,
    /// The member's published Patroni tags (a JSON object, `{}` when none).
    pub tags: Value,
}

impl MemberStatus {
    fn from_json(v: &Value) -> Result<Self> {
        let text = |k: &str| v[k].as_str().map(str::to_string);
        Ok(MemberStatus {
            name: text("name").with_context(|| format!("member without name: {v}"))?,
            role: text("role").unwrap_or_default(),
            state: text("state").unwrap_or_default(),
            pg_port: v["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0),
            lag: v["lag"].as_u64(),
            timeline: v["timeline"].as_u64(),
            tags: v
                .get("tags")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default())),
        })
    }

    /// Whether this member holds the leader key.
    pub fn is_leader(&self) -> bool {
        matches!(self.role.as_str(), "leader" | "master" | "primary")
    }
}

/// Parse the body of Patroni's `GET /cluster`.
pub(crate) fn parse_cluster(body: &str) -> Result<Vec<MemberStatus>> {
    let v: Value =
        serde_json::from_str(body).with_context(|| format!("bad /cluster JSON {body:?}"))?;
    let members = v["members"]
        .as_array()
        .ok_or_else(|| anyhow!("/cluster has no members: {v}"))?;
    members.iter().map(MemberStatus::from_json).collect()
}

/// Why `members` is not a healthy 3-member cluster, or `None` if it is.
pub(crate) fn health_problem(members: &[MemberStatus], expected: &[String]) -> Option<String> {
    for name in expected {
        if !members.iter().any(|m| &m.name == name) {
            return Some(format!("{name} is missing from /cluster"));
        }
    }
    let leaders: Vec<&MemberStatus> = members.iter().filter(|m| m.is_leader()).collect();
    let [leader] = leaders.as_slice() else {
        return Some(format!("{} leaders", leaders.len()));
    };
    if leader.state != "running" {
        return Some(format!("leader {} is {}", leader.name, leader.state));
    }
    for m in members.iter().filter(|m| !m.is_leader()) {
        if !matches!(m.role.as_str(), "replica" | "sync_standby") {
            return Some(format!("{} has role {}", m.name, m.role));
        }
        if !matches!(m.state.as_str(), "running" | "streaming") {
            return Some(format!("replica {} is {}", m.name, m.state));
        }
        match m.lag {
            Some(lag) if lag < MAX_HEALTHY_LAG => {}
            lag => return Some(format!("replica {} lag is {lag:?}", m.name)),
        }
        if let (Some(t), Some(lt)) = (m.timeline, leader.timeline) {
            if t != lt {
                return Some(format!(
                    "replica {} on timeline {t}, leader on {lt}",
                    m.name
                ));
            }
        }
    }
    None
}

/// Check on the leader that every replica not cascading via `replicatefrom` streams from it.
fn check_streaming(members: &[MemberStatus]) -> Result<()> {
    let (leader, missing) = not_streaming(members)?;
    match missing.first() {
        Some(m) => bail!("{m} is not streaming from leader {leader}"),
        None => Ok(()),
    }
}

/// The leader's name, and the replicas not cascading via `replicatefrom` that are absent from
/// its `pg_stat_replication` (state streaming).
pub(crate) fn not_streaming(members: &[MemberStatus]) -> Result<(String, Vec<String>)> {
    let leader = members
        .iter()
        .find(|m| m.is_leader())
        .context("no leader")?;
    let sql = "select application_name from pg_stat_replication where state = 'streaming'";
    let out = psql_with_timeout("127.0.0.1", leader.pg_port, sql, 3)
        .with_context(|| format!("cannot read pg_stat_replication on leader {}", leader.name))?;
    let streaming: Vec<&str> = out.lines().collect();
    let missing = members
        .iter()
        .filter(|m| !m.is_leader() && m.tags.get("replicatefrom").is_none())
        .filter(|m| !streaming.contains(&m.name.as_str()))
        .map(|m| m.name.clone())
        .collect();
    Ok((leader.name.clone(), missing))
}

fn describe(members: &[MemberStatus]) -> String {
    let parts: Vec<String> = members
        .iter()
        .map(|m| {
            format!(
                "{}={}/{}/lag {:?}/tl {:?}",
                m.name, m.role, m.state, m.lag, m.timeline
            )
        })
        .collect();
    parts.join(", ")
}

impl Lab {
    /// Members as reported by `GET /cluster` of the first member whose REST API answers.
    pub fn cluster(&self) -> Result<Vec<MemberStatus>> {
        let n = self.member_names().len();
        let first = self.state().preferred;
        let mut errors = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let addr = format!("127.0.0.1:{}", self.spec().api_port(i));
            let res = self
                .rest(i, "GET", "/cluster", None, REST_TIMEOUT)
                .and_then(|r| {
                    if r.status != 200 {
                        bail!("HTTP {}: {}", r.status, r.body);
                    }
                    parse_cluster(&r.body)
                });
            match res {
                Ok(members) => {
                    self.state().preferred = i;
                    return Ok(members);
                }
                Err(e) => errors.push(format!("{addr}: {e:#}")),
            }
        }
        bail!(
            "no Patroni REST API answered /cluster: {}",
            errors.join("; ")
        )
    }

    /// Name of the member holding the leader key.
    pub fn leader(&self) -> Result<String> {
        let members = self.cluster()?;
        match members.iter().find(|m| m.is_leader()) {
            Some(m) => Ok(m.name.clone()),
            None => bail!("no leader in /cluster: {}", describe(&members)),
        }
    }

    /// Wait until all three members are in /cluster: one running leader, and replicas that are
    /// running or streaming, on the leader's timeline, with lag under 1 MiB, and that the leader's
    /// `pg_stat_replication` shows each replica (without a `replicatefrom` tag) streaming.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        self.wait_healthy_inner(timeout, false)
    }

    /// [`Lab::wait_healthy`]; with `watch_children`, fail at once if a Patroni process exits.
    pub(crate) fn wait_healthy_inner(&self, timeout: Duration, watch_children: bool) -> Result<()> {
        let expected = self.member_names();
        wait_for(timeout, POLL_STEP, || {
            if watch_children {
                self.check_children()?;
            }
            let members = self.cluster()?;
            let problem = health_problem(&members, &expected)
                .or_else(|| check_streaming(&members).err().map(|e| format!("{e:#}")));
            match problem {
                None => Ok(Some(())),
                Some(p) => Err(anyhow!("{p} ({})", describe(&members))),
            }
        })
        .context("cluster not healthy")
    }

    /// Wait until some member other than `old` holds the leader key, and return its name.
    pub fn wait_leader_other_than(&self, old: &str, timeout: Duration) -> Result<String> {
        wait_for(timeout, POLL_STEP, || {
            let leader = self.leader()?;
            Ok((leader != old).then_some(leader))
        })
        .with_context(|| format!("no leader other than {old}"))
    }

    /// The member's key in etcd (`<namespace>/<scope>/members/<name>`) as JSON, `None` if absent.
    /// This is what pgrouter reads: `role` is `master` or `replica`, `state`, `conn_url`, `tags`...
    pub fn member_key(&self, member: &str) -> Result<Option<Value>> {
        self.index(member)?;
        let key = self.spec().member_key(member);
        let Some(raw) = self.etcd_value(&key)? else {
            return Ok(None);
        };
        let v = serde_json::from_str(&raw).with_context(|| format!("{key}: bad JSON {raw:?}"))?;
        Ok(Some(v))
    }

    /// The value of the cluster's DCS key `suffix` (e.g. `failsafe`), `None` if absent.
    pub fn dcs_value(&self, suffix: &str) -> Result<Option<String>> {
        self.etcd_value(&self.spec().dcs_key(suffix))
    }

    /// The member named by the DCS leader key, `None` if the key is absent.
    pub(crate) fn leader_key_holder(&self) -> Result<Option<String>> {
        match self.spec().dcs {
            crate::spec::Dcs::Etcd => self.etcd_value(&self.spec().leader_key()),
            // What the members' REST APIs say the DCS holds.
            crate::spec::Dcs::ZooKeeper => Ok(self
                .cluster()?
                .iter()
                .find(|m| m.is_leader())
                .map(|m| m.name.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"members": [
        {"name": "pg0", "role": "leader", "state": "running", "port": 16410, "timeline": 2},
        {"name": "pg1", "role": "replica", "state": "streaming", "port": 16411, "timeline": 2, "lag": 0},
        {"name": "pg2", "role": "replica", "state": "running", "port": 16412, "lag": "unknown"}]}"#;

    #[test]
    fn parses_and_judges_health() {
        let members = parse_cluster(BODY).unwrap();
        assert_eq!(members.len(), 3);
        assert!(members[0].is_leader());
        assert_eq!(members[1].lag, Some(0));
        assert_eq!(members[2].lag, None);
        assert_eq!(members[2].pg_port, 16412);
        let names: Vec<String> = ["pg0", "pg1", "pg2"].map(String::from).to_vec();
        assert_eq!(
            health_problem(&members, &names).unwrap(),
            "replica pg2 lag is None"
        );
        let mut ok = members.clone();
        ok[2].lag = Some(10);
        assert_eq!(health_problem(&ok, &names), None);
        ok[2].timeline = Some(1);
        assert!(health_problem(&ok, &names).unwrap().contains("timeline 1"));
        assert!(health_problem(&ok[..2], &names)
            .unwrap()
            .contains("pg2 is missing"));
    }
}
