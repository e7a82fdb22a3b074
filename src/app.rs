//! Wires the pieces together: the etcd watcher, the topology log, the two listeners.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::dcs::etcd::{watch_cluster, EtcdSource};
use crate::proxy::cancel::CancelRegistry;
use crate::proxy::listener;
use crate::proxy::route::{Port, Router};
use crate::proxy::session::Shared;
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("listen.{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the router until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let scope = config.cluster.scope.clone();
    let (tx, rx) = watch::channel(Arc::new(Topology::empty(&scope)));
    let source = EtcdSource {
        endpoints: config.cluster.etcd.clone(),
        prefix: config.key_prefix(),
        scope: scope.clone(),
    };
    let primary = bind("primary", config.listen.primary).await?;
    let replicas = bind("replicas", config.listen.replicas).await?;

    let max_lag = config.routing.max_replica_lag.0;
    let shared = Arc::new(Shared {
        scope,
        router: Router::new(config.routing.clone()),
        cancels: CancelRegistry::default(),
        topology: rx.clone(),
        startup_timeout: config.listen.startup_timeout.0,
    });
    let limits = Arc::new(Semaphore::new(config.listen.max_client_conn));
    let tasks = [
        tokio::spawn(watch_cluster(source, tx)),
        tokio::spawn(log_changes(rx, max_lag)),
        tokio::spawn(listener::serve(
            primary,
            Port::Primary,
            shared.clone(),
            limits.clone(),
        )),
        tokio::spawn(listener::serve(replicas, Port::Replicas, shared, limits)),
    ];
    tracing::info!(
        primary = %config.listen.primary,
        replicas = %config.listen.replicas,
        cluster = %config.cluster.scope,
        etcd = ?config.cluster.etcd,
        "pgrouter listening"
    );
    shutdown.await;
    for task in tasks {
        task.abort();
    }
    Ok(())
}

async fn bind(key: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { key, addr, source })
}

/// One info line per topology change: leader moves, replicas joining or leaving reads, and why.
async fn log_changes(mut rx: watch::Receiver<Arc<Topology>>, max_lag: u64) {
    let mut old = rx.borrow_and_update().clone();
    while rx.changed().await.is_ok() {
        let new = rx.borrow_and_update().clone();
        let changes = describe_changes(&old, &new, max_lag);
        if !changes.is_empty() {
            tracing::info!(cluster = %new.scope, "topology: {}", changes.join("; "));
        }
        old = new;
    }
}

pub fn describe_changes(old: &Topology, new: &Topology, max_lag: u64) -> Vec<String> {
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
    for m in new.members.values() {
        let was = old
            .members
            .get(&m.name)
            .map(|o| old.replica_eligibility(o, max_lag));
        let now = new.replica_eligibility(m, max_lag);
        match (was, now) {
            (Some(Ok(())), Ok(())) => {}
            (_, Ok(())) => changes.push(format!("replica {} in", m.name)),
            (Some(Ok(())), Err(why)) => changes.push(format!("replica {} out ({why})", m.name)),
            _ => {}
        }
    }
    for name in old.members.keys().filter(|n| !new.members.contains_key(*n)) {
        changes.push(format!("member {name} gone"));
    }
    changes
}
