//! What every session shares: the settings in force, routing state, cancel keys, metrics,
//! pause switches and the shutdown signal. Passed in, never global.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::route::{Port, Router};
use crate::servers::credentials::Credentials;
use crate::servers::pools::Pools;
use crate::signal::Signals;
use crate::topology::LagSample;
use crate::topology::Topology;

pub struct Shared {
    pub scope: String,
    config: watch::Sender<Arc<Config>>,
    config_epoch: AtomicU64,
    pub router: Router,
    pub cancels: CancelRegistry,
    pub topology: watch::Receiver<Arc<Topology>>,
    pub metrics: Arc<Metrics>,
    /// The client listeners, fixed at start.
    ports: Vec<Port>,
    /// Pause state per port: the flag relays read on every turn, the channel held clients wait on.
    paused: Vec<AtomicBool>,
    pause: Vec<watch::Sender<bool>>,
    /// The last lag check's measurements, by member (from the read-set task).
    pub lags: std::sync::Mutex<std::collections::BTreeMap<String, LagSample>>,
    /// Cancelled on SIGTERM: listeners stop; sessions see `shutting_down` and drain.
    pub shutdown: CancellationToken,
    shutting_down: AtomicBool,
    /// Why sessions are being closed when it is not pgrouter stopping (a cluster removed).
    shutdown_reason: std::sync::OnceLock<String>,
    /// Wakes running sessions when the topology, the settings, pause or shutdown change.
    pub signals: Signals,
    /// How members' Patroni REST APIs are asked (HTTPS settings), set at start.
    pub rest: std::sync::OnceLock<crate::dcs::rest::RestClient>,
    /// What keeps the DCS view from being read, for /health and /status.
    pub dcs_health: Arc<crate::dcs::DcsHealth>,
    /// KILL from the console.
    pub kills: crate::signal::Kills,
    /// Server connection pools and pooled clients (pooled modes).
    pub pools: Pools,
    /// Users' secrets from auth_file (pooled modes).
    pub credentials: Credentials,
    /// TLS acceptor and member connector in force; replaced on reload.
    tls: std::sync::RwLock<crate::tls::Transport>,
    /// Reloads asked for by the admin console and the admin endpoint, served by the app.
    reloads: tokio::sync::mpsc::UnboundedSender<ReloadRequest>,
    reload_requests: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ReloadRequest>>>,
}

/// A reload request and where its outcome goes.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

impl Shared {
    pub fn new(
        config: Config,
        topology: watch::Receiver<Arc<Topology>>,
        metrics: Arc<Metrics>,
    ) -> Shared {
        let (reloads, requests) = tokio::sync::mpsc::unbounded_channel();
        let ports = Port::all(&config);
        Shared {
            scope: config.cluster.scope.clone(),
            config: watch::channel(Arc::new(config)).0,
            config_epoch: AtomicU64::new(0),
            router: Router::default(),
            cancels: CancelRegistry::default(),
            topology,
            metrics,
            paused: ports.iter().map(|_| AtomicBool::new(false)).collect(),
            pause: ports.iter().map(|_| watch::channel(false).0).collect(),
            lags: Default::default(),
            ports,
            shutdown: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            shutdown_reason: Default::default(),
            signals: Signals::default(),
            rest: Default::default(),
            dcs_health: Default::default(),
            kills: Default::default(),
            pools: Pools::default(),
            credentials: Credentials::default(),
            tls: Default::default(),
            reloads,
            reload_requests: std::sync::Mutex::new(Some(requests)),
        }
    }

    pub fn rest(&self) -> crate::dcs::rest::RestClient {
        self.rest.get().cloned().unwrap_or_default()
    }

    pub fn transport(&self) -> crate::tls::Transport {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_transport(&self, tls: crate::tls::Transport) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// Asks the app to reload its config file, and waits for the outcome.
    pub async fn request_reload(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reloads
            .send(tx)
            .map_err(|_| "pgrouter is not serving reloads".to_owned())?;
        rx.await
            .unwrap_or_else(|_| Err("the reload was dropped".to_owned()))
    }

    /// The receiving end of reload requests; the app takes it once.
    pub fn take_reload_requests(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<ReloadRequest>> {
        self.reload_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The client listeners: primary, replicas, then `[listeners]` in name order.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// Notified when a reload installs new settings.
    pub fn config_changes(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    /// The settings in force; a reload swaps them whole.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Installs reloaded settings; running sessions re-check their member against them.
    pub fn set_config(&self, config: Arc<Config>) {
        self.config.send_replace(config);
        self.config_epoch.fetch_add(1, Ordering::Release);
        self.signals.raise_all();
    }

    /// How many times the settings were replaced: a session that saw this number has seen
    /// the settings in force (one atomic load, no subscription to keep).
    pub fn config_epoch(&self) -> u64 {
        self.config_epoch.load(Ordering::Acquire)
    }

    /// True while `port` is paused: new clients and new transactions wait.
    pub fn pause_switch(&self, port: Port) -> watch::Receiver<bool> {
        self.pause[port.index()].subscribe()
    }

    pub fn set_paused(&self, port: Port, paused: bool) {
        self.paused[port.index()].store(paused, Ordering::Release);
        self.pause[port.index()].send_replace(paused);
        let gauge = self.metrics.paused.with_label_values(&[port.label()]);
        gauge.set(i64::from(paused));
        self.signals.raise_all();
    }

    pub fn is_paused(&self, port: Port) -> bool {
        self.paused[port.index()].load(Ordering::Acquire)
    }

    /// Stops the listeners and asks every session to close at its next idle point.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.cancel();
        self.signals.raise_all();
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Ends the cluster's sessions as a shutdown does, for `reason` (a reload removed it).
    pub fn begin_shutdown_because(&self, reason: String) {
        let _ = self.shutdown_reason.set(reason);
        self.begin_shutdown();
    }

    /// What sessions closed by the shutdown are told.
    pub fn shutdown_reason(&self) -> &str {
        self.shutdown_reason
            .get()
            .map_or("pgrouter is shutting down", String::as_str)
    }
}
