//! Configuration: plain serde data with one `Default`, parsed from TOML and validated before use.
//!
//! The types are here; `load.rs` reads TOML into them (naming the key of any error), and
//! `validate.rs` checks the values before anything uses them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{ByteSize, HumanDuration};

mod cluster;
mod databases;
mod listeners;
mod load;
#[cfg(test)]
mod tests;
mod validate;

pub use cluster::{ClusterConfig, Source};
pub use databases::{DatabaseConfig, Plan, UserConfig};
pub use listeners::{Balance, ListenerConfig, Rules, Selector, TagValue, MAX_LISTENERS};

/// A configuration error names the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// `Default` only for comparing values with their defaults (SHOW CONFIG): a file must name
/// its `[cluster]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub upstream_tls: UpstreamTlsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub tcp: TcpConfig,
    #[serde(default)]
    pub peers: PeersConfig,
    /// Extra client listeners by name, each serving the members a Patroni health endpoint
    /// would select.
    #[serde(default)]
    pub listeners: std::collections::BTreeMap<String, ListenerConfig>,
    /// pgbouncer's `[databases]`: aliases, forced users and per-database pool settings for
    /// pooled clients, by the database name clients give.
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, DatabaseConfig>,
    /// pgbouncer's `[users]`: per-user pool settings.
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, UserConfig>,
    /// Further Patroni clusters, each with its own source and client ports (and pools).
    #[serde(default)]
    pub clusters: std::collections::BTreeMap<String, ClusterConfig>,
}

/// Routers that forward each other's cancel requests for pooled clients, so a cancel works
/// whichever router it reaches (a load balancer or a moved VIP may send its connection to
/// another one). Every router gets the same list and its own `id`; the id goes into the cancel
/// keys it issues.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// This router's place in `routers`, from 1; 0 when it has no peers.
    pub id: usize,
    /// Every router's client address (`host:port`, either listener), this one's included.
    pub routers: Vec<String>,
}

impl PeersConfig {
    /// Most routers a cancel key can name (8 bits of its pid).
    pub const MAX_ROUTERS: usize = 255;
}

/// TCP keepalive and user timeout on every client socket and on passthrough member sockets,
/// so a peer that vanished without a FIN or RST (host down, cable cut, a NAT or firewall that
/// forgot the flow) is found and its session and server connection released. New values apply
/// to connections opened after a reload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Send keepalive probes on idle connections.
    pub keepalive: bool,
    /// Idle time before the first probe (TCP_KEEPIDLE), whole seconds.
    pub keepalive_idle: HumanDuration,
    /// Time between unanswered probes (TCP_KEEPINTVL), whole seconds.
    pub keepalive_interval: HumanDuration,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    pub keepalive_count: u32,
    /// Sent data left unacknowledged this long drops the connection (TCP_USER_TIMEOUT): finds a
    /// vanished client while results are still queued for it, where keepalive does not probe.
    /// 0 keeps the system default (retransmissions for about 15 minutes).
    pub user_timeout: HumanDuration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            keepalive: true,
            keepalive_idle: HumanDuration(Duration::from_secs(60)),
            keepalive_interval: HumanDuration(Duration::from_secs(10)),
            keepalive_count: 6,
            user_timeout: HumanDuration(Duration::ZERO),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads serving clients, each its own event loop; 0 picks one per core. Read at start only.
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The worker threads to run (`crate::shards`); 0 picks one per core. With one thread,
    /// that thread is the line every client waits in, and a core idles whenever the thread is
    /// preempted by a backend or client it woke. On 2 cores shared with PostgreSQL and pgbench
    /// (pgbench -S, A/B medians, BENCHMARKS.md): pooled -c 150 7-18% more tps on two; pass-through
    /// -c 150 13-18% more, -c 16 level (simple 0.985x, prepared 1.085x). Pooled, one hop against
    /// pgbouncer (2026-12-05): one worker used 0.6-1.3 us less CPU per transaction from -c 16 up
    /// (no cache lines moving between cores) at about the same tps. A host where the router
    /// shares its cores with PostgreSQL or the application sets a smaller count.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "info,pgrouter=debug"; RUST_LOG overrides it.
    pub level: String,
    /// One info line per client session as it ends (`crate::session_log`), on every listener.
    pub connections: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            connections: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Writes: the member holding Patroni's leader key.
    pub primary: SocketAddr,
    /// Reads: round-robin over eligible replicas.
    pub replicas: SocketAddr,
    /// A client must finish its startup packet within this time.
    pub startup_timeout: HumanDuration,
    /// Client connections beyond this get FATAL 53300.
    pub max_client_conn: usize,
    /// Admin HTTP endpoint: the status page, /metrics, the health checks (/health, /primary,
    /// /replica, Patroni's aliases), /status, /pause, /resume, /reload.
    pub admin: SocketAddr,
    /// Bearer token the admin endpoint requires; mandatory when `admin` is not on loopback.
    pub admin_token: Option<String>,
    /// Serve the admin endpoint over HTTPS only, so its token and answers do not cross the
    /// network in clear: with `admin_cert` and `admin_key`, else `[tls]`'s cert and key.
    pub admin_tls: bool,
    /// PEM certificate chain of the admin endpoint (with `admin_tls`).
    pub admin_cert: Option<std::path::PathBuf>,
    /// PEM private key of `admin_cert`.
    pub admin_key: Option<std::path::PathBuf>,
    /// How clients of the primary port reach the server: see [`PoolMode`].
    pub primary_pool_mode: PoolMode,
    /// How clients of the replicas port reach the server.
    pub replicas_pool_mode: PoolMode,
}

