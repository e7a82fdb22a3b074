//! Hostile clients on the real lab: impossible lengths (2^31 - 1, negative) in the startup packet
//! and after it, truncated frames, thousands of startup parameters, a flood past
//! max_client_conn, slowloris startups, clients that never read their results, and clients that
//! vanish without a FIN (half-open TCP, found by keepalive). pgrouter answers each with an
//! ErrorResponse naming itself, the cluster and (once there is one) the member, its memory
//! stays bounded, and the other clients on the same ports are served throughout.
//!
//! The half-open case drops a client's packets with iptables (as root) and removes its rules
//! afterwards, also when the test fails.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgrouter::testing::auth::messages::{sasl_initial_response, sasl_response, AuthRequest};
use pgrouter::testing::auth::scram::{ClientCredential, ClientExchange};
use pgrouter_lab::{IptablesRule, Lab};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    connect, eventually, metric, pgrouter_error, scram_userlist, startup_packet, Router,
    RouterOptions, SCOPE,
};

/// Generous: the machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(60);

pub async fn bad_frames_floods_and_slowloris(lab: &Lab) -> Result<()> {
    let passthrough = Router::start(
        lab,
        17580,
        RouterOptions {
            listen_extra: "startup_timeout = \"2s\"\nmax_client_conn = 100\n",
            ..RouterOptions::default()
        },
    )?;
    let pooled = pooled_router(lab, 17582, "startup_timeout = \"2s\"\n", "", "")?;
    let leader = lab.leader()?;
    let (good, _c1) = connect(passthrough.primary, "hostile-good").await?;
    let (good_pooled, _c2) = connect(pooled.primary, "hostile-good-pooled").await?;
    let baseline = [
        vm_kib(passthrough.pid(), "VmRSS")?,
        vm_kib(pooled.pid(), "VmRSS")?,
    ];

    // 1. Startup packets whose length is 2^31 - 1 or negative, and a truncated one.
    for port in [passthrough.primary, pooled.primary] {
        for (len, trailing) in [
            (0x7fff_ffffu32, 64 * 1024),
            (0x8000_0000, 0),
            (0xffff_ffff, 16),
        ] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.resize(4 + trailing, 0x41);
            let what = format!("port {port}: startup length {len:#x}");
            let answer = exchange(port, &bytes, false).await.context(what.clone())?;
            expect_error(
                &what,
                &answer,
                "08P01",
                &[&format!("length {len} is outside")],
            )?;
        }
        let mut truncated = 100u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(&[0, 3, 0, 0, b'u', b's', b'e', b'r', 0]);
        let what = format!("port {port}: truncated startup, then a half-close");
        let answer = exchange(port, &truncated, true)
            .await
            .context(what.clone())?;
        expect_error(&what, &answer, "08P01", &["startup packet truncated"])?;
    }
    println!("  startup lengths 2^31-1, 2^31, 2^32-1 and a truncated startup: 08P01 on both ports");

    // 2. After a successful startup: impossible lengths, then a truncated frame.
    let parse = msg(b'P', b"\0select 1\0\0\0");
    let header = |tag: u8, len: u32| [&[tag][..], &len.to_be_bytes()].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Query of length 2^31-1", header(b'Q', 0x7fff_ffff)),
        ("Query of length 2^31 (negative)", header(b'Q', 0x8000_0000)),
        (
            "Query of length -1",
            [header(b'Q', 0xffff_ffff), vec![b'x'; 32]].concat(),
        ),
        (
            "Bind of length 2^31-1 after a Parse",
            [parse.clone(), header(b'B', 0x7fff_ffff)].concat(),
        ),
        (
            "CopyData of length -1 after a Parse",
            [parse.clone(), header(b'd', 0xffff_ffff)].concat(),
        ),
    ];
    for (mode, port) in [
        ("passthrough", passthrough.primary),
        ("pooled", pooled.primary),
    ] {
        for (i, (what, bytes)) in cases.iter().enumerate() {
            let app = format!("hostile-len-{mode}-{i}");
            let what = format!("{mode}: {what}");
            let mut raw = Raw::login(port, &params(&[("application_name", &app)])).await?;
            raw.simple("select 1").await.context(what.clone())?;
            raw.s.write_all(bytes).await?;
            let answer = raw.until_closed().await.context(what.clone())?;
            let mut names = vec!["pgrouter: ", "cluster \"demo\""];
            let member = format!("session on \"{leader}\"");
            if mode == "passthrough" {
                names.push(&member);
            }
            expect_error(&what, &answer, "08P01", &names)?;
            if mode == "passthrough" {
                released(lab, &app).await.context(what)?;
            }
        }
        // A frame cut short, then the client shuts down its sending side.
        let app = format!("hostile-truncated-{mode}");
        let mut raw = Raw::login(port, &params(&[("application_name", &app)])).await?;
        raw.simple("select 1").await?;
        raw.s.write_all(&header(b'Q', 1000)).await?;
        raw.s.write_all(b"select 'only part of it").await?;
        raw.s.shutdown().await?;
        let answer = raw
            .until_closed()
            .await
            .context(format!("{mode}: truncated frame"))?;
        if mode == "passthrough" {
            let member = format!("session on \"{leader}\"");
            expect_error(
                "passthrough: truncated frame",
                &answer,
                "08P01",
                &["closed the connection inside a message", &member],
            )?;
            released(lab, &app).await.context("truncated frame")?;
        } else {
            expect_error(
                "pooled: truncated frame",
                &answer,
                "08P01",
                &[
                    "pgrouter: cluster \"demo\"",
                    "closed the connection inside a message",
                ],
            )?;
        }
    }
    println!("  lengths 2^31-1 / 2^31 / -1 after startup (Query, Bind, CopyData) and a truncated frame: 08P01, server connection released");
    copy_cut_mid_message(lab, pooled.primary).await?;

    // 3. Thousands of startup parameters, inside PostgreSQL's 10,000-byte limit.
    let mut pairs: Vec<(String, String)> = vec![
        ("user".into(), "postgres".into()),
        ("database".into(), "postgres".into()),
        ("application_name".into(), "hostile-params".into()),
    ];
    let mut size = 8
        + 1
        + pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    let mut n = 0;
    while size + 16 < 10_000 {
        let name = format!("p.a{n}");
        size += name.len() + 2;
        pairs.push((name, String::new()));
        n += 1;
    }
    let first = pairs
        .iter()
        .position(|(k, _)| k == "p.a0")
        .expect("added above");
    pairs[first].1 = "first".into();
    pairs.last_mut().expect("added above").1 = "last".into();
    let body = encode_params(&pairs);
    ensure!(startup_packet(3 << 16, &body).len() <= 10_000);
    ensure!(n >= 1000, "only {n} parameters");
    let mut many = Raw::login_raw(passthrough.primary, &body).await?;
    let rows = many
        .simple(&format!(
            "select current_setting('p.a0'), current_setting('p.a{}')",
            n - 1
        ))
        .await?;
    ensure!(
        rows == [vec![Some("first".to_owned()), Some("last".to_owned())]],
        "passthrough with {n} parameters: {rows:?}"
    );
    let mut many_pooled = Raw::login_raw(pooled.primary, &body).await?;
    let rows = many_pooled.simple("show application_name").await?;
    ensure!(
        rows == [vec![Some("hostile-params".to_owned())]],
        "pooled with {n} parameters: {rows:?}"
    );
    drop((many, many_pooled));
    println!("  a startup with {n} parameters ({size} bytes): served on both ports");

    // 4. Slowloris: startups trickled one byte a second are closed after startup_timeout (2s),
    // long before they could finish; a pooled client that stops during SCRAM likewise.
    let packet = startup_packet(
        3 << 16,
        &params(&[("application_name", "hostile-slowloris")]),
    );
    let tricklers: Vec<_> = (0..10)
        .map(|_| tokio::spawn(trickle(passthrough.primary, packet.clone())))
        .collect();
    let stalled = tokio::spawn(stall_in_scram(pooled.primary));
    let one: i32 = good.query_one("select 1", &[]).await?.get(0);
    ensure!(one == 1, "a good client got {one} while the slowloris ran");
    let mut longest = Duration::ZERO;
    for t in tricklers {
        let (sent, received, open_for) = t.await??;
        longest = longest.max(open_for);
        // startup_timeout is 2 s: closed then, give or take the machine's load, long before
        // the packet's bytes could have been trickled in.
        ensure!(
            open_for >= Duration::from_millis(1500) && open_for <= Duration::from_secs(5),
            "a trickled startup was closed after {open_for:?} ({sent} of {} bytes sent), not after startup_timeout (2s)",
            packet.len()
        );
        ensure!(received.is_empty(), "a trickled startup got {received:?}");
    }
    stalled.await??;
    println!(
        "  10 startups trickled a byte a second ({} bytes each): closed after startup_timeout (the last after {:.1}s); a client stalled in SCRAM too",
        packet.len(),
        longest.as_secs_f64()
    );

    // 5. A flood past max_client_conn (100): `good` holds one slot, 99 more get in, the rest
    // get 53300 right after their startup packet; `good` goes on; slots come back.
    eventually("only the good client connected", PATIENCE, || async {
        let text = passthrough.metrics()?;
        Ok(crate::support::metric_sum(&text, "pgrouter_client_connections", &[])? == 1.0)
    })
    .await?;
    let flood_packet = startup_packet(3 << 16, &params(&[("application_name", "hostile-flood")]));
    let flood: Vec<_> = (0..400)
        .map(|_| {
            let packet = flood_packet.clone();
            let port = passthrough.primary;
            tokio::spawn(async move {
                let mut raw = Raw::connect(port).await?;
                raw.s.write_all(&packet).await?;
                let first = tokio::time::timeout(PATIENCE, raw.read_msg())
                    .await
                    .context("no answer to a flood startup")??
                    .context("closed without an answer")?;
                anyhow::Ok((raw, first))
            })
        })
        .collect();
    let (mut admitted, mut refused, mut kept) = (0, 0, Vec::new());
    for f in flood {
        let (raw, (tag, body)) = f.await??;
        match tag {
            b'R' => admitted += 1,
            b'E' => {
                let (code, message) = fields(&body);
                ensure!(
                    code == "53300"
                        && message
                            .starts_with("pgrouter: cluster \"demo\": too many client connections")
                        && message.contains("max_client_conn = 100"),
                    "flood: {code} {message}"
                );
                refused += 1;
            }
            other => bail!("flood: unexpected first message {:?}", char::from(other)),
        }
        kept.push(raw);
    }
    let flood_rss = vm_kib(passthrough.pid(), "VmRSS")?;
    ensure!(
        (admitted, refused) == (99, 301),
        "flood: {admitted} admitted, {refused} refused; want 99 and 301"
    );
    let one: i32 = good.query_one("select 1", &[]).await?.get(0);
    ensure!(one == 1);
    match connect(passthrough.primary, "hostile-over-limit").await {
        Ok(_) => bail!("a client past max_client_conn got in"),
        Err(e) => {
            let db = e
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(|e| e.as_db_error())
                .with_context(|| format!("{e:#}"))?;
            ensure!(db.code().code() == "53300", "{}", db.message());
        }
    }
    drop(kept);
    eventually(
        "a client admitted once the flood left",
        PATIENCE,
        || async {
            let (c, _conn) = connect(passthrough.primary, "hostile-after-flood").await?;
            Ok(c.query_one("select 1", &[]).await?.get::<_, i32>(0) == 1)
        },
    )
    .await?;
    println!(
        "  flood of 400 with max_client_conn = 100: 99 admitted, 301 refused with 53300, the held client served, slots returned (RSS {} MiB during it)",
        flood_rss / 1024
    );

    // Nothing above made pgrouter allocate by a client's word: peak RSS stays near the start.
    let one: i32 = good_pooled.query_one("select 1", &[]).await?.get(0);
    ensure!(one == 1);
    for (router, base) in [(&passthrough, baseline[0]), (&pooled, baseline[1])] {
        let peak = vm_kib(router.pid(), "VmHWM")?;
        println!(
            "  router {}: RSS {} KiB at start, peak {} KiB",
            router.primary, base, peak
        );
        ensure!(
            peak.saturating_sub(base) < 64 * 1024,
            "router {}: peak RSS {peak} KiB, {base} KiB at start",
            router.primary
        );
    }
    Ok(())
}

