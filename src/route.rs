//! Routing rules: which member a new client goes to, and when a session's member stops being valid.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{ReplicaFallback, RoutingConfig};
use crate::topology::{Member, Role, Topology};

/// The two listening ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// :5000, writes, the leader only.
    Primary,
    /// :5001, reads, round-robin over eligible replicas.
    Replicas,
}

impl Port {
    pub const ALL: [Port; 2] = [Port::Primary, Port::Replicas];

    /// The name used in config keys, metric labels and the admin API.
    pub fn label(self) -> &'static str {
        match self {
            Port::Primary => "primary",
            Port::Replicas => "replicas",
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What a session is attached to, which decides when it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The holder of the leader key (from :5000, or :5001 by fallback).
    Leader,
    /// An eligible replica.
    Replica,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub member: Member,
    pub target: Target,
}

/// What a topology change means for a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// The member lost the leader key: relay nothing more from it.
    CloseNow(String),
    /// The replica left the eligible set: close at the next idle point.
    Drain(String),
}

/// The routing rules, applied with the routing settings in force (they may change on reload);
/// the only state is the round-robin counter of the replica port.
#[derive(Default)]
pub struct Router {
    next_replica: AtomicUsize,
}

impl Router {
    /// The member for a new client on `port`, or why there is none (to wait on, then report).
    pub fn pick(
        &self,
        routing: &RoutingConfig,
        topology: &Topology,
        port: Port,
    ) -> Result<Route, String> {
        let turn = match port {
            Port::Primary => 0,
            Port::Replicas => self.next_replica.fetch_add(1, Ordering::Relaxed),
        };
        choose(routing, topology, port, turn)
    }

    /// The member a new client on `port` would get now, without taking a round-robin turn.
    pub fn available(
        &self,
        routing: &RoutingConfig,
        topology: &Topology,
        port: Port,
    ) -> Result<String, String> {
        let turn = self.next_replica.load(Ordering::Relaxed);
        choose(routing, topology, port, turn).map(|route| route.member.name)
    }

    /// Whether a session on `route` may go on under `topology`.
    pub fn check(&self, routing: &RoutingConfig, topology: &Topology, route: &Route) -> Verdict {
        self.check_member(routing, topology, &route.member.name, route.target)
    }

    /// Whether member `name` may go on serving as `target` under `topology`: for a session
    /// routed there ([`Router::check`]) and for the idle connections of a pool.
    pub fn check_member(
        &self,
        routing: &RoutingConfig,
        topology: &Topology,
        name: &str,
        target: Target,
    ) -> Verdict {
        match target {
            Target::Leader if topology.holds_leader_key(name) => Verdict::Keep,
            Target::Leader => Verdict::CloseNow(match &topology.leader {
                Some(new) => format!("member \"{name}\" lost the leader key to \"{new}\""),
                None if topology.unconfirmed_leader.as_deref() == Some(name) => format!(
                    "etcd is unreachable and member \"{name}\" no longer confirms it is the primary"
                ),
                None => format!("member \"{name}\" lost the leader key; no new leader yet"),
            }),
            Target::Replica => match topology.members.get(name) {
                None => Verdict::Drain(format!("replica \"{name}\" left the cluster")),
                Some(m) => match topology.replica_eligibility(m, routing.max_replica_lag.0) {
                    Ok(()) => Verdict::Keep,
                    Err(why) => {
                        Verdict::Drain(format!("replica \"{name}\" is no longer eligible: {why}"))
                    }
                },
            },
        }
    }

    /// Whether a new client on this port should wait for the topology to change rather than be
    /// refused at once: always on :5000; on :5001 only until the first view or with fallback.
    pub fn holds(&self, routing: &RoutingConfig, topology: &Topology, port: Port) -> bool {
        port == Port::Primary
            || !topology.synced
            || routing.replica_fallback == ReplicaFallback::Primary
    }
}

