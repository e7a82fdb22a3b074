//! Which members serve each listener: the rules that act at once (role, state, tags, the
//! synchronous standby), and lag verdicts that change only after a measurement has held for a
//! while (`routing.lag_out_after`, `routing.lag_in_after`), so a burst of writes on the leader
//! does not throw replicas out of the read set and back 100 ms later.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::{Ineligible, Member, Role, Topology};
use crate::config::{Config, Rules, Selector};

/// One member's place on one listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub serving: bool,
    /// When `serving` last changed, or when the member was first judged.
    pub since: Instant,
    /// Why it does not serve; None while it does.
    pub why: Option<Ineligible>,
    /// It serves as the leader (read-only listeners).
    pub as_leader: bool,
}

/// Every listener's members, by listener number then member name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadSets {
    ports: Vec<BTreeMap<String, Standing>>,
}

impl ReadSets {
    pub fn get(&self, port: usize, member: &str) -> Option<&Standing> {
        self.ports.get(port)?.get(member)
    }

    /// The members of listener `port`, serving or not, in name order.
    pub fn port(&self, port: usize) -> impl Iterator<Item = (&str, &Standing)> {
        self.ports
            .get(port)
            .into_iter()
            .flatten()
            .map(|(n, s)| (n.as_str(), s))
    }

    /// Whether `member` serves some listener as a replica: its pooled replica connections
    /// are worth keeping.
    pub fn serves_anywhere(&self, member: &str) -> bool {
        self.ports
            .iter()
            .any(|p| p.get(member).is_some_and(|s| s.serving && !s.as_leader))
    }
}

/// Where a lag measurement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagSource {
    /// The replica's and the leader's Patroni REST APIs, asked in the same check.
    PatroniApi,
    /// The replica's REST API did not answer: its etcd member key against the leader's etcd
    /// position. Keys are written at different moments, so this reads high under writes.
    Etcd,
}

impl LagSource {
    pub fn label(self) -> &'static str {
        match self {
            LagSource::PatroniApi => "patroni-api",
            LagSource::Etcd => "etcd",
        }
    }
}

/// A replica's lag in one check.
#[derive(Debug, Clone, PartialEq)]
pub struct LagSample {
    /// Bytes its replay is behind the leader; None when it could not be measured.
    pub bytes: Option<u64>,
    /// How long ago the leader was at the first position it has not replayed (0 when it
    /// replayed all the leader had); None from etcd alone.
    pub delay: Option<Duration>,
    pub source: LagSource,
    pub paused: Option<bool>,
}

impl LagSample {
    /// Why this measurement is over the bounds, or None when within them. A delay that could
    /// not be measured is not held against the replica; lag that could not be is.
    pub fn over(&self, max_lag: u64, max_delay: Duration) -> Option<String> {
        let paused = if self.paused == Some(true) {
            ", replay paused"
        } else {
            ""
        };
        let Some(bytes) = self.bytes else {
            return Some("lag unknown".to_owned());
        };
        if bytes > max_lag {
            return Some(format!(
                "replay {} behind the leader (max_replica_lag {}){paused}",
                bytes_text(bytes),
                bytes_text(max_lag)
            ));
        }
        match self.delay {
            Some(d) if !max_delay.is_zero() && d > max_delay => Some(format!(
                "replay delay {:.1}s (max_replica_delay {:.1}s){paused}",
                d.as_secs_f64(),
                max_delay.as_secs_f64()
            )),
            _ => None,
        }
    }
}

pub fn bytes_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Whether a replica is within a listener's lag bounds, changed only when the measurements
/// said otherwise for long enough.
#[derive(Debug, Clone, PartialEq)]
struct LagVerdict {
    within: bool,
    /// Start of the run of measurements that contradict `within`.
    contrary_since: Option<Instant>,
    /// The last measurement's reason for being over, for messages.
    last_over: Option<String>,
    /// Judged from etcd keys alone (before any check answered).
    provisional: bool,
}

impl LagVerdict {
    fn first(over: Option<String>, provisional: bool) -> LagVerdict {
        LagVerdict {
            within: over.is_none(),
            contrary_since: None,
            last_over: over,
            provisional,
        }
    }