pub async fn slow_readers_and_half_open(lab: &Lab) -> Result<()> {
    remove_stale_rules();
    // Primary: transaction pooling (4 server connections); replicas: passthrough. Keepalive
    // probes after 2 s idle, every second, 3 unanswered: a vanished client is cut in about 5 s.
    let router = pooled_router(
        lab,
        17584,
        "primary_pool_mode = \"transaction\"\n",
        "",
        "[tcp]\nkeepalive_idle = \"2s\"\nkeepalive_interval = \"1s\"\nkeepalive_count = 3\n",
    )?;
    let ports = [("passthrough", router.replicas), ("pooled", router.primary)];
    for (_, port) in ports {
        let (c, _conn) = connect(port, "hostile-warmup").await?;
        c.simple_query("select 1").await?;
    }
    let rss0 = vm_kib(router.pid(), "VmRSS")?;

    // 1. Clients that ask for 2 GB and never read it: five on the passthrough port, three on the
    // pooled one (3 of its 4 server connections).
    let hog_sql = "select repeat('x', 1000) from generate_series(1, 2000000)";
    let mut hogs = Vec::new();
    for (mode, port, count) in [("pt", router.replicas, 5), ("pooled", router.primary, 3)] {
        for i in 0..count {
            let app = format!("hostile-hog-{mode}-{i}");
            let mut raw = Raw::login(port, &params(&[("application_name", &app)])).await?;
            raw.s.write_all(&msg(b'Q', &cstr(hog_sql))).await?;
            hogs.push(raw);
        }
    }
    // Backpressure reaches PostgreSQL: every hog's backend waits to write to its client.
    eventually(
        "every hog's backend blocked in ClientWrite",
        Duration::from_secs(180),
        || async {
            crate::support::is(
                backends(lab, "hostile-hog-%", "and wait_event = 'ClientWrite'")?,
                8,
            )
        },
    )
    .await?;
    let relayed = |text: &str| {
        crate::support::metric_sum(
            text,
            "pgrouter_bytes_total",
            &["port=\"replicas\"", "direction=\"server_to_client\""],
        )
    };
    let before = relayed(&router.metrics()?)?;
    // Everyone else on the same ports is served meanwhile.
    for (mode, port) in ports {
        let (steady, _conn) = connect(port, "hostile-steady").await?;
        for i in 0..10 {
            let (c, _conn) = connect(port, "hostile-other").await?;
            let n: i64 = c
                .query_one("select count(*) from generate_series(1, 100000)", &[])
                .await
                .with_context(|| format!("{mode}: a fresh client beside the hogs"))?
                .get(0);
            ensure!(n == 100_000);
            let v: i32 = steady.query_one("select $1::int", &[&i]).await?.get(0);
            ensure!(v == i, "{mode}: the steady client got {v}");
        }
    }
    let rss = vm_kib(router.pid(), "VmRSS")?;
    let peak = vm_kib(router.pid(), "VmHWM")?;
    let after = relayed(&router.metrics()?)?;
    println!(
        "  8 clients not reading 2 GB results: RSS {rss0} KiB before, {rss} KiB with them, peak {peak} KiB; {:.1} MiB relayed to the passthrough hogs in all, {:.1} MiB while 20 other clients ran",
        after / 1048576.0,
        (after - before) / 1048576.0
    );
    ensure!(
        peak.saturating_sub(rss0) < 64 * 1024,
        "peak RSS {peak} KiB, {rss0} KiB before the hogs"
    );
    ensure!(
        backends(lab, "hostile-hog-%", "and wait_event = 'ClientWrite'")? == 8,
        "a hog's backend stopped waiting on its client"
    );
    drop(hogs);
    eventually(
        "the hogs' server connections released",
        PATIENCE,
        || async { crate::support::is(backends(lab, "hostile-hog-%", "")?, 0) },
    )
    .await?;

    // 2. Half-open: clients whose packets vanish. Keepalive finds them; their sessions end and
    // their server connections are released.
    let mut pt = Raw::login(
        router.replicas,
        &params(&[("application_name", "hostile-halfopen-pt")]),
    )
    .await?;
    pt.simple("select 1").await?;
    let mut pooled = Raw::login(
        router.primary,
        &params(&[("application_name", "hostile-halfopen-pooled")]),
    )
    .await?;
    pooled.simple("begin").await?;
    pooled.simple("select 1").await?;
    ensure!(
        backends(lab, "hostile-halfopen-%", "")? == 2,
        "half-open clients not seen"
    );
    // Healthy idle clients answer the probes and stay: wait out twice the keepalive time.
    tokio::time::sleep(Duration::from_secs(10)).await;
    pt.simple("select 2")
        .await
        .context("a healthy idle passthrough client was cut")?;
    pooled
        .simple("select 2")
        .await
        .context("a healthy idle pooled client was cut")?;
    let rules = [
        drop_client_packets(pt.s.local_addr()?.port(), router.replicas)?,
        drop_client_packets(pooled.s.local_addr()?.port(), router.primary)?,
    ];
    let cut = Instant::now();
    let mut found = Vec::new();
    for app in ["hostile-halfopen-pt", "hostile-halfopen-pooled"] {
        eventually(
            &format!("{app}'s server connection released"),
            Duration::from_secs(120),
            || async { crate::support::is(backends(lab, app, "")?, 0) },
        )
        .await?;
        found.push(cut.elapsed());
    }
    drop(rules);
    println!(
        "  half-open clients (packets dropped by iptables): passthrough cut after {:.1}s, pooled (in a transaction) after {:.1}s; keepalive 2s + 3 x 1s",
        found[0].as_secs_f64(),
        found[1].as_secs_f64()
    );
    ensure!(
        router.log_text().contains("os error 110"),
        "the passthrough session did not end with ETIMEDOUT:\n{}",
        router.log_tail(20)
    );
    // pgrouter forgot them: what they send now finds no session.
    for (what, raw) in [("passthrough", &mut pt), ("pooled", &mut pooled)] {
        let answer = tokio::time::timeout(PATIENCE, raw.simple("select 3")).await;
        ensure!(
            !matches!(answer, Ok(Ok(_))),
            "{what}: the cut session still answered"
        );
    }

    // 3. Half-open while results are queued for it: keepalive does not probe a connection with
    // unacknowledged data, tcp.user_timeout (5s here) cuts it.
    let timed = Router::start(
        lab,
        17586,
        RouterOptions {
            sections: "[tcp]\nuser_timeout = \"5s\"\n",
            ..RouterOptions::default()
        },
    )?;
    let mut hog = Raw::login(
        timed.primary,
        &params(&[("application_name", "hostile-hog-vanished")]),
    )
    .await?;
    hog.s.write_all(&msg(b'Q', &cstr(hog_sql))).await?;
    eventually(
        "the vanishing hog's backend blocked in ClientWrite",
        Duration::from_secs(180),
        || async {
            Ok(backends(
                lab,
                "hostile-hog-vanished",
                "and wait_event = 'ClientWrite'",
            )? == 1)
        },
    )
    .await?;
    let rule = drop_client_packets(hog.s.local_addr()?.port(), timed.primary)?;
    let cut = Instant::now();
    eventually(
        "the vanished hog's server connection released",
        Duration::from_secs(120),
        || async { crate::support::is(backends(lab, "hostile-hog-vanished", "")?, 0) },
    )
    .await?;
    let took = cut.elapsed();
    drop(rule);
    println!(
        "  a client vanished with results queued for it: cut by user_timeout (5s) after {:.1}s",
        took.as_secs_f64()
    );

    // 4. The server connection under a passthrough session reset (what pgrouter sends the member
    // is answered by a TCP reset): the client is told, by pgrouter, naming the member.
    let (client, _conn) = connect(timed.primary, "hostile-server-reset").await?;
    let row = client
        .query_one("select inet_server_port(), inet_client_port()", &[])
        .await?;
    let (member_port, router_side) = (row.get::<_, i32>(0), row.get::<_, i32>(1));
    let rule = loopback_rule(
        router_side as u16,
        member_port as u16,
        &["REJECT", "--reject-with", "tcp-reset"],
    )?;
    let answer = tokio::time::timeout(PATIENCE, client.simple_query("select 4")).await;
    drop(rule);
    let member = terminate_on_member(lab, member_port, "hostile-server-reset")?;
    let e = match answer {
        Ok(Err(e)) => e,
        other => bail!("a reset server connection: {other:?}"),
    };
    let message = pgrouter_error(
        "a reset server connection",
        &e,
        "FATAL",
        "08006",
        &format!("lost the server connection to member \"{member}\""),
    )?;
    println!("  a server connection reset under a session: 08006 {message}");

    // 5. The member ends a passthrough session with its own FATAL (pg_terminate_backend): the
    // client gets the member's SQLSTATE and words, naming the member.
    let (client, conn) = connect(timed.primary, "hostile-terminated").await?;
    let port: i32 = client
        .query_one("select inet_server_port()", &[])
        .await?
        .get(0);
    let member = terminate_on_member(lab, port, "hostile-terminated")?;
    let ended = tokio::time::timeout(PATIENCE, conn)
        .await
        .context("the connection did not end")?
        .context("the connection task")?;
    let e = ended.err().context("the session ended without an error")?;
    let db = e
        .as_db_error()
        .with_context(|| format!("a terminated session: not an ErrorResponse: {e}"))?;
    let want = format!(
        "pgrouter: cluster \"{SCOPE}\": member \"{member}\": terminating connection due to administrator command"
    );
    ensure!(
        db.code().code() == "57P01" && db.message() == want && db.severity() == "FATAL",
        "a terminated session: {} {} {:?}",
        db.severity(),
        db.code().code(),
        db.message()
    );
    println!("  a member's FATAL under a session: 57P01 {}", db.message());
    Ok(())
}

