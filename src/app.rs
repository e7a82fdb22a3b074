//! The running router: wires the etcd watcher, the topology observer, the client listeners and
//! the admin endpoint; reloads its config; shuts down by draining sessions.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::dcs::etcd::EtcdConnections;
use crate::proxy::listener;
use crate::shards::Shards;
use crate::shared::Shared;

mod cluster;
mod files;

pub use cluster::describe_changes;
use cluster::Instance;
pub use files::check_files;

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
    /// The first cluster's (`[cluster]`).
    pub shared: Arc<Shared>,
    limits: Arc<Semaphore>,
    sessions: TaskTracker,
    shards: Arc<Shards>,
    /// The first cluster's client listeners by port number, then admin; replaced when a
    /// reload moves them.
    listeners: Mutex<Vec<Option<Bound>>>,
    /// Serializes reloads (SIGHUP and POST /reload may race).
    reloading: tokio::sync::Mutex<()>,
    /// Further clusters (`[clusters.<name>]`), by that name.
    others: Mutex<BTreeMap<String, Instance>>,
    /// The further clusters as the admin endpoint sees them, by scope.
    admin_others: crate::admin::Others,
    /// Every cluster's metrics, each series labelled with its cluster.
    registry: Registry,
    /// The process-wide series in `registry` (build, process, limit, reloads).
    router_metrics: crate::metrics::RouterMetrics,
    /// etcd connections, shared by clusters that use the same etcd.
    connections: Arc<EtcdConnections>,
    /// The first cluster's tasks.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// The admin endpoint's TLS acceptor in force (`listen.admin_tls`), replaced on reload.
    admin_tls: tokio::sync::watch::Sender<Option<tokio_rustls::TlsAcceptor>>,
}

/// Runs the router until `shutdown` completes, then drains sessions for up to drain_timeout.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let users = load_users(&config)?;
    let tls = crate::tls::Transport::load(&config)?;
    let admin_tls = crate::admin::tls::acceptor(&config)?;
    let shards = Shards::start(config.runtime.workers()).map_err(AppError::Workers)?;
    let registry = Registry::new();
    let router_metrics =
        crate::metrics::RouterMetrics::register(&registry, config.listen.max_client_conn);
    let connections = Arc::new(EtcdConnections::default());
    let first = cluster::start(config.clone(), &registry, &connections, users, tls)?;
    let app = Arc::new(App {
        config_path,
        limits: Arc::new(Semaphore::new(config.listen.max_client_conn)),
        shared: first.shared,
        sessions: TaskTracker::new(),
        shards: Arc::new(shards),
        listeners: Mutex::new(Vec::new()),
        reloading: tokio::sync::Mutex::new(()),
        others: Mutex::new(BTreeMap::new()),
        admin_others: Default::default(),
        registry,
        router_metrics,
        connections,
        background: Mutex::new(first.background),
        admin_tls: tokio::sync::watch::Sender::new(admin_tls),
    });
    app.bind_changed(&config).await?;
    for name in config.clusters.keys() {
        app.add_cluster(name, &config).await?;
    }
    lock(&app.background).extend([
        tokio::spawn(reload_on_sighup(app.clone())),
        tokio::spawn(reload_on_request(app.clone(), app.shared.clone())),
    ]);
    let extra: Vec<String> = config
        .client_listeners()
        .iter()
        .skip(2)
        .map(|(name, addr)| format!("{name}={addr}"))
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        primary = %config.listen.primary,
        replicas = %config.listen.replicas,
        listeners = ?extra,
        admin = %config.listen.admin,
        cluster = %config.cluster.scope,
        source = ?config.cluster.source,
        etcd = ?config.cluster.etcd,
        clusters = ?config.clusters.keys().collect::<Vec<_>>(),
        workers = app.shards.count(),
        admin_tls = config.listen.admin_tls,
        "pgrouter listening"
    );
    warn_admin_in_clear(&config);
    lock(&app.background).push(tokio::spawn(ready_once_synced(app.shared.topology.clone())));
    shutdown.await;
    crate::notify::notify("STOPPING=1");
    app.drain().await;
    for task in lock(&app.background).drain(..) {
        task.abort();
    }
    Ok(())
}

