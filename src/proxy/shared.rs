//! What every session shares: the settings in force, routing state, cancel keys, metrics,
//! pause switches and the shutdown signal. Passed in, never global.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cancel::CancelRegistry;
use super::route::{Port, Router};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::topology::Topology;

pub struct Shared {
    pub scope: String,
    config: watch::Sender<Arc<Config>>,
    pub router: Router,
    pub cancels: CancelRegistry,
    pub topology: watch::Receiver<Arc<Topology>>,
    pub metrics: Arc<Metrics>,
    pause: [watch::Sender<bool>; 2],
    /// Cancelled on SIGTERM: sessions drain at their next idle point.
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn new(
        config: Config,
        topology: watch::Receiver<Arc<Topology>>,
        metrics: Arc<Metrics>,
    ) -> Shared {
        Shared {
            scope: config.cluster.scope.clone(),
            config: watch::channel(Arc::new(config)).0,
            router: Router::default(),
            cancels: CancelRegistry::default(),
            topology,
            metrics,
            pause: [watch::channel(false).0, watch::channel(false).0],
            shutdown: CancellationToken::new(),
        }
    }

    /// The settings in force; a reload swaps them whole.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Installs reloaded settings; running sessions re-check their member against them.
    pub fn set_config(&self, config: Arc<Config>) {
        self.config.send_replace(config);
    }

    pub fn config_changes(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    /// True while `port` is paused: new clients and new transactions wait.
    pub fn pause_switch(&self, port: Port) -> watch::Receiver<bool> {
        self.pause[port as usize].subscribe()
    }

    pub fn set_paused(&self, port: Port, paused: bool) {
        self.pause[port as usize].send_replace(paused);
        self.metrics
            .paused
            .with_label_values(&[port.label()])
            .set(i64::from(paused));
    }

    pub fn is_paused(&self, port: Port) -> bool {
        *self.pause[port as usize].borrow()
    }
}