/// Ends the backends of application `app` on the member listening on `port`; its name.
fn terminate_on_member(lab: &Lab, port: i32, app: &str) -> Result<String> {
    let member = lab
        .member_names()
        .into_iter()
        .find(|m| i32::from(lab.pg_port(m)) == port)
        .context("the session's member")?;
    lab.psql(
        lab.pg_port(&member),
        &format!("select pg_terminate_backend(pid) from pg_stat_activity where application_name = '{app}'"),
    )?;
    Ok(member)
}

/// A pooled client inside a streamed CopyData whose server connection dies: the rest of that
/// message is data, never messages. (It holds a Query that would create a table if it were
/// framed as one, on whichever server connection came next.)
async fn copy_cut_mid_message(lab: &Lab, port: u16) -> Result<()> {
    let leader = lab.pg_port(&lab.leader()?);
    lab.psql(
        leader,
        "drop table if exists hostile_injected; create table if not exists hostile_copy(t text)",
    )?;
    let mut raw = Raw::login(port, &params(&[("application_name", "hostile-copy")])).await?;
    raw.s
        .write_all(&msg(b'Q', &cstr("copy hostile_copy from stdin")))
        .await?;
    loop {
        let (tag, body) = raw.read_msg().await?.context("closed before COPY")?;
        match tag {
            b'G' => break,
            b'E' => bail!("COPY refused: {:?}", fields(&body)),
            _ => {}
        }
    }
    // A CopyData of 100,000 bytes, of which only the first 1,000 are sent for now; what
    // follows them looks like a Query.
    let injected = msg(b'Q', &cstr("create table hostile_injected()"));
    let mut head = [&[b'd'][..], &(100_004u32).to_be_bytes()].concat();
    head.extend_from_slice(&[b'x'; 1_000]);
    raw.s.write_all(&head).await?;
    eventually("the COPY's backend terminated", PATIENCE, || async {
        let done = lab.psql(
            leader,
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
             where application_name = 'hostile-copy' and query like 'copy%'",
        )?;
        Ok(done.trim() == "1")
    })
    .await?;
    // pgrouter reports the lost server connection; then the client sends the rest.
    let (tag, body) = tokio::time::timeout(PATIENCE, raw.read_msg())
        .await
        .context("nothing after the backend was terminated")??
        .context("closed without an ErrorResponse")?;
    ensure!(
        tag == b'E',
        "got {:?} after the backend was terminated",
        char::from(tag)
    );
    let (code, message) = fields(&body);
    ensure!(
        code == "08006"
            && message
                .starts_with("pgrouter: cluster \"demo\": lost the server connection to member"),
        "COPY cut: {code} {message}"
    );
    let _ = raw.s.write_all(&injected).await;
    // pgrouter must have closed the connection: it answers nothing, least of all a ReadyForQuery.
    let mut rest = String::new();
    loop {
        match tokio::time::timeout(PATIENCE, raw.read_msg()).await {
            Err(_) => bail!("COPY cut: neither closed nor answered (got {rest:?})"),
            Ok(Ok(Some((tag, _)))) => {
                rest.push(char::from(tag));
                if tag == b'Z' {
                    break;
                }
            }
            Ok(Ok(None)) | Ok(Err(_)) => break,
        }
    }
    let exists = lab.psql(leader, "select to_regclass('hostile_injected') is not null")?;
    ensure!(
        exists == "f" && rest.is_empty(),
        "the rest of a CopyData was run as a Query (table created: {exists}; answered {rest:?})"
    );
    println!("    pooled COPY cut inside a CopyData: {code} {message}; the connection closed, the rest not read as messages");
    lab.psql(
        leader,
        "drop table if exists hostile_copy, hostile_injected",
    )?;
    Ok(())
}