impl App {
    /// Re-reads the config file: validated first, so a bad file changes nothing. Routing and
    /// limits apply at once; moved listeners rebind without touching existing sessions;
    /// clusters added to `[clusters]` start, removed ones drain as a shutdown does.
    pub async fn reload(self: &Arc<Self>) -> Result<(), AppError> {
        let _one_at_a_time = self.reloading.lock().await;
        let outcome = self.apply_reload().await;
        let limit = self.shared.config().listen.max_client_conn;
        self.router_metrics.reloaded(outcome.is_ok(), limit);
        outcome
    }

    /// `reload`'s work, one at a time.
    async fn apply_reload(self: &Arc<Self>) -> Result<(), AppError> {
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
        if let Some((name, _)) = new
            .clusters
            .iter()
            .find(|(name, c)| old.clusters.get(*name).is_some_and(|o| o != *c))
        {
            return Err(ConfigError::Invalid {
                key: format!("clusters.{name}"),
                reason: "a running cluster's settings change by removing it (one reload) and adding it back (another), or with a restart".into(),
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
        let admin_tls = crate::admin::tls::acceptor(&new)?;
        for c in new.clusters.values() {
            crate::dcs::access::load(c)?;
        }
        // New clusters first, then moved listeners: a failure takes back what this reload
        // started and leaves the rest as it was.
        let added: Vec<&String> = new
            .clusters
            .keys()
            .filter(|n| !old.clusters.contains_key(*n))
            .collect();
        for (i, name) in added.iter().enumerate() {
            if let Err(e) = self.add_cluster(name, &new).await {
                for name in &added[..i] {
                    self.remove_cluster(name, "its start was undone: the reload failed");
                }
                return Err(e);
            }
        }
        if let Err(e) = self.bind_changed(&new).await {
            for name in &added {
                self.remove_cluster(name, "its start was undone: the reload failed");
            }
            return Err(e);
        }
        for name in old
            .clusters
            .keys()
            .filter(|n| !new.clusters.contains_key(*n))
        {
            self.remove_cluster(name, "it was removed from pgrouter's config");
        }
        let (was, now) = (old.listen.max_client_conn, new.listen.max_client_conn);
        if now > was {
            self.limits.add_permits(now - was);
        } else {
            self.limits.forget_permits(was - now);
        }
        for (name, instance) in lock(&self.others).iter() {
            let Some(config) = new.for_cluster(name) else {
                continue;
            };
            instance.shared.credentials.set_users(users.clone());
            instance.shared.set_transport(tls.clone());
            instance.shared.set_config(Arc::new(config));
        }
        self.shared.credentials.set_users(users);
        self.shared.set_transport(tls);
        // Connections accepted from now on use the new certificate (or none).
        self.admin_tls.send_replace(admin_tls);
        warn_admin_in_clear(&new);
        self.shared.set_config(Arc::new(new));
        tracing::info!(path = %path.display(), "config reloaded");
        Ok(())
    }

    /// Starts serving `[clusters.<name>]` of `config`: its listeners bound first (an error
    /// names the key), then its view, sessions and tasks.
    /// (Boxed as `Send`: a reload adds clusters, and a cluster's console can ask for reloads.)
    fn add_cluster<'a>(
        self: &'a Arc<Self>,
        name: &'a str,
        config: &'a Config,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), AppError>> + Send + 'a>> {
        Box::pin(async move {
            let derived = config
                .for_cluster(name)
                .expect("a validated [clusters] entry");
            let mut bound = Vec::new();
            for (port, addr) in [
                ("primary", derived.listen.primary),
                ("replicas", derived.listen.replicas),
            ] {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Bind {
                        key: format!("clusters.{name}.{port}"),
                        addr,
                        source,
                    })?;
                bound.push(listener);
            }
            let users = load_users(&derived)?;
            let tls = crate::tls::Transport::load(&derived)?;
            let started = cluster::start(derived, &self.registry, &self.connections, users, tls)?;
            let shared = started.shared;
            let sessions = TaskTracker::new();
            let mut tasks = started.background;
            for (listener, port) in bound.into_iter().zip(shared.ports().to_vec()) {
                tasks.push(tokio::spawn(listener::serve(
                    listener,
                    port,
                    shared.clone(),
                    self.limits.clone(),
                    sessions.clone(),
                    self.shards.clone(),
                )));
            }
            tasks.push(tokio::spawn(reload_on_request(
                self.clone(),
                shared.clone(),
            )));
            let admin = crate::admin::Admin::new(shared.clone(), sessions.clone());
            lock(&self.admin_others).insert(shared.scope.clone(), admin);
            tracing::info!(cluster = %shared.scope, name, primary = %shared.config().listen.primary, replicas = %shared.config().listen.replicas, "serving a further cluster");
            lock(&self.others).insert(
                name.to_owned(),
                Instance {
                    shared,
                    sessions,
                    tasks,
                },
            );
            Ok(())
        })
    }

    /// Stops serving `[clusters.<name>]`: its sessions drain as in a shutdown, told `why`.
    fn remove_cluster(&self, name: &str, why: &str) {
        let Some(instance) = lock(&self.others).remove(name) else {
            return;
        };
        lock(&self.admin_others).remove(&instance.shared.scope);
        let reason = format!(
            "cluster \"{}\" is no longer served: {why}",
            instance.shared.scope
        );
        instance.remove(reason);
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
                    let first = crate::admin::Admin::new(shared, self.sessions.clone());
                    let endpoint = crate::admin::Endpoint::new(first, self.admin_others.clone());
                    tokio::spawn(crate::admin::http::serve(
                        listener,
                        Arc::new(endpoint),
                        self.admin_tls.subscribe(),
                    ))
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
        let others: Vec<(Arc<Shared>, TaskTracker)> = lock(&self.others)
            .values()
            .map(|i| (i.shared.clone(), i.sessions.clone()))
            .collect();
        for (shared, sessions) in &others {
            shared.begin_shutdown();
            sessions.close();
        }
        let all = async {
            self.sessions.wait().await;
            for (_, sessions) in &others {
                sessions.wait().await;
            }
        };
        if tokio::time::timeout(drain_timeout + Duration::from_secs(2), all)
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.sessions.len() + others.iter().map(|(_, s)| s.len()).sum::<usize>(),
                "sessions still open after drain_timeout"
            );
        }
        for bound in self.lock_listeners().iter().flatten() {
            bound.task.abort();
        }
        for instance in lock(&self.others).values() {
            for task in &instance.tasks {
                task.abort();
            }
        }
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, Vec<Option<Bound>>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tells systemd (`Type=notify`) the router is ready once the first cluster's view has been
/// read: the listeners are bound by then, and clients are routed rather than held.
async fn ready_once_synced(
    mut topology: tokio::sync::watch::Receiver<Arc<crate::topology::Topology>>,
) {
    if topology.wait_for(|t| t.synced).await.is_ok() {
        crate::notify::notify("READY=1\nSTATUS=listening, the cluster's view read");
        tracing::info!("ready: listeners bound and the cluster's view read");
    }
}

/// A token sent in clear beyond this host is worth a warning at every start and reload.
fn warn_admin_in_clear(config: &Config) {
    let l = &config.listen;
    if l.admin_token.is_some() && !l.admin_tls && !l.admin.ip().is_loopback() {
        tracing::warn!(
            admin = %l.admin,
            "the admin endpoint is plain HTTP off loopback: its bearer token crosses the network in clear (set listen.admin_tls)"
        );
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

/// Reloads asked for through `shared`'s cluster: the admin console's RELOAD and the admin
/// endpoint's POST /reload.
async fn reload_on_request(app: Arc<App>, shared: Arc<Shared>) {
    let Some(mut requests) = shared.take_reload_requests() else {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Inserts, removals and drains only: a panic cannot leave these half-changed.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
