//! A pooled client: authenticated by pgrouter, lent a server connection per transaction
//! (transaction mode) or for its whole stay (session mode).
//!
//! While it holds a server connection the session runs one readiness loop over both sockets
//! with bounded buffers, reading whole only the messages it must look into (statements,
//! ReadyForQuery, ParameterStatus, errors) and streaming the rest. Every message sent to the
//! server that expects an answer leaves an entry in `expect`, so answers can be matched,
//! swallowed (to messages pgrouter added) or made up (for messages it did not need to send).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stream::Stream;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::time::{timeout, Instant};

use super::client_auth::{self, AuthError, Passed};
use super::statements::{self, sql_effects, ClientStatements, Statement};
use crate::cancel::Registration;
use crate::config::PoolMode;
use crate::metrics::{ClientState, StateGauge};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::startup::{CancelKey, Startup};
use crate::protocol::wire;
use crate::proxy::session::unless_left;
use crate::route::{Port, Route, Verdict};
use crate::servers::message_memory::{Grant, COUNTED_FROM};
use crate::servers::pools::{CheckoutError, ClientActivity, ClientRegistration, Lease, PoolKey};
use crate::servers::server::{Login, ServerError};
use crate::servers::tracked::{self, Tracked, TRACKED};
use crate::shared::Shared;
use crate::signal::Subscription;

/// Past this much unsent data in one direction, pgrouter stops reading the other side.
const BUFFER_LIMIT: usize = 256 * 1024;
/// A buffer grown past this is given back to the allocator when its client goes idle.
const KEEP_CAPACITY: usize = 8 * 1024;
/// A buffer a server connection lends is kept up to this size.
const LENT_CAPACITY: usize = 2 * BUFFER_LIMIT;
/// Reads go into buffers with at least this much room, grown by `READ_CHUNK`.
const READ_MIN: usize = 4 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// What an answer from the server settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A client's Parse; `Some(id)` when pgrouter prepared it under its pooled name.
    Parse(Option<u64>),
    /// A Parse pgrouter added: its ParseComplete is not the client's.
    InjectedParse(u64),
    Bind,
    Describe,
    Close,
    Execute,
    /// Sync, Query or FunctionCall: settled by ReadyForQuery.
    Sync,
    /// A query pgrouter added (SET of the client's parameters): every answer is swallowed.
    InjectedQuery,
    /// Answers pgrouter gives itself once everything before them is answered.
    MadeUpParseComplete,
    MadeUpCloseComplete,
}

/// Why the client's session ends.
enum End {
    /// Terminate, EOF or an I/O error on the client side.
    ClientGone,
    /// Tell the client this, then close.
    Fatal(PgError),
    /// The client wrote bytes that cannot frame a message.
    ClientProtocol(String),
}

/// Why a unit of work got no server connection.
enum Unserved {
    /// Tell the client this; the connection stays.
    Refused(PgError),
    /// The client closed its connection while held or in line, after waiting this long.
    ClientLeft(Duration),
}

/// How a transaction ended for the server connection.
enum Done {
    /// At a transaction boundary: the connection can serve another client.
    Idle,
    /// The client left; the connection is returned if clean.
    ClientLeft,
}

/// The member and pool the last transaction used, valid while the topology and settings it
/// was picked under are the ones in force (compared by pointer: a new view is a new Arc).
struct RouteCache {
    topology: Arc<crate::topology::Topology>,
    config: Arc<crate::config::Config>,
    pool: Arc<crate::servers::pools::Pool>,
    route: Arc<Route>,
}

struct Held {
    lease: Lease,
    route: Arc<Route>,
    /// The member left the pool's role mildly (replica no longer eligible): close on release.
    retire: bool,
}

pub struct PooledSession {
    shared: Arc<Shared>,
    port: Port,
    mode: PoolMode,
    client: Stream,
    login: Login,
    registration: ClientRegistration,
    state: StateGauge,
    signal: Subscription,
    cancel: crate::cancel::PooledTarget,
    statements: ClientStatements,
    /// Tracked parameters the client set itself (at startup or with SET), as the server
    /// reported them; the others are the `defaults` of its database and user.
    vars: tracked::Vars,
    defaults: Option<Arc<Tracked>>,
    cin: BytesMut,
    sin: BytesMut,
    to_server: BytesMut,
    to_client: BytesMut,
    expect: VecDeque<Expect>,
    /// Extended-protocol messages sent since the last Sync: the batch is open.
    unsynced: bool,
    status: u8,
    pinned: bool,
    /// Bytes of the current client message still to forward unread (streamed CopyData).
    client_stream_left: usize,
    /// Bytes of the current server message still to forward (or drop) unread.
    server_stream_left: usize,
    server_stream_drop: bool,
    /// An error owed to the client for a transaction pgrouter lost; given with its next message.
    owed: Option<PgError>,
    /// After an error outside a server: drop the client's messages up to its Sync.
    skipping: bool,
    /// `pool.message_memory` taken by the large message being received, held until the
    /// transaction ends.
    large: Option<Grant>,
    /// Inline, not boxed: a few words an idle client carries spare an allocation per
    /// transaction.
    held: Option<Held>,
    route_cache: Option<Box<RouteCache>>,
    /// The worker thread the session runs on: server connections are taken from it first.
    home: usize,
    /// This port's series, looked up once.
    hold_seconds: prometheus::Histogram,
    transactions: prometheus::IntCounter,
}

/// Authenticates a client of a pooled listener after its StartupMessage; the session to
/// `serve`, or None when the client was refused. Kept apart
/// from serving so the memory of this phase is given back before the client idles.
pub async fn start(
    shared: Arc<Shared>,
    port: Port,
    mode: PoolMode,
    mut client: Stream,
    startup: Startup,
    peer: String,
    state: StateGauge,
) -> Option<Box<PooledSession>> {
    let user = startup.user().to_owned();
    let database = startup.database().to_owned();
    let limit = shared.config().listen.startup_timeout.0;
    let auth = Box::pin(timeout(
        limit,
        authenticate(&shared, &mut client, &user, &database),
    ));
    let Passed { login, unsent } = match auth.await {
        Ok(Ok(passed)) => passed,
        Ok(Err(AuthError::Refused(e))) => {
            tracing::info!(%peer, %port, %user, error = %e, "refused a pooled client");
            send_fatal(&shared, &mut client, &e).await;
            return None;
        }
        Ok(Err(AuthError::Gone)) => return None,
        Err(_) => {
            tracing::info!(%peer, %port, %user, "pooled client did not finish authenticating in time");
            let e = PgError::fatal(
                sqlstate::QUERY_CANCELED,
                format!(
                    "pgrouter: cluster \"{}\": canceling authentication: not finished within listen.startup_timeout ({}s)",
                    shared.scope,
                    limit.as_secs_f64()
                ),
            );
            send_fatal(&shared, &mut client, &e).await;
            return None;
        }
    };
    let registration = shared
        .pools
        .register_client(&user, &database, &peer, port.label());
    let vars = TRACKED
        .iter()
        .filter_map(|k| {
            let v = startup
                .params
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(k))?;
            Some((*k, v.1.clone()))
        })
        .collect();
    let shared_metrics = shared.metrics.clone();
    drop(startup);
    let session = Box::new(PooledSession {
        signal: shared.signals.subscribe(),
        shared,
        port,
        mode,
        client,
        login,
        registration,
        state,
        cancel: Arc::new(Mutex::new(None)),
        statements: ClientStatements::default(),
        vars,
        defaults: None,
        cin: BytesMut::new(),
        sin: BytesMut::new(),
        to_server: BytesMut::new(),
        // The end of the authentication, sent with the welcome.
        to_client: unsent,
        expect: VecDeque::new(),
        unsynced: false,
        status: b'I',
        pinned: false,
        client_stream_left: 0,
        server_stream_left: 0,
        server_stream_drop: false,
        owed: None,
        skipping: false,
        large: None,
        held: None,
        route_cache: None,
        home: crate::shards::MAIN,
        hold_seconds: shared_metrics
            .hold_seconds
            .with_label_values(&[port.label()]),
        transactions: shared_metrics
            .transactions
            .with_label_values(&[port.label()]),
    });
    Some(session)
}