/// Pooled clients' large messages share `pool.message_memory` (8 MB here): while one client's
/// 6 MB query is being received, a second client's 6 MB query gets FATAL 53200 naming pgrouter,
/// the cluster and the setting, and the connection closes; the first query then completes, and
/// once its transaction is over the memory is free for the next client.
pub async fn large_messages_share_message_memory(lab: &Lab) -> Result<()> {
    let router = pooled_router(lab, 17608, "", "message_memory = \"8MB\"\n", "")?;
    let held = || async {
        let text = router.metrics()?;
        anyhow::Ok(metric(&text, "pgrouter_pooled_message_bytes")?)
    };
    let six_mb = format!("select length('{}')", "x".repeat(6 << 20));
    let first = msg(b'Q', &cstr(&six_mb));
    let (sent, rest) = first.split_at(first.len() - 100);
    let mut a = Raw::login(
        router.primary,
        &params(&[("application_name", "hostile-mem-a")]),
    )
    .await?;
    let mut b = Raw::login(
        router.primary,
        &params(&[("application_name", "hostile-mem-b")]),
    )
    .await?;
    a.s.write_all(sent).await?;
    eventually(
        "the first 6 MB query counted in pgrouter_pooled_message_bytes",
        Duration::from_secs(30),
        || async { Ok(held().await? >= f64::from(6 << 20)) },
    )
    .await?;
    // The second: its header and a first part, which is all pgrouter needs to refuse it.
    b.s.write_all(&first[..64 * 1024]).await?;
    let answer = b.until_closed().await.context("the second large query")?;
    expect_error(
        "a second 6 MB query past pool.message_memory",
        &answer,
        "53200",
        &[
            "pgrouter: ",
            "cluster \"demo\"",
            "pool.message_memory (8.0 MB)",
        ],
    )?;
    a.s.write_all(rest).await?;
    let rows = a.answer("the first 6 MB query").await?;
    ensure!(
        rows == [vec![Some((6 << 20).to_string())]],
        "the first query answered {rows:?}"
    );
    eventually(
        "pool.message_memory free once the transaction is over",
        Duration::from_secs(30),
        || async { crate::support::is(held().await?, 0.0) },
    )
    .await?;
    let mut c = Raw::login(
        router.primary,
        &params(&[("application_name", "hostile-mem-c")]),
    )
    .await?;
    let rows = c
        .simple(&six_mb)
        .await
        .context("a 6 MB query after the first")?;
    ensure!(rows == [vec![Some((6 << 20).to_string())]], "{rows:?}");
    println!(
        "  pooled 6 MB queries with pool.message_memory = 8MB: the second at once refused (53200), the first answered, the budget free again afterwards"
    );
    Ok(())
}

