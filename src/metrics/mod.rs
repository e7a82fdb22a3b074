//! Prometheus metrics: one `Metrics` value per cluster, its series in the registry every
//! cluster shares (each labelled with its `cluster`); sessions hold cheap handles.
//!
//! - `router`: the process-wide series (build, `process_*`, limits, reloads), unlabelled.
//! - `process`: `process_*` read from `/proc/self`.

pub mod process;
pub mod router;

pub use router::{unix_now, RouterMetrics};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::sync::Mutex;

use crate::route::Port;
use crate::topology::Topology;

/// Every metric pgrouter exports for one cluster; names are prefixed `pgrouter_`, units are
/// base units. Clusters share one registry, each series labelled with its `cluster`.
pub struct Metrics {
    registry: Registry,
    /// What this cluster registered, to take out when the cluster is removed.
    registered: Mutex<Vec<Box<dyn Collector>>>,
    /// Client connections by port (primary, replicas) and state (held, active, idle).
    pub client_connections: IntGaugeVec,
    /// Server connections by member.
    pub server_connections: IntGaugeVec,
    /// Bytes relayed by port and direction (client_to_server, server_to_client).
    pub bytes: IntCounterVec,
    /// Transactions relayed by port, counted from ReadyForQuery 'I'.
    pub transactions: IntCounterVec,
    /// FATAL errors pgrouter sent to clients, by SQLSTATE.
    pub client_errors: IntCounterVec,
    /// Sessions pgrouter closed, by reason (leader_lost, replica_ineligible, drain_timeout, shutdown).
    pub sessions_drained: IntCounterVec,
    /// Pooled server connections closed as stuck (the server waiting for its client, owing it
    /// an answer, with nothing left to send it), by port.
    pub pool_stuck_closed: IntCounterVec,
    /// Seconds clients waited for a server: pass-through clients held before being routed
    /// or refused; pooled clients from a transaction's first message to its server connection
    /// (the pool wait), by port.
    pub hold_seconds: HistogramVec,
    /// Pooled listeners: seconds a transaction held its server connection, by port.
    pub transaction_seconds: HistogramVec,
    /// Client connections accepted, by port (listener), before any limit or check.
    pub accepted_connections: IntCounterVec,
    /// Server connections that could not be opened (the member unreachable, or no answer
    /// within connect_timeout; not a login the member refused), by member.
    pub member_connect_errors: IntCounterVec,
    /// Clients that closed their connection while held or in line for a server connection, by
    /// port; what they had sent was not run.
    pub clients_left_waiting: IntCounterVec,
    pub leader_changes: IntCounter,
    /// From receiving the etcd event to publishing the topology sessions route by.
    pub route_switch_seconds: Histogram,
    pub dcs_connected: IntGauge,
    pub pooled_message_bytes: IntGauge,
    /// When the last etcd read or watch event (or REST poll) arrived, in Unix seconds.
    pub dcs_last_event_timestamp_seconds: prometheus::Gauge,
    pub member_leader: IntGaugeVec,
    pub member_eligible: IntGaugeVec,
    pub member_lag_bytes: IntGaugeVec,
    /// How long ago the leader passed the first position a replica has not replayed.
    pub member_replay_delay_seconds: prometheus::GaugeVec,
    /// 1 while a member serves a listener, by port (listener) and member.
    pub member_serving: IntGaugeVec,
    /// Members joining (`in`) or leaving (`out`) a listener's read set.
    pub read_set_changes: IntCounterVec,
    pub paused: IntGaugeVec,
    /// Pooled modes: server connections per pool, idle or active.
    pub pool_servers: IntGaugeVec,
    /// Pooled modes: clients waiting for a server connection, per pool.
    pub pool_waiting: IntGaugeVec,
    /// Pooled modes: the pool_size in force per pool, to graph pool_server_connections
    /// against.
    pub pool_size: IntGaugeVec,
}

/// Registers a metric built from constant names and labels; a failure is a programming error.
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    registered: &Mutex<Vec<Box<dyn Collector>>>,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    registered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(metric.clone()));
    metric
}

