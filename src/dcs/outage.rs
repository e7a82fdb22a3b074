//! While etcd cannot be read: the last view, kept only as far as the members' own Patroni
//! confirm it.
//!
//! Every [`CHECK`] each member of the view is asked what its PostgreSQL is doing: the last
//! leader with `GET /primary` (200 only while its Patroni holds the leader lock, or stays
//! primary in failsafe mode), the others with `GET /patroni`. The leader stays only while it
//! confirms. Every member's role, state and WAL position become what it reported, so replica
//! lag keeps being measured: against the furthest position a running primary reported, which
//! is kept when the leader is taken out. A member that does not answer has no known position,
//! so it serves no reads until it answers again, as it would once its member key expired. A
//! member whose REST API pgrouter cannot ask (none, or HTTPS without `cluster.rest_ca`) keeps
//! what its member key said; a leader without one is not confirmed, so it is taken out at the
//! first check.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::rest::{Report, RestClient};
use crate::topology::{Role, Topology};

/// How often the members' Patroni are asked while etcd is lost, and how long each has to answer.
pub const CHECK: Duration = Duration::from_millis(500);
const ANSWER: Duration = Duration::from_secs(1);

/// Keeps `tx`'s view from what the members report, `leader` (the last view's) only while its
/// Patroni confirms it. Never resolves; dropped when etcd can be read again.
pub async fn guard(
    scope: &str,
    rest: &RestClient,
    tx: &watch::Sender<Arc<Topology>>,
    leader: Option<String>,
) -> Infallible {
    loop {
        tokio::time::sleep(CHECK).await;
        let members: Vec<(String, Option<String>)> = tx
            .borrow()
            .members
            .values()
            .map(|m| (m.name.clone(), m.api_url.clone()))
            .collect();
        let reports = ask_all(rest, members, leader.as_deref()).await;
        let confirmed = leader
            .as_ref()
            .and_then(|l| reports.get(l))
            .is_some_and(|r| r.as_ref().is_some_and(Report::is_running_primary));
        let mut leader_moved = false;
        tx.send_if_modified(|current| {
            let next = refreshed(current, leader.as_deref(), confirmed, &reports);
            if next == **current {
                return false;
            }
            leader_moved = current.leader != next.leader;
            *current = Arc::new(next);
            true
        });
        let Some(leader) = leader.as_deref().filter(|_| leader_moved) else {
            continue;
        };
        if confirmed {
            tracing::info!(
                cluster = %scope,
                member = %leader,
                "etcd is still lost; the last leader's Patroni confirms it is the primary again"
            );
        } else {
            tracing::warn!(
                cluster = %scope,
                member = %leader,
                "etcd is lost and the last leader's Patroni does not confirm it is the primary; holding writes"
            );
        }
    }
}

/// Asks every member with a REST API pgrouter can ask (plain HTTP) at once: `leader` for
/// `/primary`, the others for `/patroni`; `None` for one that did not answer in time. Members
/// without one are left out: their member keys stay the view.
async fn ask_all(
    rest: &RestClient,
    members: Vec<(String, Option<String>)>,
    leader: Option<&str>,
) -> BTreeMap<String, Option<Report>> {
    let mut asks = tokio::task::JoinSet::new();
    for (name, api_url) in members {
        let Some(url) = api_url.filter(|u| rest.can_ask(u)) else {
            continue;
        };
        let path = if leader == Some(name.as_str()) {
            "/primary"
        } else {
            "/patroni"
        };
        let rest = rest.clone();
        asks.spawn(async move { (name, rest.ask(&url, path, ANSWER).await) });
    }
    let mut reports = BTreeMap::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((name, report)) = joined {
            reports.insert(name, report);
        }
    }
    reports
}

