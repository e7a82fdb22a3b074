//! Configuration: plain serde data with one `Default`, parsed from TOML and validated before use.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{ByteSize, HumanDuration};

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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// -c 150 13-18% more, -c 16 level (simple 0.985x, prepared 1.085x). A host where the router
    /// must leave cores to the application sets a smaller count.
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
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Patroni `scope`: the cluster name.
    pub scope: String,
    /// Patroni `namespace`, "/service" unless the cluster says otherwise.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// etcd v3 endpoints, `host:port` or `http://host:port`.
    pub etcd: Vec<String>,
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
    /// Admin HTTP endpoint: /metrics, /health, /primary, /replica, /status, /pause, /resume, /reload.
    pub admin: SocketAddr,
    /// Bearer token the admin endpoint requires; mandatory when `admin` is not on loopback.
    pub admin_token: Option<String>,
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
    /// A transaction waits this long for a free server connection, then gets an error.
    pub query_wait_timeout: HumanDuration,
    /// Idle server connections are closed after this.
    pub server_idle_timeout: HumanDuration,
    /// Server connections are closed (when idle) after this age.
    pub server_lifetime: HumanDuration,
    /// A server connection idle longer than this is checked with an empty query before reuse.
    pub server_check_delay: HumanDuration,
    /// Most memory pooled clients' large messages (64 KiB and over), kept whole until sent,
    /// may hold together.
    pub message_memory: ByteSize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            pool_size: 20,
            min_pool_size: 0,
            query_wait_timeout: HumanDuration(Duration::from_secs(120)),
            server_idle_timeout: HumanDuration(Duration::from_secs(600)),
            server_lifetime: HumanDuration(Duration::from_secs(3600)),
            server_check_delay: HumanDuration(Duration::from_secs(30)),
            message_memory: ByteSize(1 << 30),
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
    /// Users who may open the admin console (database "pgrouter").
    pub admin_users: Vec<String>,
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
    pub max_replica_lag: ByteSize,
    pub replica_fallback: ReplicaFallback,
    pub hold_timeout: HumanDuration,
    pub drain_timeout: HumanDuration,
    pub connect_timeout: HumanDuration,
}

fn default_namespace() -> String {
    "/service".to_owned()
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
            primary_pool_mode: PoolMode::Passthrough,
            replicas_pool_mode: PoolMode::Passthrough,
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_replica_lag: ByteSize(16 * 1024 * 1024),
            replica_fallback: ReplicaFallback::Primary,
            hold_timeout: HumanDuration(Duration::from_secs(10)),
            drain_timeout: HumanDuration(Duration::from_secs(30)),
            connect_timeout: HumanDuration(Duration::from_secs(3)),
        }
    }
}

