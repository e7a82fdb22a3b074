//! Listeners beyond :5000 and :5001, each serving the members one of Patroni's health endpoints
//! would select (`/replica`, `/read-only`, `/synchronous`, ...), and the rules every listener
//! routes by, built-in ones included.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError, PoolMode, ReplicaFallback};
use crate::units::{ByteSize, HumanDuration};

/// `[listeners.<name>]`: one more client port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    pub role: Selector,
    /// Default: `routing.max_replica_lag`.
    pub max_replica_lag: Option<ByteSize>,
    /// Default: `routing.max_replica_delay`.
    pub max_replica_delay: Option<HumanDuration>,
    /// A member serves only if it has each tag with this value, as Patroni's `?tag_key=value`
    /// compares them (non-string tag values as lower-case text: `true`, `1`).
    #[serde(default)]
    pub tags: BTreeMap<String, TagValue>,
    /// No member serves: refuse (57P03) or send clients to the leader.
    #[serde(default = "reject")]
    pub fallback: ReplicaFallback,
    /// Default: `routing.balance`.
    pub balance: Option<Balance>,
    #[serde(default)]
    pub pool_mode: PoolMode,
}

fn reject() -> ReplicaFallback {
    ReplicaFallback::Reject
}

/// Which members a listener serves, named after Patroni's health endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selector {
    /// The holder of the leader key, once writable (`/primary`).
    Primary,
    /// Running replicas within the lag bounds, not tagged noloadbalance (`/replica`).
    Replica,
    /// The leader or such a replica (`/read-only`).
    ReadOnly,
    /// Replicas Patroni names synchronous standbys under `synchronous_mode` (`/synchronous`).
    #[serde(alias = "sync")]
    Synchronous,
    /// Replicas that are not synchronous standbys (`/asynchronous`).
    #[serde(alias = "async")]
    Asynchronous,
    /// The leader or a synchronous standby (`/read-only-sync`).
    ReadOnlySync,
}

impl Selector {
    pub fn label(self) -> &'static str {
        match self {
            Selector::Primary => "primary",
            Selector::Replica => "replica",
            Selector::ReadOnly => "read-only",
            Selector::Synchronous => "synchronous",
            Selector::Asynchronous => "asynchronous",
            Selector::ReadOnlySync => "read-only-sync",
        }
    }

    /// Whether the leader may serve this listener's clients as a reader.
    pub fn admits_leader(self) -> bool {
        matches!(self, Selector::ReadOnly | Selector::ReadOnlySync)
    }
}

/// How a listener spreads new clients over the members that serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// In turn, each member as often as its weight says.
    #[default]
    Roundrobin,
    /// To the member with the fewest of this listener's sessions for its weight (HAProxy's
    /// `balance leastconn`).
    Leastconn,
}

impl Balance {
    pub fn label(self) -> &'static str {
        match self {
            Balance::Roundrobin => "roundrobin",
            Balance::Leastconn => "leastconn",
        }
    }
}

/// A tag value in a filter, kept as the text Patroni compares: strings as written, other
/// values lower-case (`true`, `1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagValue(pub String);

impl<'de> Deserialize<'de> for TagValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Flag(bool),
            Number(i64),
        }
        Ok(TagValue(match Raw::deserialize(d)? {
            Raw::Text(s) => s,
            Raw::Flag(b) => b.to_string(),
            Raw::Number(n) => n.to_string(),
        }))
    }
}

/// What one listener routes by, whichever section it comes from.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub name: &'a str,
    pub role: Selector,
    pub max_lag: u64,
    /// Zero: no bound on replay delay.
    pub max_delay: Duration,
    pub tags: &'a BTreeMap<String, TagValue>,
    pub fallback: ReplicaFallback,
    pub balance: Balance,
    pub pool_mode: PoolMode,
}

impl Rules<'_> {
    /// Whether a member with these Patroni tags passes the listener's tag filter.
    pub fn tags_match(&self, tags: &BTreeMap<String, String>) -> Result<(), String> {
        for (key, want) in self.tags {
            match tags.get(key) {
                Some(have) if *have == want.0 => {}
                Some(have) => return Err(format!("tag {key} is {have:?}, not {:?}", want.0)),
                None => return Err(format!("no tag {key}")),
            }
        }
        Ok(())
    }

    /// Members tagged noloadbalance serve only listeners whose filter names that tag.
    pub fn admits_noloadbalance(&self) -> bool {
        self.tags.contains_key("noloadbalance")
    }
}

/// Names the built-in listeners take; an extra listener may not.
pub const BUILT_IN: [&str; 3] = ["primary", "replicas", "admin"];

/// Most listeners in all (a port's number is a byte).
pub const MAX_LISTENERS: usize = 64;

