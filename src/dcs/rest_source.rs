//! The cluster from the members' own Patroni REST APIs, polled (`cluster.source = "patroni"`):
//! for Patroni on Consul, ZooKeeper, Kubernetes or its own Raft, whose keys pgrouter cannot
//! watch.
//!
//! Every `cluster.poll_interval`, in one round and at once: `GET /cluster` of each configured
//! REST API (the first that answers names the members, their addresses, tags and the DCS's
//! roles), and `GET /primary` of every member known. `/primary` answers 200 only from a Patroni
//! that holds the leader lock (its TTL not yet run out by its own clock) and runs a primary,
//! and every answer carries the member's state and WAL position.
//!
//! The safety rule: the leader is the one member whose own Patroni confirmed, in this round,
//! that it is the running primary. A leader that stops answering (frozen, partitioned, dead)
//! or answers otherwise is out at the end of that round, at most one interval after it
//! stopped; its sessions are closed as when the leader key moves. Two members confirming in
//! one round take no writes (logged) until one stops. Compared with the etcd watch, a new
//! leader is seen up to one interval later, and a planned switchover is not announced ahead:
//! new writes are held from the moment the old leader stops confirming.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::patroni::member_from_cluster_entry;
use super::rest::{Report, RestClient};
use super::DcsHealth;
use crate::metrics::Metrics;
use crate::topology::{Member, Topology};

/// Where to find one Patroni cluster's REST APIs, and how often to ask.
#[derive(Clone)]
pub struct RestSource {
    pub scope: String,
    /// The configured REST API addresses (`cluster.patroni`).
    pub urls: Vec<String>,
    pub interval: Duration,
    pub rest: RestClient,
    pub health: Arc<DcsHealth>,
}

/// What one round of asking brought back.
#[derive(Default)]
struct Round {
    /// The first `/cluster` answer: its members, and those it names synchronous standbys.
    cluster: Option<(Vec<Member>, BTreeSet<String>)>,
    /// Why no `/cluster` answered, per address.
    cluster_errors: Vec<String>,
    /// Each asked member's `/primary` answer; None when it did not answer in time.
    reports: BTreeMap<String, Option<Report>>,
}

