//! The TLS issue on the real lab: certificates made here (rcgen), psql with verify-full through
//! both ports, plaintext refused under `require`, mutual TLS, channel binding, a cancel sent
//! over TLS, certificate reload, and members with `ssl = on` reached with verify-full.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

use crate::support::{connect, Router, RouterOptions};

struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

struct Certs {
    ca: PathBuf,
    server: Pem,
    /// Same CA, another subject: what a reload swaps in.
    renewed: Pem,
    client: Pem,
    /// A client certificate from a CA pgrouter does not trust.
    rogue: Pem,
}

fn write_pair(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) -> Result<Pem> {
    let pem = Pem {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pem.cert, cert.pem())?;
    std::fs::write(&pem.key, key.serialize_pem())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pem.key, std::fs::Permissions::from_mode(0o600))?;
    Ok(pem)
}

fn make_certs(dir: &Path) -> Result<Certs> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgrouter test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca.pem())?;
    let leaf = |name: &str, cn: &str, sans: &[&str]| -> Result<Pem> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        write_pair(dir, name, &cert, &key)
    };
    let server = leaf("server", "pgrouter-first", &["127.0.0.1", "localhost"])?;
    let renewed = leaf("renewed", "pgrouter-renewed", &["127.0.0.1", "localhost"])?;
    let client = leaf("client", "postgres", &[])?;
    let rogue_ca_key = KeyPair::generate()?;
    let mut rogue_params = CertificateParams::new(Vec::<String>::new())?;
    rogue_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let rogue_ca = rogue_params.self_signed(&rogue_ca_key)?;
    let rogue_key = KeyPair::generate()?;
    let mut rp = CertificateParams::new(Vec::<String>::new())?;
    rp.distinguished_name.push(DnType::CommonName, "postgres");
    let rogue_cert = rp.signed_by(&rogue_key, &rogue_ca, &rogue_ca_key)?;
    let rogue = write_pair(dir, "rogue", &rogue_cert, &rogue_key)?;
    Ok(Certs {
        ca: ca_path,
        server,
        renewed,
        client,
        rogue,
    })
}

fn psql(conninfo: &str, sql: &str) -> Result<Output> {
    Ok(pgrouter_lab::client_command("psql")
        .args(["-X", "-A", "-t", "-c", sql, conninfo])
        .env("PGPASSWORD", "postgres")
        .env("PGCONNECT_TIMEOUT", "30")
        .stdin(Stdio::null())
        .output()?)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dsn(port: u16, extra: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres {extra}")
}

/// The subject pgrouter's certificate shows to a client now.
fn served_subject(port: u16) -> Result<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()?;
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    t.lines()
        .find(|l| l.starts_with("subject="))
        .map(str::to_owned)
        .with_context(|| format!("no certificate from s_client: {t}"))
}

fn tls_router(lab: &Lab, port: u16, tls: &str, listen: &str, extra: &str) -> Result<Router> {
    Router::start(
        lab,
        port,
        RouterOptions {
            listen_extra: listen,
            routing: "hold_timeout = \"3s\"\ndrain_timeout = \"5s\"\n",
            sections: &format!("{tls}\n{extra}"),
            ..RouterOptions::default()
        },
    )
}