    /// One more measurement at `now`.
    fn step(
        &mut self,
        over: Option<String>,
        now: Instant,
        out_after: Duration,
        in_after: Duration,
    ) {
        // A guess from etcd keys lets a replica in at the first check within the bounds
        // (no lag_in_after for what was never measured); out still takes lag_out_after.
        if std::mem::take(&mut self.provisional) && over.is_none() {
            *self = LagVerdict::first(None, false);
            return;
        }
        let contrary = over.is_some() == self.within;
        self.last_over = over;
        if !contrary {
            self.contrary_since = None;
            return;
        }
        let since = *self.contrary_since.get_or_insert(now);
        let hold = if self.within { out_after } else { in_after };
        if now.duration_since(since) >= hold {
            self.within = !self.within;
            self.contrary_since = None;
        }
    }
}

/// A member that joined or left a listener's set.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub port: usize,
    pub member: String,
    pub serving: bool,
    pub why: Option<Ineligible>,
    /// How long it had been in its former state.
    pub after: Duration,
}

/// The read sets and what they are judged from; fed topologies and lag checks.
#[derive(Default)]
pub struct Judge {
    sets: ReadSets,
    verdicts: HashMap<(usize, String), LagVerdict>,
    /// The last check's measurements, by member.
    latest: BTreeMap<String, LagSample>,
}

impl Judge {
    pub fn sets(&self) -> &ReadSets {
        &self.sets
    }

    pub fn latest(&self) -> &BTreeMap<String, LagSample> {
        &self.latest
    }

    /// A lag check's measurements: each listener's verdicts take one more step.
    pub fn measured(
        &mut self,
        samples: BTreeMap<String, LagSample>,
        topology: &Topology,
        config: &Config,
        ports: usize,
        now: Instant,
    ) -> Vec<Change> {
        let r = &config.routing;
        for ((port, member), verdict) in &mut self.verdicts {
            let Some(sample) = samples.get(member) else {
                continue;
            };
            let rules = config.rules(*port);
            let over = sample.over(rules.max_lag, rules.max_delay);
            verdict.step(over, now, r.lag_out_after.0, r.lag_in_after.0);
        }
        self.latest = samples;
        self.judge(topology, config, ports, now)
    }

    /// Every listener's set under `topology` and `config`, with the verdicts as they stand.
    pub fn judge(
        &mut self,
        topology: &Topology,
        config: &Config,
        ports: usize,
        now: Instant,
    ) -> Vec<Change> {
        self.verdicts
            .retain(|(port, m), _| *port < ports && topology.members.contains_key(m));
        self.latest.retain(|m, _| topology.members.contains_key(m));
        let mut changes = Vec::new();
        let mut sets = Vec::with_capacity(ports);
        for port in 0..ports {
            let rules = config.rules(port);
            let mut set = BTreeMap::new();
            if rules.role != Selector::Primary {
                for m in topology.members.values() {
                    let standing = self.stand(topology, &rules, port, m, now, &mut changes);
                    set.insert(m.name.clone(), standing);
                }
            }
            sets.push(set);
        }
        self.sets = ReadSets { ports: sets };
        changes
    }

    fn stand(
        &mut self,
        topology: &Topology,
        rules: &Rules<'_>,
        port: usize,
        m: &Member,
        now: Instant,
        changes: &mut Vec<Change>,
    ) -> Standing {
        let judged = match at_once(topology, rules, m) {
            Err(why) => Err(why),
            Ok(true) => Ok(true),
            Ok(false) => {
                let verdict = self
                    .verdicts
                    .entry((port, m.name.clone()))
                    .or_insert_with(|| {
                        let (over, provisional) = first_measure(&self.latest, topology, m, rules);
                        LagVerdict::first(over, provisional)
                    });
                match verdict.within {
                    true => Ok(false),
                    false => Err(Ineligible::Lag(verdict.last_over.clone().unwrap_or_else(
                        || "lag back within bounds, not for long enough yet".to_owned(),
                    ))),
                }
            }
        };
        let (serving, as_leader, why) = match judged {
            Ok(as_leader) => (true, as_leader, None),
            Err(why) => (false, false, Some(why)),
        };
        let since = match self.sets.get(port, &m.name) {
            Some(old) if old.serving == serving => old.since,
            Some(old) => {
                changes.push(Change {
                    port,
                    member: m.name.clone(),
                    serving,
                    why: why.clone(),
                    after: now.duration_since(old.since),
                });
                now
            }
            None => now,
        };
        Standing {
            serving,
            since,
            why,
            as_leader,
        }
    }
}

