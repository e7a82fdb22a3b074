//! Holding a client until a member can take it: the one loop pass-through and pooled
//! sessions both wait in (port paused, no leader, a switchover under way, a member starting
//! up or shutting down), up to `routing.hold_timeout`, and the one role check a session
//! runs while it is served.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::config::Config;
use crate::protocol::error::{sqlstate, PgError};
use crate::route::{Port, Route, Verdict};
use crate::shared::Shared;
use crate::stream::Stream;
use crate::topology::Topology;

/// How long a failed connect waits before it tries again while the client is held.
const CONNECT_RETRY: Duration = Duration::from_millis(250);

/// What one try to serve a held client came to.
pub enum Attempt<T> {
    Served(T),
    /// Nothing this time; `soon`: try again after `CONNECT_RETRY` (a member refused or failed)
    /// rather than at the next topology change. `error` is the client's if the hold runs out.
    Retry {
        error: PgError,
        soon: bool,
    },
    /// Give up now with this error.
    Refuse(PgError),
    /// The client closed its connection.
    Left,
}

/// Why a held client was not served.
pub enum Unserved {
    /// Tell the client this.
    Refused(PgError),
    /// The client closed its connection while held, after waiting this long.
    ClientLeft(Duration),
}

/// A client held until a member can take it. [`Hold::begin`] waits while the port is paused
/// (pgbouncer's PAUSE; the hold starts after it); then each try takes the [`Hold::view`] in
/// force and, when it comes to nothing, [`Hold::retry`] waits for the next topology (or a
/// moment, after a member's failure) until `routing.hold_timeout` passes. The loop is the
/// caller's, so a try may borrow what it likes; [`Hold::run`] is that loop for a try that
/// is a closure.
pub struct Hold<'a> {
    client: &'a Stream,
    arrived: Instant,
    deadline: Instant,
    config: Arc<Config>,
    topology: watch::Receiver<Arc<Topology>>,
}

impl<'a> Hold<'a> {
    /// Holds the client that arrived `arrived` (the caller's clock reading: one per
    /// transaction serves all that time it).
    pub async fn begin(
        shared: &Shared,
        port: Port,
        client: &'a Stream,
        arrived: Instant,
    ) -> Result<Hold<'a>, Unserved> {
        // The hold starts after a pause.
        let mut started = arrived;
        if shared.is_paused(port) {
            let mut paused = shared.pause_switch(port);
            while *paused.borrow_and_update() {
                match unless_left(client, paused.changed()).await {
                    Some(Ok(())) => {}
                    Some(Err(_)) => break,
                    None => return Err(Unserved::ClientLeft(arrived.elapsed())),
                }
            }
            started = Instant::now();
        }
        let config = shared.config();
        Ok(Hold {
            client,
            arrived,
            deadline: started + config.routing.hold_timeout.0,
            config,
            topology: shared.topology.clone(),
        })
    }

    /// When the client arrived.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// The topology and the settings to try under now.
    pub fn view(&mut self) -> (Arc<Topology>, &Arc<Config>) {
        (self.topology.borrow_and_update().clone(), &self.config)
    }

    /// How long the client has been held, pause included.
    pub fn waited(&self) -> Duration {
        self.arrived.elapsed()
    }

    /// After a try that came to nothing: waits for the next one, or says why there is none.
    pub async fn retry(&mut self, error: PgError, soon: bool) -> Result<(), Unserved> {
        match unless_left(
            self.client,
            wait_to_retry(&mut self.topology, self.deadline, soon),
        )
        .await
        {
            Some(true) => Ok(()),
            Some(false) => Err(Unserved::Refused(error)),
            None => Err(Unserved::ClientLeft(self.waited())),
        }
    }

    /// Tries `attempt` until it serves or the hold ends; what it served and the time held.
    pub async fn run<T, F, Fut>(mut self, mut attempt: F) -> Result<(T, Duration), Unserved>
    where
        F: FnMut(Arc<Topology>, Arc<Config>) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        loop {
            let (topology, config) = self.view();
            let config = config.clone();
            match attempt(topology, config).await {
                Attempt::Served(t) => return Ok((t, self.waited())),
                Attempt::Retry { error, soon } => self.retry(error, soon).await?,
                Attempt::Refuse(e) => return Err(Unserved::Refused(e)),
                Attempt::Left => return Err(Unserved::ClientLeft(self.waited())),
            }
        }
    }
}

