//! PAUSE and RESUME, one behaviour for the admin endpoint and the admin console, pgbouncer's:
//! PAUSE holds new clients and new transactions on the ports, then waits for the transactions
//! in flight to finish, up to `routing.drain_timeout`. The ports stay paused either way, until
//! RESUME.

use std::time::{Duration, Instant};

use crate::route::Port;
use crate::shared::Shared;

/// How often the wait looks again at the clients still active.
const POLL: Duration = Duration::from_millis(20);

/// What a pause left.
#[derive(Debug, Clone, PartialEq)]
pub struct Paused {
    /// The ports paused.
    pub ports: Vec<Port>,
    /// Clients still active on those ports (in a transaction or a query, or authenticating)
    /// when the wait ended: 0 once all have finished.
    pub active: i64,
    /// How long it waited for them.
    pub waited: Duration,
}

impl Paused {
    pub fn labels(&self) -> Vec<&'static str> {
        self.ports.iter().map(|p| p.label()).collect()
    }
}

/// Holds new clients and new transactions on `ports`, then waits until no client on them is
/// active (`pgrouter_client_connections{state="active"}`, pass-through and pooled clients
/// alike) or `routing.drain_timeout` has passed.
/// An admin console session counts as idle (`proxy::session`), so a console's PAUSE does
/// not wait for itself, nor for another console.
pub async fn pause(shared: &Shared, ports: &[Port]) -> Paused {
    for port in ports {
        shared.set_paused(*port, true);
    }
    let limit = shared.config().routing.drain_timeout.0;
    let started = Instant::now();
    let mut left = active(shared, ports);
    while left > 0 && started.elapsed() < limit {
        tokio::time::sleep(POLL).await;
        left = active(shared, ports);
    }
    let paused = Paused {
        ports: ports.to_vec(),
        active: left.max(0),
        waited: started.elapsed(),
    };
    tracing::info!(ports = ?paused.labels(), active = paused.active, waited = ?paused.waited, "paused");
    paused
}

/// Releases what `pause` held on `ports`.
pub fn resume(shared: &Shared, ports: &[Port]) {
    for port in ports {
        shared.set_paused(*port, false);
    }
    let labels: Vec<&str> = ports.iter().map(|p| p.label()).collect();
    tracing::info!(ports = ?labels, "resumed");
}

/// Clients active on `ports` now.
fn active(shared: &Shared, ports: &[Port]) -> i64 {
    ports
        .iter()
        .map(|p| {
            shared
                .metrics
                .client_connections
                .with_label_values(&[p.label(), "active"])
                .get()
        })
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::metrics::{ClientState, Metrics, StateGauge};
    use crate::topology::Topology;

    /// A router's shared state with `drain_timeout` as the pause's limit.
    pub(crate) fn shared(drain_timeout: &str) -> Arc<Shared> {
        let config = Config::from_toml(&format!(
            "[cluster]\nscope = \"d\"\netcd = [\"127.0.0.1:1\"]\n\
             [routing]\ndrain_timeout = \"{drain_timeout}\"\n"
        ))
        .unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Topology::empty("d")));
        Arc::new(Shared::new(config, rx, Arc::new(Metrics::new())))
    }

    /// A client on `port` counted as active, as a session in a transaction is.
    pub(crate) fn active_client(shared: &Shared, port: Port) -> StateGauge {
        let mut client = StateGauge::new(&shared.metrics, port.label());
        client.set(ClientState::Active);
        client
    }

    #[tokio::test]
    async fn with_nothing_in_flight_pause_returns_at_once() {
        let shared = shared("10s");
        let mut idle = StateGauge::new(&shared.metrics, "primary");
        idle.set(ClientState::Idle);
        let paused = pause(&shared, &[Port::PRIMARY, Port::REPLICAS]).await;
        assert_eq!(paused.active, 0);
        assert!(paused.waited < Duration::from_secs(1), "{paused:?}");
        assert!(shared.is_paused(Port::PRIMARY) && shared.is_paused(Port::REPLICAS));
    }

    #[tokio::test]
    async fn pause_waits_for_the_transaction_in_flight() {
        let shared = shared("10s");
        let mut client = active_client(&shared, Port::PRIMARY);
        let finishes = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.set(ClientState::Idle);
            client
        });
        let paused = pause(&shared, &[Port::PRIMARY]).await;
        assert_eq!(paused.active, 0);
        assert!(paused.waited >= Duration::from_millis(300), "{paused:?}");
        assert!(paused.waited < Duration::from_secs(10), "{paused:?}");
        assert!(finishes.is_finished());
    }

    #[tokio::test]
    async fn still_busy_at_drain_timeout_pause_says_so_and_the_ports_stay_paused() {
        let shared = shared("300ms");
        let _busy = [
            active_client(&shared, Port::PRIMARY),
            active_client(&shared, Port::REPLICAS),
        ];
        let paused = pause(&shared, &[Port::PRIMARY, Port::REPLICAS]).await;
        assert_eq!(paused.active, 2);
        assert!(paused.waited >= Duration::from_millis(300), "{paused:?}");
        assert!(shared.is_paused(Port::PRIMARY) && shared.is_paused(Port::REPLICAS));
        resume(&shared, &[Port::PRIMARY, Port::REPLICAS]);
        assert!(!shared.is_paused(Port::PRIMARY) && !shared.is_paused(Port::REPLICAS));
    }

    #[tokio::test]
    async fn pause_waits_only_for_the_ports_it_pauses() {
        let shared = shared("10s");
        let _busy = active_client(&shared, Port::REPLICAS);
        let paused = pause(&shared, &[Port::PRIMARY]).await;
        assert_eq!((paused.active, paused.labels()), (0, vec!["primary"]));
        assert!(paused.waited < Duration::from_secs(1), "{paused:?}");
        assert!(!shared.is_paused(Port::REPLICAS));
    }
}
