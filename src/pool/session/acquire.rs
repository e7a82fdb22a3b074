//! A member for the client's port and a server connection from its pool, held as every
//! client is held (`crate::hold`) while there is none. A transaction that finds the topology
//! and settings unchanged since the last one takes the last one's route without a hold.

use std::pin::pin;
use std::sync::Arc;

use tokio::time::Instant;

use super::{Held, PooledSession};
use crate::auth::secret::ScramKeys;
use crate::config::Config;
use crate::hold::{self, Attempt, Hold, Unserved};
use crate::protocol::error::{sqlstate, PgError};
use crate::route::Route;
use crate::servers::pools::{Ask, Begun, CheckoutError, Lease, Pool, PoolKey};
use crate::servers::server::ServerError;
use crate::stream::Stream;
use crate::topology::Topology;

/// The member and pool the last transaction used, valid while the topology and settings it
/// was picked under are the ones in force (compared by pointer: a new view is a new Arc).
pub(super) struct RouteCache {
    topology: Arc<Topology>,
    config: Arc<Config>,
    /// `shared.config_epoch()` read before `config` was: a reload since shows as a change.
    config_epoch: u64,
    /// `topology` was the session's topology receiver's latest when this was made, so the
    /// receiver showing no change since means it is still the one in force.
    current: bool,
    pool: Arc<Pool>,
    route: Arc<Route>,
}

impl RouteCache {
    /// The member the last transaction used, for the session's log line.
    pub(super) fn member(&self) -> &str {
        &self.route.member.name
    }
}

impl PooledSession {
    /// A member for the client's port, and a connection from its pool, holding while there
    /// is none (no leader, switchover announced, paused) up to hold_timeout.
    /// `arrived`: when the client's message came.
    pub(super) async fn acquire(&mut self, arrived: Instant) -> Result<Held, Unserved> {
        let mut first = None;
        if let Some(cache) = self.unchanged_route() {
            // Nothing changed since the last transaction, and the port is not paused: the
            // same member and pool, no hold set up (and nothing shared by every session
            // touched: the settings' and topology's locks and counts).
            let attempt = self
                .checkout(&cache.pool, &cache.route, &cache.config, arrived)
                .await;
            let route = cache.route.clone();
            self.route_cache = Some(cache);
            match attempt {
                Attempt::Served(lease) => return Ok(self.served(lease, route, arrived)),
                Attempt::Retry { error, soon } => first = Some((error, soon)),
                Attempt::Refuse(e) => return Err(Unserved::Refused(e)),
                Attempt::Left => return Err(Unserved::ClientLeft(arrived.elapsed())),
            }
        }
        Box::pin(self.acquire_held(arrived, first)).await
    }

    /// The last transaction's route, when the port is not paused and neither the topology
    /// nor the settings changed since it was picked: atomic loads only.
    fn unchanged_route(&mut self) -> Option<Box<RouteCache>> {
        let shared = &self.shared;
        let fresh = |c: &RouteCache| {
            c.current
                && c.config_epoch == shared.config_epoch()
                && matches!(self.topology.has_changed(), Ok(false))
        };
        if shared.is_paused(self.port) || !self.route_cache.as_deref().is_some_and(fresh) {
            return None;
        }
        self.route_cache.take()
    }