impl Config {
    /// Every client listener's name and address: primary, replicas, then `[listeners]` in
    /// name order. A port's number is its place here.
    pub fn client_listeners(&self) -> Vec<(&str, SocketAddr)> {
        let mut all = vec![
            ("primary", self.listen.primary),
            ("replicas", self.listen.replicas),
        ];
        all.extend(self.listeners.iter().map(|(n, l)| (n.as_str(), l.listen)));
        all
    }

    /// The rules of the listener numbered `index` (see [`Config::client_listeners`]); the
    /// replicas listener's when the number is past the end (a reload never changes the set).
    pub fn rules(&self, index: usize) -> Rules<'_> {
        const NO_TAGS: &BTreeMap<String, TagValue> = &BTreeMap::new();
        let r = &self.routing;
        let replicas = Rules {
            name: "replicas",
            role: Selector::Replica,
            max_lag: r.max_replica_lag.0,
            max_delay: r.max_replica_delay.0,
            tags: NO_TAGS,
            fallback: r.replica_fallback,
            balance: r.balance,
            pool_mode: self.listen.replicas_pool_mode,
        };
        match index {
            0 => Rules {
                name: "primary",
                role: Selector::Primary,
                fallback: ReplicaFallback::Reject,
                pool_mode: self.listen.primary_pool_mode,
                ..replicas
            },
            1 => replicas,
            i => match self.listeners.iter().nth(i - 2) {
                None => replicas,
                Some((name, l)) => Rules {
                    name,
                    role: l.role,
                    max_lag: l.max_replica_lag.map_or(r.max_replica_lag.0, |b| b.0),
                    max_delay: l.max_replica_delay.map_or(r.max_replica_delay.0, |d| d.0),
                    tags: &l.tags,
                    fallback: l.fallback,
                    balance: l.balance.unwrap_or(r.balance),
                    pool_mode: l.pool_mode,
                },
            },
        }
    }

    /// A member's weight: `routing.weights`, else its `routing.weight_tag` tag, else 1.
    pub fn weight(&self, member: &str, tags: &BTreeMap<String, String>) -> u32 {
        let r = &self.routing;
        if let Some(w) = r.weights.get(member) {
            return *w;
        }
        r.weight_tag
            .as_ref()
            .and_then(|t| tags.get(t))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1)
    }

    pub(super) fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.listeners.len() + 2 > MAX_LISTENERS {
            return Err(ConfigError::invalid(
                "listeners",
                format!(
                    "at most {} listeners besides primary and replicas",
                    MAX_LISTENERS - 2
                ),
            ));
        }
        let mut taken = vec![
            ("listen.primary".to_owned(), self.listen.primary),
            ("listen.replicas".to_owned(), self.listen.replicas),
            ("listen.admin".to_owned(), self.listen.admin),
        ];
        for (name, l) in &self.listeners {
            let key = format!("listeners.{name}");
            let named_well = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !named_well {
                return Err(ConfigError::invalid(
                    &key,
                    "a listener's name is 1 to 32 of a-z, 0-9, '_' and '-' (it labels metrics)",
                ));
            }
            if BUILT_IN.contains(&name.as_str()) {
                return Err(ConfigError::invalid(
                    &key,
                    format!("{name:?} is the name of a built-in listener"),
                ));
            }
            if let Some((other, _)) = taken.iter().find(|(_, a)| *a == l.listen) {
                return Err(ConfigError::invalid(
                    &format!("{key}.listen"),
                    format!("{} is already {other}", l.listen),
                ));
            }
            if l.role == Selector::Primary && !l.tags.is_empty() {
                return Err(ConfigError::invalid(
                    &format!("{key}.tags"),
                    "a primary listener reaches the leader whatever its tags",
                ));
            }
            if l.pool_mode.pooled()
                && self.auth.auth_file.is_none()
                && self.auth.auth_query.is_none()
            {
                return Err(ConfigError::invalid(
                    &format!("{key}.pool_mode"),
                    "pooled modes authenticate clients: set auth.auth_file or auth.auth_query",
                ));
            }
            taken.push((format!("{key}.listen"), l.listen));
        }
        let r = &self.routing;
        let positive = [("routing.lag_check_interval", r.lag_check_interval)];
        if let Some((key, _)) = positive
            .iter()
            .find(|(_, d)| d.0 < Duration::from_millis(50))
        {
            return Err(ConfigError::invalid(key, "must be at least 50ms"));
        }
        if let Some(tag) = &r.weight_tag {
            if tag.is_empty() {
                return Err(ConfigError::invalid(
                    "routing.weight_tag",
                    "must name a Patroni tag",
                ));
            }
        }
        if let Some((member, w)) = r.weights.iter().find(|(_, w)| **w > 1000) {
            return Err(ConfigError::invalid(
                &format!("routing.weights.{member}"),
                format!("{w} is over 1000"),
            ));
        }
        Ok(())
    }
}
