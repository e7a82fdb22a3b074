//! What a lab looks like: its directory, ports and Patroni timings, and where each member lives.

use std::path::PathBuf;

/// Number of Patroni members in every lab.
pub(crate) const MEMBERS: usize = 3;

/// Number of etcd members in every lab.
pub(crate) const ETCD_MEMBERS: usize = 3;

/// Everything needed to lay out a lab. Build it with [`LabSpec::new`] and adjust fields as needed.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Working directory; wiped at start. Holds etcd data, member dirs and logs.
    pub dir: PathBuf,
    /// First port of the lab's range (see the crate docs for the layout).
    pub base_port: u16,
    /// Patroni scope (cluster name).
    pub scope: String,
    /// Patroni namespace (DCS key prefix).
    pub namespace: String,
    /// Patroni `ttl` (seconds): leader key lifetime.
    pub ttl: u32,
    /// Patroni `loop_wait` (seconds): HA loop period.
    pub loop_wait: u32,
    /// Patroni `retry_timeout` (seconds): DCS and PostgreSQL retry budget.
    pub retry_timeout: u32,
    /// TLS and RBAC everywhere (`Secure`); `None` is the plain lab.
    pub secure: Option<Secure>,
    /// The DCS Patroni runs on.
    pub dcs: Dcs,
    /// Another lab's etcd endpoints to use instead of starting etcd: two Patroni clusters
    /// (two scopes) in one etcd.
    pub external_etcd: Option<Vec<String>>,
}

/// The DCS of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dcs {
    /// Three etcd members (v3 API), the default.
    #[default]
    Etcd,
    /// One standalone ZooKeeper on the lab's first port (Patroni's `zookeeper:`).
    ZooKeeper,
}

/// The secured lab: etcd serves TLS only and wants client certificates
/// (`--client-cert-auth`) and RBAC users; Patroni reaches it with its `etcd3:` TLS and
/// credentials keys, and serves its REST API over HTTPS (`restapi.certfile`).
#[derive(Debug, Clone, Default)]
pub struct Secure {
    /// Patroni's REST APIs also require a client certificate (`verify_client: required`).
    pub verify_client: bool,
}

/// etcd users of the secured lab (name, password): `root`; `patroni` (root role); `pgrouter`,
/// with read on `<namespace>/<scope>/` only; `nobody`, with no role.
pub const ETCD_ROOT: (&str, &str) = ("root", "root-secret");
pub const ETCD_PATRONI: (&str, &str) = ("patroni", "patroni-secret");
pub const ETCD_PGROUTER: (&str, &str) = ("pgrouter", "pgrouter-secret");
pub const ETCD_NOBODY: (&str, &str) = ("nobody", "nobody-secret");

impl LabSpec {
    /// Defaults: scope "demo", namespace "/service", ttl 10, loop_wait 2, retry_timeout 5.
    pub fn new(dir: impl Into<PathBuf>, base_port: u16) -> Self {
        LabSpec {
            dir: dir.into(),
            base_port,
            scope: "demo".to_string(),
            namespace: "/service".to_string(),
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 5,
            secure: None,
            dcs: Dcs::Etcd,
            external_etcd: None,
        }
    }

    /// The ZooKeeper lab's client port: the first of the lab's range.
    pub(crate) fn zookeeper_port(&self) -> u16 {
        self.base_port
    }

    /// The secured lab's certificates, when it is one.
    pub fn tls(&self) -> Option<crate::tls::TlsFiles> {
        self.secure
            .as_ref()
            .map(|_| crate::tls::TlsFiles::new(&self.dir))
    }

    /// Every port the lab listens on, with what it is for.
    pub(crate) fn ports(&self) -> Vec<(u16, String)> {
        let mut ports = Vec::new();
        match self.dcs {
            Dcs::Etcd if self.external_etcd.is_some() => {}
            Dcs::Etcd => {
                for i in 0..ETCD_MEMBERS {
                    ports.push((self.etcd_client_port(i), format!("etcd{i} client")));
                    ports.push((self.etcd_peer_port(i), format!("etcd{i} peer")));
                }
            }
            Dcs::ZooKeeper => ports.push((self.zookeeper_port(), "ZooKeeper".to_owned())),
        }
        for i in 0..MEMBERS {
            let name = member_name(i);
            ports.push((self.pg_port(i), format!("{name} PostgreSQL")));
            ports.push((self.api_port(i), format!("{name} Patroni REST")));
        }
        ports
    }

    pub(crate) fn etcd_client_port(&self, index: usize) -> u16 {
        self.base_port + 2 * index as u16
    }

    pub(crate) fn etcd_peer_port(&self, index: usize) -> u16 {
        self.base_port + 2 * index as u16 + 1
    }

    /// `127.0.0.1:<client port>` of every etcd member (https in the secured lab).
    pub(crate) fn etcd_endpoints(&self) -> Vec<String> {
        if let Some(external) = &self.external_etcd {
            return external.clone();
        }
        (0..ETCD_MEMBERS)
            .map(|i| format!("127.0.0.1:{}", self.etcd_client_port(i)))
            .collect()
    }

    pub(crate) fn pg_port(&self, index: usize) -> u16 {
        self.base_port + 10 + index as u16
    }

    pub(crate) fn api_port(&self, index: usize) -> u16 {
        self.base_port + 20 + index as u16
    }

    pub(crate) fn member_dir(&self, index: usize) -> PathBuf {
        self.dir.join(member_name(index))
    }

    pub(crate) fn data_dir(&self, index: usize) -> PathBuf {
        self.member_dir(index).join("data")
    }

    pub(crate) fn yml_path(&self, index: usize) -> PathBuf {
        self.member_dir(index).join("patroni.yml")
    }

    pub(crate) fn log_path(&self, index: usize) -> PathBuf {
        self.member_dir(index).join("patroni.log")
    }

    /// The DCS key of a member, normalised the way Patroni does (`/service/demo/members/pg0`).
    pub(crate) fn member_key(&self, name: &str) -> String {
        self.dcs_key(&format!("members/{name}"))
    }

    /// The DCS leader key (`/service/demo/leader`), whose value is the leader's name.
    pub(crate) fn leader_key(&self) -> String {
        self.dcs_key("leader")
    }

    pub(crate) fn dcs_key(&self, suffix: &str) -> String {
        let raw = format!("/{}/{}/{suffix}", self.namespace, self.scope);
        let mut key = String::with_capacity(raw.len());
        for c in raw.chars() {
            if !(c == '/' && key.ends_with('/')) {
                key.push(c);
            }
        }
        key
    }
}

/// `pg0`, `pg1`, `pg2`.
pub(crate) fn member_name(index: usize) -> String {
    format!("pg{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let spec = LabSpec::new("/tmp/x", 16400);
        assert_eq!(spec.pg_port(2), 16412);
        assert_eq!(spec.api_port(0), 16420);
        assert_eq!(spec.ports().len(), 12);
        assert_eq!(spec.etcd_client_port(2), 16404);
        assert_eq!(spec.etcd_peer_port(1), 16403);
        assert_eq!(spec.etcd_endpoints()[1], "127.0.0.1:16402");
        assert_eq!(spec.member_key("pg1"), "/service/demo/members/pg1");
        assert_eq!(spec.leader_key(), "/service/demo/leader");
        let mut odd = spec.clone();
        odd.namespace = "service/".into();
        assert_eq!(odd.member_key("pg0"), "/service/demo/members/pg0");
    }
}