/// The member for a new client on `port` at round-robin `turn`, or why there is none.
fn choose(
    routing: &RoutingConfig,
    topology: &Topology,
    port: Port,
    turn: usize,
) -> Result<Route, String> {
    if !topology.synced {
        return Err("no view of the cluster from etcd yet".to_owned());
    }
    let leader = || {
        topology.writable_leader().cloned().map(|member| Route {
            member,
            target: Target::Leader,
        })
    };
    match port {
        Port::Primary => leader().ok_or_else(|| no_leader_reason(topology)),
        Port::Replicas => {
            if let Some(m) = topology.pick_replica(routing.max_replica_lag.0, turn) {
                return Ok(Route {
                    member: m.clone(),
                    target: Target::Replica,
                });
            }
            let why = no_replica_reason(routing, topology);
            match routing.replica_fallback {
                ReplicaFallback::Primary => {
                    leader().ok_or_else(|| format!("{why}, and {}", no_leader_reason(topology)))
                }
                ReplicaFallback::Reject => Err(why),
            }
        }
    }
}

fn no_replica_reason(routing: &RoutingConfig, topology: &Topology) -> String {
    let max_lag = routing.max_replica_lag.0;
    let reasons: Vec<String> = topology
        .members
        .values()
        .filter(|m| !topology.holds_leader_key(&m.name))
        .filter_map(|m| {
            let why = topology.replica_eligibility(m, max_lag).err()?;
            Some(format!("\"{}\" {why}", m.name))
        })
        .collect();
    if reasons.is_empty() {
        "no replica members".to_owned()
    } else {
        format!("no eligible replica ({})", reasons.join("; "))
    }
}