/// How a listener's clients share server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// One server connection per client, authentication relayed end to end.
    #[default]
    Passthrough,
    /// pgrouter authenticates the client; a pooled server connection is its own until it
    /// disconnects, then reset with DISCARD ALL and reused.
    Session,
    /// pgrouter authenticates the client; a pooled server connection is its own for one
    /// transaction (or extended-protocol batch) at a time.
    Transaction,
}

impl PoolMode {
    pub fn pooled(self) -> bool {
        self != PoolMode::Passthrough
    }

    pub fn label(self) -> &'static str {
        match self {
            PoolMode::Passthrough => "passthrough",
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// Server connection pools of the pooled modes, one per (member, database, user).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Most server connections one pool opens.
    pub pool_size: usize,
    /// Server connections kept open per pool (to the members of the current role) even when idle.
    pub min_pool_size: usize,
    /// Extra server connections a pool may open when a client has waited
    /// `reserve_pool_timeout` for one; 0 never.
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: HumanDuration,
    /// Most server connections to one member per database (all users together), and per
    /// user (all databases together); 0 no limit. `[databases]` and `[users]` override them.
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    /// A transaction waits this long for a free server connection, then gets an error.
    pub query_wait_timeout: HumanDuration,
    /// Idle server connections are closed after this.
    pub server_idle_timeout: HumanDuration,
    /// Server connections are closed (when idle) after this age.
    pub server_lifetime: HumanDuration,
    /// A server connection idle longer than this is checked with an empty query before reuse.
    pub server_check_delay: HumanDuration,
    /// A server owing a transaction its answer and silent this long, with nothing left to send
    /// it, is looked at from a second connection (pg_stat_activity): one waiting to read from
    /// its client is stuck and is closed, the client told. 0 turns the check off.
    pub stuck_check: HumanDuration,
    /// Most memory pooled clients' large messages (64 KiB and over), kept whole until sent,
    /// may hold together.
    pub message_memory: ByteSize,
    /// Startup parameters (or "options") pgrouter drops instead of applying or refusing, as
    /// pgbouncer's `ignore_startup_parameters`.
    pub ignore_startup_parameters: Vec<String>,
    /// Settings the server does not report whose session-level SETs pgrouter carries to every
    /// server connection the client uses (read back once the SET's transaction is over), as
    /// pgbouncer's `track_extra_parameters`. Settings the server reports (client_encoding,
    /// DateStyle, TimeZone, IntervalStyle, standard_conforming_strings, application_name)
    /// are always carried.
    pub track_extra_parameters: Vec<String>,
    /// The period of SHOW STATS_AVERAGES and of the stats line logged per database with
    /// traffic, as pgbouncer's `stats_period`.
    pub stats_period: HumanDuration,
    /// A pooled client idle (between transactions) this long is closed with FATAL 57P05;
    /// 0 never.
    pub client_idle_timeout: HumanDuration,
    /// A pooled client idle inside a transaction this long is closed with FATAL 25P03 and its
    /// server connection too (its transaction rolls back); 0 never.
    pub idle_transaction_timeout: HumanDuration,
    /// Log each pooled client's login and its end.
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// Appends " - <client address>:<port>" to the application_name pooled clients give, so
    /// pg_stat_activity shows who is behind a server connection.
    pub application_name_add_host: bool,
    /// What resets a session-mode server connection before the next client's session.
    pub server_reset_query: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: HumanDuration(Duration::from_secs(5)),
            max_db_connections: 0,
            max_user_connections: 0,
            query_wait_timeout: HumanDuration(Duration::from_secs(120)),
            server_idle_timeout: HumanDuration(Duration::from_secs(600)),
            server_lifetime: HumanDuration(Duration::from_secs(3600)),
            server_check_delay: HumanDuration(Duration::from_secs(30)),
            stuck_check: HumanDuration(Duration::from_secs(30)),
            message_memory: ByteSize(1 << 30),
            ignore_startup_parameters: Vec::new(),
            track_extra_parameters: vec!["search_path".to_owned()],
            stats_period: HumanDuration(Duration::from_secs(60)),
            client_idle_timeout: HumanDuration(Duration::ZERO),
            idle_transaction_timeout: HumanDuration(Duration::ZERO),
            log_connections: true,
            log_disconnections: true,
            application_name_add_host: false,
            server_reset_query: "DISCARD ALL".to_owned(),
        }
    }
}