impl Config {
    /// Parse and validate TOML text; errors carry the dotted key path.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let reason = e.inner().message().trim().to_owned();
            let key = match e.path().to_string() {
                // A syntax error has no key path: name the line instead.
                path if path == "." => match e.inner().span() {
                    Some(span) => format!("line {}", text[..span.start].matches('\n').count() + 1),
                    None => "(file)".to_owned(),
                },
                path => path,
            };
            ConfigError::Invalid { key, reason }
        })?;
        config.validate()
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let c = &self.cluster;
        if c.scope.is_empty() || c.scope.contains('/') {
            return Err(ConfigError::invalid(
                "cluster.scope",
                "must be a non-empty Patroni scope without '/'",
            ));
        }
        if !c.namespace.starts_with('/') {
            return Err(ConfigError::invalid(
                "cluster.namespace",
                "must start with '/' (Patroni's default is \"/service\")",
            ));
        }
        if c.etcd.is_empty() {
            return Err(ConfigError::invalid(
                "cluster.etcd",
                "needs at least one endpoint",
            ));
        }
        if let Some(bad) = c.etcd.iter().find(|e| !valid_endpoint(e)) {
            return Err(ConfigError::invalid(
                "cluster.etcd",
                format!("{bad:?} is not host:port or http(s)://host:port"),
            ));
        }
        let l = &self.listen;
        if l.primary == l.replicas {
            return Err(ConfigError::invalid(
                "listen.replicas",
                format!("must differ from listen.primary ({})", l.primary),
            ));
        }
        if l.max_client_conn == 0 {
            return Err(ConfigError::invalid(
                "listen.max_client_conn",
                "must be at least 1",
            ));
        }
        if let Some(dup) = [l.primary, l.replicas].iter().find(|a| **a == l.admin) {
            return Err(ConfigError::invalid(
                "listen.admin",
                format!("must differ from the client ports ({dup})"),
            ));
        }
        match &l.admin_token {
            Some(t) if t.len() < 16 => {
                return Err(ConfigError::invalid(
                    "listen.admin_token",
                    "must be at least 16 characters",
                ))
            }
            None if !l.admin.ip().is_loopback() => {
                return Err(ConfigError::invalid(
                    "listen.admin_token",
                    format!(
                        "required when listen.admin ({}) is not on loopback",
                        l.admin
                    ),
                ))
            }
            _ => {}
        }
        self.validate_pooling()?;
        self.validate_peers()?;
        self.validate_tls()?;
        self.validate_tcp()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid("log.level", e.to_string()));
        }
        let positive = [
            ("listen.startup_timeout", l.startup_timeout),
            ("routing.connect_timeout", self.routing.connect_timeout),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.0.is_zero()) {
            return Err(ConfigError::invalid(key, "must be longer than 0s"));
        }
        Ok(self)
    }

    fn validate_pooling(&self) -> Result<(), ConfigError> {
        let (l, p, a) = (&self.listen, &self.pool, &self.auth);
        let pooled = [
            ("listen.primary_pool_mode", l.primary_pool_mode),
            ("listen.replicas_pool_mode", l.replicas_pool_mode),
        ];
        if let Some((key, _)) = pooled.iter().find(|(_, m)| m.pooled()) {
            if a.auth_file.is_none() && a.auth_query.is_none() {
                return Err(ConfigError::invalid(
                    key,
                    "pooled modes authenticate clients: set auth.auth_file or auth.auth_query",
                ));
            }
        }
        if p.pool_size == 0 {
            return Err(ConfigError::invalid("pool.pool_size", "must be at least 1"));
        }
        if p.min_pool_size > p.pool_size {
            return Err(ConfigError::invalid(
                "pool.min_pool_size",
                format!("must not exceed pool.pool_size ({})", p.pool_size),
            ));
        }
        if p.message_memory.0 < 1 << 20 {
            return Err(ConfigError::invalid(
                "pool.message_memory",
                "must be at least 1MB",
            ));
        }
        let positive = [
            ("pool.query_wait_timeout", p.query_wait_timeout),
            ("pool.server_idle_timeout", p.server_idle_timeout),
            ("pool.server_lifetime", p.server_lifetime),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.0.is_zero()) {
            return Err(ConfigError::invalid(key, "must be longer than 0s"));
        }
        match (&a.auth_query, &a.auth_user) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "auth.auth_user",
                    "required with auth.auth_query (the user it runs as)",
                ))
            }
            (Some(q), Some(_)) if !q.contains("$1") => {
                return Err(ConfigError::invalid(
                    "auth.auth_query",
                    "must take the user name as $1",
                ))
            }
            (Some(_), Some(_)) if a.auth_file.is_none() => {
                return Err(ConfigError::invalid(
                    "auth.auth_file",
                    "required with auth.auth_query (it holds auth_user's secret)",
                ))
            }
            _ => {}
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.tls;
        if t.mode != TlsMode::Disable {
            if t.cert.is_none() {
                return Err(ConfigError::invalid(
                    "tls.cert",
                    "required unless tls.mode = \"disable\"",
                ));
            }
            if t.key.is_none() {
                return Err(ConfigError::invalid(
                    "tls.key",
                    "required unless tls.mode = \"disable\"",
                ));
            }
        }
        let u = &self.upstream_tls;
        if matches!(u.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && u.root_ca.is_none() {
            return Err(ConfigError::invalid(
                "upstream_tls.root_ca",
                "required with sslmode verify-ca or verify-full",
            ));
        }
        Ok(())
    }

    fn validate_peers(&self) -> Result<(), ConfigError> {
        let p = &self.peers;
        if p.routers.len() > PeersConfig::MAX_ROUTERS {
            return Err(ConfigError::invalid(
                "peers.routers",
                format!("at most {} routers", PeersConfig::MAX_ROUTERS),
            ));
        }
        if let Some(bad) = p
            .routers
            .iter()
            .find(|r| r.contains("://") || !valid_endpoint(r))
        {
            return Err(ConfigError::invalid(
                "peers.routers",
                format!("{bad:?} is not host:port"),
            ));
        }
        match (p.id, p.routers.len()) {
            (0, 0) => Ok(()),
            (0, _) => Err(ConfigError::invalid(
                "peers.id",
                "must name this router's place in peers.routers (from 1)",
            )),
            (_, 0) => Err(ConfigError::invalid(
                "peers.routers",
                "must list every router, this one included, when peers.id is set",
            )),
            (id, n) if id > n => Err(ConfigError::invalid(
                "peers.id",
                format!("{id} is past the {n} routers of peers.routers"),
            )),
            _ => Ok(()),
        }
    }

    fn validate_tcp(&self) -> Result<(), ConfigError> {
        let t = &self.tcp;
        // Linux takes whole seconds up to 32767 (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL).
        let seconds = [
            ("tcp.keepalive_idle", t.keepalive_idle),
            ("tcp.keepalive_interval", t.keepalive_interval),
        ];
        for (key, d) in seconds {
            let d = d.0;
            if d < Duration::from_secs(1) || d > Duration::from_secs(32767) || d.subsec_nanos() != 0
            {
                return Err(ConfigError::invalid(
                    key,
                    "must be whole seconds from 1s to 32767s",
                ));
            }
        }
        if !(1..=127).contains(&t.keepalive_count) {
            return Err(ConfigError::invalid(
                "tcp.keepalive_count",
                "must be from 1 to 127",
            ));
        }
        if t.user_timeout.0.as_millis() > u128::from(u32::MAX) {
            return Err(ConfigError::invalid(
                "tcp.user_timeout",
                "must be at most 49 days (0 keeps the system default)",
            ));
        }
        Ok(())
    }

    /// The pool mode of a listener.
    pub fn pool_mode(&self, primary: bool) -> PoolMode {
        if primary {
            self.listen.primary_pool_mode
        } else {
            self.listen.replicas_pool_mode
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

fn valid_endpoint(endpoint: &str) -> bool {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    match rest.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:2379\"]\n";

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../config/pgrouter.toml");
        let config = Config::from_toml(text).unwrap();
        assert_eq!(config.cluster.scope, "demo");
        assert_eq!(config.key_prefix(), "/service/demo/");
        assert_eq!(config.routing.max_replica_lag, ByteSize(16 * 1024 * 1024));
        assert_eq!(config.routing.hold_timeout.0, Duration::from_secs(10));
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.cluster.namespace, "/service");
        assert_eq!(config.listen, ListenConfig::default());
        assert_eq!(config.routing, RoutingConfig::default());
    }

    #[test]
    fn tcp_keepalive_defaults_and_bounds() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.tcp, TcpConfig::default());
        assert!(config.tcp.keepalive);
        assert_eq!(config.tcp.keepalive_idle.0, Duration::from_secs(60));
        let config = Config::from_toml(&format!(
            "{MINIMAL}[tcp]\nkeepalive_idle = \"2s\"\nkeepalive_interval = \"1s\"\nkeepalive_count = 3\nuser_timeout = \"30s\"\n"
        ))
        .unwrap();
        assert_eq!(config.tcp.keepalive_count, 3);
        assert_eq!(config.tcp.user_timeout.0, Duration::from_secs(30));
        let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_idle = \"500ms\"\n"));
        assert!(
            e.starts_with("tcp.keepalive_idle: must be whole seconds"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_interval = \"1.5s\"\n"));
        assert!(
            e.starts_with("tcp.keepalive_interval: must be whole"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_idle = \"10h\"\n"));
        assert!(e.starts_with("tcp.keepalive_idle: "), "{e}");
        let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_count = 0\n"));
        assert!(e.starts_with("tcp.keepalive_count: must be from 1"), "{e}");
        let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_count = 128\n"));
        assert!(e.starts_with("tcp.keepalive_count: "), "{e}");
        let e = err(&format!("{MINIMAL}[tcp]\nuser_timeout = \"100000h\"\n"));
        assert!(e.starts_with("tcp.user_timeout: "), "{e}");
        let e = err(&format!("{MINIMAL}[tcp]\nkeepalives = true\n"));
        assert!(e.starts_with("tcp.keepalives: unknown field"), "{e}");
    }

    #[test]
    fn worker_count() {
        let explicit = RuntimeConfig { worker_threads: 3 };
        assert_eq!(explicit.workers(), 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(RuntimeConfig::default().workers(), cores);
        assert_eq!(Config::from_toml(MINIMAL).unwrap().runtime.workers(), cores);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!("{MINIMAL}[routing]\nhold_timout = \"1s\"\n"));
        assert!(e.starts_with("routing.hold_timout: unknown field"), "{e}");
    }

    #[test]
    fn bad_units_are_named() {
        let e = err(&format!(
            "{MINIMAL}[routing]\nhold_timeout = \"10 parsecs\"\n"
        ));
        assert!(e.starts_with("routing.hold_timeout: "), "{e}");
        let e = err(&format!("{MINIMAL}[routing]\nmax_replica_lag = \"16XB\"\n"));
        assert!(e.starts_with("routing.max_replica_lag: "), "{e}");
    }

    #[test]
    fn peers_name_this_router_in_one_list() {
        let peered = Config::from_toml(&format!(
            "{MINIMAL}[peers]\nid = 2\nrouters = [\"10.0.0.1:5000\", \"router2.internal:5000\"]\n"
        ))
        .unwrap();
        assert_eq!(peered.peers.id, 2);
        assert_eq!(
            Config::from_toml(MINIMAL).unwrap().peers,
            PeersConfig::default()
        );
        let cases = [
            ("id = 1\n", "peers.routers: must list every router"),
            (
                "routers = [\"10.0.0.1:5000\"]\n",
                "peers.id: must name this router",
            ),
            (
                "id = 3\nrouters = [\"10.0.0.1:5000\", \"10.0.0.2:5000\"]\n",
                "peers.id: 3 is past the 2 routers",
            ),
            (
                "id = 1\nrouters = [\"10.0.0.1\"]\n",
                "peers.routers: \"10.0.0.1\" is not host:port",
            ),
            (
                "id = 1\nrouters = [\"http://10.0.0.1:5000\"]\n",
                "peers.routers: \"http://10.0.0.1:5000\" is not host:port",
            ),
            ("id = -1\n", "peers.id: invalid value"),
        ];
        for (peers, want) in cases {
            let e = err(&format!("{MINIMAL}[peers]\n{peers}"));
            assert!(e.starts_with(want), "{peers:?}: {e}");
        }
        let many: Vec<String> = (0..256)
            .map(|i| format!("\"10.0.{}.{}:5000\"", i / 250, i % 250))
            .collect();
        let e = err(&format!(
            "{MINIMAL}[peers]\nid = 1\nrouters = [{}]\n",
            many.join(",")
        ));
        assert!(e.starts_with("peers.routers: at most 255"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_key_and_reason() {
        let e = err(&format!(
            "{MINIMAL}[routing]\nreplica_fallback = \"maybe\"\n"
        ));
        assert!(
            e.starts_with("routing.replica_fallback: unknown variant"),
            "{e}"
        );
        let e = err("[cluster]\nscope = \"demo\"\netcd = []\n");
        assert_eq!(e, "cluster.etcd: needs at least one endpoint");
        let e = err(&format!(
            "{MINIMAL}[listen]\nprimary_pool_mode = \"transaction\"\n"
        ));
        assert!(
            e.starts_with("listen.primary_pool_mode: pooled modes authenticate"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}[listen]\nreplicas_pool_mode = \"statement\"\n"
        ));
        assert!(
            e.starts_with("listen.replicas_pool_mode: unknown variant"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}[pool]\npool_size = 2\nmin_pool_size = 3\n"
        ));
        assert!(e.starts_with("pool.min_pool_size: must not exceed"), "{e}");
        let e = err(&format!("{MINIMAL}[pool]\nmessage_memory = \"64kB\"\n"));
        assert_eq!(e, "pool.message_memory: must be at least 1MB");
        let e = err(&format!(
            "{MINIMAL}[auth]\nauth_file = \"/x\"\nauth_user = \"a\"\nauth_query = \"select 1\"\n"
        ));
        assert!(e.starts_with("auth.auth_query: must take"), "{e}");
        let e = err(&format!("{MINIMAL}[tls]\nmode = \"require\"\n"));
        assert!(e.starts_with("tls.cert: required"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[upstream_tls]\nsslmode = \"verify-full\"\n"
        ));
        assert!(e.starts_with("upstream_tls.root_ca: required"), "{e}");
        let e = err(&format!("{MINIMAL}[upstream_tls]\nsslmode = \"verify\"\n"));
        assert!(
            e.starts_with("upstream_tls.sslmode: unknown variant"),
            "{e}"
        );
        let e = err("[cluster]\nscope = \"demo\"\netcd = [\"nohost\"]\n");
        assert!(e.starts_with("cluster.etcd: \"nohost\""), "{e}");
        let e = err(&format!(
            "{MINIMAL}[listen]\nprimary = \"127.0.0.1:6000\"\nreplicas = \"127.0.0.1:6000\"\n"
        ));
        assert!(e.starts_with("listen.replicas: must differ"), "{e}");
        let e = err(&format!("{MINIMAL}[listen]\nprimary = \"localhost\"\n"));
        assert!(e.starts_with("listen.primary: "), "{e}");
        let e = err(&format!("{MINIMAL}[listen]\nadmin = \"0.0.0.0:8080\"\n"));
        assert!(
            e.starts_with("listen.admin_token: required when listen.admin"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}[listen]\nadmin = \"127.0.0.1:5000\"\n"));
        assert!(e.starts_with("listen.admin: must differ"), "{e}");
        let e = err(&format!("{MINIMAL}[log]\nlevel = \"info,=[\"\n"));
        assert!(e.starts_with("log.level: "), "{e}");
        let e = err(&format!(
            "{MINIMAL}[routing]\nhold_timeout = \"1s\"\nhold_timeout = \"2s\"\n"
        ));
        assert!(e.starts_with("line 6: duplicate key"), "{e}");
        let e = err("[cluster]\nscope = \"demo\"\n");
        assert!(e.contains("missing field `etcd`"), "{e}");
    }
}