/// Authenticates with the user's secret from auth_file, else from auth_query.
pub async fn authenticate(
    shared: &Shared,
    client: &mut Stream,
    user: &str,
    database: &str,
) -> Result<Passed, AuthError> {
    let scope = &shared.scope;
    let secret = match shared.credentials.secret(user) {
        Some(s) => s,
        None => match super::auth_query::lookup(shared, user, database).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(AuthError::Refused(client_auth::wrong_password(scope, user))),
            Err(e) => return Err(AuthError::Refused(e)),
        },
    };
    client_auth::authenticate(client, &shared.credentials, scope, user, &secret).await
}

impl PooledSession {
    /// Serves the client until it leaves, on worker thread `home` (`crate::shards`).
    pub async fn serve(mut self: Box<Self>, home: usize) {
        self.home = home;
        let key = crate::cancel::pooled_key(self.shared.config().peers.id);
        let _cancel: Registration = self
            .shared
            .cancels
            .register_pooled(key.clone(), self.cancel.clone());
        let end = match Box::pin(self.welcome(&key)).await {
            Ok(()) => match self.main_loop().await {
                Ok(()) => End::ClientGone,
                Err(e) => e,
            },
            Err(e) => e,
        };
        if let Some(held) = self.held.take() {
            Box::pin(self.put_back(held, Done::ClientLeft)).await;
        }
        match end {
            End::ClientGone => {}
            End::Fatal(e) => {
                tracing::info!(peer = %self.registration.entry.peer, port = %self.port, error = %e, "closing pooled client");
                send_fatal(&self.shared, &mut self.client, &e).await;
            }
            End::ClientProtocol(why) => {
                let e = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("pgrouter: cluster \"{}\": {why}", self.shared.scope),
                );
                send_fatal(&self.shared, &mut self.client, &e).await;
            }
        }
    }

    /// Tells the client the server's parameters, its cancel key and ReadyForQuery. A client
    /// asking for nothing but the defaults (remembered from a fresh server connection for
    /// its database and user), or an application_name the server reports as sent, needs no
    /// server; otherwise one is borrowed to apply its settings, and the server's own spelling
    /// of them is reported. The end of the authentication goes out in the same write, or on
    /// its own before the wait for a server.
    async fn welcome(&mut self, key: &CancelKey) -> Result<(), End> {
        // AuthenticationOk and what came before it, from `start`.
        let mut out = std::mem::take(&mut self.to_client);
        let defaults = self.shared.pools.params(
            &self.registration.entry.database,
            &self.registration.entry.user,
        );
        let fits = defaults.as_ref().is_some_and(|d| {
            self.vars
                .iter()
                .all(|(k, v)| d.params.get(*k) == Some(v) || tracked::reported_as_sent(k, v))
        });
        let (params, defaults) = match defaults {
            Some(d) if fits => {
                let mut params = d.params.clone();
                for (k, v) in &self.vars {
                    if d.params.get(*k) != Some(v) {
                        Arc::make_mut(&mut params).insert(k.to_string(), v.clone());
                    }
                }
                (params, d)
            }
            _ => {
                // The client hears it is in before it waits for a server.
                self.client.send(&out).await.map_err(|_| End::ClientGone)?;
                out.clear();
                self.state.set(ClientState::Held);
                let held = match self.acquire().await {
                    Ok(held) => held,
                    Err(Unserved::Refused(e)) => {
                        return Err(End::Fatal(PgError { fatal: true, ..e }))
                    }
                    Err(Unserved::ClientLeft(waited)) => return Err(self.left_waiting(waited)),
                };
                self.hold(held);
                self.sync_vars();
                self.flush_to_server().await?;
                while self.expect.contains(&Expect::InjectedQuery) {
                    self.read_server().await?;
                }
                let held = self.held.take().expect("held above");
                let conn = &held.lease.conn;
                let mut params = (*conn.initial).clone();
                for (k, _) in &self.vars {
                    if let Some(v) = tracked::position(k).and_then(|i| conn.tracked.get(i)) {
                        params.insert(k.to_string(), v.to_owned());
                    }
                }
                let defaults = self.shared.pools.remember_params(
                    &self.registration.entry.database,
                    &self.registration.entry.user,
                    conn.initial.clone(),
                );
                self.put_back(held, Done::Idle).await;
                (Arc::new(params), defaults)
            }
        };
        let mut sorted: Vec<_> = params.iter().collect();
        sorted.sort();
        for (k, v) in sorted {
            wire::parameter_status(&mut out, k, v);
        }
        // Keep only what differs from the defaults: most clients then carry nothing.
        let mut vars = std::mem::take(&mut self.vars);
        for slot in &mut vars {
            if let Some(v) = params.get(slot.0) {
                slot.1 = v.clone();
            }
        }
        vars.retain(|(k, v)| defaults.params.get(*k) != Some(v));
        vars.shrink_to_fit();
        self.vars = vars;
        self.defaults = Some(defaults.tracked);
        wire::backend_key_data(&mut out, key.pid, &key.secret);
        wire::ready_for_query(&mut out, b'I');
        self.client.send(&out).await.map_err(|_| End::ClientGone)?;
        self.state.set(ClientState::Idle);
        Ok(())
    }

    async fn main_loop(&mut self) -> Result<(), End> {
        loop {
            self.idle_wait().await?;
            if self.cin[0] == b'X' {
                return Err(End::ClientGone);
            }
            // Boxed: an idle client's task holds only the idle wait.
            Box::pin(self.transaction()).await?;
        }
    }

    /// Runs the unit of work the client started on a server connection, and gives it back.
    async fn transaction(&mut self) -> Result<(), End> {
        if let Some(e) = self.owed.take() {
            return self.fail_unit(e).await;
        }
        self.registration.entry.set(ClientActivity::Waiting, 0);
        self.state.set(ClientState::Held);
        match self.acquire().await {
            Ok(held) => {
                self.registration
                    .entry
                    .set(ClientActivity::Active, held.lease.conn.id);
                *lock(&self.cancel) =
                    Some((held.lease.conn.addr.clone(), held.lease.conn.key.clone()));
                self.hold(held);
                self.read_sent_client();
            }
            Err(Unserved::Refused(e)) => return self.fail_unit(e).await,
            Err(Unserved::ClientLeft(waited)) => return Err(self.left_waiting(waited)),
        }
        self.state.set(ClientState::Active);
        self.sync_vars();
        let done = self.exchange().await;
        *lock(&self.cancel) = None;
        self.registration.entry.set(ClientActivity::Idle, 0);
        self.state.set(ClientState::Idle);
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                if let Some(held) = self.held.take() {
                    self.put_back(held, Done::ClientLeft).await;
                }
                return Err(e);
            }
        };
        if let Some(held) = self.held.take() {
            self.put_back(held, done).await;
        }
        self.shrink();
        Ok(())
    }

    /// Takes `held` and the buffers it lends; the client's unread bytes move into them.
    fn hold(&mut self, mut held: Held) {
        let lent = &mut held.lease.conn.buffers;
        lent.from_client.extend_from_slice(&self.cin);
        self.cin.clear();
        std::mem::swap(&mut self.cin, &mut lent.from_client);
        std::mem::swap(&mut self.sin, &mut lent.from_server);
        std::mem::swap(&mut self.to_server, &mut lent.to_server);
        std::mem::swap(&mut self.to_client, &mut lent.to_client);
        self.held = Some(held);
    }

    /// Reads, without waiting, what the client has sent beyond the idle wait's small buffer,
    /// so a batch (Parse, Bind, Execute, Sync) reaches the server in one write, not two.
    /// An EOF or error is left for the exchange to read again.
    fn read_sent_client(&mut self) {
        use std::future::Future;
        use tokio::io::AsyncReadExt;
        if self.cin.capacity() - self.cin.len() < READ_MIN {
            self.cin.reserve(READ_CHUNK);
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = std::pin::pin!(self.client.read_buf(&mut self.cin)).poll(&mut cx);
    }

    /// Gives `held` its buffers back, emptied; the client keeps its unread bytes. A buffer
    /// grown past what a connection keeps is dropped.
    fn give_back_buffers(&mut self, held: &mut Held) {
        let lent = &mut held.lease.conn.buffers;
        if self.cin.is_empty() {
            std::mem::swap(&mut self.cin, &mut lent.from_client);
        }
        std::mem::swap(&mut self.sin, &mut lent.from_server);
        std::mem::swap(&mut self.to_server, &mut lent.to_server);
        std::mem::swap(&mut self.to_client, &mut lent.to_client);
        for buf in [
            &mut lent.from_client,
            &mut lent.from_server,
            &mut lent.to_server,
            &mut lent.to_client,
        ] {
            buf.clear();
            if buf.capacity() > LENT_CAPACITY {
                *buf = BytesMut::new();
            }
        }
    }

    /// Waits, holding no server connection, for the client's next whole message.
    async fn idle_wait(&mut self) -> Result<(), End> {
        loop {
            if self.shared.shutting_down() {
                return Err(End::Fatal(PgError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    format!(
                        "pgrouter: cluster \"{}\": pgrouter is shutting down",
                        self.shared.scope
                    ),
                )));
            }
            match wire::header(&self.cin) {
                Ok(Some((_, len))) if self.cin.len() >= len => return Ok(()),
                Ok(Some((_, len))) if len > wire::MAX_WHOLE_MESSAGE => {
                    return Err(End::ClientProtocol(format!(
                        "message of {len} bytes is too long"
                    )))
                }
                // Room for the rest of the message (up to a chunk: a length is only a claim
                // until the bytes come): one read, not one per 64 bytes.
                Ok(Some((_, len))) => {
                    self.count_large_message(len)?;
                    self.cin.reserve((len - self.cin.len()).min(READ_CHUNK));
                }
                Ok(None) => {}
                Err(e) => return Err(End::ClientProtocol(e.to_string())),
            }
            use tokio::io::AsyncReadExt;
            tokio::select! {
                _ = self.signal.wait() => {}
                r = self.client.read_buf(&mut self.cin) => match r {
                    // A half-close after part of a message: told why, as in pass-through.
                    Ok(0) if !self.cin.is_empty() => {
                        return Err(End::ClientProtocol(
                            "the client closed the connection inside a message".into(),
                        ))
                    }
                    Ok(0) | Err(_) => return Err(End::ClientGone),
                    Ok(_) => {}
                },
            }
        }
    }

    /// Counts a message of `len` bytes being received against `pool.message_memory` when it
    /// is large (the grant already held may cover it); FATAL 53200 when it does not fit.
    fn count_large_message(&mut self, len: usize) -> Result<(), End> {
        if len < COUNTED_FROM || self.large.as_ref().is_some_and(|g| g.bytes() >= len) {
            return Ok(());
        }
        self.large = None;
        let limit = self.shared.config().pool.message_memory.0;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match self.shared.pools.message_memory.grant(len, limit) {
            Ok(grant) => {
                self.large = Some(grant);
                Ok(())
            }
            Err(in_use) => {
                let mb = |b: usize| b as f64 / f64::from(1 << 20);
                Err(End::Fatal(PgError::fatal(
                    sqlstate::OUT_OF_MEMORY,
                    format!(
                        "pgrouter: cluster \"{}\": out of memory for large client messages: a message of {:.1} MB would take pool.message_memory ({:.1} MB) past its limit, {:.1} MB being held by other clients' messages",
                        self.shared.scope, mb(len), mb(limit), mb(in_use)
                    ),
                )))
            }
        }
    }

    fn left_waiting(&self, waited: Duration) -> End {
        let peer = &self.registration.entry.peer;
        crate::proxy::session::left_waiting(&self.shared, self.port, peer, waited);
        End::ClientGone
    }

    /// A member for the client's port, and a connection from its pool, holding while there
    /// is none (no leader, switchover announced, paused) up to hold_timeout.
    async fn acquire(&mut self) -> Result<Held, Unserved> {
        let shared = self.shared.clone();
        if shared.is_paused(self.port) {
            let arrived = Instant::now();
            let mut paused = shared.pause_switch(self.port);
            while *paused.borrow_and_update() {
                match unless_left(&self.client, paused.changed()).await {
                    Some(Ok(())) => {}
                    Some(Err(_)) => break,
                    None => return Err(Unserved::ClientLeft(arrived.elapsed())),
                }
            }
        }
        let config = shared.config();
        let routing = &config.routing;
        let mut topology = shared.topology.clone();
        let hold = routing.hold_timeout.0;
        let started = Instant::now();
        let deadline = started + hold;
        let scope = &shared.scope;
        loop {
            let current = topology.borrow_and_update().clone();
            let picked = match self.route_cache.take() {
                // Same topology and settings as last time: same member, same pool.
                Some(c)
                    if Arc::ptr_eq(&c.topology, &current) && Arc::ptr_eq(&c.config, &config) =>
                {
                    Ok(c)
                }
                _ => shared
                    .router
                    .pick(routing, &current, self.port)
                    .map(|route| {
                        let key = PoolKey {
                            member: route.member.name.clone(),
                            target: route.target.into(),
                            database: self.registration.entry.database.clone(),
                            user: self.registration.entry.user.clone(),
                        };
                        let pool = shared
                            .pools
                            .get(key, &route.member.addr, config.pool.pool_size);
                        Box::new(RouteCache {
                            topology: current.clone(),
                            config: config.clone(),
                            pool,
                            route: Arc::new(route),
                        })
                    }),
            };
            let (failure, retry_soon) = match picked {
                Ok(cached) => {
                    let (pool, route) = (cached.pool.clone(), cached.route.clone());
                    self.route_cache = Some(cached);
                    let open_with = || {
                        (
                            shared
                                .credentials
                                .login(&self.registration.entry.user, &self.login),
                            shared.transport(),
                        )
                    };
                    let checkout = pool.checkout(
                        &shared.pools,
                        open_with,
                        &config.pool,
                        routing.connect_timeout.0,
                        self.home,
                    );
                    // Pinned here: the checkout is large, and moving it costs a copy.
                    tokio::pin!(checkout);
                    let Some(checked_out) = unless_found_left(&self.client, checkout).await else {
                        return Err(Unserved::ClientLeft(started.elapsed()));
                    };
                    match checked_out {
                        Ok((lease, derived)) => {
                            if let Some(keys) = derived {
                                shared.credentials.remember_keys(&self.registration.entry.user, keys);
                            }
                            self.hold_seconds.observe(started.elapsed().as_secs_f64());
                            return Ok(Held {
                                lease,
                                route,
                                retire: false,
                            });
                        }
                        Err(CheckoutError::Busy { pool, waited, size }) => {
                            return Err(Unserved::Refused(PgError::error(
                                sqlstate::CANNOT_CONNECT_NOW,
                                format!(
                                    "pgrouter: cluster \"{scope}\": no server connection free for \"{}\" on member \"{}\" after {:.1}s (pool {pool}, pool_size {size})",
                                    self.registration.entry.user, route.member.name, waited.as_secs_f64()
                                ),
                            )))
                        }
                        Err(CheckoutError::Server(ServerError::Refused { code, message }))
                            if code == sqlstate::CANNOT_CONNECT_NOW =>
                        {
                            // Starting up or shutting down, as the old leader in a switchover.
                            let e = crate::proxy::session::not_now(scope, &route, &message);
                            (
                                PgError { fatal: false, ..e }.with_hint(
                                    "The member is starting up or shutting down; retry the transaction.",
                                ),
                                true,
                            )
                        }
                        Err(CheckoutError::Server(ServerError::Refused { code, message })) => {
                            if code == sqlstate::INVALID_PASSWORD {
                                shared.credentials.forget_keys(&self.registration.entry.user);
                            }
                            return Err(Unserved::Refused(PgError::error(
                                sqlstate::CONNECTION_FAILURE,
                                format!(
                                    "pgrouter: cluster \"{scope}\": member \"{}\" refused a server connection for \"{}\": {code} {message}",
                                    route.member.name, self.registration.entry.user
                                ),
                            )));
                        }
                        Err(CheckoutError::Server(e @ ServerError::Auth(_))) => {
                            shared.credentials.forget_keys(&self.registration.entry.user);
                            return Err(Unserved::Refused(PgError::error(
                                sqlstate::CONNECTION_FAILURE,
                                format!(
                                    "pgrouter: cluster \"{scope}\": cannot log in to member \"{}\" as \"{}\": {e}",
                                    route.member.name, self.registration.entry.user
                                ),
                            )));
                        }
                        Err(CheckoutError::Server(e)) => (
                            PgError::error(
                                sqlstate::CONNECTION_FAILURE,
                                format!(
                                    "pgrouter: cluster \"{scope}\": cannot reach member \"{}\" at {}: {e}",
                                    route.member.name, route.member.addr
                                ),
                            ),
                            true,
                        ),
                    }
                }
                Err(why) => {
                    let role = match self.port {
                        Port::Primary => "no leader to route writes to",
                        Port::Replicas => "no member to route reads to",
                    };
                    let e = PgError::error(
                        sqlstate::CANNOT_CONNECT_NOW,
                        format!(
                            "pgrouter: cluster \"{scope}\": {role} after waiting {}s: {why}",
                            hold.as_secs_f64()
                        ),
                    )
                    .with_hint("Patroni is electing or promoting a leader; retry the transaction.");
                    if !shared.router.holds(routing, &current, self.port) {
                        return Err(Unserved::Refused(e));
                    }
                    (e, false)
                }
            };
            let retry = crate::proxy::session::wait_to_retry(&mut topology, deadline, retry_soon);
            match unless_left(&self.client, retry).await {
                Some(true) => {}
                Some(false) => return Err(Unserved::Refused(failure)),
                None => return Err(Unserved::ClientLeft(started.elapsed())),
            }
        }
    }

    /// Queues a SET for each tracked parameter where the client and the server differ.
    fn sync_vars(&mut self) {
        let Some(held) = &mut self.held else { return };
        let conn = &mut held.lease.conn;
        if let (Some(defaults), Some((d, vars))) = (&self.defaults, &conn.in_step) {
            if Arc::ptr_eq(defaults, d) && *vars == self.vars {
                return;
            }
        }
        let server = &conn.tracked;
        let mut sets = String::new();
        for (i, k) in TRACKED.iter().enumerate() {
            let wanted = match self.vars.iter().find(|(name, _)| name == k) {
                Some((_, v)) => Some(v.as_str()),
                None => self.defaults.as_ref().and_then(|d| d.get(i)),
            };
            let Some(wanted) = wanted.filter(|w| server.get(i) != Some(*w)) else {
                continue;
            };
            if !sets.is_empty() {
                sets.push_str("; ");
            }
            sets.push_str(&format!("SET {k} = '{}'", wanted.replace('\'', "''")));
        }
        if sets.is_empty() {
            conn.in_step = self.defaults.clone().map(|d| (d, self.vars.clone()));
            return;
        }
        wire::query(&mut self.to_server, &sets);
        self.expect.push_back(Expect::InjectedQuery);
    }

    /// Answers a unit of work (a Query, or an extended batch up to its Sync) with `e` when
    /// there is no server to run it: the transaction fails, the connection stays.
    async fn fail_unit(&mut self, e: PgError) -> Result<(), End> {
        self.shared
            .metrics
            .client_errors
            .with_label_values(&[e.code])
            .inc();
        tracing::info!(peer = %self.registration.entry.peer, port = %self.port, error = %e, "transaction refused");
        let mut out = e.encode();
        loop {
            let msg = match wire::take_message(&mut self.cin) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.read_client_more().await?;
                    continue;
                }
                Err(e) => return Err(End::ClientProtocol(e.to_string())),
            };
            match msg[0] {
                b'X' => return Err(End::ClientGone),
                b'Q' | b'F' | b'S' => break,
                _ => {
                    // Extended batch: the error goes out now, ReadyForQuery at its Sync.
                    if !out.is_empty() {
                        self.client.send(&out).await.map_err(|_| End::ClientGone)?;
                        out.clear();
                    }
                }
            }
        }
        wire::ready_for_query(&mut out, b'I');
        self.statements_lost_with_server();
        self.client.send(&out).await.map_err(|_| End::ClientGone)
    }

    fn statements_lost_with_server(&mut self) {
        self.status = b'I';
        self.unsynced = false;
        self.expect.clear();
    }

    async fn read_client_more(&mut self) -> Result<(), End> {
        use tokio::io::AsyncReadExt;
        match self.client.read_buf(&mut self.cin).await {
            Ok(0) | Err(_) => Err(End::ClientGone),
            Ok(_) => Ok(()),
        }
    }

    /// Runs the client's work on the held connection until a point where it can go back.
    async fn exchange(&mut self) -> Result<Done, End> {
        use tokio::io::AsyncReadExt;
        let mut topology = self.shared.topology.clone();
        topology.mark_changed();
        let server_tls = self
            .held
            .as_ref()
            .is_some_and(|h| h.lease.conn.stream.is_tls());
        let client_tls = self.client.is_tls();
        let (mut server_unflushed, mut client_unflushed) = (false, false);
        loop {
            self.process_client()?;
            // Checked before every read and write, so nothing from a member that lost its
            // role reaches the client after the topology saying so was published.
            if topology.has_changed().unwrap_or(true) {
                if let Some(lost) = self.check_route(&mut topology) {
                    return self.abort(lost).await;
                }
            }
            // What fits in the sockets now goes without a select round (plain TCP; TLS
            // records go through the select, which flushes them).
            let held = self.held.as_mut().expect("exchange runs with a server");
            if let Err(e) = write_now(&held.lease.conn.stream, &mut self.to_server) {
                return self.abort(Lost::Server(e.to_string())).await;
            }
            if write_now(&self.client, &mut self.to_client).is_err() {
                return Err(End::ClientGone);
            }
            let flushed = self.to_client.is_empty()
                && self.to_server.is_empty()
                && !server_unflushed
                && !client_unflushed;
            if flushed && self.releasable() {
                return Ok(Done::Idle);
            }
            let read_client = self.to_server.len() < BUFFER_LIMIT && !self.skipping;
            let read_server = self.to_client.len() < BUFFER_LIMIT;
            for buf in [&mut self.cin, &mut self.sin] {
                if buf.capacity() - buf.len() < READ_MIN {
                    buf.reserve(READ_CHUNK);
                }
            }
            let held = self.held.as_mut().expect("exchange runs with a server");
            let (mut sr, mut sw) = held.lease.conn.stream.halves();
            let (mut cr, mut cw) = self.client.halves();
            let event = tokio::select! {
                biased;
                _ = self.signal.wait() => Event::Signal,
                r = push(&mut sw, &self.to_server), if !self.to_server.is_empty() || server_unflushed => match r {
                    Ok(None) => Event::FlushedServer(Ok(())),
                    Ok(Some(n)) => Event::WroteServer(Ok(n)),
                    Err(e) => Event::WroteServer(Err(e)),
                },
                r = push(&mut cw, &self.to_client), if !self.to_client.is_empty() || client_unflushed => match r {
                    Ok(None) => Event::FlushedClient(Ok(())),
                    Ok(Some(n)) => Event::WroteClient(Ok(n)),
                    Err(e) => Event::WroteClient(Err(e)),
                },
                r = sr.read_buf(&mut self.sin), if read_server => Event::ReadServer(r),
                r = cr.read_buf(&mut self.cin), if read_client => Event::ReadClient(r),
            };
            match event {
                Event::Signal => {}
                Event::WroteServer(Ok(n)) if n > 0 => {
                    bytes::Buf::advance(&mut self.to_server, n);
                    server_unflushed = server_tls;
                }
                Event::FlushedServer(Ok(())) => server_unflushed = false,
                Event::WroteServer(r) | Event::ReadServer(r)
                    if r.as_ref().is_ok_and(|n| *n == 0) =>
                {
                    return self
                        .abort(Lost::Server("the server closed the connection".into()))
                        .await
                }
                Event::WroteServer(Err(e)) | Event::ReadServer(Err(e)) => {
                    return self.abort(Lost::Server(e.to_string())).await
                }
                Event::ReadServer(Ok(_)) => {
                    if let Err(lost) = self.process_server() {
                        return self.abort(lost).await;
                    }
                }
                Event::WroteClient(Ok(n)) if n > 0 => {
                    bytes::Buf::advance(&mut self.to_client, n);
                    client_unflushed = client_tls;
                }
                Event::FlushedClient(Ok(())) => client_unflushed = false,
                Event::ReadClient(Ok(0)) => return Ok(Done::ClientLeft),
                Event::ReadClient(Ok(_)) => {}
                Event::WroteClient(_) | Event::ReadClient(Err(_)) => return Err(End::ClientGone),
                Event::WroteServer(Ok(_)) => unreachable!("zero-byte writes are handled above"),
            }
        }
    }

    fn releasable(&self) -> bool {
        self.mode == PoolMode::Transaction
            && self.expect.is_empty()
            && !self.unsynced
            && self.status == b'I'
            && !self.pinned
            && self.client_stream_left == 0
            && self.server_stream_left == 0
    }

    /// Whether the held member may still serve; `Some` when nothing more from it may reach
    /// the client.
    fn check_route(
        &mut self,
        topology: &mut tokio::sync::watch::Receiver<Arc<crate::topology::Topology>>,
    ) -> Option<Lost> {
        let current = topology.borrow_and_update().clone();
        let config = self.shared.config();
        let held = self.held.as_mut()?;
        match self
            .shared
            .router
            .check(&config.routing, &current, &held.route)
        {
            Verdict::Keep => None,
            Verdict::CloseNow(reason) => Some(Lost::Role(reason)),
            Verdict::Drain(_) => {
                held.retire = true;
                None
            }
        }
    }

    async fn flush_to_server(&mut self) -> Result<(), End> {
        let held = self.held.as_mut().expect("held");
        held.lease
            .conn
            .stream
            .send(&self.to_server)
            .await
            .map_err(|e| {
                End::Fatal(server_gone(&self.shared.scope, &held.route, &e.to_string()))
            })?;
        self.to_server.clear();
        Ok(())
    }

    /// Reads and processes server messages (used while welcoming, before any client bytes).
    async fn read_server(&mut self) -> Result<(), End> {
        use tokio::io::AsyncReadExt;
        let held = self.held.as_mut().expect("held");
        let n = held
            .lease
            .conn
            .stream
            .read_buf(&mut self.sin)
            .await
            .map_err(|e| {
                End::Fatal(server_gone(&self.shared.scope, &held.route, &e.to_string()))
            })?;
        if n == 0 {
            return Err(End::Fatal(server_gone(
                &self.shared.scope,
                &held.route,
                "closed",
            )));
        }
        if let Err(lost) = self.process_server() {
            return Err(End::Fatal(PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                lost.to_string(),
            )));
        }
        self.to_client.clear();
        Ok(())
    }

    /// Forwards the client's complete messages (and streamed CopyData) to the server.
    fn process_client(&mut self) -> Result<(), End> {
        loop {
            if self.client_stream_left > 0 {
                let n = self.client_stream_left.min(self.cin.len());
                if n == 0 {
                    return Ok(());
                }
                self.to_server.extend_from_slice(&self.cin[..n]);
                bytes::Buf::advance(&mut self.cin, n);
                self.client_stream_left -= n;
                continue;
            }
            if self.to_server.len() >= BUFFER_LIMIT {
                return Ok(());
            }
            let (tag, len) = match wire::header(&self.cin) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(End::ClientProtocol(e.to_string())),
            };
            if tag == b'd' && self.cin.len() < len {
                // Streamed, so checked here: PostgreSQL would drop the connection silently.
                if len - 1 > crate::proxy::relay::MAX_CLIENT_MESSAGE as usize {
                    let bad = wire::BadMessage { tag, len: len - 1 };
                    return Err(End::ClientProtocol(bad.to_string()));
                }
                // CopyData: stream it, there is nothing to look at.
                self.client_stream_left = len;
                continue;
            }
            let msg = match wire::take_message(&mut self.cin) {
                Ok(Some(m)) => m,
                Ok(None) => return self.count_large_message(len),
                Err(e) => return Err(End::ClientProtocol(e.to_string())),
            };
            self.client_message(msg)?;
        }
    }

    fn client_message(&mut self, msg: Bytes) -> Result<(), End> {
        let body = msg.slice(5..);
        let rewrite = self.mode == PoolMode::Transaction;
        match msg[0] {
            b'X' => return Err(End::ClientGone),
            b'Q' => {
                let sql = wire::Reader::new(&body).cstr().unwrap_or_default();
                if self.on_sql(sql, rewrite) {
                    return Ok(());
                }
                self.to_server.extend_from_slice(&msg);
                self.expect.push_back(Expect::Sync);
            }
            b'F' => {
                self.to_server.extend_from_slice(&msg);
                self.expect.push_back(Expect::Sync);
            }
            b'S' => {
                self.to_server.extend_from_slice(&msg);
                self.expect.push_back(Expect::Sync);
                self.unsynced = false;
            }
            b'H' => self.to_server.extend_from_slice(&msg),
            b'E' => {
                self.to_server.extend_from_slice(&msg);
                self.expect.push_back(Expect::Execute);
                self.unsynced = true;
            }
            b'P' => {
                self.unsynced = true;
                let Some((name, definition)) = statements::split_parse(&body) else {
                    return Err(End::ClientProtocol("malformed Parse".into()));
                };
                let query = statements::definition_query(&definition).to_vec();
                if name.is_empty() || !rewrite {
                    let effects = sql_effects(&query);
                    self.note_effects(&effects);
                    if let (Some(target), true) = (&effects.deallocate, rewrite) {
                        if let Some(s) = self.statements.remove(target.as_bytes()) {
                            // DEALLOCATE of a pooled name: drop the server's copy instead.
                            self.ensure_prepared(&s);
                            let mut def = format!("DEALLOCATE {}", s.server_name).into_bytes();
                            def.push(0);
                            def.extend_from_slice(&definition[query.len() + 1..]);
                            wire::parse(&mut self.to_server, "", &def);
                            self.forget_on_server(s.id);
                            self.expect.push_back(Expect::Parse(None));
                            return Ok(());
                        }
                    }
                    self.to_server.extend_from_slice(&msg);
                    self.expect.push_back(Expect::Parse(None));
                    return Ok(());
                }
                let s = self.statements.define(name, definition);
                if self.prepared_here(s.id) {
                    self.expect.push_back(Expect::MadeUpParseComplete);
                } else {
                    wire::parse(&mut self.to_server, &s.server_name, &s.definition);
                    self.mark_prepared(s.id);
                    self.expect.push_back(Expect::Parse(Some(s.id)));
                }
            }
            b'B' => {
                self.unsynced = true;
                let mut r = wire::Reader::new(&body);
                let (Some(portal), Some(name)) = (r.cstr(), r.cstr()) else {
                    return Err(End::ClientProtocol("malformed Bind".into()));
                };
                match self.pooled_statement(name, rewrite) {
                    Some(s) => {
                        self.ensure_prepared(&s);
                        wire::bind(&mut self.to_server, portal, &s.server_name, r.rest());
                        // A named DISCARD ALL, DEALLOCATE ALL or LISTEN acts each time it runs.
                        self.note_effects(&s.effects);
                    }
                    None => self.to_server.extend_from_slice(&msg),
                }
                self.expect.push_back(Expect::Bind);
            }
            b'D' | b'C' => {
                self.unsynced = true;
                let mut r = wire::Reader::new(&body);
                let (Some(kind), Some(name)) = (r.byte(), r.cstr()) else {
                    return Err(End::ClientProtocol("malformed Describe/Close".into()));
                };
                let statement = if kind == b'S' {
                    self.pooled_statement(name, rewrite)
                } else {
                    None
                };
                match (msg[0], statement) {
                    (b'C', Some(_)) => {
                        // The client is done with its name; the server keeps the statement
                        // for other clients and later Parses of the same text.
                        self.statements.remove(name);
                        self.expect.push_back(Expect::MadeUpCloseComplete);
                    }
                    (b'D', Some(s)) => {
                        self.ensure_prepared(&s);
                        wire::describe_or_close(
                            &mut self.to_server,
                            b'D',
                            b'S',
                            s.server_name.as_bytes(),
                        );
                        self.expect.push_back(Expect::Describe);
                    }
                    (tag, None) => {
                        self.to_server.extend_from_slice(&msg);
                        self.expect.push_back(if tag == b'D' {
                            Expect::Describe
                        } else {
                            Expect::Close
                        });
                    }
                    _ => unreachable!("tags are D or C"),
                }
            }
            _ => self.to_server.extend_from_slice(&msg),
        }
        Ok(())
    }

    /// Looks at a simple Query; returns true if it was handled without sending it as is.
    fn on_sql(&mut self, sql: &[u8], rewrite: bool) -> bool {
        let effects = sql_effects(sql);
        self.note_effects(&effects);
        let Some(target) = effects.deallocate.filter(|_| rewrite) else {
            return false;
        };
        let Some(s) = self.statements.remove(target.as_bytes()) else {
            return false;
        };
        self.ensure_prepared(&s);
        wire::query(
            &mut self.to_server,
            &format!("DEALLOCATE {}", s.server_name),
        );
        self.forget_on_server(s.id);
        self.expect.push_back(Expect::Sync);
        true
    }

    fn note_effects(&mut self, e: &statements::SqlEffects) {
        if e.listen && !self.pinned {
            tracing::debug!(peer = %self.registration.entry.peer, "LISTEN: client pinned to its server connection");
            self.pinned = true;
        }
        if e.unlisten_all {
            self.pinned = false;
        }
        if e.drops_all_statements {
            self.statements.clear();
            if let Some(h) = &mut self.held {
                h.lease.conn.prepared.clear();
            }
        }
    }

    /// The client's statement `name` when pgrouter renames statements (transaction mode).
    fn pooled_statement(&self, name: &[u8], rewrite: bool) -> Option<Arc<Statement>> {
        if !rewrite || name.is_empty() {
            return None;
        }
        self.statements.get(name)
    }

    fn prepared_here(&self, id: u64) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.lease.conn.prepared.contains(&id))
    }

    fn mark_prepared(&mut self, id: u64) {
        if let Some(h) = &mut self.held {
            h.lease.conn.prepared.insert(id);
        }
    }

    fn forget_on_server(&mut self, id: u64) {
        if let Some(h) = &mut self.held {
            h.lease.conn.prepared.remove(&id);
        }
    }

    /// Prepares `s` on the held connection first if it is not there yet.
    fn ensure_prepared(&mut self, s: &Statement) {
        if self.prepared_here(s.id) {
            return;
        }
        wire::parse(&mut self.to_server, &s.server_name, &s.definition);
        self.mark_prepared(s.id);
        self.expect.push_back(Expect::InjectedParse(s.id));
    }

    /// Forwards, swallows or answers for the server's messages as `expect` says.
    fn process_server(&mut self) -> Result<(), Lost> {
        loop {
            self.made_up_answers();
            if self.server_stream_left > 0 {
                let n = self.server_stream_left.min(self.sin.len());
                if n == 0 {
                    return Ok(());
                }
                if !self.server_stream_drop {
                    self.to_client.extend_from_slice(&self.sin[..n]);
                }
                bytes::Buf::advance(&mut self.sin, n);
                self.server_stream_left -= n;
                continue;
            }
            let (tag, len) = match wire::header(&self.sin) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Lost::Server(e.to_string())),
            };
            let whole = matches!(tag, b'Z' | b'S' | b'E');
            if !whole {
                let forward = self.settle(tag);
                self.server_stream_left = len;
                self.server_stream_drop = !forward;
                continue;
            }
            let msg = match wire::take_message(&mut self.sin) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Lost::Server(e.to_string())),
            };
            let body = &msg[5..];
            let swallowing = self.expect.front() == Some(&Expect::InjectedQuery);
            match tag {
                b'Z' => {
                    self.status = body.first().copied().unwrap_or(b'I');
                    let settled = self.expect.pop_front();
                    if settled != Some(Expect::InjectedQuery) {
                        self.to_client.extend_from_slice(&msg);
                        if let Some(h) = &self.held {
                            h.lease
                                .pool()
                                .stats
                                .queries
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if self.status == b'I' {
                                h.lease
                                    .pool()
                                    .stats
                                    .transactions
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                self.transactions.inc();
                            }
                        }
                    }
                }
                b'S' => {
                    let mut r = wire::Reader::new(body);
                    if let (Some(k), Some(v)) = (r.cstr(), r.cstr()) {
                        let (k, v) = (
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        );
                        if let Some(slot) = self.vars.iter_mut().find(|(name, _)| *name == k) {
                            slot.1 = v.clone();
                        } else if let Some(name) = TRACKED.iter().find(|t| **t == k) {
                            self.vars.push((name, v.clone()));
                        }
                        if let Some(h) = &mut self.held {
                            h.lease.conn.note_param(&k, &v);
                        }
                    }
                    if !swallowing {
                        self.to_client.extend_from_slice(&msg);
                    }
                }
                _ => {
                    let fields = wire::error_fields(body);
                    let severity = fields
                        .iter()
                        .find(|(c, _)| *c == b'V' || *c == b'S')
                        .map(|(_, v)| v.as_str());
                    let message = wire::field(&fields, b'M');
                    if matches!(severity, Some("FATAL") | Some("PANIC")) {
                        return Err(Lost::Server(message.unwrap_or_default().to_owned()));
                    }
                    if swallowing {
                        tracing::warn!(peer = %self.registration.entry.peer, error = ?message, "setting the client's parameters failed");
                        continue;
                    }
                    self.on_error();
                    self.to_client.extend_from_slice(&msg);
                }
            }
        }
    }

    /// An ErrorResponse in an extended batch: the server skips to Sync, so do the entries.
    fn on_error(&mut self) {
        if matches!(self.expect.front(), Some(Expect::Sync) | None) {
            return;
        }
        while let Some(e) = self.expect.front().copied() {
            if e == Expect::Sync {
                break;
            }
            self.expect.pop_front();
            if let Expect::Parse(Some(id)) | Expect::InjectedParse(id) = e {
                self.forget_on_server(id);
            }
        }
    }

    /// Settles `expect` for a streamed message; returns whether to forward it.
    fn settle(&mut self, tag: u8) -> bool {
        let head = self.expect.front().copied();
        if head == Some(Expect::InjectedQuery) {
            return false;
        }
        let settles = match (tag, head) {
            (b'1', Some(Expect::InjectedParse(_))) => {
                self.expect.pop_front();
                return false;
            }
            (b'1', Some(Expect::Parse(_))) => true,
            (b'2', Some(Expect::Bind)) => true,
            (b'3', Some(Expect::Close)) => true,
            (b'T' | b'n', Some(Expect::Describe)) => true,
            (b'C' | b'I' | b's', Some(Expect::Execute)) => true,
            _ => false,
        };
        if settles {
            self.expect.pop_front();
        }
        true
    }

    /// Sends the answers pgrouter owes for messages it did not forward, in order.
    fn made_up_answers(&mut self) {
        while let Some(e) = self.expect.front() {
            let tag = match e {
                Expect::MadeUpParseComplete => b'1',
                Expect::MadeUpCloseComplete => b'3',
                _ => return,
            };
            wire::message(&mut self.to_client, tag, |_| {});
            self.expect.pop_front();
        }
    }

    /// The held connection is gone or may no longer be used: nothing more from it reaches
    /// the client; the client's unanswered work fails, its connection stays.
    async fn abort(&mut self, lost: Lost) -> Result<Done, End> {
        // Whole answers a dying server completed (queued, not yet written) are the client's,
        // as they would be on a direct connection; not once its member has lost its role.
        let mid_message = self.server_stream_left > 0 && !self.server_stream_drop;
        let answers_whole = matches!(lost, Lost::Server(_))
            && !mid_message
            && self
                .check_route(&mut self.shared.topology.clone())
                .is_none();
        let answers = if answers_whole {
            std::mem::take(&mut self.to_client)
        } else {
            BytesMut::new()
        };
        let mut held = self.held.take().expect("abort with a server");
        let scope = &self.shared.scope;
        let member = &held.route.member.name;
        let e = match &lost {
            Lost::Role(reason) => PgError::error(
                sqlstate::ADMIN_SHUTDOWN,
                format!(
                    "pgrouter: cluster \"{scope}\": transaction on \"{member}\" aborted: {reason}"
                ),
            ),
            Lost::Server(why) => server_gone(scope, &held.route, why),
        }
        .with_hint("The connection to pgrouter stays open; retry the transaction.");
        tracing::info!(peer = %self.registration.entry.peer, port = %self.port, %member, error = %e, "aborted a pooled transaction");
        self.shared
            .metrics
            .client_errors
            .with_label_values(&[e.code])
            .inc();
        // Anything else the lost server said and was not yet written is dropped. If some of it
        // was owed to the client (half a message, or whole answers from a member that lost its
        // role), the client cannot be answered in step: close it.
        let partial = mid_message || !self.to_client.is_empty();
        self.server_stream_left = 0;
        self.give_back_buffers(&mut held);
        held.lease.discard();
        if partial {
            // The client saw half a message: there is no way to resynchronise it.
            return Err(End::ClientGone);
        }
        if self.client_stream_left > 0 {
            // The client is inside a message that was being streamed: the rest of it must not
            // be read as messages (nor sent to another server). Tell it and close.
            return Err(End::Fatal(PgError {
                fatal: true,
                hint: None,
                ..e
            }));
        }
        let pending = self.expect.iter().filter(|e| **e == Expect::Sync).count();
        let mut out = answers;
        for _ in 0..pending {
            out.extend_from_slice(&e.encode());
            wire::ready_for_query(&mut out, b'I');
        }
        let unsynced = self.unsynced;
        let in_transaction = self.status != b'I';
        self.statements_lost_with_server();
        self.pinned = false;
        self.client_stream_left = 0;
        self.client.send(&out).await.map_err(|_| End::ClientGone)?;
        if unsynced {
            // The client's batch goes on up to its Sync: fail it there.
            self.fail_unit(e).await?;
        } else if pending == 0 && in_transaction {
            // Idle inside a transaction: its next statement learns the transaction is gone.
            self.owed = Some(e);
        }
        Ok(Done::Idle)
    }

    /// Returns a connection to its pool, or closes it when its state is unknown.
    async fn put_back(&mut self, mut held: Held, done: Done) {
        let clean = self.expect.is_empty()
            && !self.unsynced
            && self.status == b'I'
            && self.server_stream_left == 0
            && self.to_server.is_empty();
        let reusable = clean && !held.retire && !self.pinned;
        self.expect.clear();
        self.unsynced = false;
        self.status = b'I';
        self.give_back_buffers(&mut held);
        if !reusable {
            held.lease.discard();
            return;
        }
        let mut lease = held.lease;
        if matches!(done, Done::ClientLeft) && self.mode == PoolMode::Session {
            if lease.conn.run("DISCARD ALL").await.is_err() {
                lease.discard();
                return;
            }
            lease.conn.prepared.clear();
        }
        lease.release();
    }

    /// Gives large buffers back while the client is idle.
    fn shrink(&mut self) {
        for buf in [&mut self.sin, &mut self.to_server, &mut self.to_client] {
            if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
                *buf = BytesMut::new();
            }
        }
        if self.cin.is_empty() {
            if self.cin.capacity() > KEEP_CAPACITY {
                self.cin = BytesMut::new();
            }
            // The large message is gone: freed here, or with the buffers lent back.
            self.large = None;
        }
    }
}

