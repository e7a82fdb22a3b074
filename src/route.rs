//! Routing rules: which member a new client goes to, and when a session's member stops being valid.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{Balance, Config, ReplicaFallback, Rules, Selector, MAX_LISTENERS};
use crate::topology::{Member, Role, Topology};

/// A client listener: primary (:5000), replicas (:5001), then `[listeners]` in name order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    index: u8,
    name: &'static str,
}

impl Port {
    /// :5000, writes, the leader only.
    pub const PRIMARY: Port = Port {
        index: 0,
        name: "primary",
    };
    /// :5001, reads, over the replicas that serve it.
    pub const REPLICAS: Port = Port {
        index: 1,
        name: "replicas",
    };

    /// Every client listener of `config`, numbered as `Config::client_listeners`. Called once
    /// at start: the set of listeners is fixed for the process (a reload may not change it),
    /// so the extra listeners' names are kept for good.
    pub fn all(config: &Config) -> Vec<Port> {
        config
            .client_listeners()
            .into_iter()
            .enumerate()
            .map(|(i, (name, _))| match i {
                0 => Port::PRIMARY,
                1 => Port::REPLICAS,
                i => Port {
                    index: i as u8,
                    name: Box::leak(name.to_owned().into_boxed_str()),
                },
            })
            .collect()
    }

    /// Its place among the listeners: `Config::rules(port.index())`.
    pub fn index(self) -> usize {
        usize::from(self.index)
    }

    /// The name used in config keys, metric labels and the admin API.
    pub fn label(self) -> &'static str {
        self.name
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// What a session is attached to, which decides when it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The holder of the leader key (from :5000, a read-only listener, or by fallback).
    Leader,
    /// A replica serving the session's listener.
    Replica,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub member: Arc<Member>,
    pub target: Target,
    pub port: Port,
    /// Counts the session on its member for least-connections while the route lives.
    _attached: Option<Arc<Attached>>,
}

impl Route {
    /// A route counted nowhere (tests, and routes made outside the router).
    pub fn new(member: Member, target: Target, port: Port) -> Route {
        Route {
            member: Arc::new(member),
            target,
            port,
            _attached: None,
        }
    }
}

/// One session counted on a member of a listener; uncounted when dropped.
#[derive(Debug)]
struct Attached(Arc<AtomicUsize>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a topology change means for a running session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// The member lost the leader key: relay nothing more from it.
    CloseNow(String),
    /// The replica left the listener's set: close at the next idle point.
    Drain(String),
}

/// The routing rules, applied with the settings in force (they may change on reload); the
/// only state is each listener's round-robin turn and its sessions per member.
pub struct Router {
    turns: [AtomicUsize; MAX_LISTENERS],
    sessions: Mutex<HashMap<(usize, String), Arc<AtomicUsize>>>,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            turns: std::array::from_fn(|_| AtomicUsize::new(0)),
            sessions: Mutex::default(),
        }
    }
}

impl Router {
    /// The member for a new client on `port`, or why there is none (to wait on, then report).
    pub fn pick(&self, config: &Config, topology: &Topology, port: Port) -> Result<Route, String> {
        let turn = self.turns[port.index()].fetch_add(1, Ordering::Relaxed);
        let (member, target) = self.choose(config, topology, port, turn)?;
        let count = self.counter(port, &member.name);
        count.fetch_add(1, Ordering::Relaxed);
        Ok(Route {
            member: member.clone(),
            target,
            port,
            _attached: Some(Arc::new(Attached(count))),
        })
    }

    /// The member a new client on `port` would get now, without taking a turn.
    pub fn available(
        &self,
        config: &Config,
        topology: &Topology,
        port: Port,
    ) -> Result<String, String> {
        let turn = self.turns[port.index()].load(Ordering::Relaxed);
        self.choose(config, topology, port, turn)
            .map(|(member, _)| member.name.clone())
    }