/// A router with `listen_extra` (pool modes) whose pooled ports log `postgres` in with its SCRAM
/// secret from pg_authid; pool_size 4.
fn pooled_router(
    lab: &Lab,
    port: u16,
    listen_extra: &str,
    pool_extra: &str,
    sections: &str,
) -> Result<Router> {
    let userlist = scram_userlist(lab, port, "")?;
    let listen = if listen_extra.contains("pool_mode") {
        listen_extra.to_owned()
    } else {
        format!("primary_pool_mode = \"transaction\"\n{listen_extra}")
    };
    let sections = format!(
        "[pool]\npool_size = 4\n{pool_extra}\n[auth]\nauth_file = \"{}\"\n\n{sections}",
        userlist.display()
    );
    Router::start(
        lab,
        port,
        RouterOptions {
            listen_extra: &listen,
            sections: &sections,
            ..RouterOptions::default()
        },
    )
}

/// Backends on any member whose application_name is LIKE `app`, with `extra` SQL conditions.
fn backends(lab: &Lab, app: &str, extra: &str) -> Result<u64> {
    let mut n = 0;
    for member in lab.member_names() {
        let count = lab.psql(
            lab.pg_port(&member),
            &format!(
                "select count(*) from pg_stat_activity where application_name like '{app}' {extra}"
            ),
        )?;
        n += count.trim().parse::<u64>()?;
    }
    Ok(n)
}

