//! Tests 4, 5 and 6 of the router issue: hold then 57P03 with no leader, cancel routing on the
//! replica port, and hostile startups that must not disturb other clients; a member's own
//! refusal of a login reaches the client named.

use std::io::Write;
use std::net::TcpStream as StdTcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgrouter_lab::Lab;
use tokio_postgres::NoTls;

use crate::support::{
    connect, error_fields, raw_exchange, server_port, startup_packet, Router, RouterOptions,
};

pub async fn bad_startups(lab: &Lab) -> Result<()> {
    let opts = RouterOptions {
        listen_extra: "startup_timeout = \"1s\"\n",
        ..RouterOptions::default()
    };
    let router = Router::start(lab, 17510, opts)?;
    let (good, _conn) = connect(router.primary, "pgrouter-test-good").await?;

    // Slow clients that never finish their startup, open during everything below.
    let slow: Vec<StdTcpStream> = (0..50)
        .map(|_| {
            let mut s = StdTcpStream::connect(("127.0.0.1", router.primary))?;
            s.write_all(&[0, 0])?;
            Ok(s)
        })
        .collect::<Result<_>>()?;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("length under 8", vec![0, 0, 0, 4, 0, 0], "length 4"),
        (
            "length over 10000",
            vec![0, 1, 0x86, 0xa0, 0, 3, 0, 0],
            "length 100000",
        ),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "length",
        ),
        (
            "protocol 2.0",
            startup_packet(2 << 16, b"user\0postgres\0\0"),
            "unsupported frontend protocol 2.0",
        ),
        (
            "no user",
            startup_packet(3 << 16, b"database\0postgres\0\0"),
            "no user given",
        ),
        (
            "invalid UTF-8",
            startup_packet(3 << 16, b"user\0\xff\xfe\0\0"),
            "not UTF-8",
        ),
    ];
    for (what, bytes, expect) in cases {
        let answer = raw_exchange(router.primary, &bytes).with_context(|| what.to_owned())?;
        let (code, message) = error_fields(&answer)
            .with_context(|| format!("{what}: no ErrorResponse in {answer:?}"))?;
        ensure!(
            code == "08P01",
            "{what}: SQLSTATE {code}, want 08P01 ({message})"
        );
        ensure!(
            message.starts_with("pgrouter: ") && message.contains(expect),
            "{what}: message {message:?}"
        );
    }

    // A member refusing the login: its SQLSTATE and words, named, on both ports.
    let leader = lab.leader()?;
    let refusals = [
        (
            "wrong password",
            "password=wrong dbname=postgres",
            "28P01",
            "password authentication failed for user \"postgres\"",
        ),
        (
            "no such database",
            "password=postgres dbname=pgrouter_nosuch",
            "3D000",
            "database \"pgrouter_nosuch\" does not exist",
        ),
    ];
    for (port, member) in [
        (router.primary, Some(leader.as_str())),
        (router.replicas, None),
    ] {
        for (what, dsn, code, says) in refusals {
            let dsn = format!("host=127.0.0.1 port={port} user=postgres {dsn}");
            let e = tokio_postgres::connect(&dsn, NoTls)
                .await
                .err()
                .with_context(|| format!("{what} on {port}: logged in"))?;
            let db = e
                .as_db_error()
                .with_context(|| format!("{what} on {port}: not an ErrorResponse: {e}"))?;
            let (got, message) = (db.code().code(), db.message());
            let named = match member {
                Some(m) => message == format!("pgrouter: cluster \"demo\": member \"{m}\": {says}"),
                None => {
                    message.starts_with("pgrouter: cluster \"demo\": member \"")
                        && message.ends_with(&format!("\": {says}"))
                        && !message.contains(&format!("\"{leader}\""))
                }
            };
            ensure!(got == code && named, "{what} on {port}: {got} {message:?}");
        }
    }

    // An authentication message longer than PostgreSQL takes, cut off by pgrouter.
    let mut bytes = startup_packet(3 << 16, b"user\0postgres\0database\0postgres\0\0");
    bytes.extend_from_slice(&[b'p', 0, 0x10, 0, 0]);
    let answer = raw_exchange(router.primary, &bytes)?;
    let mut rest = &answer[..];
    while rest.len() > 5 && rest[0] != b'E' {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        rest = &rest[(1 + len).min(rest.len())..];
    }
    let (code, message) =
        error_fields(rest).with_context(|| format!("oversized login message: {answer:?}"))?;
    ensure!(
        code == "08P01"
            && message.starts_with(&format!(
                "pgrouter: cluster \"demo\": session on \"{leader}\": "
            ))
            && message.contains("during login"),
        "oversized login message: {code} {message:?}"
    );

    // An unfinished startup is closed after startup_timeout.
    let started = Instant::now();
    let answer = raw_exchange(router.primary, &[0, 0, 0])?;
    ensure!(answer.is_empty(), "slow startup got {answer:?}");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "slow startup not closed by startup_timeout"
    );

    // Everyone else was served throughout.
    let one: i32 = good.query_one("select 1", &[]).await?.get(0);
    ensure!(one == 1);
    let (fresh, _conn) = connect(router.primary, "pgrouter-test-fresh").await?;
    ensure!(server_port(&fresh).await? == lab.pg_port(&lab.leader()?));
    drop(slow);
    Ok(())
}