    /// Sessions of listener `port` routed to `member` now.
    pub fn sessions(&self, port: Port, member: &str) -> usize {
        self.lock()
            .get(&(port.index(), member.to_owned()))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn counter(&self, port: Port, member: &str) -> Arc<AtomicUsize> {
        self.lock()
            .entry((port.index(), member.to_owned()))
            .or_default()
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, String), Arc<AtomicUsize>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a session on `route` may go on under `topology`.
    pub fn check(&self, topology: &Topology, route: &Route) -> Verdict {
        check_member(topology, &route.member.name, route.target, Some(route.port))
    }

    /// Whether a new client on this port should wait for the topology to change rather than be
    /// refused at once: on primary listeners always; on the others only until the first view
    /// or when they fall back to the leader.
    pub fn holds(&self, config: &Config, topology: &Topology, port: Port) -> bool {
        let rules = config.rules(port.index());
        rules.role == Selector::Primary
            || !topology.synced
            || rules.fallback == ReplicaFallback::Primary
    }

    /// The member for a new client on `port` at `turn`, or why there is none.
    fn choose<'t>(
        &self,
        config: &Config,
        topology: &'t Topology,
        port: Port,
        turn: usize,
    ) -> Result<(&'t Arc<Member>, Target), String> {
        if !topology.synced {
            return Err("no view of the cluster yet".to_owned());
        }
        let leader = || {
            topology
                .writable_leader()
                .map(|m| (m, Target::Leader))
                .ok_or_else(|| no_leader_reason(topology))
        };
        let rules = config.rules(port.index());
        if rules.role == Selector::Primary {
            return leader();
        }
        let candidates: Vec<(&Arc<Member>, u32, bool)> = topology
            .reads
            .port(port.index())
            .filter(|(_, s)| s.serving)
            .filter_map(|(name, s)| {
                let m = topology.members.get(name)?;
                let weight = config.weight(name, &m.tags);
                (weight > 0).then_some((m, weight, s.as_leader))
            })
            .collect();
        let picked = match rules.balance {
            Balance::Roundrobin => weighted_turn(&candidates, turn),
            Balance::Leastconn => {
                let counts: Vec<usize> = candidates
                    .iter()
                    .map(|(m, _, _)| self.sessions(port, &m.name))
                    .collect();
                least_loaded(&candidates, &counts, turn)
            }
        };
        if let Some((m, _, as_leader)) = picked {
            let target = if as_leader {
                Target::Leader
            } else {
                Target::Replica
            };
            return Ok((m, target));
        }
        let why = no_replica_reason(&rules, topology, port);
        match rules.fallback {
            ReplicaFallback::Primary => {
                leader().map_err(|no_leader| format!("{why}, and {no_leader}"))
            }
            ReplicaFallback::Reject => Err(why),
        }
    }
}

/// Whether member `name` may go on serving as `target` under `topology`: for a session on
/// listener `port`, or (no port) for the idle connections of a pool, kept while the member
/// serves some listener.
pub fn check_member(
    topology: &Topology,
    name: &str,
    target: Target,
    port: Option<Port>,
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
        Target::Replica if !topology.members.contains_key(name) => {
            Verdict::Drain(format!("replica \"{name}\" left the cluster"))
        }
        Target::Replica => {
            let Some(port) = port else {
                return match topology.reads.serves_anywhere(name) {
                    true => Verdict::Keep,
                    false => Verdict::Drain(format!("replica \"{name}\" serves no listener")),
                };
            };
            match topology.reads.get(port.index(), name) {
                Some(s) if s.serving => Verdict::Keep,
                Some(s) => Verdict::Drain(format!(
                    "replica \"{name}\" no longer serves listener {port}: {}",
                    s.why.as_ref().map_or_else(String::new, ToString::to_string)
                )),
                // Not judged yet (the first view): nothing says it must go.
                None => Verdict::Keep,
            }
        }
    }
}