fn no_leader_reason(topology: &Topology) -> String {
    if let (None, Some(last)) = (&topology.leader, &topology.unconfirmed_leader) {
        return format!(
            "etcd is unreachable and the last leader \"{last}\" does not confirm it is the primary"
        );
    }
    let Some(name) = topology.leader.as_deref() else {
        return "no member holds the leader key".to_owned();
    };
    let Some(member) = topology.members.get(name) else {
        return format!("leader key names \"{name}\", which has no member key");
    };
    if member.role != Role::Primary {
        return format!("\"{name}\" holds the leader key but is not primary yet (still promoting)");
    }
    match &topology.failover {
        Some(f) => format!(
            "switchover from \"{name}\" to \"{}\" in progress",
            f.to.as_deref().unwrap_or("any member")
        ),
        None => format!("\"{name}\" is not writable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Failover;
    use crate::units::ByteSize;

    fn member(name: &str, role: Role, pos: u64) -> Member {
        Member {
            name: name.into(),
            addr: format!("127.0.0.1:{}", 15410 + name[2..].parse::<u16>().unwrap()),
            role,
            state: "running".into(),
            wal_position: Some(pos),
            noloadbalance: false,
            timeline: Some(1),
            api_url: Some("http://127.0.0.1:8008/patroni".into()),
        }
    }

    fn cluster() -> Topology {
        let mut t = Topology::empty("demo");
        t.synced = true;
        t.leader = Some("pg0".into());
        for m in [
            member("pg0", Role::Primary, 1000),
            member("pg1", Role::Replica, 1000),
            member("pg2", Role::Replica, 1000),
        ] {
            t.members.insert(m.name.clone(), m);
        }
        t
    }

    fn routing(fallback: ReplicaFallback) -> RoutingConfig {
        RoutingConfig {
            max_replica_lag: ByteSize(100),
            replica_fallback: fallback,
            ..RoutingConfig::default()
        }
    }

    #[test]
    fn primary_port_goes_to_the_leader_only() {
        let (r, p) = (Router::default(), routing(ReplicaFallback::Primary));
        let mut t = cluster();
        let route = r.pick(&p, &t, Port::Primary).unwrap();
        assert_eq!(
            (route.member.name.as_str(), route.target),
            ("pg0", Target::Leader)
        );
        t.leader = None;
        t.unconfirmed_leader = Some("pg0".into());
        assert_eq!(
            r.pick(&p, &t, Port::Primary).unwrap_err(),
            "etcd is unreachable and the last leader \"pg0\" does not confirm it is the primary"
        );
        t.unconfirmed_leader = None;
        assert_eq!(
            r.pick(&p, &t, Port::Primary).unwrap_err(),
            "no member holds the leader key"
        );
        t.leader = Some("pg1".into());
        let e = r.pick(&p, &t, Port::Primary).unwrap_err();
        assert!(
            e.contains("\"pg1\" holds the leader key but is not primary yet"),
            "{e}"
        );
        t.leader = Some("pg0".into());
        t.failover = Some(Failover {
            from: Some("pg0".into()),
            to: Some("pg2".into()),
            scheduled_at: None,
        });
        let e = r.pick(&p, &t, Port::Primary).unwrap_err();
        assert_eq!(e, "switchover from \"pg0\" to \"pg2\" in progress");
        assert!(r.pick(&p, &Topology::empty("demo"), Port::Primary).is_err());
    }

    #[test]
    fn replica_port_round_robins_then_falls_back() {
        let (r, p) = (Router::default(), routing(ReplicaFallback::Primary));
        let mut t = cluster();
        let picks: Vec<String> = (0..4)
            .map(|_| r.pick(&p, &t, Port::Replicas).unwrap().member.name)
            .collect();
        assert_eq!(picks, ["pg1", "pg2", "pg1", "pg2"]);
        t.members.get_mut("pg1").unwrap().wal_position = Some(10);
        t.members.get_mut("pg2").unwrap().noloadbalance = true;
        let route = r.pick(&p, &t, Port::Replicas).unwrap();
        assert_eq!(
            (route.member.name.as_str(), route.target),
            ("pg0", Target::Leader)
        );
        let reject = routing(ReplicaFallback::Reject);
        let e = r.pick(&reject, &t, Port::Replicas).unwrap_err();
        assert_eq!(
            e,
            "no eligible replica (\"pg1\" lagging 990 bytes; \"pg2\" tagged noloadbalance)"
        );
        assert!(!r.holds(&reject, &t, Port::Replicas));
        assert!(r.holds(&reject, &t, Port::Primary));
    }

    #[test]
    fn sessions_end_when_their_member_loses_its_role() {
        let (r, p) = (Router::default(), routing(ReplicaFallback::Primary));
        let t = cluster();
        let leader = r.pick(&p, &t, Port::Primary).unwrap();
        let replica = r.pick(&p, &t, Port::Replicas).unwrap();
        assert_eq!(r.check(&p, &t, &leader), Verdict::Keep);
        assert_eq!(r.check(&p, &t, &replica), Verdict::Keep);

        // Switchover announced: the old leader still holds the key, its sessions go on.
        let mut announced = t.clone();
        announced.failover = Some(Failover {
            from: None,
            to: None,
            scheduled_at: None,
        });
        assert_eq!(r.check(&p, &announced, &leader), Verdict::Keep);

        // Key released or expired: close at once, whatever the member key says.
        let mut released = t.clone();
        released.leader = None;
        assert_eq!(
            r.check(&p, &released, &leader),
            Verdict::CloseNow("member \"pg0\" lost the leader key; no new leader yet".into())
        );
        // etcd lost and the leader's Patroni stopped confirming: closed, and the message says so.
        released.unconfirmed_leader = Some("pg0".into());
        assert!(
            matches!(r.check(&p, &released, &leader), Verdict::CloseNow(m) if m.contains("no longer confirms"))
        );
        // The replica that took the key is drained from the read port.
        let mut promoted = t.clone();
        promoted.leader = Some(replica.member.name.clone());
        assert!(
            matches!(r.check(&p, &promoted, &leader), Verdict::CloseNow(m) if m.contains("to \"pg1\""))
        );
        assert!(
            matches!(r.check(&p, &promoted, &replica), Verdict::Drain(m) if m.contains("holds the leader key"))
        );
        let mut gone = t.clone();
        gone.members.remove("pg1");
        assert!(
            matches!(r.check(&p, &gone, &replica), Verdict::Drain(m) if m.contains("left the cluster"))
        );
    }
}
