//! `[cluster]` and `[clusters.<name>]`: which Patroni clusters pgrouter serves, where their
//! state comes from, and how to reach it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError};
use crate::units::HumanDuration;

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Patroni `scope`: the cluster name.
    pub scope: String,
    /// Patroni `namespace`, "/service" unless the cluster says otherwise.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Where the cluster's state comes from: Patroni's keys in etcd (watched), or the
    /// members' Patroni REST APIs (polled), for Consul, ZooKeeper, Kubernetes and Raft.
    #[serde(default)]
    pub source: Source,
    /// etcd v3 endpoints, `host:port`, `http://host:port` or `https://host:port`.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// `source = "patroni"`: the members' REST API addresses (`http(s)://host:8008`); members
    /// `/cluster` names beyond these are asked too.
    #[serde(default)]
    pub patroni: Vec<String>,
    /// `source = "patroni"`: how often every member is asked; a member that does not confirm
    /// it is the running primary within one interval takes no writes.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// PEM CA certificates etcd's server certificates must chain to (Patroni's `etcd3.cacert`):
    /// TLS to every endpoint (bare `host:port` ones become https).
    #[serde(default)]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key for etcd's `--client-cert-auth` (`etcd3.cert`, `etcd3.key`).
    #[serde(default)]
    pub etcd_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub etcd_key: Option<std::path::PathBuf>,
    /// etcd RBAC user and password (`etcd3.username`, `etcd3.password`); the user needs read on
    /// `<namespace>/<scope>/` only.
    #[serde(default)]
    pub etcd_username: Option<String>,
    #[serde(default)]
    pub etcd_password: Option<String>,
    /// For members whose Patroni REST API is HTTPS (`restapi.certfile`): the PEM CA its
    /// certificate chains to, and a client certificate and key for `verify_client`.
    #[serde(default)]
    pub rest_ca: Option<std::path::PathBuf>,
    #[serde(default)]
    pub rest_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub rest_key: Option<std::path::PathBuf>,
    /// `[clusters.<name>]` only: the cluster's own client ports (the first cluster's are
    /// `listen.primary` and `listen.replicas`).
    #[serde(default)]
    pub primary: Option<SocketAddr>,
    #[serde(default)]
    pub replicas: Option<SocketAddr>,
}

fn default_poll_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}

/// Where the cluster's state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Patroni's keys in etcd v3, watched: pgrouter knows the leader the moment Patroni does.
    #[default]
    Etcd,
    /// The members' Patroni REST APIs, polled every `poll_interval`: any DCS Patroni runs on.
    Patroni,
}

fn default_namespace() -> String {
    "/service".to_owned()
}