/// Why `port` has no member now, as the client is told once the hold ran out (`held`), or
/// at once when the cluster offers nothing worth waiting for.
pub fn no_member(shared: &Shared, config: &Config, port: Port, why: &str, held: bool) -> PgError {
    let role = match (config.rules(port.index()).role, port) {
        (crate::config::Selector::Primary, Port::PRIMARY) => {
            "no leader to route writes to".to_owned()
        }
        (crate::config::Selector::Primary, _) => {
            format!("no leader to route listener {port}'s writes to")
        }
        (_, Port::REPLICAS) => "no member to route reads to".to_owned(),
        (_, _) => format!("no member to route listener {port}'s reads to"),
    };
    let waited = if held {
        format!(
            " after waiting {}s",
            config.routing.hold_timeout.0.as_secs_f64()
        )
    } else {
        String::new()
    };
    // What keeps the DCS from being read (TLS, credentials, no keys), when something does.
    let (why, hint) = match shared.dcs_health.problem() {
        Some(problem) => (
            format!("{why} ({problem})"),
            "pgrouter cannot read the cluster's state from its DCS; /health says why.",
        ),
        None => (
            why.to_owned(),
            "Patroni is electing or promoting a leader; retry shortly.",
        ),
    };
    PgError::fatal(
        sqlstate::CANNOT_CONNECT_NOW,
        format!(
            "pgrouter: cluster \"{}\": {role}{waited}: {why}",
            shared.scope
        ),
    )
    .with_hint(hint)
}

/// The attempt's outcome when the router has no member for `port`: wait for the topology
/// to change, or refuse at once when nothing will come of waiting.
pub fn without_member<T>(
    shared: &Shared,
    config: &Config,
    topology: &Topology,
    port: Port,
    why: &str,
) -> Attempt<T> {
    if shared.router.holds(config, topology, port) {
        let error = no_member(shared, config, port, why, true);
        Attempt::Retry { error, soon: false }
    } else {
        Attempt::Refuse(no_member(shared, config, port, why, false))
    }
}

/// `route`'s member answered a connection with its own 57P03 until the hold ran out.
pub fn not_now(scope: &str, route: &Route, why: &str) -> PgError {
    PgError::fatal(
        sqlstate::CANNOT_CONNECT_NOW,
        format!(
            "pgrouter: cluster \"{scope}\": member \"{}\" is not accepting connections: {why}",
            route.member.name
        ),
    )
    .with_hint("The member is starting up or shutting down; retry shortly.")
}

/// `route`'s member could not be reached.
pub fn unreachable(scope: &str, route: &Route, cause: &str) -> PgError {
    PgError::fatal(
        sqlstate::CONNECTION_FAILURE,
        format!(
            "pgrouter: cluster \"{scope}\": cannot reach member \"{}\" at {}: {cause}",
            route.member.name, route.member.addr
        ),
    )
}

/// One step of holding a client: waits for the topology to change, or `CONNECT_RETRY` when a
/// member refused a connection; false once `deadline` has passed (or the view is gone).
async fn wait_to_retry(
    topology: &mut watch::Receiver<Arc<Topology>>,
    deadline: Instant,
    soon: bool,
) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    let wait = if soon {
        CONNECT_RETRY.min(deadline - now)
    } else {
        deadline - now
    };
    !matches!(timeout(wait, topology.changed()).await, Ok(Err(_)))
}

/// `work`, unless the client closes its connection first.
pub async fn unless_left<T>(client: &Stream, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        done = work => Some(done),
        () = client.closed() => None,
    }
}

/// Counts and logs a client that closed its connection while held or in line for a server
/// connection: nothing it sent reaches a member.
pub fn left_waiting(shared: &Shared, port: Port, peer: &str, waited: Duration) {
    shared
        .metrics
        .clients_left_waiting
        .with_label_values(&[port.label()])
        .inc();
    let waited = waited.as_secs_f64();
    tracing::info!(%peer, %port, waited, "client left while waiting for a server");
}

/// Whether a served session's member may still serve, asked again only when the topology or
/// the settings changed since the last time (a change before the first time counts: one
/// that arrived between routing and now must not be missed). Only atomic loads until then
/// (the topology receiver's version, the settings' epoch); wake-ups come from the session's
/// signal, which costs nothing to poll, unlike a `changed()` future shared by every session.
pub struct RoleCheck {
    topology: watch::Receiver<Arc<Topology>>,
    /// The settings' epoch last checked against; `None` before the first check.
    config_epoch: Option<u64>,
}