pub async fn no_leader(lab: &Lab) -> Result<()> {
    let opts = RouterOptions {
        scope: "nosuchcluster",
        routing: "hold_timeout = \"1s\"\n",
        ..RouterOptions::default()
    };
    let router = Router::start(lab, 17512, opts)?;
    for port in [router.primary, router.replicas] {
        let started = Instant::now();
        let err = match connect(port, "pgrouter-test").await {
            Ok(_) => bail!("connected to a cluster that has no leader"),
            Err(e) => e,
        };
        let db = err
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.as_db_error())
            .context(format!("{err:#}"))?;
        ensure!(db.code().code() == "57P03", "SQLSTATE {}", db.code().code());
        let message = db.message();
        ensure!(
            message.starts_with("pgrouter: cluster \"nosuchcluster\"")
                && message.contains("no member holds the leader key"),
            "message: {message}"
        );
        ensure!(
            started.elapsed() >= Duration::from_millis(900),
            "refused before hold_timeout"
        );
        println!("  port {port}: {message}");
    }
    Ok(())
}

pub async fn cancel_on_replicas(lab: &Lab) -> Result<()> {
    let router = Router::start(lab, 17514, RouterOptions::default())?;
    let other = Router::start(lab, 17516, RouterOptions::default())?;
    let mut canceled_on = Vec::new();
    // Round-robin puts consecutive clients on different replicas; cancel on each of them, the
    // last one through the other router, which does not know the key and asks every member.
    for via_other in [false, false, true] {
        let (client, _conn) = connect(router.replicas, "pgrouter-test-cancel").await?;
        let port = server_port(&client).await?;
        let token = client.cancel_token();
        let query =
            tokio::spawn(
                async move { client.simple_query("select pg_sleep(60)").await.map(|_| ()) },
            );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = Instant::now();
        if via_other {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", other.replicas)).await?;
            token.cancel_query_raw(stream, NoTls).await?;
        } else {
            token.cancel_query(NoTls).await?;
        }
        let result = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .context("cancel did not stop pg_sleep(60)")??;
        let err = result.err().context("pg_sleep(60) was not canceled")?;
        let code = err.as_db_error().map(|d| d.code().code().to_owned());
        ensure!(
            code.as_deref() == Some("57014"),
            "expected 57014 query_canceled, got {err}"
        );
        println!(
            "  canceled on replica port {port} in {:.0} ms{}",
            sent.elapsed().as_secs_f64() * 1000.0,
            if via_other {
                " (through another router)"
            } else {
                ""
            }
        );
        canceled_on.push(port);
    }
    ensure!(
        canceled_on[0] != canceled_on[1],
        "both cancels hit the same replica: {canceled_on:?}"
    );
    Ok(())
}