pub async fn clients(lab: &Lab) -> Result<()> {
    let dir = lab.spec().dir.join("tls-clients");
    let c = make_certs(&dir)?;
    let tls = format!(
        "[tls]\nmode = \"require\"\ncert = \"{}\"\nkey = \"{}\"\n",
        c.server.cert.display(),
        c.server.key.display()
    );
    let router = tls_router(lab, 17560, &tls, "", "")?;
    let verify = format!("sslmode=verify-full sslrootcert={}", c.ca.display());
    for port in [router.primary, router.replicas] {
        let out = psql(&dsn(port, &verify), "select inet_server_port() is not null")?;
        ensure!(
            out.status.success() && text(&out).trim() == "t",
            "verify-full through {port}: {}",
            text(&out)
        );
    }
    let out = psql(&dsn(router.primary, "sslmode=disable"), "select 1")?;
    let t = text(&out);
    ensure!(
        !out.status.success() && t.contains("TLS is required"),
        "plaintext under require: {t}"
    );
    direct_tls(router.primary, &c).await?;
    // Channel binding: pgrouter terminates TLS, so SCRAM-SHA-256-PLUS cannot bind to the
    // server's channel; a plaintext upstream offers plain SCRAM only: prefer works, require
    // is refused by libpq with its own message.
    let out = psql(
        &dsn(router.primary, &format!("{verify} channel_binding=prefer")),
        "select 1",
    )?;
    ensure!(
        out.status.success(),
        "channel_binding=prefer: {}",
        text(&out)
    );
    let out = psql(
        &dsn(router.primary, &format!("{verify} channel_binding=require")),
        "select 1",
    )?;
    let t = text(&out);
    ensure!(
        !out.status.success() && t.contains("channel binding"),
        "channel_binding=require: {t}"
    );
    println!("  channel_binding=require: {}", t.trim());

    // Reload: a new certificate for new connections, a running session untouched; a bad
    // file is refused and the certificate in use stays.
    ensure!(served_subject(router.primary)?.contains("pgrouter-first"));
    let mut long = pgrouter_lab::client_command("psql")
        .args(["-X", "-A", "-t", "-c", "select pg_sleep(15), 'survived'"])
        .arg(dsn(
            router.primary,
            &format!("{verify} application_name=pgrouter-test-tls-long"),
        ))
        .env("PGPASSWORD", "postgres")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The session is running its query on the leader before the certificate changes.
    let leader_port = lab.pg_port(&lab.leader()?);
    crate::support::eventually(
        "the long TLS session running on the leader",
        Duration::from_secs(30),
        || async {
            Ok(lab.psql(
                leader_port,
                "select count(*) from pg_stat_activity where application_name = 'pgrouter-test-tls-long' and state = 'active'",
            )? == "1")
        },
    )
    .await?;
    std::fs::copy(&c.renewed.cert, &c.server.cert)?;
    std::fs::copy(&c.renewed.key, &c.server.key)?;
    router.signal("-HUP")?;
    crate::support::eventually(
        "the renewed certificate",
        Duration::from_secs(10),
        || async { Ok(served_subject(router.primary)?.contains("pgrouter-renewed")) },
    )
    .await?;
    ensure!(
        long.try_wait()?.is_none(),
        "the long session ended before the reload was seen: it did not span it"
    );
    let out = long.wait_with_output()?;
    ensure!(
        out.status.success() && text(&out).contains("survived"),
        "a session across the reload: {}",
        text(&out)
    );
    std::fs::write(&c.server.cert, "not a certificate\n")?;
    router.signal("-HUP")?;
    crate::support::eventually(
        "the refused reload in the log",
        Duration::from_secs(10),
        || async { Ok(router.log_text().contains("tls.cert")) },
    )
    .await?;
    ensure!(served_subject(router.primary)?.contains("pgrouter-renewed"));
    let out = psql(&dsn(router.primary, &verify), "select 1")?;
    ensure!(out.status.success(), "after a bad reload: {}", text(&out));

    // Mutual TLS on a pooled port, and a cancel sent over TLS.
    let mtls = format!(
        "[tls]\nmode = \"allow\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        c.renewed.cert.display(),
        c.renewed.key.display(),
        c.ca.display()
    );
    let secret = lab.psql(
        lab.pg_port(&lab.leader()?),
        "select rolpassword from pg_authid where rolname = 'postgres'",
    )?;
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, format!("\"postgres\" \"{secret}\"\n"))?;
    let router = tls_router(
        lab,
        17564,
        &mtls,
        "primary_pool_mode = \"transaction\"\n",
        &format!("[auth]\nauth_file = \"{}\"\n", userlist.display()),
    )?;
    let with = |pem: &Pem| {
        format!(
            "{verify} sslcert={} sslkey={}",
            pem.cert.display(),
            pem.key.display()
        )
    };
    for port in [router.primary, router.replicas] {
        let out = psql(&dsn(port, &with(&c.client)), "select 1")?;
        ensure!(
            out.status.success(),
            "mutual TLS, good certificate, port {port}: {}",
            text(&out)
        );
        let out = psql(&dsn(port, &with(&c.rogue)), "select 1")?;
        ensure!(
            !out.status.success(),
            "mutual TLS accepted a certificate from an unknown CA"
        );
        let out = psql(&dsn(port, &verify), "select 1")?;
        ensure!(
            !out.status.success(),
            "mutual TLS accepted a client without a certificate"
        );
    }
    cancel_over_tls(router.primary, &c).await?;
    Ok(())
}

/// The test CA as a rustls root store.
fn test_roots(c: &Certs) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&c.ca)? {
        roots.add(cert?)?;
    }
    Ok(roots)
}

type Sleeping = tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>;
type ConnectionEnd = tokio::sync::oneshot::Receiver<std::result::Result<(), tokio_postgres::Error>>;

