//! How pgrouter meets clients and dials members (`Transport`): TLS with rustls, the acceptor for
//! clients (from `[tls]`), the connector for members (from
//! `[upstream_tls]`), and the SSLRequest exchange towards a member. Built from the files at
//! start and on every reload; a bad file refuses the reload and the running ones stay.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{Config, ConfigError, SslMode, TlsMode};
use crate::stream::Stream;

/// PostgreSQL's ALPN protocol name (required for PostgreSQL 17's direct TLS).
pub const ALPN: &[u8] = b"postgresql";
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The TLS settings in force, and the dialing of members: TCP with `[tcp]`'s options, then
/// TLS as `[upstream_tls]` says.
#[derive(Clone, Default)]
pub struct Transport {
    pub mode: TlsMode,
    pub acceptor: Option<TlsAcceptor>,
    upstream: Option<Upstream>,
    /// Keepalive settings for member sockets (`[tcp]`), applied in [`Transport::dial`].
    tcp: crate::config::TcpConfig,
}

#[derive(Clone)]
struct Upstream {
    sslmode: SslMode,
    connector: TlsConnector,
    server_name: Option<String>,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

pub(crate) fn read_certs(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(key, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(key, path, e))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// A PEM file's error, naming the config key and the file.
fn pem_error(key: &str, path: &Path, e: pem::Error) -> ConfigError {
    match e {
        pem::Error::Io(e) => invalid(key, format!("cannot read {}: {e}", path.display())),
        e => invalid(key, format!("{}: {e}", path.display())),
    }
}

pub(crate) fn read_roots(key: &str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(key, path)? {
        roots
            .add(cert)
            .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The PEM private key at `path`, the error naming `key`.
pub(crate) fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => invalid(key, format!("{}: no PEM private key", path.display())),
        e => pem_error(key, path, e),
    })
}

impl Transport {
    /// Reads the certificates and keys `config` names.
    pub fn load(config: &Config) -> Result<Transport, ConfigError> {
        let t = &config.tls;
        let acceptor = match (t.mode, &t.cert, &t.key) {
            (TlsMode::Disable, _, _) => None,
            (_, Some(cert), Some(key)) => {
                let certs = read_certs("tls.cert", cert)?;
                let private = read_key("tls.key", key)?;
                let builder = rustls::ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| invalid("tls", e.to_string()))?;
                let builder = match &t.client_ca {
                    Some(ca) => {
                        let roots = Arc::new(read_roots("tls.client_ca", ca)?);
                        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                            roots,
                            provider(),
                        )
                        .build()
                        .map_err(|e| invalid("tls.client_ca", e.to_string()))?;
                        builder.with_client_cert_verifier(verifier)
                    }
                    None => builder.with_no_client_auth(),
                };
                let mut server = builder
                    .with_single_cert(certs, private)
                    .map_err(|e| invalid("tls.key", format!("does not fit tls.cert: {e}")))?;
                server.alpn_protocols = vec![ALPN.to_vec()];
                Some(TlsAcceptor::from(Arc::new(server)))
            }
            _ => return Err(invalid("tls.cert", "required with tls.key")),
        };
        let u = &config.upstream_tls;
        let upstream = match u.sslmode {
            SslMode::Disable => None,
            sslmode => {
                let builder = rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| invalid("upstream_tls", e.to_string()))?;
                let verifier: Arc<dyn ServerCertVerifier> = match (sslmode, &u.root_ca) {
                    (SslMode::VerifyCa | SslMode::VerifyFull, Some(ca)) => {
                        let roots = Arc::new(read_roots("upstream_tls.root_ca", ca)?);
                        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                            roots,
                            provider(),
                        )
                        .build()
                        .map_err(|e| invalid("upstream_tls.root_ca", e.to_string()))?;
                        Arc::new(Verify {
                            webpki: Some(webpki),
                            check_name: sslmode == SslMode::VerifyFull,
                        })
                    }
                    _ => Arc::new(Verify {
                        webpki: None,
                        check_name: false,
                    }),
                };
                let mut client = builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                client.alpn_protocols = vec![ALPN.to_vec()];
                Some(Upstream {
                    sslmode,
                    connector: TlsConnector::from(Arc::new(client)),
                    server_name: u.server_name.clone(),
                })
            }
        };
        Ok(Transport {
            mode: t.mode,
            acceptor,
            upstream,
            tcp: config.tcp.clone(),
        })
    }

    /// Connects to a member at `addr` ("host:port"), with keepalives as `[tcp]` and TLS as
    /// `[upstream_tls]` say.
    pub async fn dial(&self, addr: &str) -> io::Result<Stream> {
        let mut tcp = TcpStream::connect(addr).await?;
        crate::tcp::tune(&tcp, &self.tcp);
        let Some(up) = &self.upstream else {
            return Ok(Stream::Plain(tcp));
        };
        tcp.write_all(&SSL_REQUEST).await?;
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {
                let host = up.server_name.clone().unwrap_or_else(|| host_of(addr));
                let name = ServerName::try_from(host.clone()).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{host:?} is not a TLS server name: {e}"),
                    )
                })?;
                let tls = up.connector.connect(name, tcp).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("TLS with member at {addr}: {e}"))
                })?;
                Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
            }
            b'N' if up.sslmode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
            b'N' => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("member at {addr} does not offer TLS (upstream_tls.sslmode requires it)"),
            )),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("member at {addr} answered SSLRequest with {other:#04x}"),
            )),
        }
    }
}

/// The host of "host:port" or "[v6]:port".
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// Server certificate checks for libpq's sslmodes: none beyond the handshake signature
/// (prefer, require), the chain (verify-ca), the chain and the name (verify-full).
#[derive(Debug)]
struct Verify {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("127.0.0.1:5432"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5432"), "::1");
        assert_eq!(host_of("db1.example:5432"), "db1.example");
    }

    #[test]
    fn pem_files_read_and_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("pgrouter-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (chain, key_path, empty, broken) = (
            dir.join("chain.crt"),
            dir.join("a.key"),
            dir.join("empty.pem"),
            dir.join("broken.pem"),
        );
        std::fs::write(&chain, format!("{}{}", cert.pem(), cert.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&empty, "not PEM\n").unwrap();
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        assert_eq!(read_certs("k", &chain).unwrap().len(), 2);
        assert!(matches!(
            read_key("k", &key_path).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        let e = read_certs("tls.cert", &empty).unwrap_err().to_string();
        assert!(e.ends_with("empty.pem: no PEM certificate in it"), "{e}");
        let e = read_key("tls.key", &chain).unwrap_err().to_string();
        assert!(e.ends_with("chain.crt: no PEM private key"), "{e}");
        let e = read_certs("tls.cert", &broken).unwrap_err().to_string();
        assert!(
            e.starts_with("tls.cert: ") && e.contains("missing section end marker"),
            "{e}"
        );
        let e = read_key("tls.key", &dir.join("none.key"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tls.key: cannot read "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_name_the_key() {
        let mut config = Config::from_toml(
            "[cluster]\nscope = \"d\"\netcd = [\"127.0.0.1:1\"]\n[tls]\nmode = \"allow\"\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n",
        )
        .unwrap();
        let e = Transport::load(&config).err().unwrap().to_string();
        assert!(
            e.starts_with("tls.cert: cannot read /nonexistent.crt"),
            "{e}"
        );
        config.tls.mode = TlsMode::Disable;
        assert!(Transport::load(&config).unwrap().acceptor.is_none());
    }
}
