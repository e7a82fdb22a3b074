//! The cluster as pgrouter sees it: who holds the leader key, the members, and who may serve reads.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

pub mod standing;

pub use standing::{bytes_text, LagSample, LagSource, ReadSets};

/// A snapshot of one Patroni cluster, rebuilt from etcd on every change and shared read-only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Patroni scope, for messages.
    pub scope: String,
    /// False until the first full read of the cluster's keys from etcd.
    pub synced: bool,
    /// The member named by the `leader` key: the only one that may take writes.
    pub leader: Option<String>,
    /// Shared: a session's route holds its member's `Arc`, not a copy of its strings and tags.
    pub members: BTreeMap<String, Arc<Member>>,
    /// The `failover` key: a switchover announced away from `from` (or from whoever leads, if None).
    pub failover: Option<Failover>,
    /// `status.optime` (or the old `optime/leader` key): the leader's last WAL position.
    pub leader_optime: Option<u64>,
    /// The leader key's holder, once its Patroni REST API said it finished promotion, before its
    /// member key caught up. Set only while that member holds the key.
    pub confirmed_primary: Option<String>,
    /// The leader named by the first read after etcd was lost: its member key may predate the
    /// outage (Patroni may have demoted it meanwhile), so it takes writes only once its REST API
    /// confirms it (`confirmed_primary`).
    pub unverified_leader: Option<String>,
    /// While etcd is lost: the last leader, taken out because its Patroni stopped confirming
    /// that it is the primary. For messages only.
    pub unconfirmed_leader: Option<String>,
    /// The members Patroni's `sync` key names synchronous standbys of the current leader,
    /// while the cluster's config has `synchronous_mode` on.
    pub sync_standbys: BTreeSet<String>,
    /// Which members serve each listener now (`standing`); empty until first judged.
    pub reads: ReadSets,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    pub from: Option<String>,
    pub to: Option<String>,
    pub scheduled_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    /// `host:port` from the member's `conn_url`.
    pub addr: String,
    pub role: Role,
    /// Patroni's state: running, streaming, starting, stopped, ...
    pub state: String,
    /// Replay position where Patroni reports it (4.x `replay_lsn`), else `xlog_location`.
    pub wal_position: Option<u64>,
    pub noloadbalance: bool,
    /// Patroni tags as text, the way its `?tag_key=value` compares them.
    pub tags: BTreeMap<String, String>,
    pub timeline: Option<u64>,
    /// Patroni REST API, e.g. "http://127.0.0.1:8008/patroni".
    pub api_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `master` (Patroni 3.0) or `primary` (later).
    Primary,
    Replica,
    StandbyLeader,
    Other,
}

impl Role {
    pub fn from_patroni(role: &str) -> Role {
        match role {
            "master" | "primary" => Role::Primary,
            "replica" => Role::Replica,
            "standby_leader" => Role::StandbyLeader,
            _ => Role::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Other => "other",
        }
    }
}

/// Why a member does not serve a listener's reads; shown in logs, status and errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    IsLeader,
    NotReplica,
    NotRunning,
    NoLoadBalance,
    /// The listener's tag filter: which tag does not match.
    Tag(String),
    NotSynchronous,
    Synchronous,
    /// Over the listener's lag bounds (or of unknown lag) long enough: the measurement.
    Lag(String),
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::IsLeader => f.write_str("holds the leader key"),
            Ineligible::NotReplica => f.write_str("role is not replica"),
            Ineligible::NotRunning => f.write_str("not running or streaming"),
            Ineligible::NoLoadBalance => f.write_str("tagged noloadbalance"),
            Ineligible::Tag(why) => f.write_str(why),
            Ineligible::NotSynchronous => f.write_str("not a synchronous standby"),
            Ineligible::Synchronous => f.write_str("a synchronous standby"),
            Ineligible::Lag(why) => f.write_str(why),
        }
    }
}