/// A session through `port` running `pg_sleep(60)`, half a second in, with its cancel token.
async fn sleep_through(
    port: u16,
    app: &str,
) -> Result<(tokio_postgres::CancelToken, Sleeping, ConnectionEnd)> {
    let (sleeper, conn) = connect(port, app).await?;
    let token = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move {
        sleeper
            .simple_query("select pg_sleep(60)")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((token, sleeping, conn))
}

/// PostgreSQL 17's direct TLS: a ClientHello first (ALPN "postgresql"), then the startup
/// inside TLS; the server's authentication request comes back through it.
async fn direct_tls(port: u16, c: &Certs) -> Result<()> {
    let roots = test_roots(c)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let body = b"user\0postgres\0database\0postgres\0\0";
    let mut startup = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    startup.extend_from_slice(body);
    tls.write_all(&startup).await?;
    tls.flush().await?;
    let tag = tokio::time::timeout(Duration::from_secs(10), tls.read_u8()).await??;
    ensure!(
        tag == b'R',
        "direct TLS: expected an authentication request, got {tag:#x}"
    );
    Ok(())
}

/// A plaintext session runs pg_sleep; its CancelRequest is sent inside a TLS connection.
async fn cancel_over_tls(port: u16, c: &Certs) -> Result<()> {
    let (token, sleeping, _conn) = sleep_through(port, "pgrouter-test-tls-cancel").await?;
    let stream = tls_to_router(port, c).await?;
    token.cancel_query_raw(stream, NoTls).await?;
    let e = tokio::time::timeout(Duration::from_secs(20), sleeping)
        .await??
        .err()
        .context("pg_sleep was not cancelled")?;
    ensure!(
        e.as_db_error().map(|d| d.code().code()) == Some("57014"),
        "cancel over TLS: {e:?}"
    );
    Ok(())
}

/// SSLRequest, 'S', and a rustls handshake with the test client certificate.
async fn tls_to_router(
    port: u16,
    c: &Certs,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    ensure!(tcp.read_u8().await? == b'S', "SSLRequest not accepted");
    let roots = test_roots(c)?;
    let certs: Vec<_> = CertificateDer::pem_file_iter(&c.client.cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&c.client.key).context("client key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

pub async fn members(lab: &Lab) -> Result<()> {
    let dir = lab.spec().dir.join("tls-members");
    let c = make_certs(&dir)?;
    // The members run as postgres, which must own the key (mode 0600).
    let owner = |path: &Path| -> Result<()> {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()?;
        ensure!(status.success(), "chown {}", path.display());
        Ok(())
    };
    let _ = owner(&c.server.key);
    let _ = owner(&dir);
    let members = lab.member_names();
    let set = [
        format!(
            "alter system set ssl_cert_file = '{}'",
            c.server.cert.display()
        ),
        format!(
            "alter system set ssl_key_file = '{}'",
            c.server.key.display()
        ),
        "alter system set ssl = on".to_owned(),
        "select pg_reload_conf()".to_owned(),
    ];
    for m in &members {
        for sql in &set {
            lab.psql(lab.pg_port(m), sql)?;
        }
    }
    let result = through_tls_members(lab, &c).await;
    for m in &members {
        for sql in [
            "alter system reset ssl",
            "alter system reset ssl_cert_file",
            "alter system reset ssl_key_file",
            "select pg_reload_conf()",
        ] {
            lab.psql(lab.pg_port(m), sql)?;
        }
    }
    result
}

async fn through_tls_members(lab: &Lab, c: &Certs) -> Result<()> {
    let secret = lab.psql(
        lab.pg_port(&lab.leader()?),
        "select rolpassword from pg_authid where rolname = 'postgres'",
    )?;
    let userlist = c.ca.with_file_name("userlist.txt");
    std::fs::write(&userlist, format!("\"postgres\" \"{secret}\"\n"))?;
    let upstream = format!(
        "[upstream_tls]\nsslmode = \"verify-full\"\nroot_ca = \"{}\"\n",
        c.ca.display()
    );
    let router = tls_router(
        lab,
        17568,
        &upstream,
        "replicas_pool_mode = \"transaction\"\n",
        &format!("[auth]\nauth_file = \"{}\"\n", userlist.display()),
    )?;
    for port in [router.primary, router.replicas] {
        crate::support::eventually(
            &format!("TLS to the member through {port}"),
            Duration::from_secs(20),
            || async {
                let (client, _conn) = connect(port, "pgrouter-test-upstream-tls").await?;
                let row = client
                    .query_one(
                        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                        &[],
                    )
                    .await?;
                Ok(row.get::<_, bool>(0))
            },
        )
        .await?;
    }
    // A cancel through pgrouter reaches the member over TLS.
    let (token, sleeping, _conn) =
        sleep_through(router.primary, "pgrouter-test-upstream-cancel").await?;
    token.cancel_query(NoTls).await?;
    let e = tokio::time::timeout(Duration::from_secs(20), sleeping)
        .await??
        .err()
        .context("pg_sleep was not cancelled")?;
    ensure!(e.as_db_error().map(|d| d.code().code()) == Some("57014"));
    // verify-full checks the name: a member certificate for another name is refused.
    drop(router);
    let wrong = format!("{upstream}server_name = \"db.elsewhere.example\"\n");
    let router = tls_router(lab, 17568, &wrong, "", "")?;
    let out = psql(&dsn(router.primary, "sslmode=disable"), "select 1")?;
    let t = text(&out);
    ensure!(
        !out.status.success() && t.contains("pgrouter") && t.contains("TLS with member"),
        "verify-full with a wrong name: {t}"
    );
    Ok(())
}
