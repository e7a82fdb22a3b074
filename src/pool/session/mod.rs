//! A pooled client: authenticated by pgrouter, lent a server connection per transaction
//! (transaction mode) or for its whole stay (session mode).
//!
//! - `conversation`: the protocol core, with no I/O: statement renaming, the ledger of
//!   answers owed, parameters kept in step. Everything below drives it.
//! - `welcome`: the parameters, cancel key and ReadyForQuery a client gets after logging in.
//! - `idle`: waiting for the client's next message while it holds no server connection.
//! - `acquire`: a member and a server connection for the next transaction.
//! - `exchange`: the readiness loop over both sockets while a connection is held.
//! - `recovery`: failing a transaction pgrouter cannot run, and giving connections back.

mod acquire;
mod conversation;
mod exchange;
mod idle;
mod recovery;
mod startup_params;
mod stuck;
mod welcome;

pub use conversation::Conversation;

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use crate::cancel::{PooledTarget, Registration};
use crate::config::PoolMode;
use crate::hold::{left_waiting, Unserved};
use crate::metrics::{ClientState, StateGauge};
use crate::pool::client_auth::{self, AuthError, Passed};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::startup::Startup;
use crate::route::{Port, Route};
use crate::servers::clients::{ClientActivity, ClientRegistration};
use crate::servers::message_memory::Grant;
use crate::servers::pools::Lease;
use crate::servers::server::Login;
use crate::shared::Shared;
use crate::signal::Subscription;
use crate::stream::Stream;

use acquire::RouteCache;
use conversation::ClientEnd;
use recovery::Done;

/// Why the client's session ends.
enum Exit {
    /// Terminate, EOF or an I/O error on the client side.
    ClientGone,
    /// Tell the client this, then close.
    Fatal(PgError),
    /// The client wrote bytes that cannot frame a message.
    ClientProtocol(String),
}

impl From<ClientEnd> for Exit {
    fn from(e: ClientEnd) -> Exit {
        match e {
            ClientEnd::Terminate => Exit::ClientGone,
            ClientEnd::Protocol(why) => Exit::ClientProtocol(why),
        }
    }
}

/// A server connection lent to the client, and the member it is on.
struct Held {
    lease: Lease,
    route: Arc<Route>,
    /// The member left the pool's role mildly (replica no longer eligible): close on release.
    retire: bool,
}

