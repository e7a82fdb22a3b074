//! Lag measured like with like: every `routing.lag_check_interval` the leader's and each
//! replica's Patroni REST API (`GET /patroni`) are asked at the same moment, and a replica's
//! replay position is compared with the leader's position of that moment. (Patroni's etcd keys
//! are written every `loop_wait` by each member on its own clock; comparing them read 17-36 MB
//! of lag under a write burst on replicas that were streaming in step.)
//!
//! Delay is measured on pgrouter's clock: how long ago the leader was first seen at a position
//! the replica has not replayed. An idle leader adds none, however old the last commit is.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::dcs::rest::{Report, RestClient};
use crate::topology::Topology;
use crate::topology::{LagSample, LagSource};

/// Leader positions kept for delays: about an hour at one check a second.
const HISTORY: usize = 4096;

/// The leader's positions as checks saw them rise, for delays.
#[derive(Default)]
pub struct Probe {
    leader: Option<String>,
    /// (first seen, position), positions rising.
    history: VecDeque<(Instant, u64)>,
}

impl Probe {
    /// Asks every member's Patroni at once; the measurements of the replicas, or None when
    /// there is no leader to measure against (a switchover, etcd lost): verdicts then wait.
    pub async fn check(
        &mut self,
        topology: &Topology,
        rest: &RestClient,
        timeout: Duration,
    ) -> Option<BTreeMap<String, LagSample>> {
        let leader = topology.leader.clone()?;
        let mut asks = JoinSet::new();
        for m in topology.members.values() {
            let Some(url) = m.api_url.clone() else {
                continue;
            };
            let name = m.name.clone();
            let rest = rest.clone();
            asks.spawn(async move { (name, rest.ask(&url, "/patroni", timeout).await) });
        }
        let mut reports = BTreeMap::new();
        while let Some(done) = asks.join_next().await {
            if let Ok((name, report)) = done {
                reports.insert(name, report);
            }
        }
        Some(self.measure(topology, &leader, &reports, Instant::now()))
    }

    /// The replicas' lag from one round of answers (None where a member did not answer).
    pub fn measure(
        &mut self,
        topology: &Topology,
        leader: &str,
        reports: &BTreeMap<String, Option<Report>>,
        now: Instant,
    ) -> BTreeMap<String, LagSample> {
        if self.leader.as_deref() != Some(leader) {
            self.leader = Some(leader.to_owned());
            self.history.clear();
        }
        let from_api = reports
            .get(leader)
            .and_then(Option::as_ref)
            .filter(|r| r.role == crate::topology::Role::Primary)
            .and_then(|r| r.wal_position);
        // Without the leader's answer, its etcd position: older, so lag reads low.
        let etcd_leader = topology
            .members
            .get(leader)
            .and_then(|m| m.wal_position)
            .max(topology.leader_optime);
        let leader_pos = from_api.or(etcd_leader);
        if let Some(pos) = from_api {
            self.seen(pos, now);
        }
        let mut samples = BTreeMap::new();
        for m in topology.members.values().filter(|m| m.name != leader) {
            let answer = reports
                .get(&m.name)
                .and_then(Option::as_ref)
                .filter(|r| r.role != crate::topology::Role::Primary);
            let sample = match (answer.and_then(|r| r.wal_position), leader_pos) {
                (Some(replayed), Some(at)) => LagSample {
                    bytes: Some(at.saturating_sub(replayed)),
                    delay: from_api.map(|_| self.delay(replayed, now)),
                    source: LagSource::PatroniApi,
                    paused: answer.and_then(|r| r.replay_paused),
                },
                _ => LagSample {
                    bytes: topology.lag(m),
                    delay: None,
                    source: LagSource::Etcd,
                    paused: None,
                },
            };
            samples.insert(m.name.clone(), sample);
        }
        samples
    }

    fn seen(&mut self, pos: u64, now: Instant) {
        if self.history.back().is_none_or(|(_, last)| pos > *last) {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back((now, pos));
        }
    }

    /// How long ago the leader was first seen past `replayed`; 0 when it never was.
    fn delay(&self, replayed: u64, now: Instant) -> Duration {
        self.history
            .iter()
            .find(|(_, pos)| *pos > replayed)
            .map_or(Duration::ZERO, |(at, _)| now.duration_since(*at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::tests::member;
    use crate::topology::Role;

    fn report(role: Role, pos: u64, paused: Option<bool>) -> Option<Report> {
        Some(Report {
            ok: true,
            role,
            state: "running".into(),
            wal_position: Some(pos),
            replay_paused: paused,
        })
    }

    fn cluster() -> Topology {
        let mut t = Topology::empty("demo");
        t.leader = Some("pg0".into());
        // etcd keys written at different moments: the leader's is far ahead.
        t.leader_optime = Some(900);
        for m in [
            member("pg0", Role::Primary, "running", Some(900)),
            member("pg1", Role::Replica, "running", Some(100)),
            member("pg2", Role::Replica, "running", Some(100)),
        ] {
            t.members.insert(m.name.clone(), m.into());
        }
        t
    }

    #[test]
    fn positions_of_one_moment_are_compared() {
        let t = cluster();
        let mut probe = Probe::default();
        let start = Instant::now();
        let reports = BTreeMap::from([
            ("pg0".to_owned(), report(Role::Primary, 1000, None)),
            ("pg1".to_owned(), report(Role::Replica, 1000, Some(false))),
            ("pg2".to_owned(), None),
        ]);
        let s = probe.measure(&t, "pg0", &reports, start);
        assert_eq!(s["pg1"].bytes, Some(0));
        assert_eq!(s["pg1"].delay, Some(Duration::ZERO));
        assert_eq!(s["pg1"].source, LagSource::PatroniApi);
        // pg2's API is silent: its etcd key against the leader's, as before.
        assert_eq!(s["pg2"].bytes, Some(800));
        assert_eq!((s["pg2"].source, s["pg2"].delay), (LagSource::Etcd, None));
        assert!(!s.contains_key("pg0"));
    }

    #[test]
    fn delay_is_how_long_ago_the_leader_passed_the_replay_position() {
        let t = cluster();
        let mut probe = Probe::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let round = |leader, pg1: u64| {
            BTreeMap::from([
                ("pg0".to_owned(), report(Role::Primary, leader, None)),
                ("pg1".to_owned(), report(Role::Replica, pg1, Some(true))),
            ])
        };
        probe.measure(&t, "pg0", &round(1000, 1000), at(0));
        probe.measure(&t, "pg0", &round(1500, 1000), at(1000));
        probe.measure(&t, "pg0", &round(1500, 1000), at(2000));
        let s = probe.measure(&t, "pg0", &round(2000, 1000), at(3000));
        assert_eq!(
            s["pg1"].delay,
            Some(Duration::from_secs(2)),
            "1500 was seen at 1 s"
        );
        assert_eq!(s["pg1"].bytes, Some(1000));
        assert_eq!(s["pg1"].paused, Some(true));
        // Caught up with an idle leader: no delay, however long since the last write.
        let s = probe.measure(&t, "pg0", &round(2000, 2000), at(60_000));
        assert_eq!(s["pg1"].delay, Some(Duration::ZERO));
        // A new leader starts a new history.
        let mut moved = t.clone();
        moved.leader = Some("pg2".into());
        let s = probe.measure(&moved, "pg2", &BTreeMap::new(), at(61_000));
        assert_eq!(s["pg1"].source, LagSource::Etcd);
        assert!(probe.history.is_empty());
    }
}