impl Topology {
    pub fn empty(scope: &str) -> Topology {
        Topology {
            scope: scope.to_owned(),
            ..Topology::default()
        }
    }

    /// Member `name` to change, copied first if a route still shares it (the routes keep the
    /// member they were made with).
    pub fn member_mut(&mut self, name: &str) -> Option<&mut Member> {
        self.members.get_mut(name).map(Arc::make_mut)
    }

    /// The member that takes writes now, if any. It must hold the leader key, have finished
    /// promotion (its member key says master/primary, or its REST API confirmed it), and no
    /// switchover away from it may be announced: new writers wait for the new leader instead
    /// of racing the demotion.
    pub fn writable_leader(&self) -> Option<&Arc<Member>> {
        let name = self.leader.as_deref()?;
        let member = self.members.get(name)?;
        let switching_away = self
            .failover
            .as_ref()
            .is_some_and(|f| f.moves_away_from(name));
        let promoted = self.confirmed_primary.as_deref() == Some(name)
            || (member.role == Role::Primary && !self.is_unverified(name));
        (promoted && !switching_away).then_some(member)
    }

    /// True while `name` still holds the leader key: the check sessions on the leader must pass
    /// to keep relaying. Only the key decides; a member that lost it is never trusted again.
    pub fn holds_leader_key(&self, name: &str) -> bool {
        self.leader.as_deref() == Some(name)
    }

    /// The leader key's holder while it is still promoting and not yet confirmed: the member
    /// whose REST API the DCS watcher asks whether promotion is done.
    pub fn promoting_leader(&self) -> Option<&Member> {
        let member = self.members.get(self.leader.as_deref()?)?;
        let confirmed = self.confirmed_primary.as_deref() == Some(member.name.as_str());
        let unproven = member.role != Role::Primary || self.is_unverified(&member.name);
        (unproven && !confirmed && member.api_url.is_some()).then_some(member)
    }

    fn is_unverified(&self, name: &str) -> bool {
        self.unverified_leader.as_deref() == Some(name)
    }

    /// Bytes the member's replay position is behind the leader's WAL position.
    pub fn lag(&self, member: &Member) -> Option<u64> {
        let leader_pos = self
            .leader
            .as_deref()
            .and_then(|l| self.members.get(l))
            .and_then(|l| l.wal_position)
            .max(self.leader_optime)?;
        Some(leader_pos.saturating_sub(member.wal_position?))
    }
}

impl Failover {
    /// A `failover` key with `scheduled_at` waits for its time; without it the switchover is
    /// being carried out now.
    pub fn is_imminent(&self) -> bool {
        self.scheduled_at.is_none()
    }

