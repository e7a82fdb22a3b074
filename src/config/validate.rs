//! Checking a deserialized configuration: every error names its key and the reason.

use std::time::Duration;

use super::{Config, ConfigError, PeersConfig, SslMode, TlsMode};

impl Config {
    /// Checks every value, section by section; the first error found names its key.
    pub fn validate(self) -> Result<Config, ConfigError> {
        self.validate_cluster()?;
        self.validate_listen()?;
        self.validate_listeners()?;
        self.validate_pooling()?;
        self.validate_databases()?;
        self.validate_peers()?;
        self.validate_tls()?;
        self.validate_tcp()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid("log.level", e.to_string()));
        }
        let positive = [
            ("listen.startup_timeout", self.listen.startup_timeout),
            ("routing.connect_timeout", self.routing.connect_timeout),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.0.is_zero()) {
            return Err(ConfigError::invalid(key, "must be longer than 0s"));
        }
        Ok(self)
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        self.cluster.validate("cluster")?;
        if self.cluster.primary.is_some() || self.cluster.replicas.is_some() {
            return Err(ConfigError::invalid(
                "cluster.primary",
                "the first cluster's ports are listen.primary and listen.replicas; primary and replicas are for [clusters.<name>]",
            ));
        }
        self.validate_clusters()
    }

    fn validate_listen(&self) -> Result<(), ConfigError> {
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
        self.validate_admin_tls()
    }

    fn validate_admin_tls(&self) -> Result<(), ConfigError> {
        let l = &self.listen;
        match (&l.admin_cert, &l.admin_key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "listen.admin_key",
                    "required with listen.admin_cert",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "listen.admin_cert",
                    "required with listen.admin_key",
                ))
            }
            (Some(_), Some(_)) if !l.admin_tls => {
                return Err(ConfigError::invalid(
                    "listen.admin_cert",
                    "set listen.admin_tls = true to serve the admin endpoint over HTTPS with it",
                ))
            }
            _ => {}
        }
        if l.admin_tls && self.admin_tls_files().is_none() {
            return Err(ConfigError::invalid(
                "listen.admin_tls",
                "needs listen.admin_cert and listen.admin_key, or tls.cert and tls.key",
            ));
        }
        Ok(())
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
            ("pool.stats_period", p.stats_period),
            ("pool.reserve_pool_timeout", p.reserve_pool_timeout),
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
            .find(|r| r.contains("://") || !super::cluster::valid_endpoint(r))
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
}