/// Waits until no backend is left for `app`.
async fn released(lab: &Lab, app: &str) -> Result<()> {
    eventually(
        &format!("{app}'s server connection released"),
        PATIENCE,
        || async { crate::support::is(backends(lab, app, "")?, 0) },
    )
    .await
}

/// A field of /proc/<pid>/status in KiB: VmRSS (resident now) or VmHWM (peak resident).
fn vm_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Sends `bytes` on a new connection (then shuts down the sending side if `half_close`) and
/// returns the messages pgrouter sends before it closes.
async fn exchange(port: u16, bytes: &[u8], half_close: bool) -> Result<Vec<(u8, Vec<u8>)>> {
    let mut raw = Raw::connect(port).await?;
    raw.s.write_all(bytes).await?;
    if half_close {
        raw.s.shutdown().await?;
    }
    raw.until_closed().await
}

/// Checks that the last message before the close is a FATAL ErrorResponse with `code` whose
/// message starts with "pgrouter: cluster \"demo\"" and contains each of `needles`.
fn expect_error(what: &str, answer: &[(u8, Vec<u8>)], code: &str, needles: &[&str]) -> Result<()> {
    let (tag, body) = answer
        .last()
        .with_context(|| format!("{what}: closed without an ErrorResponse"))?;
    ensure!(
        *tag == b'E',
        "{what}: last message {:?}, not an ErrorResponse",
        char::from(*tag)
    );
    let (got, message) = fields(body);
    ensure!(
        got == code,
        "{what}: SQLSTATE {got}, want {code}: {message}"
    );
    let severity = field(body, b'V');
    ensure!(
        severity == "FATAL",
        "{what}: severity {severity}, want FATAL (the connection closes): {message}"
    );
    ensure!(
        message.starts_with(&format!("pgrouter: cluster \"{SCOPE}\"")),
        "{what}: message does not name pgrouter and the cluster: {message}"
    );
    for needle in needles {
        ensure!(
            message.contains(needle),
            "{what}: {needle:?} not in {message:?}"
        );
    }
    println!("    {what}: {got} {message}");
    Ok(())
}