enum Event {
    Signal,
    WroteServer(std::io::Result<usize>),
    WroteClient(std::io::Result<usize>),
    FlushedServer(Result<(), std::convert::Infallible>),
    FlushedClient(Result<(), std::convert::Infallible>),
    ReadServer(std::io::Result<usize>),
    ReadClient(std::io::Result<usize>),
}

/// Writes what a plain socket takes of `buf` without waiting; leaves TLS streams alone.
fn write_now(stream: &Stream, buf: &mut BytesMut) -> std::io::Result<()> {
    let Stream::Plain(tcp) = stream else {
        return Ok(());
    };
    while !buf.is_empty() {
        match tcp.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes::Buf::advance(buf, n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes some of `buf`, or flushes (TLS) once it is all written: `None` when flushed.
async fn push(w: &mut crate::stream::WriteSide<'_>, buf: &[u8]) -> std::io::Result<Option<usize>> {
    use tokio::io::AsyncWriteExt;
    if buf.is_empty() {
        w.flush().await.map(|()| None)
    } else {
        w.write(buf).await.map(Some)
    }
}

/// Why a held server connection cannot go on.
#[derive(Debug)]
enum Lost {
    /// Its member lost the leader key.
    Role(String),
    /// It failed, closed, or said FATAL.
    Server(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Role(r) | Lost::Server(r) => f.write_str(r),
        }
    }
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

fn server_gone(scope: &str, route: &Route, why: &str) -> PgError {
    PgError::error(
        sqlstate::CONNECTION_FAILURE,
        format!(
            "pgrouter: cluster \"{scope}\": lost the server connection to member \"{}\": {why}",
            route.member.name
        ),
    )
}

async fn send_fatal(shared: &Shared, client: &mut Stream, e: &PgError) {
    shared
        .metrics
        .client_errors
        .with_label_values(&[e.code])
        .inc();
    let _ = client.send(&e.encode()).await;
    let _ = client.shutdown().await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::topology::Topology;

    /// 10,000 idle pooled clients must fit in a few KiB each: the task of one holds the
    /// session and the idle wait, every larger step is boxed while it runs.
    #[tokio::test]
    async fn an_idle_pooled_client_task_is_small() {
        let config =
            Config::from_toml("[cluster]\nscope = \"d\"\netcd = [\"127.0.0.1:1\"]\n").unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Topology::empty("d")));
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(Shared::new(config, rx, metrics.clone()));
        let shared2 = shared.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let startup = Startup {
            raw: Bytes::new(),
            version: (3, 0),
            params: vec![("user".into(), "u".into())],
        };
        let session = size_of::<PooledSession>();
        let task = start(
            shared,
            Port::Primary,
            PoolMode::Transaction,
            Stream::Plain(tcp),
            startup,
            String::new(),
            StateGauge::new(&metrics, "primary"),
        );
        let task = std::mem::size_of_val(&task);
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let outer =
            crate::proxy::session::run(shared2, Port::Primary, tcp, None, crate::shards::MAIN);
        let outer = std::mem::size_of_val(&outer);
        println!("PooledSession {session} bytes, task future {task} bytes, client task {outer}");
        assert!(task < 2048, "task future {task} bytes");
        // Every idle client carries its whole task: a branch `run` awaits inline (the cancel
        // forward did, 1,608 bytes in all, +780 bytes per idle client in W4) costs them all.
        assert!(outer < 1024, "client task {outer} bytes");
    }
}