/// TLS towards clients: SSLRequest answered 'S' (and PostgreSQL 17's direct TLS accepted).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// PEM certificate chain presented to clients.
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<std::path::PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate signed by one.
    pub client_ca: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// SSLRequest is answered 'N'.
    #[default]
    Disable,
    /// TLS for clients that ask; plaintext for the rest.
    Allow,
    /// A plaintext StartupMessage gets FATAL 28000.
    Require,
}

/// TLS towards the members: SSLRequest to the server, then rustls.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    pub sslmode: SslMode,
    /// PEM CA certificates the members' certificates must chain to (verify-ca, verify-full).
    pub root_ca: Option<std::path::PathBuf>,
    /// Name checked against the members' certificates (verify-full) instead of the host of
    /// each member's conn_url.
    pub server_name: Option<String>,
}

/// libpq's sslmode values, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    /// TLS if the member offers it, without verifying its certificate.
    Prefer,
    /// TLS or no connection, without verifying the certificate.
    Require,
    /// TLS with a certificate signed by `root_ca`, any name.
    VerifyCa,
    /// TLS with a certificate signed by `root_ca` for the member's host name.
    VerifyFull,
}

/// Who may connect in the pooled modes, and with what secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// pgbouncer's userlist format: `"user" "secret"` per line; the secret plain, md5 or SCRAM.
    pub auth_file: Option<std::path::PathBuf>,
    /// Looks up users missing from auth_file, run on the leader as `auth_user`, with the user
    /// name as $1; returns (usename, passwd), e.g. from a SECURITY DEFINER function over pg_shadow.
    pub auth_query: Option<String>,
    /// The user auth_query runs as; its secret comes from auth_file.
    pub auth_user: Option<String>,
    /// Users who may open the admin console (database "pgrouter", or "pgbouncer" for
    /// pgbouncer's tools) and run every command.
    pub admin_users: Vec<String>,
    /// Users who may open the console for SHOW commands only (exporters).
    pub stats_users: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaFallback {
    /// No replica eligible: send read clients to the leader.
    Primary,
    /// No replica eligible: refuse read clients with 57P03.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Bytes a replica's replay may be behind the leader's WAL position, both read from
    /// their Patroni REST APIs in the same check.
    pub max_replica_lag: ByteSize,
    /// How long ago the leader was at a WAL position the replica has not replayed yet, by
    /// pgrouter's own clock; 0 turns the bound off. An idle primary adds no delay: a replica
    /// that replayed everything the leader wrote is 0 behind however old its last commit.
    pub max_replica_delay: HumanDuration,
    /// How often each member's Patroni REST API is asked for its WAL positions.
    pub lag_check_interval: HumanDuration,
    /// A replica serving reads leaves a listener's set only after being over its lag bounds
    /// (or of unknown lag) this long.
    pub lag_out_after: HumanDuration,
    /// A replica out for lag comes back after being within the bounds this long.
    pub lag_in_after: HumanDuration,
    pub replica_fallback: ReplicaFallback,
    /// How new read clients are spread over the members serving a listener.
    pub balance: Balance,
    /// A Patroni tag holding a member's weight (a whole number; 0 takes no new clients).
    pub weight_tag: Option<String>,
    /// Weights by member name, ahead of the tag; 1 when neither gives one.
    pub weights: std::collections::BTreeMap<String, u32>,
    pub hold_timeout: HumanDuration,
    pub drain_timeout: HumanDuration,
    pub connect_timeout: HumanDuration,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            primary: SocketAddr::from(([127, 0, 0, 1], 5000)),
            replicas: SocketAddr::from(([127, 0, 0, 1], 5001)),
            startup_timeout: HumanDuration(Duration::from_secs(10)),
            max_client_conn: 10_000,
            admin: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            admin_tls: false,
            admin_cert: None,
            admin_key: None,
            primary_pool_mode: PoolMode::Passthrough,
            replicas_pool_mode: PoolMode::Passthrough,
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_replica_lag: ByteSize(16 * 1024 * 1024),
            max_replica_delay: HumanDuration(Duration::ZERO),
            lag_check_interval: HumanDuration(Duration::from_secs(1)),
            lag_out_after: HumanDuration(Duration::from_secs(5)),
            lag_in_after: HumanDuration(Duration::from_secs(5)),
            replica_fallback: ReplicaFallback::Primary,
            balance: Balance::Roundrobin,
            weight_tag: None,
            weights: Default::default(),
            hold_timeout: HumanDuration(Duration::from_secs(10)),
            drain_timeout: HumanDuration(Duration::from_secs(30)),
            connect_timeout: HumanDuration(Duration::from_secs(3)),
        }
    }
}

impl Config {
    /// The admin endpoint's certificate and key with the keys naming them (`listen.admin_cert`,
    /// else `tls.cert`), when `listen.admin_tls` is on and validation found them.
    pub fn admin_tls_files(&self) -> Option<[(&'static str, &std::path::Path); 2]> {
        let l = &self.listen;
        if !l.admin_tls {
            return None;
        }
        match (&l.admin_cert, &l.admin_key, &self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key), _, _) => {
                Some([("listen.admin_cert", cert), ("listen.admin_key", key)])
            }
            (None, None, Some(cert), Some(key)) => Some([("tls.cert", cert), ("tls.key", key)]),
            _ => None,
        }
    }

    /// The etcd key prefix Patroni writes this cluster under, e.g. "/service/demo/".
    pub fn key_prefix(&self) -> String {
        format!(
            "{}/{}/",
            self.cluster.namespace.trim_end_matches('/'),
            self.cluster.scope
        )
    }
}
