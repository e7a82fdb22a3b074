//! One Patroni cluster served: its view (etcd watched, or the members' REST APIs polled),
//! the read sets, the topology observer and pool upkeep, around its `Shared`.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::auth::secret::Secret;
use crate::config::{Config, ConfigError, Source};
use crate::dcs::etcd::{watch_cluster, EtcdConnections, EtcdSource};
use crate::dcs::rest_source::{poll_cluster, RestSource};
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::topology::Topology;

/// A cluster's shared state and the tasks that keep its view.
pub(super) struct Started {
    pub shared: Arc<Shared>,
    pub background: Vec<JoinHandle<()>>,
}

/// Starts following the cluster `config.cluster` names: its metrics in `registry` (labelled
/// with its scope), its source, read sets, observer and pool upkeep.
pub(super) fn start(
    config: Config,
    registry: &Registry,
    connections: &Arc<EtcdConnections>,
    users: HashMap<String, Secret>,
    tls: crate::tls::Transport,
) -> Result<Started, ConfigError> {
    let cluster = config.cluster.clone();
    let metrics = Arc::new(Metrics::in_registry(registry, Some(&cluster.scope)));
    // The source's view, and the same with each listener's read set: what sessions route by.
    let (raw_tx, raw_rx) = watch::channel(Arc::new(Topology::empty(&cluster.scope)));
    let (tx, rx) = watch::channel(Arc::new(Topology::empty(&cluster.scope)));
    let (access, rest) = crate::dcs::access::load(&cluster)?;
    let prefix = config.key_prefix();
    let shared = Arc::new(Shared::new(config, rx.clone(), metrics.clone()));
    let watcher = match cluster.source {
        Source::Etcd => tokio::spawn(watch_cluster(
            EtcdSource {
                endpoints: cluster.etcd.clone(),
                prefix,
                scope: cluster.scope.clone(),
                access,
                rest: rest.clone(),
                health: shared.dcs_health.clone(),
                connections: connections.clone(),
            },
            raw_tx,
            metrics,
        )),
        Source::Patroni => tokio::spawn(poll_cluster(
            RestSource {
                scope: cluster.scope.clone(),
                urls: cluster.patroni.clone(),
                interval: cluster.poll_interval.0,
                rest: rest.clone(),
                health: shared.dcs_health.clone(),
            },
            raw_tx,
            metrics,
        )),
    };
    let _ = shared.rest.set(rest);
    shared.credentials.set_users(users);
    shared.set_transport(tls);
    let background = vec![
        watcher,
        tokio::spawn(crate::reads::follow(raw_rx, tx, shared.clone())),
        tokio::spawn(observe_topology(rx, shared.clone())),
        tokio::spawn(crate::pool::maintain(shared.clone())),
    ];
    Ok(Started { shared, background })
}

/// A further cluster (`[clusters.<name>]`): its state, sessions, listeners and tasks.
pub(super) struct Instance {
    pub shared: Arc<Shared>,
    pub sessions: TaskTracker,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Instance {
    /// Ends the cluster as a shutdown does: its series leave /metrics at once (so it can be
    /// added back by the next reload), its listeners stop, its sessions drain (told `reason`)
    /// for up to drain_timeout, then its tasks stop.
    pub fn remove(self, reason: String) {
        tracing::info!(cluster = %self.shared.scope, sessions = self.sessions.len(), %reason, "removing a cluster: draining its sessions");
        self.shared.metrics.unregister();
        self.shared.begin_shutdown_because(reason);
        self.sessions.close();
        let drain = self.shared.config().routing.drain_timeout.0;
        tokio::spawn(async move {
            let wait = drain + std::time::Duration::from_secs(2);
            let _ = tokio::time::timeout(wait, self.sessions.wait()).await;
            for task in self.tasks {
                task.abort();
            }
            tracing::info!(cluster = %self.shared.scope, "cluster removed");
        });
    }
}

/// On every topology change: wake the sessions, one info line (leader moves, writes held or
/// going where), and the leader metrics. Read-set changes are logged where they are judged
/// (`crate::reads`), with the lag that moved them.
pub(super) async fn observe_topology(mut rx: watch::Receiver<Arc<Topology>>, shared: Arc<Shared>) {
    let mut old = rx.borrow_and_update().clone();
    while rx.changed().await.is_ok() {
        // Sessions read the new topology themselves; this only wakes the idle ones.
        shared.signals.raise_all();
        let new = rx.borrow_and_update().clone();
        shared.metrics.observe_topology(&old, &new, shared.ports());
        let changes = describe_changes(&old, &new);
        if !changes.is_empty() {
            tracing::info!(cluster = %new.scope, "topology: {}", changes.join("; "));
        }
        old = new;
    }
}

pub fn describe_changes(old: &Topology, new: &Topology) -> Vec<String> {
    let mut changes = Vec::new();
    let leader = |t: &Topology| t.leader.clone().unwrap_or_else(|| "none".to_owned());
    if old.leader != new.leader || !old.synced {
        changes.push(format!("leader {} -> {}", leader(old), leader(new)));
    }
    let writable = |t: &Topology| t.writable_leader().map(|m| m.name.clone());
    if writable(old) != writable(new) {
        match writable(new) {
            Some(name) => changes.push(format!("writes go to {name}")),
            None => changes.push("writes held".to_owned()),
        }
    }
    if old.failover.is_none() {
        if let Some(f) = &new.failover {
            let to = f.to.as_deref().unwrap_or("any member");
            changes.push(format!("switchover to {to} announced"));
        }
    }
    if old.sync_standbys != new.sync_standbys {
        let names: Vec<&str> = new.sync_standbys.iter().map(String::as_str).collect();
        changes.push(format!("synchronous standbys [{}]", names.join(", ")));
    }
    for name in old.members.keys().filter(|n| !new.members.contains_key(*n)) {
        changes.push(format!("member {name} gone"));
    }
    changes
}
