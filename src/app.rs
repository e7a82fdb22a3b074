//! The running router: wires the etcd watcher, the topology observer, the client listeners and
//! the admin endpoint; reloads its config; shuts down by draining sessions.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::dcs::etcd::{watch_cluster, EtcdSource};
use crate::metrics::Metrics;
use crate::proxy::listener;
use crate::route::Port;
use crate::shards::Shards;
use crate::shared::Shared;
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("listen.{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the worker threads (runtime.worker_threads): {0}")]
    Workers(std::io::Error),
    #[error("no config file to reload: pgrouter was started without --config")]
    NoConfigFile,
}

/// A bound listener and the task accepting on it.
struct Bound {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

pub struct App {
    config_path: Option<PathBuf>,
    pub shared: Arc<Shared>,
    limits: Arc<Semaphore>,
    sessions: TaskTracker,
    shards: Arc<Shards>,
    /// primary, replicas, admin; replaced when a reload moves them.
    listeners: Mutex<[Option<Bound>; 3]>,
    /// Serializes reloads (SIGHUP and POST /reload may race).
    reloading: tokio::sync::Mutex<()>,
}

/// Runs the router until `shutdown` completes, then drains sessions for up to drain_timeout.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(Arc::new(Topology::empty(&config.cluster.scope)));
    let source = EtcdSource {
        endpoints: config.cluster.etcd.clone(),
        prefix: config.key_prefix(),
        scope: config.cluster.scope.clone(),
    };
    let users = load_users(&config)?;
    let tls = crate::tls::Transport::load(&config)?;
    let shards = Shards::start(config.runtime.workers()).map_err(AppError::Workers)?;
    let shared = Arc::new(Shared::new(config, rx.clone(), metrics.clone()));
    shared.credentials.set_users(users);
    shared.set_transport(tls);
    let app = Arc::new(App {
        config_path,
        limits: Arc::new(Semaphore::new(shared.config().listen.max_client_conn)),
        shared,
        sessions: TaskTracker::new(),
        shards: Arc::new(shards),
        listeners: Mutex::new([None, None, None]),
        reloading: tokio::sync::Mutex::new(()),
    });
    app.bind_changed(&app.shared.config()).await?;
    let background = [
        tokio::spawn(watch_cluster(source, tx, metrics)),
        tokio::spawn(observe_topology(rx, app.shared.clone())),
        tokio::spawn(reload_on_sighup(app.clone())),
        tokio::spawn(reload_on_request(app.clone())),
        tokio::spawn(crate::pool::maintain(app.shared.clone())),
    ];
    let config = app.shared.config();
    tracing::info!(
        primary = %config.listen.primary,
        replicas = %config.listen.replicas,
        admin = %config.listen.admin,
        cluster = %config.cluster.scope,
        etcd = ?config.cluster.etcd,
        workers = app.shards.count(),
        "pgrouter listening"
    );
    shutdown.await;
    app.drain().await;
    for task in background {
        task.abort();
    }
    Ok(())
}

impl App {
    /// Re-reads the config file: validated first, so a bad file changes nothing. Routing and
    /// limits apply at once; moved listeners rebind without touching existing sessions.
    pub async fn reload(self: &Arc<Self>) -> Result<(), AppError> {
        let _one_at_a_time = self.reloading.lock().await;
        let path = self.config_path.as_ref().ok_or(AppError::NoConfigFile)?;
        let new = Config::load(path)?;
        let old = self.shared.config();
        if new.cluster != old.cluster {
            return Err(ConfigError::Invalid {
                key: "cluster".into(),
                reason: "changing the cluster or etcd endpoints needs a restart".into(),
            }
            .into());
        }
        if new.runtime != old.runtime {
            tracing::warn!("runtime settings change at the next start, not on reload");
        }
        let users = load_users(&new)?;
        let tls = crate::tls::Transport::load(&new)?;
        self.bind_changed(&new).await?;
        self.shared.credentials.set_users(users);
        self.shared.set_transport(tls);
        let (was, now) = (old.listen.max_client_conn, new.listen.max_client_conn);
        if now > was {
            self.limits.add_permits(now - was);
        } else {
            self.limits.forget_permits(was - now);
        }
        self.shared.set_config(Arc::new(new));
        tracing::info!(path = %path.display(), "config reloaded");
        Ok(())
    }