impl ClusterConfig {
    /// Checks one cluster's keys; errors name `key` (`cluster`, or `clusters.<name>`).
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let c = self;
        let k = |name: &str| format!("{key}.{name}");
        if c.scope.is_empty() || c.scope.contains('/') {
            return Err(ConfigError::invalid(
                &k("scope"),
                "must be a non-empty Patroni scope without '/'",
            ));
        }
        if !c.namespace.starts_with('/') {
            return Err(ConfigError::invalid(
                &k("namespace"),
                "must start with '/' (Patroni's default is \"/service\")",
            ));
        }
        match c.source {
            Source::Etcd if c.etcd.is_empty() => {
                return Err(ConfigError::invalid(
                &k("etcd"),
                    format!("needs at least one endpoint (or {key}.source = \"patroni\" with {key}.patroni)"),
                ));
            }
            Source::Patroni if c.patroni.is_empty() => {
                return Err(ConfigError::invalid(
                &k("patroni"),
                    format!("{key}.source = \"patroni\" needs the members' REST API addresses, e.g. [\"http://10.0.0.1:8008\"]"),
                ));
            }
            _ => {}
        }
        if let Some(bad) = c.patroni.iter().find(|u| !valid_rest_url(u)) {
            return Err(ConfigError::invalid(
                &k("patroni"),
                format!("{bad:?} is not http(s)://host:port"),
            ));
        }
        if let Some(https) = c.patroni.iter().find(|u| u.starts_with("https://")) {
            if c.rest_ca.is_none() {
                return Err(ConfigError::invalid(
                &k("rest_ca"),
                    format!("{https} is https: set {key}.rest_ca to the PEM CA that signed the REST APIs' certificates"),
                ));
            }
        }
        if c.poll_interval.0 < Duration::from_millis(50) {
            return Err(ConfigError::invalid(
                &k("poll_interval"),
                "must be at least 50ms",
            ));
        }
        if let Some(bad) = c.etcd.iter().find(|e| !valid_endpoint(e)) {
            return Err(ConfigError::invalid(
                &k("etcd"),
                format!("{bad:?} is not host:port or http(s)://host:port"),
            ));
        }
        let tls = c.etcd_ca.is_some() || c.etcd_cert.is_some();
        if let Some(https) = c.etcd.iter().find(|e| e.starts_with("https://")) {
            if c.etcd_ca.is_none() {
                return Err(ConfigError::invalid(
                &k("etcd_ca"),
                    format!("{https} is https: set {key}.etcd_ca to the PEM CA that signed etcd's certificates"),
                ));
            }
        }
        if let Some(plain) = c.etcd.iter().find(|e| tls && e.starts_with("http://")) {
            return Err(ConfigError::invalid(
                &k("etcd"),
                format!("{plain} is plain http, but {key}.etcd_ca or etcd_cert asks for TLS: write https:// (or host:port)"),
            ));
        }
        if c.etcd_cert.is_some() && c.etcd_ca.is_none() {
            return Err(ConfigError::invalid(
                &k("etcd_ca"),
                format!("a client certificate ({key}.etcd_cert) is for TLS: set the CA that signed etcd's certificates too"),
            ));
        }
        for (a, b, cert) in [
            (&c.etcd_cert, &c.etcd_key, "etcd_cert"),
            (&c.rest_cert, &c.rest_key, "rest_cert"),
        ] {
            if a.is_some() != b.is_some() {
                let (cert, key_of) = (k(cert), k(&cert.replace("_cert", "_key")));
                return Err(ConfigError::invalid(
                    if a.is_none() { &cert } else { &key_of },
                    format!("{cert} and {key_of} go together: a client certificate and its key"),
                ));
            }
        }
        match (&c.etcd_username, &c.etcd_password) {
            (Some(u), _) if u.is_empty() => Err(ConfigError::invalid(
                &k("etcd_username"),
                "must not be empty",
            )),
            (Some(_), None) => Err(ConfigError::invalid(
                &k("etcd_password"),
                format!("{key}.etcd_username needs its password"),
            )),
            (None, Some(_)) => Err(ConfigError::invalid(
                &k("etcd_username"),
                format!("{key}.etcd_password is set without a user"),
            )),
            _ => Ok(()),
        }
    }
}

impl Config {
    /// `[clusters.<name>]`: each checked as `[cluster]` is, with its own ports, its scope
    /// unique (it names the cluster in metrics, `/health?cluster=` and messages).
    pub(super) fn validate_clusters(&self) -> Result<(), ConfigError> {
        let mut scopes = BTreeSet::from([self.cluster.scope.as_str()]);
        let mut taken = vec![
            ("listen.primary".to_owned(), self.listen.primary),
            ("listen.replicas".to_owned(), self.listen.replicas),
            ("listen.admin".to_owned(), self.listen.admin),
        ];
        for (name, l) in &self.listeners {
            taken.push((format!("listeners.{name}.listen"), l.listen));
        }
        for (name, c) in &self.clusters {
            let key = format!("clusters.{name}");
            c.validate(&key)?;
            if !scopes.insert(c.scope.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("{key}.scope"),
                    format!("cluster {:?} is already served (a scope names one cluster in metrics and /health?cluster=)", c.scope),
                ));
            }
            for (port, addr) in [("primary", c.primary), ("replicas", c.replicas)] {
                let key = format!("{key}.{port}");
                let Some(addr) = addr else {
                    return Err(ConfigError::invalid(
                        &key,
                        "a further cluster needs its own primary and replicas listen addresses",
                    ));
                };
                if let Some((other, _)) = taken.iter().find(|(_, a)| *a == addr) {
                    return Err(ConfigError::invalid(
                        &key,
                        format!("{addr} is already {other}"),
                    ));
                }
                taken.push((key, addr));
            }
        }
        Ok(())
    }

    /// The settings one further cluster runs with: everything but `[cluster]` and the client
    /// listeners shared with the first, its own ports as `listen.primary` and `listen.replicas`.
    pub fn for_cluster(&self, name: &str) -> Option<Config> {
        let c = self.clusters.get(name)?;
        let mut config = self.clone();
        config.listen.primary = c.primary?;
        config.listen.replicas = c.replicas?;
        config.cluster = ClusterConfig {
            primary: None,
            replicas: None,
            ..c.clone()
        };
        config.listeners.clear();
        config.clusters.clear();
        Some(config)
    }
}

fn valid_rest_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    valid_endpoint(rest.trim_end_matches('/'))
}

pub(super) fn valid_endpoint(endpoint: &str) -> bool {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    match rest.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}