/// `view` with what its members reported (`None`: no answer). The last `leader` stays only
/// while `confirmed`; each answering member's role, state and WAL position replace what its
/// member key said, and one that did not answer has no known position (so no known lag). The
/// furthest position a running primary reported raises `leader_optime`, which replicas' lag is
/// measured against even once no leader is left in the view.
pub fn refreshed(
    view: &Topology,
    leader: Option<&str>,
    confirmed: bool,
    reports: &BTreeMap<String, Option<Report>>,
) -> Topology {
    let mut next = view.clone();
    if let Some(leader) = leader {
        next.leader = confirmed.then(|| leader.to_owned());
        next.unconfirmed_leader = (!confirmed).then(|| leader.to_owned());
    }
    for (name, report) in reports {
        let Some(member) = next.member_mut(name) else {
            continue;
        };
        let Some(report) = report else {
            member.wal_position = None;
            continue;
        };
        member.role = report.role;
        member.state.clone_from(&report.state);
        member.wal_position = report.wal_position;
        if report.role == Role::Primary && report.state == "running" {
            next.leader_optime = next.leader_optime.max(report.wal_position);
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Member;

    fn member(name: &str, role: Role, pos: u64, api_url: Option<String>) -> Member {
        Member {
            name: name.into(),
            addr: "127.0.0.1:5432".into(),
            role,
            state: "running".into(),
            wal_position: Some(pos),
            noloadbalance: false,
            tags: Default::default(),
            timeline: Some(1),
            api_url,
        }
    }

    fn report(ok: bool, role: Role, pos: u64) -> Option<Report> {
        Some(Report {
            ok,
            role,
            state: "running".into(),
            wal_position: Some(pos),
            replay_paused: None,
        })
    }

    /// pg0 led when etcd went; pg1 and pg2 were replicas at 1000 and 900.
    fn view_at_loss() -> Topology {
        let mut t = Topology::empty("demo");
        t.synced = true;
        t.leader = Some("pg0".into());
        t.leader_optime = Some(1000);
        for m in [
            member("pg0", Role::Primary, 1000, None),
            member("pg1", Role::Replica, 1000, None),
            member("pg2", Role::Replica, 900, None),
        ] {
            t.members.insert(m.name.clone(), m.into());
        }
        t
    }

    fn readers(t: &Topology, max_lag: u64) -> Vec<&str> {
        // Replicas within max_lag of the leader by the positions the view holds.
        t.members
            .values()
            .filter(|m| m.role == Role::Replica && t.lag(m).is_some_and(|l| l <= max_lag))
            .map(|m| m.name.as_str())
            .collect()
    }

    #[test]
    fn replica_lag_follows_the_reports() {
        let view = view_at_loss();
        assert_eq!(readers(&view, 500), ["pg1", "pg2"]);
        // The leader writes on; pg2 stops replaying; nobody can tell from etcd.
        let reports = BTreeMap::from([
            ("pg0".to_owned(), report(true, Role::Primary, 5000)),
            ("pg1".to_owned(), report(true, Role::Replica, 4900)),
            ("pg2".to_owned(), report(true, Role::Replica, 900)),
        ]);
        let next = refreshed(&view, Some("pg0"), true, &reports);
        assert_eq!(next.leader.as_deref(), Some("pg0"));
        assert_eq!(next.leader_optime, Some(5000));
        assert_eq!(readers(&next, 500), ["pg1"]);
        // Caught up again.
        let reports = BTreeMap::from([
            ("pg0".to_owned(), report(true, Role::Primary, 5000)),
            ("pg1".to_owned(), report(true, Role::Replica, 5000)),
            ("pg2".to_owned(), report(true, Role::Replica, 4800)),
        ]);
        assert_eq!(
            readers(&refreshed(&next, Some("pg0"), true, &reports), 500),
            ["pg1", "pg2"]
        );
    }

    #[test]
    fn a_silent_member_serves_no_reads_and_lag_outlives_the_leader() {
        let view = view_at_loss();
        let reports = BTreeMap::from([
            ("pg0".to_owned(), report(true, Role::Primary, 8000)),
            ("pg1".to_owned(), None),
            ("pg2".to_owned(), report(true, Role::Replica, 7900)),
        ]);
        let next = refreshed(&view, Some("pg0"), true, &reports);
        assert_eq!(readers(&next, 500), ["pg2"]);
        // The leader stops confirming (and demotes itself): it leaves the view, the position it
        // reached stays the measure, and as a running replica it may serve reads.
        let reports = BTreeMap::from([
            ("pg0".to_owned(), report(false, Role::Replica, 8000)),
            ("pg1".to_owned(), report(true, Role::Replica, 2000)),
            ("pg2".to_owned(), report(true, Role::Replica, 7900)),
        ]);
        let next = refreshed(&next, Some("pg0"), false, &reports);
        assert_eq!(next.leader, None);
        assert_eq!(next.unconfirmed_leader.as_deref(), Some("pg0"));
        assert_eq!(next.leader_optime, Some(8000));
        assert_eq!(readers(&next, 500), ["pg0", "pg2"]);
        assert!(next.writable_leader().is_none());
    }

    #[test]
    fn a_member_promoted_unseen_measures_lag_and_serves_no_reads() {
        // A switchover pgrouter could not see: pg1 now runs as primary, pg0 follows it.
        let reports = BTreeMap::from([
            ("pg0".to_owned(), report(false, Role::Replica, 3000)),
            ("pg1".to_owned(), report(true, Role::Primary, 9000)),
            ("pg2".to_owned(), report(true, Role::Replica, 8800)),
        ]);
        let next = refreshed(&view_at_loss(), Some("pg0"), false, &reports);
        assert_eq!(next.leader, None);
        assert_eq!(next.leader_optime, Some(9000));
        assert_eq!(readers(&next, 500), ["pg2"]);
    }

    /// Members whose REST API cannot be asked are left out (their keys stay the view); the
    /// leader among them goes unconfirmed.
    #[tokio::test]
    async fn members_without_a_rest_api_to_ask_keep_their_keys() {
        let members = vec![
            (
                "pg0".to_owned(),
                Some("https://10.0.0.1:8008/patroni".to_owned()),
            ),
            ("pg1".to_owned(), None),
        ];
        let reports = ask_all(&RestClient::default(), members, Some("pg0")).await;
        assert!(reports.is_empty());
        let view = view_at_loss();
        let next = refreshed(&view, Some("pg0"), false, &reports);
        assert_eq!(next.leader, None);
        assert_eq!(next.members, view.members);
        assert_eq!(readers(&next, 500), ["pg1", "pg2"]);
    }

    /// A fake Patroni REST socket answers the leader's `/primary` with each status in turn;
    /// the guard keeps, drops and restores the leader accordingly.
    #[tokio::test]
    async fn guard_follows_the_lost_leaders_own_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 128];
                let n = s.read(&mut request).await.unwrap();
                assert!(request[..n].starts_with(b"GET /primary HTTP/1.0\r\n"));
                let body = r#"{"state": "running", "role": "master", "xlog": {"location": 1000}}"#;
                let answer = format!("HTTP/1.0 {status}\r\n\r\n{body}");
                s.write_all(answer.as_bytes()).await.unwrap();
                drop(s);
                answered_tx.send(status).unwrap();
            }
        });
        let leader = member(
            "pg0",
            Role::Primary,
            1000,
            Some(format!("http://{addr}/patroni")),
        );
        // As reported, so only the leader's coming and going changes the view.
        let mut topology = Topology::empty("demo");
        topology.leader = Some("pg0".into());
        topology.leader_optime = Some(1000);
        topology.members.insert("pg0".into(), leader.into());
        let (tx, mut rx) = watch::channel(Arc::new(topology));
        let guard = tokio::spawn(async move {
            guard("demo", &RestClient::default(), &tx, Some("pg0".into())).await
        });
        let mut seen = Vec::new();
        for _ in 0..3 {
            let status = answered.recv().await.unwrap();
            if status.starts_with("503") || seen.last() == Some(&None) {
                rx.changed().await.unwrap();
            }
            let t = rx.borrow_and_update().clone();
            assert!(t.members.contains_key("pg0"));
            seen.push(t.leader.clone());
        }
        guard.abort();
        assert_eq!(seen, [Some("pg0".to_owned()), None, Some("pg0".to_owned())]);
    }
}