/// Field `tag` of an ErrorResponse body ('V' severity, 'C' SQLSTATE, 'M' message), or "".
fn field(body: &[u8], tag: u8) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(&[tag]))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The SQLSTATE and message of an ErrorResponse body.
fn fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Startup parameters for postgres on database postgres, plus `extra`.
fn params(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut pairs = vec![
        ("user".to_owned(), "postgres".to_owned()),
        ("database".to_owned(), "postgres".to_owned()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    encode_params(&pairs)
}

fn encode_params(pairs: &[(String, String)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in pairs {
        body.extend(cstr(k));
        body.extend(cstr(v));
    }
    body.push(0);
    body
}

/// A client speaking the protocol by hand.
struct Raw {
    s: TcpStream,
}

impl Raw {
    async fn connect(port: u16) -> Result<Raw> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        Ok(Raw { s })
    }

    /// Logs in as postgres (SCRAM, password "postgres") with these startup parameters.
    async fn login(port: u16, params: &[u8]) -> Result<Raw> {
        Raw::login_raw(port, params).await
    }

    async fn login_raw(port: u16, params: &[u8]) -> Result<Raw> {
        let mut raw = Raw::connect(port).await?;
        raw.s.write_all(&startup_packet(3 << 16, params)).await?;
        let mut scram: Option<ClientExchange> = None;
        loop {
            let (tag, body) = tokio::time::timeout(PATIENCE, raw.read_msg())
                .await
                .context("login timed out")??
                .context("closed during login")?;
            match tag {
                b'R' => match AuthRequest::decode(&body)? {
                    AuthRequest::Ok => {}
                    AuthRequest::Sasl(_) => {
                        let credential = ClientCredential::Password("postgres".into());
                        let (exchange, first) = ClientExchange::start(credential);
                        raw.s
                            .write_all(&sasl_initial_response("SCRAM-SHA-256", &first))
                            .await?;
                        scram = Some(exchange);
                    }
                    AuthRequest::SaslContinue(data) => {
                        let exchange = scram.as_mut().context("SASLContinue before SASL")?;
                        let last = exchange.respond(data)?;
                        raw.s.write_all(&sasl_response(&last)).await?;
                    }
                    AuthRequest::SaslFinal(data) => scram
                        .as_ref()
                        .context("SASLFinal before SASL")?
                        .verify(data)?,
                    other => bail!("unexpected authentication request {other:?}"),
                },
                b'E' => {
                    let (code, message) = fields(&body);
                    bail!("login refused: {code} {message}");
                }
                b'Z' => return Ok(raw),
                _ => {}
            }
        }
    }

    /// The next message; None on a clean EOF before it.
    async fn read_msg(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let mut header = [0u8; 5];
        let mut got = 0;
        while got < 5 {
            let n = self.s.read(&mut header[got..]).await?;
            if n == 0 {
                return match got {
                    0 => Ok(None),
                    _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
                };
            }
            got += n;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=64 << 20).contains(&len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("message {:?} of length {len}", char::from(header[0])),
            ));
        }
        let mut body = vec![0; len - 4];
        self.s.read_exact(&mut body).await?;
        Ok(Some((header[0], body)))
    }

    /// Every message until pgrouter closes the connection (a reset after them counts as closed).
    async fn until_closed(&mut self) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.read_msg()).await {
                Err(_) => bail!("still open after {PATIENCE:?}; got {} messages", all.len()),
                Ok(Ok(Some(m))) => all.push(m),
                Ok(Ok(None)) => return Ok(all),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(all),
                Ok(Err(e)) => bail!("after {} messages: {e}", all.len()),
            }
        }
    }

    /// Runs a simple query; its rows as text.
    async fn simple(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.s.write_all(&msg(b'Q', &cstr(sql))).await?;
        self.answer(sql).await
    }

    /// The rows of the query sent (`what` names it in errors), up to ReadyForQuery.
    async fn answer(&mut self, what: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = tokio::time::timeout(PATIENCE, self.read_msg())
                .await
                .context("query timed out")??
                .context("closed during a query")?;
            match tag {
                b'D' => rows.push(data_row(&body)?),
                b'E' => error = Some(fields(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some((code, message)) => bail!("{what}: {code} {message}"),
            None => Ok(rows),
        }
    }
}

fn data_row(body: &[u8]) -> Result<Vec<Option<String>>> {
    let n = i16::from_be_bytes(body.get(..2).context("short DataRow")?.try_into()?);
    let mut rest = &body[2..];
    let mut row = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(rest.get(..4).context("short DataRow")?.try_into()?);
        rest = &rest[4..];
        if len < 0 {
            row.push(None);
            continue;
        }
        let value = rest.get(..len as usize).context("short DataRow")?;
        row.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &rest[len as usize..];
    }
    Ok(row)
}