/// Runs until the receiver side is gone.
pub async fn poll_cluster(
    source: RestSource,
    tx: watch::Sender<Arc<Topology>>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(source.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: BTreeMap<String, Member> = BTreeMap::new();
    let mut sync = BTreeSet::new();
    let mut synced = false;
    while !tx.is_closed() {
        tick.tick().await;
        let round = ask_round(&source, &known).await;
        match round.cluster {
            Some((members, sync_standbys)) => {
                known = members.into_iter().map(|m| (m.name.clone(), m)).collect();
                sync = sync_standbys;
                synced = true;
                metrics.dcs_connected.set(1);
                metrics.dcs_event_seen();
            }
            None => {
                metrics.dcs_connected.set(0);
                let problem = format!(
                    "no Patroni REST API in cluster.patroni answered /cluster: {}",
                    round.cluster_errors.join("; ")
                );
                tracing::warn!(cluster = %source.scope, "{problem}");
            }
        }
        let next = view(&source.scope, synced, &known, &sync, &round.reports);
        let problem = no_leader_problem(&next, &known, &round.reports, source.interval);
        if problem.is_some() != source.health.problem().is_some() {
            match &problem {
                Some(p) => tracing::warn!(cluster = %source.scope, "{p}"),
                None => {
                    tracing::info!(cluster = %source.scope, leader = ?next.leader, "a member's Patroni confirms it is the running primary")
                }
            }
        }
        source.health.set(problem);
        tx.send_if_modified(|current| {
            if **current == next {
                return false;
            }
            *current = Arc::new(next);
            true
        });
    }
}

/// Asks every configured address for `/cluster` and every known member for `/primary`, at
/// once, each with one interval to answer.
async fn ask_round(source: &RestSource, known: &BTreeMap<String, Member>) -> Round {
    let timeout = source.interval.max(Duration::from_millis(200));
    let mut clusters = JoinSet::new();
    for (i, url) in source.urls.iter().enumerate() {
        let (rest, url) = (source.rest.clone(), url.clone());
        clusters.spawn(async move {
            (
                i,
                url.clone(),
                rest.get_json(&url, "/cluster", timeout).await,
            )
        });
    }
    let mut primaries = JoinSet::new();
    // Members known by /cluster, and the configured addresses before /cluster first answers.
    for m in known.values() {
        let Some(api) = m.api_url.clone() else {
            continue;
        };
        let (rest, name) = (source.rest.clone(), m.name.clone());
        primaries.spawn(async move { (name, rest.ask(&api, "/primary", timeout).await) });
    }
    let mut round = Round::default();
    let mut answers = Vec::new();
    while let Some(joined) = clusters.join_next().await {
        let Ok((i, url, answer)) = joined else {
            continue;
        };
        match answer.map(|v| parse_cluster(&v)) {
            Ok(Some(parsed)) => answers.push((i, parsed)),
            Ok(None) => round
                .cluster_errors
                .push(format!("{url}: not Patroni's /cluster")),
            Err(e) => round.cluster_errors.push(format!("{url}: {e}")),
        }
    }
    answers.sort_by_key(|(i, _)| *i);
    round.cluster = answers.into_iter().next().map(|(_, parsed)| parsed);
    while let Some(joined) = primaries.join_next().await {
        if let Ok((name, report)) = joined {
            round.reports.insert(name, report);
        }
    }
    round
}

/// The members of a `/cluster` answer, and the names it gives a synchronous standby's role.
fn parse_cluster(v: &serde_json::Value) -> Option<(Vec<Member>, BTreeSet<String>)> {
    let entries = v["members"].as_array()?;
    let members = entries
        .iter()
        .filter_map(member_from_cluster_entry)
        .collect();
    let sync = entries
        .iter()
        .filter(|e| e["role"] == "sync_standby")
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    Some((members, sync))
}

/// The topology one round shows: `known`'s members with what each said of itself, the leader
/// only if exactly one confirmed it is the running primary.
fn view(
    scope: &str,
    synced: bool,
    known: &BTreeMap<String, Member>,
    sync: &BTreeSet<String>,
    reports: &BTreeMap<String, Option<Report>>,
) -> Topology {
    let mut t = Topology::empty(scope);
    t.synced = synced;
    t.members = known
        .iter()
        .map(|(name, m)| (name.clone(), Arc::new(m.clone())))
        .collect();
    for (name, report) in reports {
        let Some(m) = t.member_mut(name) else {
            continue;
        };
        match report {
            Some(r) => {
                m.role = r.role;
                m.state = r.state.clone();
                m.wal_position = r.wal_position;
            }
            // Not answering: nothing it says can be trusted; no known position.
            None => m.wal_position = None,
        }
    }
    if let [leader] = confirming(reports).as_slice() {
        t.leader = Some((*leader).to_owned());
        t.confirmed_primary = t.leader.clone();
        t.leader_optime = t.members.get(*leader).and_then(|m| m.wal_position);
        t.sync_standbys = sync.clone();
    }
    t
}

/// The members whose Patroni confirmed, in the round, that it is the running primary.
fn confirming(reports: &BTreeMap<String, Option<Report>>) -> Vec<&str> {
    reports
        .iter()
        .filter(|(_, r)| r.as_ref().is_some_and(Report::is_running_primary))
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Why `view` has no leader, for /health, /status and clients' errors; None when it has one.
fn no_leader_problem(
    view: &Topology,
    known: &BTreeMap<String, Member>,
    reports: &BTreeMap<String, Option<Report>>,
    interval: Duration,
) -> Option<String> {
    if view.leader.is_some() || !view.synced {
        return None;
    }
    let confirming = confirming(reports);
    if confirming.len() > 1 {
        return Some(format!(
            "members {} all say they are the running primary: no writes until one stops",
            confirming.join(", ")
        ));
    }
    let named = known
        .values()
        .find(|m| m.role == crate::topology::Role::Primary)
        .map(|m| m.name.as_str());
    let said = match named.map(|n| (n, reports.get(n))) {
        Some((n, Some(None))) => format!(
            "\"{n}\", named leader by /cluster, did not answer /primary within {:.1}s",
            interval.max(Duration::from_millis(200)).as_secs_f64()
        ),
        Some((n, Some(Some(r)))) => {
            format!(
                "\"{n}\", named leader by /cluster, reports {} {}",
                r.role.as_str(),
                r.state
            )
        }
        _ => "/cluster names no leader".to_owned(),
    };
    Some(format!(
        "no member's Patroni REST API confirms it is the running primary: {said}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Role;
    use serde_json::json;

    fn cluster() -> BTreeMap<String, Member> {
        let v = json!({"members": [
            {"name": "pg0", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:8008/patroni", "host": "127.0.0.1", "port": 5432, "timeline": 2},
            {"name": "pg1", "role": "sync_standby", "state": "streaming", "api_url": "http://127.0.0.1:8009/patroni", "host": "127.0.0.1", "port": 5433, "timeline": 2, "lag": 0, "tags": {"noloadbalance": true}},
            {"name": "pg2", "role": "replica", "state": "streaming", "api_url": "http://127.0.0.1:8010/patroni", "host": "::1", "port": 5434, "timeline": 2, "lag": 0, "tags": {"zone": "b"}}
        ]});
        let (members, sync) = parse_cluster(&v).unwrap();
        assert_eq!(sync.into_iter().collect::<Vec<_>>(), ["pg1"]);
        members.into_iter().map(|m| (m.name.clone(), m)).collect()
    }

    fn report(ok: bool, role: Role, state: &str, at: u64) -> Option<Report> {
        Some(Report {
            ok,
            role,
            state: state.into(),
            wal_position: Some(at),
            replay_paused: None,
        })
    }

    #[test]
    fn cluster_entries_become_members() {
        let known = cluster();
        assert_eq!(known["pg2"].addr, "[::1]:5434");
        assert!(known["pg1"].noloadbalance);
        assert_eq!(known["pg2"].tags["zone"], "b");
        assert_eq!(known["pg0"].role, Role::Primary);
    }

    #[test]
    fn only_a_member_confirming_it_is_the_running_primary_leads() {
        let known = cluster();
        let sync: BTreeSet<String> = ["pg1".to_owned()].into();
        let mut reports = BTreeMap::from([
            (
                "pg0".to_owned(),
                report(true, Role::Primary, "running", 900),
            ),
            (
                "pg1".to_owned(),
                report(false, Role::Replica, "running", 800),
            ),
            (
                "pg2".to_owned(),
                report(false, Role::Replica, "running", 700),
            ),
        ]);
        let t = view("demo", true, &known, &sync, &reports);
        assert_eq!(t.leader.as_deref(), Some("pg0"));
        assert_eq!(t.writable_leader().map(|m| m.name.as_str()), Some("pg0"));
        assert_eq!(t.lag(&t.members["pg2"]), Some(200));
        assert!(t.sync_standbys.contains("pg1"));
        assert_eq!(
            no_leader_problem(&t, &known, &reports, Duration::from_millis(500)),
            None
        );

        // Frozen: no answer in the round. Out at once, named in the problem.
        reports.insert("pg0".into(), None);
        let t = view("demo", true, &known, &sync, &reports);
        assert_eq!(t.leader, None);
        let p = no_leader_problem(&t, &known, &reports, Duration::from_millis(500)).unwrap();
        assert!(
            p.contains("\"pg0\", named leader by /cluster, did not answer /primary within 0.5s"),
            "{p}"
        );

        // Demoting: answers, but not as a running primary with the lock.
        reports.insert("pg0".into(), report(false, Role::Primary, "stopping", 900));
        assert_eq!(view("demo", true, &known, &sync, &reports).leader, None);

        // Two claim at once: neither takes writes.
        reports.insert("pg0".into(), report(true, Role::Primary, "running", 900));
        reports.insert("pg1".into(), report(true, Role::Primary, "running", 900));
        let t = view("demo", true, &known, &sync, &reports);
        assert_eq!(t.leader, None);
        let p = no_leader_problem(&t, &known, &reports, Duration::from_millis(500)).unwrap();
        assert!(p.starts_with("members pg0, pg1 all say"), "{p}");
    }
}
