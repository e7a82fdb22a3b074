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

use crate::config::Source;
use crate::config::{Config, ConfigError};
use crate::dcs::etcd::{watch_cluster, EtcdSource};
use crate::dcs::rest_source::{poll_cluster, RestSource};
use crate::metrics::Metrics;
use crate::proxy::listener;
use crate::shards::Shards;
use crate::shared::Shared;
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: String,
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
    /// The client listeners by port number, then admin; replaced when a reload moves them.
    listeners: Mutex<Vec<Option<Bound>>>,
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
    // etcd's view, and the same with each listener's read set: what sessions route by.
    let (raw_tx, raw_rx) = watch::channel(Arc::new(Topology::empty(&config.cluster.scope)));
    let (tx, rx) = watch::channel(Arc::new(Topology::empty(&config.cluster.scope)));
    let (access, rest) = crate::dcs::access::load(&config.cluster)?;
    let users = load_users(&config)?;
    let tls = crate::tls::Transport::load(&config)?;
    let shards = Shards::start(config.runtime.workers()).map_err(AppError::Workers)?;
    let shared = Arc::new(Shared::new(config, rx.clone(), metrics.clone()));
    let cluster = shared.config().cluster.clone();
    let watcher = match cluster.source {
        Source::Etcd => tokio::spawn(watch_cluster(
            EtcdSource {
                endpoints: cluster.etcd.clone(),
                prefix: shared.config().key_prefix(),
                scope: cluster.scope.clone(),
                access,
                rest: rest.clone(),
                health: shared.dcs_health.clone(),
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
    let app = Arc::new(App {
        config_path,
        limits: Arc::new(Semaphore::new(shared.config().listen.max_client_conn)),
        shared,
        sessions: TaskTracker::new(),
        shards: Arc::new(shards),
        listeners: Mutex::new(Vec::new()),
        reloading: tokio::sync::Mutex::new(()),
    });
    app.bind_changed(&app.shared.config()).await?;
    let background = [
        watcher,
        tokio::spawn(crate::reads::follow(raw_rx, tx, app.shared.clone())),
        tokio::spawn(observe_topology(rx, app.shared.clone())),
        tokio::spawn(reload_on_sighup(app.clone())),
        tokio::spawn(reload_on_request(app.clone())),
        tokio::spawn(crate::pool::maintain(app.shared.clone())),
    ];
    let config = app.shared.config();
    let extra: Vec<String> = config
        .client_listeners()
        .iter()
        .skip(2)
        .map(|(name, addr)| format!("{name}={addr}"))
        .collect();
    tracing::info!(
        primary = %config.listen.primary,
        replicas = %config.listen.replicas,
        listeners = ?extra,
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
        let names = |c: &Config| -> Vec<String> { c.listeners.keys().cloned().collect() };
        if names(&new) != names(&old) {
            return Err(ConfigError::Invalid {
                key: "listeners".into(),
                reason: format!(
                    "adding or removing a listener needs a restart (running {:?}, file has {:?})",
                    names(&old),
                    names(&new)
                ),
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
        // The client listeners by number (`Port`), then admin.
        let mut wanted: Vec<(String, SocketAddr)> = config
            .client_listeners()
            .into_iter()
            .map(|(name, addr)| match name {
                "primary" | "replicas" => (format!("listen.{name}"), addr),
                name => (format!("listeners.{name}.listen"), addr),
            })
            .collect();
        wanted.push(("listen.admin".to_owned(), config.listen.admin));
        let current: Vec<Option<SocketAddr>> = {
            let bound = self.lock_listeners();
            (0..wanted.len())
                .map(|i| bound.get(i).and_then(|b| b.as_ref().map(|b| b.addr)))
                .collect()
        };
        let mut fresh = Vec::new();
        for (i, (key, addr)) in wanted.iter().enumerate() {
            if current[i] != Some(*addr) {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Bind {
                        key: key.clone(),
                        addr: *addr,
                        source,
                    })?;
                fresh.push((i, *addr, listener));
            }
        }
        let ports = self.shared.ports().to_vec();
        let mut listeners = self.lock_listeners();
        listeners.resize_with(wanted.len(), || None);
        for (i, addr, listener) in fresh {
            let shared = self.shared.clone();
            let task = match ports.get(i) {
                Some(port) => tokio::spawn(listener::serve(
                    listener,
                    *port,
                    shared,
                    self.limits.clone(),
                    self.sessions.clone(),
                    self.shards.clone(),
                )),
                None => {
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

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, Vec<Option<Bound>>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads and checks every file the config names (auth file, TLS certificates and keys, etcd's
/// and the REST APIs' CAs and client certificates), as `check-config` and a start do.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    load_users(config)?;
    crate::tls::Transport::load(config)?;
    crate::dcs::access::load(&config.cluster)?;
    Ok(())
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

/// On every topology change: wake the sessions, one info line (leader moves, writes held or
/// going where), and the leader metrics. Read-set changes are logged where they are judged
/// (`crate::reads`), with the lag that moved them.
async fn observe_topology(mut rx: watch::Receiver<Arc<Topology>>, shared: Arc<Shared>) {
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