    /// Whether this failover is about to take the leadership away from `leader`: a switchover
    /// names the leader it leaves; a failover names only the member it goes to.
    pub fn moves_away_from(&self, leader: &str) -> bool {
        self.is_imminent()
            && match (&self.from, &self.to) {
                (Some(from), _) => from == leader,
                (None, Some(to)) => to != leader,
                (None, None) => false,
            }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A member for tests: on 127.0.0.1:5432, timeline 1, with a REST API.
    pub(crate) fn member(name: &str, role: Role, state: &str, pos: Option<u64>) -> Member {
        Member {
            name: name.to_owned(),
            addr: format!("127.0.0.1:{}", 5432),
            role,
            state: state.to_owned(),
            wal_position: pos,
            noloadbalance: false,
            tags: BTreeMap::new(),
            timeline: Some(1),
            api_url: Some("http://127.0.0.1:8008/patroni".into()),
        }
    }

    fn cluster() -> Topology {
        let mut t = Topology::empty("demo");
        t.synced = true;
        t.leader = Some("pg0".into());
        for m in [
            member("pg0", Role::Primary, "running", Some(100_000)),
            member("pg1", Role::Replica, "streaming", Some(100_000)),
            member("pg2", Role::Replica, "running", Some(90_000)),
        ] {
            t.members.insert(m.name.clone(), m.into());
        }
        t
    }

    #[test]
    fn lag_is_leader_position_minus_replica_position() {
        let mut t = cluster();
        assert_eq!(t.lag(&t.members["pg2"]), Some(10_000));
        // status.optime ahead of the leader's member key counts.
        t.leader_optime = Some(150_000);
        assert_eq!(t.lag(&t.members["pg2"]), Some(60_000));
        // A replica ahead of a stale leader position has no lag, not a negative one.
        t.leader_optime = None;
        t.member_mut("pg2").unwrap().wal_position = Some(200_000);
        assert_eq!(t.lag(&t.members["pg2"]), Some(0));
        // No leader position known: lag unknown.
        t.leader = None;
        assert_eq!(t.lag(&t.members["pg2"]), None);
    }

    #[test]
    fn a_replica_still_holding_the_key_is_not_a_reader() {
        // Just promoted: the member key may still say replica while it holds the leader key.
        let mut t = cluster();
        t.leader = Some("pg1".into());
        assert!(
            t.writable_leader().is_none(),
            "pg1 has not finished promotion"
        );
        assert!(t.holds_leader_key("pg1") && !t.holds_leader_key("pg0"));
    }

    #[test]
    fn a_promotion_confirmed_by_rest_makes_the_key_holder_writable() {
        let mut t = cluster();
        t.leader = Some("pg1".into());
        assert_eq!(t.promoting_leader().map(|m| m.name.as_str()), Some("pg1"));
        assert!(t.writable_leader().is_none());
        t.confirmed_primary = Some("pg1".into());
        assert!(t.promoting_leader().is_none());
        assert_eq!(t.writable_leader().map(|m| m.name.as_str()), Some("pg1"));
        // A confirmation is worth nothing to a member that does not hold the key.
        t.confirmed_primary = Some("pg2".into());
        assert!(t.writable_leader().is_none());
    }

    #[test]
    fn a_leader_read_after_etcd_returned_waits_for_its_rest_api() {
        // Its member key may say master from before the outage while Patroni demoted it.
        let mut t = cluster();
        let leader = t.leader.clone();
        assert!(t.writable_leader().is_some());
        t.unverified_leader = leader.clone();
        assert!(t.writable_leader().is_none());
        assert_eq!(t.promoting_leader().map(|m| &m.name), leader.as_ref());
        t.confirmed_primary = leader.clone();
        assert_eq!(t.writable_leader().map(|m| &m.name), leader.as_ref());
        assert!(t.promoting_leader().is_none());
    }

    #[test]
    fn writable_leader_needs_the_key_the_role_and_no_pending_switchover() {
        let mut t = cluster();
        assert_eq!(t.writable_leader().map(|m| m.name.as_str()), Some("pg0"));
        t.failover = Some(Failover {
            from: Some("pg0".into()),
            to: Some("pg1".into()),
            scheduled_at: None,
        });
        assert!(
            t.writable_leader().is_none(),
            "switchover away from pg0 announced"
        );
        // The new leader took the key while the failover key is still there: it is writable.
        t.leader = Some("pg1".into());
        t.member_mut("pg1").unwrap().role = Role::Primary;
        assert_eq!(t.writable_leader().map(|m| m.name.as_str()), Some("pg1"));
        // A failover naming only its candidate holds writers until the candidate leads.
        t.failover = Some(Failover {
            from: None,
            to: Some("pg1".into()),
            scheduled_at: None,
        });
        assert_eq!(t.writable_leader().map(|m| m.name.as_str()), Some("pg1"));
        t.leader = Some("pg0".into());
        assert!(t.writable_leader().is_none());
        // A scheduled switchover does not hold writers until its time comes.
        t.leader = Some("pg0".into());
        t.failover.as_mut().unwrap().scheduled_at = Some("2030-01-01T00:00:00+00:00".into());
        assert_eq!(t.writable_leader().map(|m| m.name.as_str()), Some("pg0"));
        t.leader = None;
        assert!(t.writable_leader().is_none());
    }
}