/// Trickles `packet` one byte a second until pgrouter closes the connection: (bytes sent,
/// bytes received).
/// Sends `packet` one byte a second until the router closes the connection; returns the bytes
/// sent, what the router answered and how long the connection stayed open.
async fn trickle(port: u16, packet: Vec<u8>) -> Result<(usize, Vec<u8>, Duration)> {
    let mut raw = Raw::connect(port).await?;
    let opened = Instant::now();
    let (mut r, mut w) = raw.s.split();
    let mut received = Vec::new();
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::select! {
            n = r.read_buf(&mut received) => match n {
                Ok(0) | Err(_) => return Ok((sent, received, opened.elapsed())),
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if sent < packet.len() {
                    if w.write_all(&packet[sent..=sent]).await.is_err() {
                        return Ok((sent, received, opened.elapsed()));
                    }
                    sent += 1;
                }
            }
            _ = tokio::time::sleep_until(deadline) => bail!("a trickled startup was still open after 30 s"),
        }
    }
}

/// Starts a pooled login and stops answering at the SCRAM challenge: pgrouter closes the
/// connection after startup_timeout with its 57014, as PostgreSQL's authentication_timeout does.
/// Then a login answering the challenge with a password message longer than PostgreSQL takes.
async fn stall_in_scram(port: u16) -> Result<()> {
    let challenged = || async {
        let mut raw = Raw::connect(port).await?;
        raw.s
            .write_all(&startup_packet(
                3 << 16,
                &params(&[("application_name", "hostile-stall")]),
            ))
            .await?;
        let (tag, _) = raw.read_msg().await?.context("no authentication request")?;
        ensure!(tag == b'R', "first message {:?}", char::from(tag));
        anyhow::Ok(raw)
    };
    let mut raw = challenged().await?;
    let challenged_at = Instant::now();
    let answer = raw
        .until_closed()
        .await
        .context("a client stalled in SCRAM")?;
    let waited = challenged_at.elapsed();
    expect_error(
        "stalled in SCRAM",
        &answer,
        "57014",
        &["canceling authentication", "startup_timeout"],
    )?;
    // startup_timeout (2 s) runs from the connection: most of it is left at the challenge.
    ensure!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_secs(6),
        "a client stalled in SCRAM was closed {waited:?} after the challenge, not at startup_timeout (2s)"
    );
    let mut raw = challenged().await?;
    raw.s.write_all(&[b'p', 0, 0x10, 0, 0]).await?;
    let answer = raw
        .until_closed()
        .await
        .context("an oversized password message")?;
    expect_error(
        "a password message of 1 MiB",
        &answer,
        "08P01",
        &["password message of 1048577 bytes"],
    )
}

const RULE_COMMENT: &str = "pgrouter-hostile-test";

/// An iptables rule dropping what a client sends to pgrouter on loopback; removed when dropped.
fn drop_client_packets(client_port: u16, router_port: u16) -> Result<IptablesRule> {
    loopback_rule(client_port, router_port, &["DROP"])
}

/// An iptables rule sending TCP packets from `from_port` to `to_port` on loopback to `target`.
fn loopback_rule(from_port: u16, to_port: u16, target: &[&str]) -> Result<IptablesRule> {
    let (from, to) = (from_port.to_string(), to_port.to_string());
    let mut rule = vec![
        "INPUT",
        "-p",
        "tcp",
        "-s",
        "127.0.0.1",
        "-d",
        "127.0.0.1",
        "--sport",
        &from,
        "--dport",
        &to,
        "-m",
        "comment",
        "--comment",
        RULE_COMMENT,
        "-j",
    ];
    rule.extend_from_slice(target);
    IptablesRule::insert(&rule)
}

/// Removes rules an earlier, killed run of this test left behind.
fn remove_stale_rules() {
    let Ok(out) = Command::new("iptables").args(["-S", "INPUT"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rule) = line
            .strip_prefix("-A ")
            .filter(|l| l.contains(RULE_COMMENT))
        {
            let _ = Command::new("iptables")
                .arg("-D")
                .args(rule.split_whitespace())
                .status();
        }
    }
}
