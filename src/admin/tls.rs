//! HTTPS for the admin endpoint (`listen.admin_tls`): the acceptor built from
//! `listen.admin_cert`/`admin_key`, else `[tls]`'s cert and key, so the bearer token and the
//! answers do not cross the network in clear. Read at start, by `check-config` and on every
//! reload; a file that cannot be used is refused with its key and the reason.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError};
use crate::tls::{provider, read_certs, read_key};

/// The admin endpoint's acceptor; None when it serves plain HTTP.
pub fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, ConfigError> {
    let Some([(cert_key, cert), (key_key, key)]) = config.admin_tls_files() else {
        return Ok(None);
    };
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    };
    let certs = read_certs(cert_key, cert)?;
    let private = read_key(key_key, key)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("listen.admin_tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| invalid(key_key, format!("does not fit {cert_key}: {e}")))?;
    // The endpoint speaks HTTP/1.1 only.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[cluster]\nscope = \"d\"\netcd = [\"127.0.0.1:1\"]\n";

    #[test]
    fn plain_without_admin_tls() {
        let config = Config::from_toml(BASE).unwrap();
        assert!(acceptor(&config).unwrap().is_none());
    }

    #[test]
    fn bad_files_name_their_key() {
        let config = Config::from_toml(&format!(
            "{BASE}[listen]\nadmin_tls = true\nadmin_cert = \"/nonexistent/admin.crt\"\nadmin_key = \"/nonexistent/admin.key\"\n"
        ))
        .unwrap();
        let e = acceptor(&config).err().unwrap().to_string();
        assert!(
            e.starts_with("listen.admin_cert: cannot read /nonexistent/admin.crt"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("pgrouter-admin-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let config = Config::from_toml(&format!(
            "{BASE}[listen]\nadmin_tls = true\n[tls]\ncert = {not_pem:?}\nkey = {not_pem:?}\n"
        ))
        .unwrap();
        let e = acceptor(&config).err().unwrap().to_string();
        assert!(e.starts_with("tls.cert: "), "{e}");
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_certificate_and_its_key_make_an_acceptor() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let dir = std::env::temp_dir().join(format!("pgrouter-admin-pair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path, other_path) =
            (dir.join("a.crt"), dir.join("a.key"), dir.join("b.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&other_path, other.serialize_pem()).unwrap();
        let config = |key: &std::path::Path| {
            Config::from_toml(&format!(
                "{BASE}[listen]\nadmin_tls = true\nadmin_cert = {cert_path:?}\nadmin_key = {key:?}\n"
            ))
            .unwrap()
        };
        assert!(acceptor(&config(&key_path)).unwrap().is_some());
        let e = acceptor(&config(&other_path)).err().unwrap().to_string();
        assert!(
            e.starts_with("listen.admin_key: does not fit listen.admin_cert"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