impl Metrics {
    /// A cluster's metrics in a registry of their own, unlabelled (tests).
    pub fn new() -> Metrics {
        Metrics::in_registry(&Registry::new(), None)
    }

    /// Cluster `cluster`'s metrics in `registry`, every series labelled `cluster`.
    pub fn in_registry(registry: &Registry, cluster: Option<&str>) -> Metrics {
        let registry = registry.clone();
        let registered = Mutex::new(Vec::new());
        let labelled = |o: Opts| match cluster {
            Some(c) => o.const_label("cluster", c),
            None => o,
        };
        let opts = |name: &str, help: &str| labelled(Opts::new(format!("pgrouter_{name}"), help));
        let r = &registry;
        let reg = &registered;
        let gauges =
            |name, help, labels| register(r, reg, IntGaugeVec::new(opts(name, help), labels));
        let counters =
            |name, help, labels| register(r, reg, IntCounterVec::new(opts(name, help), labels));
        let histogram = |name: &str, help: &str| HistogramOpts {
            common_opts: opts(name, help),
            buckets: Vec::new(),
        };
        // Hold times: from a millisecond to the longest hold_timeout in use.
        let hold_buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let hold_opts = histogram(
            "hold_seconds",
            "Seconds clients waited for a server, by port: pass-through clients held for a member; pooled clients from a transaction's first message to its server connection (the pool wait).",
        );
        // Transactions: from half a millisecond to a minute.
        let transaction_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            60.0,
        ];
        let transaction_opts = histogram(
            "transaction_seconds",
            "Pooled listeners: seconds a transaction held its server connection, by port.",
        );
        // Route switches: the router's own part is well under a millisecond.
        let switch_buckets = vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];
        let switch_opts = histogram(
            "route_switch_seconds",
            "Seconds from receiving an etcd event that changes the leader to routing by it.",
        );
        Metrics {
            client_connections: gauges(
                "client_connections",
                "Client connections by port and state.",
                &["port", "state"],
            ),
            server_connections: gauges(
                "server_connections",
                "Server connections by member.",
                &["member"],
            ),
            bytes: counters(
                "bytes_total",
                "Bytes relayed, by port and direction.",
                &["port", "direction"],
            ),
            transactions: counters(
                "transactions_total",
                "Transactions relayed (ReadyForQuery idle), by port.",
                &["port"],
            ),
            client_errors: counters(
                "client_errors_total",
                "Errors pgrouter sent to clients (FATAL, and ERROR for pooled transactions), by SQLSTATE.",
                &["sqlstate"],
            ),
            sessions_drained: counters(
                "sessions_drained_total",
                "Sessions pgrouter closed, by reason.",
                &["reason"],
            ),
            pool_stuck_closed: counters(
                "pool_stuck_closed_total",
                "Pooled server connections closed as stuck (waiting for their client while owing it an answer), by port.",
                &["port"],
            ),
            hold_seconds: register(
                r,
                reg,
                HistogramVec::new(hold_opts.buckets(hold_buckets), &["port"]),
            ),
            transaction_seconds: register(
                r,
                reg,
                HistogramVec::new(transaction_opts.buckets(transaction_buckets), &["port"]),
            ),
            accepted_connections: counters(
                "client_connections_accepted_total",
                "Client connections accepted, by port (listener), before any limit or check.",
                &["port"],
            ),
            member_connect_errors: counters(
                "member_connect_errors_total",
                "Server connections that could not be opened (the member unreachable, or no answer within connect_timeout), by member.",
                &["member"],
            ),
            clients_left_waiting: counters(
                "clients_left_waiting_total",
                "Clients that closed their connection while held or in line for a server connection (what they sent was not run), by port.",
                &["port"],
            ),
            leader_changes: register(
                r,
                reg,
                IntCounter::with_opts(opts(
                    "leader_changes_total",
                    "Times the leader key changed holder.",
                )),
            ),
            route_switch_seconds: register(
                r,
                reg,
                Histogram::with_opts(switch_opts.buckets(switch_buckets)),
            ),
            dcs_connected: register(
                r,
                reg,
                IntGauge::with_opts(opts(
                    "dcs_connected",
                    "1 while the etcd watch is live, else 0.",
                )),
            ),
            pooled_message_bytes: register(
                r,
                reg,
                IntGauge::with_opts(opts(
                    "pooled_message_bytes",
                    "Bytes of pool.message_memory held by pooled clients' large messages (64 KiB and over), every second.",
                )),
            ),
            dcs_last_event_timestamp_seconds: register(
                r,
                reg,
                prometheus::Gauge::with_opts(opts(
                    "dcs_last_event_timestamp_seconds",
                    "When the last etcd read or watch event (or Patroni REST poll) arrived, in Unix seconds.",
                )),
            ),
            member_leader: gauges(
                "member_leader",
                "1 for the member holding the leader key.",
                &["member"],
            ),
            member_eligible: gauges(
                "member_eligible",
                "1 for members serving the replicas listener.",
                &["member"],
            ),
            member_lag_bytes: gauges(
                "member_lag_bytes",
                "Bytes a replica's replay is behind the leader, both asked in the same check.",
                &["member"],
            ),
            member_replay_delay_seconds: register(
                r,
                reg,
                prometheus::GaugeVec::new(
                    opts(
                        "member_replay_delay_seconds",
                        "Seconds since the leader passed the first WAL position a replica has not replayed.",
                    ),
                    &["member"],
                ),
            ),
            member_serving: gauges(
                "member_serving",
                "1 while the member serves the listener's clients.",
                &["port", "member"],
            ),
            read_set_changes: counters(
                "read_set_changes_total",
                "Members joining (in) or leaving (out) a listener's read set.",
                &["port", "member", "change"],
            ),
            paused: gauges("paused", "1 while the port is paused.", &["port"]),
            pool_servers: gauges(
                "pool_server_connections",
                "Pooled server connections by member, role, database, user and state (idle, active).",
                &["member", "role", "database", "user", "state"],
            ),
            pool_waiting: gauges(
                "pool_clients_waiting",
                "Pooled clients waiting for a server connection, by pool.",
                &["member", "role", "database", "user"],
            ),
            pool_size: gauges(
                "pool_size",
                "Pooled modes: the pool_size in force per pool (member, role, database, user).",
                &["member", "role", "database", "user"],
            ),
            registered,
            registry,
        }
    }

    /// Takes this cluster's series out of the shared registry (the cluster was removed).
    pub fn unregister(&self) {
        for c in self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = self.registry.unregister(c);
        }
    }

    /// Leader changes and the leader gauge from a new topology; members that left lose
    /// their series.
    pub fn observe_topology(&self, old: &Topology, new: &Topology, ports: &[Port]) {
        if old.leader != new.leader && new.leader.is_some() && old.synced {
            self.leader_changes.inc();
        }
        for name in old.members.keys().filter(|n| !new.members.contains_key(*n)) {
            for g in [
                &self.member_leader,
                &self.member_eligible,
                &self.member_lag_bytes,
            ] {
                let _ = g.remove_label_values(&[name]);
            }
            let _ = self
                .member_replay_delay_seconds
                .remove_label_values(&[name]);
            for port in ports {
                let _ = self
                    .member_serving
                    .remove_label_values(&[port.label(), name]);
            }
        }
        for m in new.members.values() {
            let name = m.name.as_str();
            self.member_leader
                .with_label_values(&[name])
                .set(i64::from(new.holds_leader_key(name)));
        }
    }

    /// Counts a server connection to `member` that could not be opened.
    pub fn member_connect_error(&self, member: &str) {
        self.member_connect_errors
            .with_label_values(&[member])
            .inc();
    }

    /// Notes that etcd just answered (a full read or a watch event).
    pub fn dcs_event_seen(&self) {
        self.dcs_last_event_timestamp_seconds.set(unix_now());
    }

    /// The Prometheus text exposition of every metric in the registry: every cluster's, and
    /// the process-wide ones.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// What a client connection is doing, for `pgrouter_client_connections{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Waiting for a member (no leader yet, paused, reconnecting).
    Held,
    /// A query or transaction in flight, or authenticating.
    Active,
    /// Between transactions.
    Idle,
}