    /// `acquire` through the hold: `first`, when the cached route's try already failed so.
    async fn acquire_held(
        &mut self,
        arrived: Instant,
        mut first: Option<(PgError, bool)>,
    ) -> Result<Held, Unserved> {
        let shared = self.shared.clone();
        let config_epoch = shared.config_epoch();
        let mut hold = Hold::begin(&shared, self.port, &self.client, arrived).await?;
        // When this try began: the arrival for the first, read again after a wait.
        let mut asked = arrived;
        loop {
            if let Some((error, soon)) = first.take() {
                Box::pin(hold.retry(error, soon)).await?;
                asked = Instant::now();
            }
            let (topology, config) = hold.view();
            let config = config.clone();
            let cached = match self.route_cache.take() {
                // Same topology and settings as last time: same member, same pool.
                Some(c)
                    if Arc::ptr_eq(&c.topology, &topology) && Arc::ptr_eq(&c.config, &config) =>
                {
                    c
                }
                _ => match shared.router.pick(&config, &topology, self.port) {
                    Ok(route) => {
                        let current = Arc::ptr_eq(&self.topology.borrow_and_update(), &topology);
                        self.cache_route(route, topology, config.clone(), config_epoch, current)
                    }
                    Err(why) => {
                        let e = hold::no_member(&shared, &config, self.port, &why, true);
                        let error = transaction_error(e);
                        if !shared.router.holds(&config, &topology, self.port) {
                            return Err(Unserved::Refused(error));
                        }
                        first = Some((error, false));
                        continue;
                    }
                },
            };
            let (pool, route) = (cached.pool.clone(), cached.route.clone());
            self.route_cache = Some(cached);
            match self.checkout(&pool, &route, &config, asked).await {
                Attempt::Served(lease) => return Ok(self.served(lease, route, hold.arrived())),
                Attempt::Retry { error, soon } => first = Some((error, soon)),
                Attempt::Refuse(e) => return Err(Unserved::Refused(e)),
                Attempt::Left => return Err(Unserved::ClientLeft(hold.waited())),
            }
        }
    }

    /// The connection lent, the time since `arrived` counted as the hold's.
    fn served(&self, lease: Lease, route: Arc<Route>, arrived: Instant) -> Held {
        let waited = lease.taken().duration_since(arrived);
        self.hold_seconds.observe(waited.as_secs_f64());
        let retire = false;
        Held {
            lease,
            route,
            retire,
        }
    }

    /// A route picked under `topology` and `config` (read after `config_epoch`; `current`:
    /// see `RouteCache`), with its pool.
    fn cache_route(
        &self,
        route: Route,
        topology: Arc<Topology>,
        config: Arc<Config>,
        config_epoch: u64,
        current: bool,
    ) -> Box<RouteCache> {
        let database = &self.registration.entry.database;
        let plan = config.plan(database, &self.server_user);
        let key = PoolKey {
            member: route.member.name.clone(),
            target: route.target.into(),
            database: database.clone(),
            user: self.server_user.clone(),
        };
        let pool = self.shared.pools.get(key, &route.member.addr, &plan);
        Box::new(RouteCache {
            topology,
            config,
            config_epoch,
            current,
            pool,
            route: Arc::new(route),
        })
    }

    /// A connection from `pool`, unless the client leaves while in line; what went wrong in
    /// the client's words otherwise. Taken in the pool's steps, so that a transaction's
    /// future carries only the small wait in line: a free idle connection needs no future,
    /// and the rare rest (a check, a new connection) is boxed.
    async fn checkout(
        &self,
        pool: &Arc<Pool>,
        route: &Route,
        config: &Config,
        asked: Instant,
    ) -> Attempt<Lease> {
        let ask = Ask {
            config: &config.pool,
            home: self.home,
            asked,
        };
        let rest = match pool.begin(ask) {
            Begun::Lent(lease) => return Attempt::Served(lease),
            Begun::Rest(rest) => rest,
            Begun::Queued(queued) => {
                let Some(granted) = unless_found_left(&self.client, pin!(queued)).await else {
                    return Attempt::Left;
                };
                match pool.waited(granted, ask) {
                    Ok(Ok(lease)) => return Attempt::Served(lease),
                    Ok(Err(rest)) => rest,
                    Err(e) => return self.attempt_of(route, Err(e)),
                }
            }
        };
        let shared = &self.shared;
        let user = &self.server_user;
        let open_with = || {
            (
                shared.credentials.login(user, &self.login),
                shared.transport(),
            )
        };
        let connect_timeout = config.routing.connect_timeout.0;
        let finish = pool.finish(rest, ask, &shared.pools, open_with, connect_timeout);
        let Some(finished) = unless_found_left(&self.client, Box::pin(finish).as_mut()).await
        else {
            return Attempt::Left;
        };
        self.attempt_of(route, finished)
    }

