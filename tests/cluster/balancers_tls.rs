//! Issue 29, HAProxy's `check-ssl` on a router's HTTPS admin endpoint (`listen.admin_tls` and
//! a token), configured as README.md shows it: `check port <admin> check-ssl verify required
//! ca-file <ca> verifyhost <name>` with `http-check send meth GET uri /primary hdr
//! Authorization "Bearer <token>"`. HAProxy marks the router up while it routes writes and
//! down while it is paused; with another CA or another name the handshake fails (the
//! certificate really is verified, its name too) and without the token the check gets 401, so
//! none of those is ever up.
//!
//! Ports 20550-20563 (balancers.rs has the rest of 20500-20599).

use anyhow::{ensure, Result};
use pgrouter_lab::Lab;

use crate::balancers::{
    admin_certificate, down, last_check, post_https, router, Haproxy, CHECKS, PATIENCE,
};
use crate::support::{connect, eventually, is, server_port};

/// The router (replicas +1, admin +2).
const ROUTER: u16 = 20550;
/// HAProxy's frontends, each checking the router's admin endpoint over TLS: with its CA, a
/// name its certificate has and the token; with another CA; with a name the certificate does
/// not have; without the token.
const VERIFIED: u16 = 20560;
const OTHER_CA: u16 = 20561;
const OTHER_NAME: u16 = 20562;
const NO_TOKEN: u16 = 20563;

pub async fn haproxy_check_ssl(lab: &Lab) -> Result<()> {
    let dir = lab.spec().dir.join("haproxy-check-ssl");
    let (ca, cert, key) = admin_certificate(&dir)?;
    // A CA of the same name that did not sign the router's certificate.
    let (other_ca, _, _) = admin_certificate(&dir.join("other"))?;
    let token = "haproxy-test-token-0123456789";
    let listen = format!(
        "admin_token = \"{token}\"\nadmin_tls = true\nadmin_cert = {cert:?}\nadmin_key = {key:?}\n"
    );
    let r = router(lab, ROUTER, &listen)?;
    let bearer = format!(" hdr Authorization \"Bearer {token}\"");
    // The router's certificate names localhost (and 127.0.0.1): HAProxy checks a name only
    // when told one, as checks send no SNI.
    let listens: String = [
        ("verified", VERIFIED, &ca, "localhost", bearer.as_str()),
        ("other_ca", OTHER_CA, &other_ca, "localhost", bearer.as_str()),
        ("other_name", OTHER_NAME, &ca, "db9.example", bearer.as_str()),
        ("no_token", NO_TOKEN, &ca, "localhost", ""),
    ]
    .iter()
    .map(|(name, port, ca, host, hdr)| {
        format!(
            "listen {name}\n    bind 127.0.0.1:{port}\n    option httpchk\n    \
             http-check send meth GET uri /primary{hdr}\n{CHECKS}    \
             server r{ROUTER} 127.0.0.1:{ROUTER} check port {admin} check-ssl verify required ca-file {ca} verifyhost {host}\n",
            admin = r.admin,
            ca = ca.display()
        )
    })
    .collect();
    let _haproxy = Haproxy::run(&dir, &listens, VERIFIED)?;
    let socket = dir.join("haproxy.sock");
    let [verified, other, other_name, no_token] =
        ["verified", "other_ca", "other_name", "no_token"].map(|b| format!("{b}/r{ROUTER}"));
    let never_up = vec![no_token.clone(), other.clone(), other_name.clone()];
    eventually(
        "HAProxy marks the router up through check-ssl",
        PATIENCE,
        || async { is(down(&socket)?, never_up.clone()) },
    )
    .await?;
    let refused = last_check(&socket, &other)?;
    let misnamed = last_check(&socket, &other_name)?;
    for (what, seen, why) in [
        ("another CA", &refused, "SSL handshake failure"),
        (
            "another name",
            &misnamed,
            "certificate different from the configured one",
        ),
    ] {
        ensure!(
            seen.starts_with("L6RSP") && seen.contains(why),
            "checked with {what}: {seen}, not a refused handshake"
        );
    }
    let unauthorized = last_check(&socket, &no_token)?;
    ensure!(
        unauthorized.starts_with("L7STS 401"),
        "checked without the token: {unauthorized}, not 401"
    );
    let leader_port = lab.pg_port(&lab.leader()?);
    let (client, _conn) = connect(VERIFIED, "pgrouter-test-haproxy-check-ssl").await?;
    let port = server_port(&client).await?;
    ensure!(
        port == leader_port,
        "through HAProxy a client reached :{port}, not the leader :{leader_port}"
    );
    drop(client);
    println!("  check-ssl with the router's CA and the token: UP, clients reach the leader; another CA: {refused}; another name: {misnamed}; no token: {unauthorized}");

    ensure!(
        post_https(&ca, token, r.admin, "/pause?port=primary")?,
        "pause failed"
    );
    let mut all = never_up.clone();
    all.push(verified.clone());
    eventually("HAProxy marks the paused router down", PATIENCE, || async {
        is(down(&socket)?, all.clone())
    })
    .await?;
    let paused = last_check(&socket, &verified)?;
    ensure!(
        paused.starts_with("L7STS 503"),
        "the paused router's check: {paused}, not 503"
    );
    ensure!(post_https(&ca, token, r.admin, "/resume")?, "resume failed");
    eventually("HAProxy marks the resumed router up", PATIENCE, || async {
        is(down(&socket)?, never_up.clone())
    })
    .await?;
    println!("  paused: DOWN ({paused}); resumed: UP again");
    Ok(())
}