    /// Binds every listener whose address differs from what is bound now. All new sockets are
    /// bound before any old one is released, so a failure leaves everything as it was.
    async fn bind_changed(self: &Arc<Self>, config: &Config) -> Result<(), AppError> {
        let wanted = [
            ("primary", config.listen.primary),
            ("replicas", config.listen.replicas),
            ("admin", config.listen.admin),
        ];
        let current: Vec<Option<SocketAddr>> = self
            .lock_listeners()
            .iter()
            .map(|b| b.as_ref().map(|b| b.addr))
            .collect();
        let mut fresh = Vec::new();
        for (i, (key, addr)) in wanted.into_iter().enumerate() {
            if current[i] != Some(addr) {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Bind { key, addr, source })?;
                fresh.push((i, addr, listener));
            }
        }
        let mut listeners = self.lock_listeners();
        for (i, addr, listener) in fresh {
            let shared = self.shared.clone();
            let task = match i {
                0 | 1 => {
                    let port = Port::ALL[i];
                    tokio::spawn(listener::serve(
                        listener,
                        port,
                        shared,
                        self.limits.clone(),
                        self.sessions.clone(),
                        self.shards.clone(),
                    ))
                }
                _ => {
                    let admin = crate::admin::Admin::new(shared, self.sessions.clone());
                    tokio::spawn(crate::admin::http::serve(listener, Arc::new(admin)))
                }
            };
            if let Some(old) = listeners[i].replace(Bound { addr, task }) {
                tracing::info!(old = %old.addr, new = %addr, "listener moved");
                old.task.abort();
            }
        }
        Ok(())
    }

    /// Stops accepting, asks every session to close at its next idle point, and waits for
    /// them up to drain_timeout (sessions cut themselves when it passes).
    async fn drain(&self) {
        let drain_timeout = self.shared.config().routing.drain_timeout.0;
        tracing::info!(
            sessions = self.sessions.len(),
            ?drain_timeout,
            "shutting down: draining sessions"
        );
        self.shared.begin_shutdown();
        self.sessions.close();
        if tokio::time::timeout(drain_timeout + Duration::from_secs(2), self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.sessions.len(),
                "sessions still open after drain_timeout"
            );
        }
        for bound in self.lock_listeners().iter().flatten() {
            bound.task.abort();
        }
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, [Option<Bound>; 3]> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The auth file's users (none without one); an unreadable or malformed file is refused
/// with the key, the line and the reason, never a secret.
fn load_users(
    config: &Config,
) -> Result<std::collections::HashMap<String, crate::auth::secret::Secret>, ConfigError> {
    match &config.auth.auth_file {
        None => Ok(Default::default()),
        Some(path) => crate::servers::credentials::Credentials::read_file(path).map_err(|reason| {
            ConfigError::Invalid {
                key: "auth.auth_file".into(),
                reason,
            }
        }),
    }
}

/// Reloads asked for by the admin console's RELOAD and the admin endpoint's POST /reload.
async fn reload_on_request(app: Arc<App>) {
    let Some(mut requests) = app.shared.take_reload_requests() else {
        return;
    };
    while let Some(reply) = requests.recv().await {
        let outcome = app.reload().await.map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "reload refused; the running config is unchanged");
        }
        let _ = reply.send(outcome);
    }
}

async fn reload_on_sighup(app: Arc<App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; reload through POST /reload");
        return;
    };
    while hup.recv().await.is_some() {
        if let Err(e) = app.reload().await {
            tracing::error!(error = %e, "reload refused; the running config is unchanged");
        }
    }
}

/// On every topology change: wake the sessions, one info line (leader moves, replicas joining
/// or leaving reads, and why), and the per-member metrics.
async fn observe_topology(mut rx: watch::Receiver<Arc<Topology>>, shared: Arc<Shared>) {
    let mut old = rx.borrow_and_update().clone();
    while rx.changed().await.is_ok() {
        // Sessions read the new topology themselves; this only wakes the idle ones.
        shared.signals.raise_all();
        let new = rx.borrow_and_update().clone();
        let max_lag = shared.config().routing.max_replica_lag.0;
        shared.metrics.observe_topology(&old, &new, max_lag);
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