pub struct PooledSession {
    shared: Arc<Shared>,
    port: Port,
    client: Stream,
    /// How server connections log in, and as whom: the client's user, or the forced user of
    /// its `[databases]` entry.
    login: Box<Login>,
    server_user: String,
    registration: ClientRegistration,
    state: StateGauge,
    signal: Subscription,
    cancel: PooledTarget,
    conversation: Conversation,
    /// The four buffers are the held server connection's while it is lent (`exchange`);
    /// an idle client keeps only `from_client`.
    from_client: BytesMut,
    from_server: BytesMut,
    to_server: BytesMut,
    to_client: BytesMut,
    /// What the client was written so far ends at a message boundary: `to_client` holds only
    /// whole messages not begun, so it can be dropped and an error sent in its place.
    client_whole: bool,
    /// An error owed to the client for a transaction pgrouter lost; given with its next message.
    /// Boxed, as `login`: a few hundred bytes less per idle client.
    owed: Option<Box<PgError>>,
    /// `pool.message_memory` taken by the large message being received, held until the
    /// transaction ends.
    large: Option<Grant>,
    /// Inline, not boxed: a few words an idle client carries spare an allocation per
    /// transaction.
    held: Option<Held>,
    route_cache: Option<Box<RouteCache>>,
    /// The session's own view of the topology: no change on it since the cached route was
    /// picked lets a transaction skip the hold.
    topology: tokio::sync::watch::Receiver<Arc<crate::topology::Topology>>,
    /// The member's role, checked again only when the topology or settings change.
    roles: crate::hold::RoleCheck,
    /// The route `roles` last checked (a new one is checked at once).
    roles_route: Option<Arc<Route>>,
    /// The settings as last read, and `shared.config_epoch()` read before them: see
    /// `settings`.
    config: Arc<crate::config::Config>,
    config_epoch: u64,
    /// What the transaction adds to its pool's counters, added as the connection goes back.
    tally: exchange::Tally,
    /// Bytes (from the client, to the client) of its transactions, for its log line.
    bytes: (u64, u64),
    /// The exchange's timer (stuck check, idle in transaction), kept between transactions.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The worker thread the session runs on: server connections are taken from it first.
    home: usize,
    /// When it logged in: a KILL of its database after that ends it.
    began: tokio::time::Instant,
    /// This port's series, looked up once.
    hold_seconds: prometheus::Histogram,
    transactions: prometheus::IntCounter,
    transaction_seconds: prometheus::Histogram,
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
    // auth_query runs in the database server connections open (an alias's dbname).
    let dbname = shared.config().plan(&database, &user).dbname.to_owned();
    let auth = Box::pin(timeout(
        limit,
        authenticate(&shared, &mut client, &user, &dbname),
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
    let config = shared.config();
    let plan = config.plan(&database, &user);
    let mode = plan.pool_mode.unwrap_or(mode);
    let server_user = plan.user.to_owned();
    let login = match plan.forced {
        false => login,
        true => match shared.credentials.login_from_file(&server_user) {
            Some(login) => login,
            None => {
                let e = PgError::fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!(
                        "pgrouter: cluster \"{}\": database \"{database}\" logs in to the members as user \"{server_user}\" (databases.{database}.user), and auth.auth_file has no secret for \"{server_user}\"",
                        shared.scope
                    ),
                );
                tracing::warn!(%peer, %port, %user, %database, forced_user = %server_user, "refused a pooled client: its database's forced user has no secret in auth.auth_file");
                send_fatal(&shared, &mut client, &e).await;
                return None;
            }
        },
    };
    let settings = match startup_params::read(
        &startup.params,
        &config.pool.ignore_startup_parameters,
    ) {
        Ok(mut settings) => {
            if config.pool.application_name_add_host {
                let app = settings.var("application_name").unwrap_or_default();
                let app = format!("{app} - {peer}");
                settings.vars.retain(|(k, _)| *k != "application_name");
                settings.vars.push(("application_name", app));
            }
            settings
        }
        Err(e) => {
            tracing::info!(%peer, %port, %user, error = %e.message, "refused a pooled client's startup parameters");
            send_fatal(&shared, &mut client, &e).await;
            return None;
        }
    };
    let application_name = settings
        .var("application_name")
        .unwrap_or_default()
        .to_owned();
    if config.pool.log_connections {
        tracing::info!(%peer, %port, %user, %database, "pooled client logged in");
    }
    let track = config
        .pool
        .track_extra_parameters
        .iter()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    drop(config);
    drop(startup);
    let registration =
        shared
            .pools
            .register_client(&user, &database, &peer, port.label(), &application_name);
    let metrics = &shared.metrics;
    let hold_seconds = metrics.hold_seconds.with_label_values(&[port.label()]);
    let transactions = metrics.transactions.with_label_values(&[port.label()]);
    let transaction_seconds = metrics
        .transaction_seconds
        .with_label_values(&[port.label()]);
    let (topology, roles) = (
        shared.topology.clone(),
        crate::hold::RoleCheck::new(&shared),
    );
    let config_epoch = shared.config_epoch();
    let config = shared.config();
    Some(Box::new(PooledSession {
        signal: shared.signals.subscribe(),
        shared,
        port,
        client,
        login: Box::new(login),
        server_user,
        registration,
        state,
        cancel: Arc::new(Mutex::new(None)),
        conversation: Conversation::with_settings(mode, settings, track),
        from_client: BytesMut::new(),
        from_server: BytesMut::new(),
        to_server: BytesMut::new(),
        // The end of the authentication, sent with the welcome.
        to_client: unsent,
        client_whole: true,
        owed: None,
        large: None,
        held: None,
        route_cache: None,
        topology,
        roles,
        roles_route: None,
        config,
        config_epoch,
        tally: Default::default(),
        bytes: (0, 0),
        timer: None,
        home: crate::shards::MAIN,
        began: tokio::time::Instant::now(),
        hold_seconds,
        transactions,
        transaction_seconds,
    }))
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
                Ok(()) => Exit::ClientGone,
                Err(e) => e,
            },
            Err(e) => e,
        };
        if let Some(held) = self.held.take() {
            Box::pin(self.put_back(held, Done::ClientLeft)).await;
        }
        let settings = self.settings();
        if settings.log.connections && settings.pool.log_disconnections {
            let (ended, sqlstate) = match &end {
                Exit::ClientGone => ("client_closed", ""),
                Exit::Fatal(e) => ("closed_by_pgrouter", e.code),
                Exit::ClientProtocol(_) => ("client_protocol", sqlstate::PROTOCOL_VIOLATION),
            };
            let entry = &self.registration.entry;
            crate::session_log::SessionEnd {
                cluster: &self.shared.scope,
                client: &entry.peer,
                listener: self.port.label(),
                user: &entry.user,
                database: &entry.database,
                application_name: &entry.application_name,
                member: self.route_cache.as_ref().map_or("", |c| c.member()),
                duration: self.began.elapsed(),
                bytes: Some(self.bytes),
                end: ended,
                sqlstate,
            }
            .log();
        }
        let e = match end {
            Exit::ClientGone => return,
            Exit::Fatal(e) => {
                tracing::info!(peer = %self.registration.entry.peer, port = %self.port, error = %e, "closing pooled client");
                e
            }
            Exit::ClientProtocol(why) => PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("pgrouter: cluster \"{}\": {why}", self.shared.scope),
            ),
        };
        Box::pin(send_fatal(&self.shared, &mut self.client, &e)).await;
    }

    async fn main_loop(&mut self) -> Result<(), Exit> {
        loop {
            self.idle_wait().await?;
            if self.from_client[0] == b'X' {
                return Err(Exit::ClientGone);
            }
            // Boxed: an idle client's task holds only the idle wait.
            Box::pin(self.transaction()).await?;
        }
    }

    /// Runs the unit of work the client started on a server connection, and gives it back.
    async fn transaction(&mut self) -> Result<(), Exit> {
        if let Some(e) = self.owed.take() {
            return Box::pin(self.fail_unit(*e)).await;
        }
        // The one clock reading the way to a server connection takes.
        let arrived = tokio::time::Instant::now();
        let entry = &self.registration.entry;
        entry.set(ClientActivity::Waiting, 0, Some(arrived.into_std()));
        self.state.set(ClientState::Held);
        match self.acquire(arrived).await {
            Ok(held) => {
                let conn = &held.lease.conn;
                self.registration
                    .entry
                    .set(ClientActivity::Active, conn.id, None);
                *lock(&self.cancel) = Some((conn.addr.clone(), conn.key.clone()));
                self.hold(held);
                self.read_sent_client();
            }
            Err(Unserved::Refused(e)) => {
                self.registration.entry.set(ClientActivity::Idle, 0, None);
                return Box::pin(self.fail_unit(e)).await;
            }
            Err(Unserved::ClientLeft(waited)) => return Err(self.left_waiting(waited)),
        }
        self.state.set(ClientState::Active);
        self.sync_vars();
        let done = self.exchange().await;
        *lock(&self.cancel) = None;
        self.registration.entry.set(ClientActivity::Idle, 0, None);
        self.state.set(ClientState::Idle);
        let held = self.held.take();
        if let Some(held) = &held {
            let seconds = held.lease.taken().elapsed().as_secs_f64();
            self.transaction_seconds.observe(seconds);
        }
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                if let Some(held) = held {
                    Box::pin(self.put_back(held, Done::ClientLeft)).await;
                }
                return Err(e);
            }
        };
        if let Some(held) = held {
            self.put_back(held, done).await;
        }
        self.shrink();
        Ok(())
    }

    /// The settings in force, read again only when a reload replaced them (one atomic load,
    /// not the lock and count every session shares).
    fn settings(&mut self) -> &crate::config::Config {
        let epoch = self.shared.config_epoch();
        if epoch != self.config_epoch {
            self.config = self.shared.config();
            self.config_epoch = epoch;
        }
        &self.config
    }

    /// Queues the SETs that bring the held connection's parameters in step with the client's.
    fn sync_vars(&mut self) {
        if let Some(held) = &mut self.held {
            let conn = &mut held.lease.conn.state;
            self.conversation.sync_vars(conn, &mut self.to_server);
        }
    }

    /// The console's KILL of the client's database, given since it logged in: the FATAL it
    /// ends with.
    fn killed(&self) -> Result<(), Exit> {
        let database = &self.registration.entry.database;
        if !self.shared.kills.killed(database, self.began) {
            return Ok(());
        }
        Err(Exit::Fatal(PgError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            format!(
                "pgrouter: cluster \"{}\": closing the session: KILL \"{database}\" from the admin console",
                self.shared.scope
            ),
        )))
    }

    fn left_waiting(&self, waited: std::time::Duration) -> Exit {
        let peer = &self.registration.entry.peer;
        left_waiting(&self.shared, self.port, peer, waited);
        Exit::ClientGone
    }
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