/// Keeps one client counted under exactly one state, and uncounted once dropped.
pub struct StateGauge {
    gauges: [IntGauge; 3],
    current: Option<ClientState>,
}

impl StateGauge {
    pub fn new(metrics: &Metrics, port: &str) -> StateGauge {
        let g = |state| metrics.client_connections.with_label_values(&[port, state]);
        StateGauge {
            gauges: [g("held"), g("active"), g("idle")],
            current: None,
        }
    }

    pub fn set(&mut self, state: ClientState) {
        if self.current == Some(state) {
            return;
        }
        if let Some(old) = self.current {
            self.gauges[old as usize].dec();
        }
        self.gauges[state as usize].inc();
        self.current = Some(state);
    }
}

impl Drop for StateGauge {
    fn drop(&mut self) {
        if let Some(old) = self.current {
            self.gauges[old as usize].dec();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_series_appear_when_used() {
        let m = Metrics::new();
        m.client_errors.with_label_values(&["57P03"]).inc();
        m.bytes
            .with_label_values(&["primary", "server_to_client"])
            .inc_by(42);
        let text = m.encode();
        assert!(
            text.contains("pgrouter_client_errors_total{sqlstate=\"57P03\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "pgrouter_bytes_total{direction=\"server_to_client\",port=\"primary\"} 42"
            ),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("pgrouter_"), "{line}");
        }
    }

    #[test]
    fn every_cluster_series_is_labelled_and_the_dcs_time_is_a_timestamp() {
        let m = Metrics::in_registry(&Registry::new(), Some("main"));
        let before = unix_now();
        m.dcs_event_seen();
        m.member_connect_error("pg1");
        m.member_connect_error("pg1");
        m.accepted_connections.with_label_values(&["primary"]).inc();
        m.transaction_seconds
            .with_label_values(&["primary"])
            .observe(0.003);
        m.pool_size
            .with_label_values(&["pg0", "leader", "app", "app"])
            .set(20);
        let text = m.encode();
        for expected in [
            "pgrouter_member_connect_errors_total{cluster=\"main\",member=\"pg1\"} 2",
            "pgrouter_client_connections_accepted_total{cluster=\"main\",port=\"primary\"} 1",
            "pgrouter_transaction_seconds_bucket{cluster=\"main\",port=\"primary\",le=\"0.0025\"} 0",
            "pgrouter_transaction_seconds_bucket{cluster=\"main\",port=\"primary\",le=\"0.005\"} 1",
            "pgrouter_pool_size{cluster=\"main\",database=\"app\",member=\"pg0\",role=\"leader\",user=\"app\"} 20",
        ] {
            assert!(text.contains(expected), "{expected} not in {text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("cluster=\"main\""), "{line}");
        }
        let at = m.dcs_last_event_timestamp_seconds.get();
        assert!(at >= before && at <= unix_now(), "{at}");
        assert!(!text.contains("dcs_last_event_age_seconds"));
    }

    #[test]
    fn a_client_is_counted_in_one_state_until_it_leaves() {
        let m = Metrics::new();
        let count = |state| {
            m.client_connections
                .with_label_values(&["primary", state])
                .get()
        };
        let mut client = StateGauge::new(&m, "primary");
        client.set(ClientState::Held);
        client.set(ClientState::Active);
        client.set(ClientState::Active);
        assert_eq!((count("held"), count("active"), count("idle")), (0, 1, 0));
        client.set(ClientState::Idle);
        assert_eq!((count("held"), count("active"), count("idle")), (0, 0, 1));
        drop(client);
        assert_eq!((count("held"), count("active"), count("idle")), (0, 0, 0));
    }
}