/// Round-robin where a member of weight w takes w turns of every round.
fn weighted_turn<'t>(
    candidates: &[(&'t Arc<Member>, u32, bool)],
    turn: usize,
) -> Option<(&'t Arc<Member>, u32, bool)> {
    let total: usize = candidates.iter().map(|c| c.1 as usize).sum();
    if total == 0 {
        return None;
    }
    let mut k = turn % total;
    for c in candidates {
        if k < c.1 as usize {
            return Some(*c);
        }
        k -= c.1 as usize;
    }
    None
}

/// The member with the fewest sessions for its weight; among equals, the next after `turn`.
fn least_loaded<'t>(
    candidates: &[(&'t Arc<Member>, u32, bool)],
    counts: &[usize],
    turn: usize,
) -> Option<(&'t Arc<Member>, u32, bool)> {
    let n = candidates.len();
    (0..n)
        .map(|k| (turn + k) % n)
        .min_by(|&a, &b| {
            // counts[a] / w[a] against counts[b] / w[b], without division.
            let left = counts[a] as u64 * u64::from(candidates[b].1);
            let right = counts[b] as u64 * u64::from(candidates[a].1);
            left.cmp(&right)
        })
        .map(|i| candidates[i])
}

fn no_replica_reason(rules: &Rules<'_>, topology: &Topology, port: Port) -> String {
    let reasons: Vec<String> = topology
        .reads
        .port(port.index())
        .filter(|(name, _)| !topology.holds_leader_key(name) || rules.role.admits_leader())
        .filter_map(|(name, s)| Some(format!("\"{name}\" {}", s.why.as_ref()?)))
        .collect();
    let what = match rules.role {
        Selector::Replica => "eligible replica".to_owned(),
        other => format!("member for role {}", other.label()),
    };
    if reasons.is_empty() {
        "no replica members".to_owned()
    } else {
        format!("no {what} ({})", reasons.join("; "))
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
    use crate::topology::standing::Judge;
    use crate::topology::Failover;
    use tokio::time::Instant;

    fn member(name: &str, role: Role, pos: u64) -> Member {
        let mut m = crate::topology::tests::member(name, role, "running", Some(pos));
        m.addr = format!("127.0.0.1:{}", 15410 + name[2..].parse::<u16>().unwrap());
        m
    }

    fn config(extra: &str) -> Config {
        Config::from_toml(&format!(
            "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:1\"]\n[routing]\nmax_replica_lag = \"100B\"\n{extra}"
        ))
        .unwrap()
    }

    /// pg0 leads; pg1 and pg2 replicas in step; read sets judged under `config`.
    fn cluster(config: &Config) -> Topology {
        let mut t = Topology::empty("demo");
        t.synced = true;
        t.leader = Some("pg0".into());
        for m in [
            member("pg0", Role::Primary, 1000),
            member("pg1", Role::Replica, 1000),
            member("pg2", Role::Replica, 1000),
        ] {
            t.members.insert(m.name.clone(), m.into());
        }
        judged(t, config)
    }

    fn judged(mut t: Topology, config: &Config) -> Topology {
        let ports = Port::all(config).len();
        let mut judge = Judge::default();
        judge.judge(&t, config, ports, Instant::now());
        t.reads = judge.sets().clone();
        t
    }

    fn picks(r: &Router, c: &Config, t: &Topology, port: Port, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| r.pick(c, t, port).unwrap().member.name.clone())
            .collect()
    }

    #[test]
    fn primary_port_goes_to_the_leader_only() {
        let (r, c) = (Router::default(), config(""));
        let mut t = cluster(&c);
        let route = r.pick(&c, &t, Port::PRIMARY).unwrap();
        assert_eq!(
            (route.member.name.as_str(), route.target),
            ("pg0", Target::Leader)
        );
        t.leader = None;
        t.unconfirmed_leader = Some("pg0".into());
        assert_eq!(
            r.pick(&c, &t, Port::PRIMARY).unwrap_err(),
            "etcd is unreachable and the last leader \"pg0\" does not confirm it is the primary"
        );
        t.unconfirmed_leader = None;
        assert_eq!(
            r.pick(&c, &t, Port::PRIMARY).unwrap_err(),
            "no member holds the leader key"
        );
        t.leader = Some("pg1".into());
        let e = r.pick(&c, &t, Port::PRIMARY).unwrap_err();
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
        let e = r.pick(&c, &t, Port::PRIMARY).unwrap_err();
        assert_eq!(e, "switchover from \"pg0\" to \"pg2\" in progress");
        assert!(r.pick(&c, &Topology::empty("demo"), Port::PRIMARY).is_err());
    }

    #[test]
    fn replica_port_round_robins_then_falls_back() {
        let (r, c) = (Router::default(), config(""));
        let t = cluster(&c);
        assert_eq!(
            picks(&r, &c, &t, Port::REPLICAS, 4),
            ["pg1", "pg2", "pg1", "pg2"]
        );
        let mut out = t.clone();
        out.member_mut("pg1").unwrap().wal_position = Some(10);
        out.member_mut("pg2").unwrap().noloadbalance = true;
        let out = judged(out, &c);
        let route = r.pick(&c, &out, Port::REPLICAS).unwrap();
        assert_eq!(
            (route.member.name.as_str(), route.target),
            ("pg0", Target::Leader)
        );
        let reject = config("replica_fallback = \"reject\"\n");
        let e = r.pick(&reject, &out, Port::REPLICAS).unwrap_err();
        assert_eq!(
            e,
            "no eligible replica (\"pg1\" replay 990 B behind the leader (max_replica_lag 100 B); \"pg2\" tagged noloadbalance)"
        );
        assert!(!r.holds(&reject, &out, Port::REPLICAS));
        assert!(r.holds(&reject, &out, Port::PRIMARY));
    }

    #[test]
    fn weights_share_the_turns_and_zero_takes_none() {
        let c = config("[routing.weights]\npg1 = 3\n");
        let (r, t) = (Router::default(), cluster(&c));
        let seen = picks(&r, &c, &t, Port::REPLICAS, 8);
        assert_eq!(seen.iter().filter(|m| *m == "pg1").count(), 6, "{seen:?}");
        let c = config("weight_tag = \"weight\"\n");
        let mut t = cluster(&c);
        t.member_mut("pg2")
            .unwrap()
            .tags
            .insert("weight".into(), "0".into());
        let seen = picks(&Router::default(), &c, &t, Port::REPLICAS, 4);
        assert_eq!(seen, ["pg1"; 4]);
    }

    #[test]
    fn least_connections_counts_live_sessions_per_listener() {
        let c = config("balance = \"leastconn\"\n");
        let (r, t) = (Router::default(), cluster(&c));
        let mut held: Vec<Route> = (0..4)
            .map(|_| r.pick(&c, &t, Port::REPLICAS).unwrap())
            .collect();
        assert_eq!(r.sessions(Port::REPLICAS, "pg1"), 2);
        assert_eq!(r.sessions(Port::REPLICAS, "pg2"), 2);
        // The sessions on pg1 end: the next two go there, not in turn.
        held.retain(|route| route.member.name != "pg1");
        assert_eq!(r.sessions(Port::REPLICAS, "pg1"), 0);
        assert_eq!(picks(&r, &c, &t, Port::REPLICAS, 1), ["pg1"]);
        let kept = r.pick(&c, &t, Port::REPLICAS).unwrap();
        assert_eq!(kept.member.name, "pg1");
        assert_eq!(
            r.sessions(Port::REPLICAS, "pg1"),
            1,
            "a dropped route uncounts itself"
        );
        // Another listener's sessions are its own.
        assert_eq!(r.sessions(Port::PRIMARY, "pg1"), 0);
        drop(held);
    }

    #[test]
    fn role_listeners_pick_their_members() {
        let c = config(
            "[listeners.ro]\nlisten = \"127.0.0.1:6000\"\nrole = \"read-only\"\n\
             [listeners.sync]\nlisten = \"127.0.0.1:6001\"\nrole = \"synchronous\"\n\
             [listeners.w]\nlisten = \"127.0.0.1:6002\"\nrole = \"primary\"\n",
        );
        let ports = Port::all(&c);
        let (ro, sync, w) = (ports[2], ports[3], ports[4]);
        assert_eq!((ro.label(), sync.label(), w.label()), ("ro", "sync", "w"));
        let r = Router::default();
        let mut t = cluster(&c);
        let seen = picks(&r, &c, &t, ro, 3);
        assert_eq!(seen, ["pg0", "pg1", "pg2"]);
        let on_leader = r.pick(&c, &t, ro).unwrap();
        assert_eq!(
            (on_leader.member.name.as_str(), on_leader.target),
            ("pg0", Target::Leader)
        );
        assert_eq!(picks(&r, &c, &t, w, 2), ["pg0", "pg0"]);
        let e = r.pick(&c, &t, sync).unwrap_err();
        assert!(
            e.starts_with("no member for role synchronous (\"pg1\" not a synchronous standby"),
            "{e}"
        );
        assert!(!r.holds(&c, &t, sync), "extra listeners refuse by default");
        t.sync_standbys.insert("pg2".into());
        let t = judged(t, &c);
        let route = r.pick(&c, &t, sync).unwrap();
        assert_eq!(
            (route.member.name.as_str(), route.target),
            ("pg2", Target::Replica)
        );
        // The sync role moves: the session there drains.
        let mut moved = t.clone();
        moved.sync_standbys = ["pg1".to_owned()].into();
        let moved = judged(moved, &c);
        assert!(
            matches!(r.check(&moved, &route), Verdict::Drain(m) if m.contains("not a synchronous standby"))
        );
    }

    #[test]
    fn sessions_end_when_their_member_loses_its_role() {
        let (r, c) = (Router::default(), config(""));
        let t = cluster(&c);
        let leader = r.pick(&c, &t, Port::PRIMARY).unwrap();
        let replica = r.pick(&c, &t, Port::REPLICAS).unwrap();
        assert_eq!(r.check(&t, &leader), Verdict::Keep);
        assert_eq!(r.check(&t, &replica), Verdict::Keep);

        // Switchover announced: the old leader still holds the key, its sessions go on.
        let mut announced = t.clone();
        announced.failover = Some(Failover {
            from: None,
            to: None,
            scheduled_at: None,
        });
        assert_eq!(r.check(&announced, &leader), Verdict::Keep);

        // Key released or expired: close at once, whatever the member key says.
        let mut released = t.clone();
        released.leader = None;
        assert_eq!(
            r.check(&released, &leader),
            Verdict::CloseNow("member \"pg0\" lost the leader key; no new leader yet".into())
        );
        // etcd lost and the leader's Patroni stopped confirming: closed, and the message says so.
        released.unconfirmed_leader = Some("pg0".into());
        assert!(
            matches!(r.check(&released, &leader), Verdict::CloseNow(m) if m.contains("no longer confirms"))
        );
        // The replica that took the key is drained from the read port.
        let mut promoted = t.clone();
        promoted.leader = Some(replica.member.name.clone());
        let promoted = judged(promoted, &c);
        assert!(
            matches!(r.check(&promoted, &leader), Verdict::CloseNow(m) if m.contains("to \"pg1\""))
        );
        assert!(
            matches!(r.check(&promoted, &replica), Verdict::Drain(m) if m.contains("holds the leader key"))
        );
        let mut gone = t.clone();
        gone.members.remove("pg1");
        assert!(
            matches!(r.check(&gone, &replica), Verdict::Drain(m) if m.contains("left the cluster"))
        );
        assert_eq!(
            check_member(&t, "pg1", Target::Replica, None),
            Verdict::Keep
        );
        assert!(matches!(
            check_member(&promoted, "pg1", Target::Replica, None),
            Verdict::Drain(_)
        ));
    }
}
