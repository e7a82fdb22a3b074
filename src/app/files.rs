//! What `check-config` reads: every file a config names, each problem naming its key, so a
//! unit's `ExecStartPre` fails where the start would (and on files only a reload would use).

use std::path::PathBuf;

use crate::config::{ClusterConfig, Config, ConfigError};

/// What a named file must hold.
#[derive(Clone, Copy)]
enum Holds {
    /// PEM certificates (a chain, or CAs).
    Certificates,
    /// A PEM private key.
    Key,
}

/// Every file `config` names with its key, a further cluster's as `clusters.<name>.<key>`.
fn named(config: &Config) -> Vec<(String, PathBuf, Holds)> {
    use Holds::{Certificates, Key};
    let mut files = Vec::new();
    let mut add = |key: String, path: &Option<PathBuf>, holds| {
        if let Some(path) = path {
            files.push((key, path.clone(), holds));
        }
    };
    let (t, l) = (&config.tls, &config.listen);
    add("tls.cert".into(), &t.cert, Certificates);
    add("tls.key".into(), &t.key, Key);
    add("tls.client_ca".into(), &t.client_ca, Certificates);
    add(
        "upstream_tls.root_ca".into(),
        &config.upstream_tls.root_ca,
        Certificates,
    );
    add("listen.admin_cert".into(), &l.admin_cert, Certificates);
    add("listen.admin_key".into(), &l.admin_key, Key);
    let mut cluster = |prefix: &str, c: &ClusterConfig| {
        add(format!("{prefix}.etcd_ca"), &c.etcd_ca, Certificates);
        add(format!("{prefix}.etcd_cert"), &c.etcd_cert, Certificates);
        add(format!("{prefix}.etcd_key"), &c.etcd_key, Key);
        add(format!("{prefix}.rest_ca"), &c.rest_ca, Certificates);
        add(format!("{prefix}.rest_cert"), &c.rest_cert, Certificates);
        add(format!("{prefix}.rest_key"), &c.rest_key, Key);
    };
    cluster("cluster", &config.cluster);
    for (name, c) in &config.clusters {
        cluster(&format!("clusters.{name}"), c);
    }
    files
}

/// Reads and checks every file the config names (auth file, TLS certificates and keys, the
/// admin endpoint's, etcd's and the REST APIs' CAs and client certificates), as a start does,
/// and those the current settings leave unused (a reload may use them). Every problem found,
/// each naming its key; then, when each file reads, whether they fit together (a key that
/// does not fit its certificate).
pub fn check_files(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if let Err(e) = super::load_users(config) {
        errors.push(e);
    }
    for (key, path, holds) in named(config) {
        let read = match holds {
            Holds::Certificates => crate::tls::read_certs(&key, &path).map(drop),
            Holds::Key => crate::tls::read_key(&key, &path).map(drop),
        };
        if let Err(e) = read {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    let fits = [
        crate::tls::Transport::load(config).map(drop),
        crate::admin::tls::acceptor(config).map(drop),
        crate::dcs::access::load(&config.cluster).map(drop),
    ];
    errors.extend(fits.into_iter().filter_map(Result::err));
    for (name, c) in &config.clusters {
        if let Err(e) = crate::dcs::access::load(c) {
            // The loader names the `[cluster]` keys; this is `[clusters.<name>]`'s.
            errors.push(match e {
                ConfigError::Invalid { key, reason } => ConfigError::Invalid {
                    key: key.replacen("cluster.", &format!("clusters.{name}."), 1),
                    reason,
                },
                other => other,
            });
        }
    }
    errors
}