/// The rules that act at once: Ok(true) for the leader serving a read-only listener, Ok(false)
/// for a replica that may serve if its lag allows, or why not.
pub fn at_once(topology: &Topology, rules: &Rules<'_>, m: &Member) -> Result<bool, Ineligible> {
    if topology.holds_leader_key(&m.name) {
        let writable = topology.writable_leader().is_some_and(|l| l.name == m.name);
        return match rules.role.admits_leader() && writable {
            true => Ok(true),
            false => Err(Ineligible::IsLeader),
        };
    }
    if m.role != Role::Replica {
        return Err(Ineligible::NotReplica);
    }
    if !matches!(m.state.as_str(), "running" | "streaming") {
        return Err(Ineligible::NotRunning);
    }
    if m.noloadbalance && !rules.admits_noloadbalance() {
        return Err(Ineligible::NoLoadBalance);
    }
    rules.tags_match(&m.tags).map_err(Ineligible::Tag)?;
    let sync = topology.sync_standbys.contains(&m.name);
    match rules.role {
        Selector::Synchronous | Selector::ReadOnlySync if !sync => Err(Ineligible::NotSynchronous),
        Selector::Asynchronous if sync => Err(Ineligible::Synchronous),
        _ => Ok(false),
    }
}

/// A member's first verdict: from the last check if it measured the member, else from the
/// etcd keys (before the first check has answered, as when pgrouter starts), which the first
/// check then replaces outright: keys written at different moments may read high under writes.
fn first_measure(
    latest: &BTreeMap<String, LagSample>,
    topology: &Topology,
    m: &Member,
    rules: &Rules<'_>,
) -> (Option<String>, bool) {
    match latest.get(&m.name) {
        Some(sample) => (sample.over(rules.max_lag, rules.max_delay), false),
        None => {
            let etcd = LagSample {
                bytes: topology.lag(m),
                delay: None,
                source: LagSource::Etcd,
                paused: None,
            };
            (etcd.over(rules.max_lag, rules.max_delay), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::tests::member;

    const CONFIG: &str = "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:1\"]\n[routing]\nmax_replica_lag = \"1MB\"\nmax_replica_delay = \"2s\"\nlag_out_after = \"5s\"\nlag_in_after = \"3s\"\n";

    fn config(extra: &str) -> Config {
        Config::from_toml(&format!("{CONFIG}{extra}")).unwrap()
    }

    fn cluster() -> Topology {
        let mut t = Topology::empty("demo");
        t.synced = true;
        t.leader = Some("pg0".into());
        for m in [
            member("pg0", Role::Primary, "running", Some(100 << 20)),
            member("pg1", Role::Replica, "streaming", Some(100 << 20)),
            member("pg2", Role::Replica, "running", Some(100 << 20)),
        ] {
            t.members.insert(m.name.clone(), m.into());
        }
        t
    }

    fn sample(bytes: u64, delay_ms: u64) -> LagSample {
        LagSample {
            bytes: Some(bytes),
            delay: Some(Duration::from_millis(delay_ms)),
            source: LagSource::PatroniApi,
            paused: None,
        }
    }

    fn serving(judge: &Judge, port: usize) -> Vec<&str> {
        judge
            .sets()
            .port(port)
            .filter(|(_, s)| s.serving)
            .map(|(n, _)| n)
            .collect()
    }

    fn why(judge: &Judge, port: usize, m: &str) -> String {
        judge
            .sets()
            .get(port, m)
            .unwrap()
            .why
            .clone()
            .unwrap()
            .to_string()
    }

    fn round(pg1: LagSample, pg2: LagSample) -> BTreeMap<String, LagSample> {
        BTreeMap::from([("pg1".to_owned(), pg1), ("pg2".to_owned(), pg2)])
    }

    #[test]
    fn a_burst_of_lag_shorter_than_lag_out_after_changes_nothing() {
        let (t, c) = (cluster(), config(""));
        let mut judge = Judge::default();
        let start = Instant::now();
        assert!(judge.judge(&t, &c, 2, start).is_empty());
        assert_eq!(serving(&judge, 1), ["pg1", "pg2"]);
        assert!(
            serving(&judge, 0).is_empty(),
            "the primary port has no read set"
        );
        // 40 MB behind for 4 s, one check a second: still serving.
        for s in 0..5 {
            let at = start + Duration::from_secs(s);
            let changes = judge.measured(round(sample(40 << 20, 900), sample(0, 0)), &t, &c, 2, at);
            assert!(changes.is_empty(), "at {s}s: {changes:?}");
        }
        // Back under: the run is broken, the next burst starts its own clock.
        judge.measured(
            round(sample(0, 0), sample(0, 0)),
            &t,
            &c,
            2,
            start + Duration::from_secs(5),
        );
        for s in 6..10 {
            let at = start + Duration::from_secs(s);
            assert!(judge
                .measured(round(sample(40 << 20, 0), sample(0, 0)), &t, &c, 2, at)
                .is_empty());
        }
        assert_eq!(serving(&judge, 1), ["pg1", "pg2"]);
    }

    #[test]
    fn over_for_lag_out_after_leaves_under_for_lag_in_after_returns() {
        let (t, c) = (cluster(), config(""));
        let mut judge = Judge::default();
        let start = Instant::now();
        judge.judge(&t, &c, 2, start);
        let at = |s: u64| start + Duration::from_secs(s);
        // Replay paused: no bytes behind yet, but the delay grows past 2 s.
        for s in 0..5 {
            let changes = judge.measured(
                round(sample(0, 2500 + s * 1000), sample(0, 0)),
                &t,
                &c,
                2,
                at(s),
            );
            assert!(changes.is_empty());
        }
        let changes = judge.measured(round(sample(0, 7500), sample(0, 0)), &t, &c, 2, at(5));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            (changes[0].member.as_str(), changes[0].serving),
            ("pg1", false)
        );
        assert_eq!(changes[0].after, Duration::from_secs(5));
        let why = changes[0].why.as_ref().unwrap().to_string();
        assert!(
            why.contains("replay delay 7.5s (max_replica_delay 2.0s)"),
            "{why}"
        );
        assert_eq!(serving(&judge, 1), ["pg2"]);
        // Resumed: under the bounds for 3 s before it serves again; a relapse restarts the clock.
        judge.measured(round(sample(0, 0), sample(0, 0)), &t, &c, 2, at(6));
        judge.measured(round(sample(0, 9000), sample(0, 0)), &t, &c, 2, at(7));
        for s in 8..11 {
            assert!(judge
                .measured(round(sample(0, 0), sample(0, 0)), &t, &c, 2, at(s))
                .is_empty());
        }
        let changes = judge.measured(round(sample(0, 0), sample(0, 0)), &t, &c, 2, at(11));
        assert_eq!(
            (changes[0].member.as_str(), changes[0].serving),
            ("pg1", true)
        );
        assert_eq!(serving(&judge, 1), ["pg1", "pg2"]);
        let standing = judge.sets().get(1, "pg1").unwrap();
        assert_eq!(standing.since, at(11));
    }

    #[test]
    fn role_state_and_tags_act_at_once() {
        let (mut t, c) = (cluster(), config(""));
        let mut judge = Judge::default();
        let start = Instant::now();
        judge.judge(&t, &c, 2, start);
        t.member_mut("pg2").unwrap().state = "stopped".into();
        let changes = judge.judge(&t, &c, 2, start + Duration::from_millis(10));
        assert_eq!(changes[0].why, Some(Ineligible::NotRunning));
        t.member_mut("pg2").unwrap().state = "running".into();
        // Back at once: it was out for its state, not for lag.
        let changes = judge.judge(&t, &c, 2, start + Duration::from_millis(20));
        assert!(changes[0].serving);
        t.member_mut("pg1").unwrap().noloadbalance = true;
        judge.judge(&t, &c, 2, start + Duration::from_millis(30));
        assert_eq!(serving(&judge, 1), ["pg2"]);
        // The key holder never serves :5001, promoted or not.
        t.leader = Some("pg2".into());
        judge.judge(&t, &c, 2, start + Duration::from_millis(40));
        assert!(serving(&judge, 1).is_empty());
        assert_eq!(
            judge.sets().get(1, "pg2").unwrap().why,
            Some(Ineligible::IsLeader)
        );
    }

    #[test]
    fn listener_roles_tags_and_the_synchronous_standby() {
        let extra = "[listeners.ro]\nlisten = \"127.0.0.1:6000\"\nrole = \"read-only\"\n\
                     [listeners.sync]\nlisten = \"127.0.0.1:6001\"\nrole = \"synchronous\"\n\
                     [listeners.tagged]\nlisten = \"127.0.0.1:6002\"\nrole = \"replica\"\ntags = { zone = \"b\", nofailover = true }\n\
                     [listeners.xsync]\nlisten = \"127.0.0.1:6003\"\nrole = \"async\"\n\
                     [listeners.zhidden]\nlisten = \"127.0.0.1:6004\"\nrole = \"replica\"\ntags = { noloadbalance = true }\n";
        let c = config(extra);
        let (ro, sync, tagged, xsync, hidden) = (2, 3, 4, 5, 6);
        let mut t = cluster();
        t.sync_standbys.insert("pg2".into());
        let pg1 = t.member_mut("pg1").unwrap();
        pg1.tags.insert("zone".into(), "b".into());
        pg1.tags.insert("nofailover".into(), "true".into());
        let pg2 = t.member_mut("pg2").unwrap();
        pg2.tags.insert("zone".into(), "b".into());
        pg2.noloadbalance = true;
        pg2.tags.insert("noloadbalance".into(), "true".into());
        let mut judge = Judge::default();
        judge.judge(&t, &c, 7, Instant::now());
        assert_eq!(serving(&judge, ro), ["pg0", "pg1"]);
        assert!(judge.sets().get(ro, "pg0").unwrap().as_leader);
        // pg2 is the sync standby but tagged noloadbalance: as Patroni's /synchronous says.
        assert!(serving(&judge, sync).is_empty());
        assert_eq!(serving(&judge, tagged), ["pg1"]);
        assert_eq!(serving(&judge, xsync), ["pg1"]);
        assert_eq!(serving(&judge, hidden), ["pg2"]);
        assert_eq!(why(&judge, hidden, "pg1"), "no tag noloadbalance");
        assert_eq!(why(&judge, sync, "pg1"), "not a synchronous standby");
        t.member_mut("pg2").unwrap().noloadbalance = false;
        judge.judge(&t, &c, 7, Instant::now());
        assert_eq!(serving(&judge, sync), ["pg2"]);
        assert_eq!(why(&judge, xsync, "pg2"), "a synchronous standby");
        assert_eq!(why(&judge, tagged, "pg2"), "no tag nofailover");
        // The leader serves read-only listeners only once writable.
        t.leader = Some("pg1".into());
        judge.judge(&t, &c, 7, Instant::now());
        assert_eq!(why(&judge, ro, "pg1"), "holds the leader key");
    }

    #[test]
    fn the_first_verdict_comes_from_etcd_until_a_check_answers() {
        let (mut t, c) = (cluster(), config(""));
        t.member_mut("pg2").unwrap().wal_position = Some(90 << 20);
        let mut judge = Judge::default();
        judge.judge(&t, &c, 2, Instant::now());
        assert_eq!(serving(&judge, 1), ["pg1"]);
        let why = judge
            .sets()
            .get(1, "pg2")
            .unwrap()
            .why
            .clone()
            .unwrap()
            .to_string();
        assert_eq!(
            why,
            "replay 10.0 MB behind the leader (max_replica_lag 1.0 MB)"
        );
        // The first check that answers decides at once: no lag_in_after for a guess from etcd.
        let changes = judge.measured(round(sample(0, 0), sample(0, 0)), &t, &c, 2, Instant::now());
        assert_eq!(
            (changes[0].member.as_str(), changes[0].serving),
            ("pg2", true)
        );
        // Unknown lag is held against a replica; an unknown delay is not.
        let unknown = LagSample {
            bytes: None,
            delay: None,
            source: LagSource::Etcd,
            paused: None,
        };
        assert_eq!(
            unknown.over(1, Duration::ZERO).as_deref(),
            Some("lag unknown")
        );
        let etcd = LagSample {
            bytes: Some(0),
            ..unknown
        };
        assert_eq!(etcd.over(1, Duration::from_secs(1)), None);
    }
}
