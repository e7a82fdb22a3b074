//! How pgrouter reaches etcd and the members' Patroni REST APIs: TLS and credentials from
//! `[cluster]`, read and checked once (by `check-config` as by the router at start).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::rest::RestClient;
use crate::config::{ClusterConfig, ConfigError};
use crate::tls::{provider, read_certs, read_key, read_roots};

/// etcd's TLS and RBAC settings, as Patroni's `etcd3:` section has them.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    tls: Option<TlsOptions>,
    user: Option<(String, String)>,
    /// The files and user it was made from: clusters with the same share a connection.
    id: String,
}

impl EtcdAccess {
    /// The options every connection to etcd is made with.
    pub fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password)) = &self.user {
            // etcd's simple tokens expire (5 minutes by default): a new one is asked for.
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        options
    }

    /// Whether connections to etcd use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }
}

/// Reads the files `[cluster]` names; an error names the key and the file.
pub fn load(c: &ClusterConfig) -> Result<(EtcdAccess, RestClient), ConfigError> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ConfigError::Invalid {
            key: key.to_owned(),
            reason: format!("cannot read {}: {e}", path.display()),
        })
    };
    let tls = match &c.etcd_ca {
        None => None,
        Some(ca) => {
            read_certs("cluster.etcd_ca", ca)?;
            let mut tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read("cluster.etcd_ca", ca)?));
            if let (Some(cert), Some(key)) = (&c.etcd_cert, &c.etcd_key) {
                read_certs("cluster.etcd_cert", cert)?;
                read_key("cluster.etcd_key", key)?;
                let identity = Identity::from_pem(
                    read("cluster.etcd_cert", cert)?,
                    read("cluster.etcd_key", key)?,
                );
                tls = tls.identity(identity);
            }
            Some(tls)
        }
    };
    let user = c.etcd_username.clone().zip(c.etcd_password.clone());
    let rest = match &c.rest_ca {
        None => RestClient::default(),
        Some(ca) => {
            let roots = Arc::new(read_roots("cluster.rest_ca", ca)?);
            let invalid = |e: rustls::Error| ConfigError::Invalid {
                key: "cluster.rest_ca".to_owned(),
                reason: e.to_string(),
            };
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(invalid)?
                .with_root_certificates(roots);
            let config = match (&c.rest_cert, &c.rest_key) {
                (Some(cert), Some(key)) => builder
                    .with_client_auth_cert(
                        read_certs("cluster.rest_cert", cert)?,
                        read_key("cluster.rest_key", key)?,
                    )
                    .map_err(|e| ConfigError::Invalid {
                        key: "cluster.rest_key".to_owned(),
                        reason: format!("does not go with cluster.rest_cert: {e}"),
                    })?,
                _ => builder.with_no_client_auth(),
            };
            RestClient::new(Some(Arc::new(config)))
        }
    };
    let id = format!(
        "{:?} {:?} {:?} {:?}",
        c.etcd_ca, c.etcd_cert, c.etcd_username, c.etcd_password
    );
    Ok((EtcdAccess { tls, user, id }, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_cannot_be_read_are_refused_by_key() {
        let config = |extra: &str| {
            crate::config::Config::from_toml(&format!(
                "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:2379\"]\n{extra}"
            ))
            .unwrap()
        };
        let plain = config("");
        assert!(load(&plain.cluster).is_ok());
        let missing = config("etcd_ca = \"/nonexistent/ca.pem\"\n");
        let e = load(&missing.cluster).err().unwrap().to_string();
        assert!(
            e.starts_with("cluster.etcd_ca: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("pgrouter-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let bad = config(&format!("rest_ca = {:?}\n", not_pem));
        let e = load(&bad.cluster).err().unwrap().to_string();
        assert!(e.starts_with("cluster.rest_ca: "), "{e}");
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