impl RoleCheck {
    /// A check that runs at its first `changed`, then on every change.
    pub fn new(shared: &Shared) -> RoleCheck {
        RoleCheck {
            topology: shared.topology.clone(),
            config_epoch: None,
        }
    }

    /// Makes the next `changed` check whatever changed (for a route not checked before).
    pub fn recheck(&mut self) {
        self.config_epoch = None;
    }

    /// The router's verdict when something changed since the last call; `None` otherwise.
    pub fn changed(&mut self, shared: &Shared, route: &Route) -> Option<Verdict> {
        let epoch = shared.config_epoch();
        let topology_changed = self.topology.has_changed().unwrap_or(true);
        if !topology_changed && self.config_epoch == Some(epoch) {
            return None;
        }
        Some(self.now(shared, route))
    }

    /// The router's verdict on the views in force.
    pub fn now(&mut self, shared: &Shared, route: &Route) -> Verdict {
        // The epoch before the settings: a reload between the two is seen next time.
        self.config_epoch = Some(shared.config_epoch());
        let current = self.topology.borrow_and_update().clone();
        shared.router.check(&current, route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::route::Target;
    use crate::topology::{Member, Role};

    fn member(name: &str, role: Role, wal_position: u64) -> Member {
        crate::topology::tests::member(name, role, "running", Some(wal_position))
    }

    /// A leader at WAL 10,000 and a replica 5,000 bytes behind it.
    fn cluster() -> Topology {
        let mut t = Topology::empty("d");
        t.synced = true;
        t.leader = Some("pg0".into());
        for m in [
            member("pg0", Role::Primary, 10_000),
            member("pg1", Role::Replica, 5_000),
        ] {
            t.members.insert(m.name.clone(), m.into());
        }
        t
    }

    fn config(max_replica_lag: &str) -> Config {
        let toml = format!(
            "[cluster]\nscope = \"d\"\netcd = [\"127.0.0.1:1\"]\n[routing]\nmax_replica_lag = \"{max_replica_lag}\"\n"
        );
        Config::from_toml(&toml).unwrap()
    }

    /// `cluster()` with its read sets judged under `config`, as the read-set task publishes it.
    fn judged(config: &Config) -> Topology {
        let mut t = cluster();
        let mut judge = crate::topology::standing::Judge::default();
        judge.judge(&t, config, 2, tokio::time::Instant::now());
        t.reads = judge.sets().clone();
        t
    }

    #[test]
    fn a_session_asks_again_on_a_reload_or_a_new_view() {
        let (topology, views) = watch::channel(Arc::new(judged(&config("1MB"))));
        let shared = Shared::new(config("1MB"), views, Arc::new(Metrics::new()));
        let route = Route::new(
            member("pg1", Role::Replica, 5_000),
            Target::Replica,
            Port::REPLICAS,
        );
        let mut roles = RoleCheck::new(&shared);
        assert_eq!(
            roles.changed(&shared, &route),
            Some(Verdict::Keep),
            "asked at first"
        );
        assert_eq!(roles.changed(&shared, &route), None, "nothing changed");
        // A reload: asked again (the read sets it changes come as a new view).
        shared.set_config(Arc::new(config("1kB")));
        assert_eq!(roles.changed(&shared, &route), Some(Verdict::Keep));
        topology.send_replace(Arc::new(judged(&config("1kB"))));
        let verdict = roles.changed(&shared, &route);
        assert!(
            matches!(&verdict, Some(Verdict::Drain(why)) if why.contains("pg1")),
            "{verdict:?}"
        );
        assert_eq!(roles.changed(&shared, &route), None);
        // A new topology without the leader key: a leader route closes at once.
        let leader = Route::new(
            member("pg0", Role::Primary, 10_000),
            Target::Leader,
            Port::PRIMARY,
        );
        let mut roles = RoleCheck::new(&shared);
        assert_eq!(roles.changed(&shared, &leader), Some(Verdict::Keep));
        let mut lost = cluster();
        lost.leader = None;
        topology.send_replace(Arc::new(lost));
        assert!(matches!(
            roles.changed(&shared, &leader),
            Some(Verdict::CloseNow(_))
        ));
    }
}