    /// A checkout's end: the lease, or what went wrong in the client's words.
    fn attempt_of(
        &self,
        route: &Route,
        checked_out: Result<(Lease, Option<ScramKeys>), CheckoutError>,
    ) -> Attempt<Lease> {
        let shared = &self.shared;
        let user = &self.server_user;
        let scope = &shared.scope;
        let member = &route.member.name;
        let failure = match checked_out {
            Ok((lease, derived)) => {
                if let Some(keys) = derived {
                    shared.credentials.remember_keys(user, keys);
                }
                return Attempt::Served(lease);
            }
            Err(CheckoutError::Busy { pool, waited, size }) => {
                return Attempt::Refuse(PgError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!(
                        "pgrouter: cluster \"{scope}\": no server connection free for \"{user}\" on member \"{member}\" after {:.1}s (pool {pool}, pool_size {size})",
                        waited.as_secs_f64()
                    ),
                ))
            }
            Err(CheckoutError::Limit {
                limit,
                max,
                waited,
            }) => {
                let database = &self.registration.entry.database;
                return Attempt::Refuse(PgError::error(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!(
                        "pgrouter: cluster \"{scope}\": no server connection for \"{user}\" to database \"{database}\" on member \"{member}\" after {:.1}s: {limit} ({max}) are open and busy",
                        waited.as_secs_f64()
                    ),
                ));
            }
            Err(CheckoutError::Server(e)) => e,
        };
        match failure {
            // Starting up or shutting down, as the old leader in a switchover.
            ServerError::Refused { code, message } if code == sqlstate::CANNOT_CONNECT_NOW => {
                let error = PgError {
                    fatal: false,
                    ..hold::not_now(scope, route, &message)
                }
                .with_hint("The member is starting up or shutting down; retry the transaction.");
                Attempt::Retry { error, soon: true }
            }
            ServerError::Refused { code, message } => {
                if code == sqlstate::INVALID_PASSWORD {
                    shared.credentials.forget_keys(user);
                }
                Attempt::Refuse(PgError::error(
                    sqlstate::CONNECTION_FAILURE,
                    format!(
                        "pgrouter: cluster \"{scope}\": member \"{member}\" refused a server connection for \"{user}\": {code} {message}"
                    ),
                ))
            }
            e @ ServerError::Auth(_) => {
                shared.credentials.forget_keys(user);
                Attempt::Refuse(PgError::error(
                    sqlstate::CONNECTION_FAILURE,
                    format!("pgrouter: cluster \"{scope}\": cannot log in to member \"{member}\" as \"{user}\": {e}"),
                ))
            }
            e => {
                shared.metrics.member_connect_error(member);
                let error = hold::unreachable(scope, route, &e.to_string());
                Attempt::Retry {
                    error: PgError {
                        fatal: false,
                        ..error
                    },
                    soon: true,
                }
            }
        }
    }
}

/// A hold's error as a pooled client hears it: its transaction fails, its connection stays.
fn transaction_error(e: PgError) -> PgError {
    PgError { fatal: false, ..e }
        .with_hint("Patroni is electing or promoting a leader; retry the transaction.")
}

/// `checkout`, unless the client is found gone when the checkout is woken without its
/// connection (the pool upkeep nudges waiters once a second): no watch is set up on the path
/// where the connection comes, which is most transactions under load.
async fn unless_found_left<F: std::future::Future>(
    client: &Stream,
    mut checkout: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    use std::task::Poll;
    let mut woken = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = checkout.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        if std::mem::replace(&mut woken, true) && client.has_closed() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}
