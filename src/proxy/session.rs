//! One client connection: startup, choose a member (holding if there is none), connect, relay, end.

use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::TlsMode;
use crate::stream::Stream;
use crate::tls::Transport;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::finish::{finish, send_error, send_response};
use super::forward_cancel::forward_cancel;
use super::login;
use super::relay::{Follow, Relay, Tally};
use crate::hold::{
    left_waiting, not_now, unless_left, unreachable, without_member, Attempt, Hold, Unserved,
};
use crate::metrics::{ClientState, StateGauge};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::frame;
use crate::protocol::startup::{self, CancelKey, FirstPacket, Startup};
use crate::protocol::wire;
use crate::route::{Port, Route};
use crate::session_log::SessionEnd;
use crate::shared::Shared;

pub async fn run(
    shared: Arc<Shared>,
    port: Port,
    tcp: TcpStream,
    permit: Option<OwnedSemaphorePermit>,
    home: usize,
) {
    // Boxed: a task's future is as large as its largest state, and a client idling for
    // hours should not carry the startup's (TLS handshake, errors being sent).
    let admitted = Box::pin(admit(&shared, port, tcp, permit.is_some())).await;
    let Some((client, startup, peer)) = admitted else {
        return;
    };
    let mut state = StateGauge::new(&shared.metrics, port.label());
    state.set(ClientState::Active);
    let mode = shared.config().rules(port.index()).pool_mode;
    // Boxed: a task's future is as large as its largest state, and an idle pooled client
    // should not carry the relay's or a TLS handshake's.
    if crate::admin::console::is_console(startup.database()) {
        // Counted among the port's clients, never as running a transaction: PAUSE waits
        // for those, and a console (or an exporter polling it) must not hold it up.
        state.set(ClientState::Idle);
        let user = startup.user().to_owned();
        return Box::pin(crate::admin::console::run(shared, client, &user, &peer)).await;
    }
    if mode.pooled() {
        let start = crate::pool::session::start(shared, port, mode, client, startup, peer, state);
        if let Some(session) = Box::pin(start).await {
            Box::pin(session.serve(home)).await;
        }
        return;
    }
    Box::pin(passthrough(shared, port, client, startup, peer, state)).await
}

/// Reads the client's first packets (TLS, a cancel, the StartupMessage) and refuses what
/// may not go on; the client, its StartupMessage and its address when it may.
async fn admit(
    shared: &Arc<Shared>,
    port: Port,
    tcp: TcpStream,
    permitted: bool,
) -> Option<(Stream, Startup, String)> {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    crate::tcp::tune(&tcp, &shared.config().tcp);
    let mut client = Stream::Plain(tcp);
    let startup_timeout = shared.config().listen.startup_timeout.0;
    let tls = shared.transport();
    let opening = Box::pin(timeout(startup_timeout, read_startup(&mut client, &tls)));
    let startup = match opening.await {
        Err(_) => {
            tracing::debug!(%peer, %port, "startup timed out");
            return None;
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // Closed inside a packet: a client that only shut down its sending side is told.
            let e = PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "pgrouter: cluster \"{}\": startup packet truncated: the client closed the connection inside it",
                    shared.scope
                ),
            );
            tracing::info!(%peer, %port, error = %e, "refused a truncated startup");
            send_error(shared, &mut client, &e).await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, %port, error = %e, "client left during startup");
            return None;
        }
        Ok(Ok(Opening::Closed)) => return None,
        Ok(Ok(Opening::Refused(e))) => {
            let e = PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("pgrouter: cluster \"{}\": {e}", shared.scope),
            );
            tracing::info!(%peer, %port, error = %e, "refused a malformed startup");
            send_error(shared, &mut client, &e).await;
            return None;
        }
        // Boxed, as the two ways below: every client's task is as large as its largest state.
        Ok(Ok(Opening::Cancel(key))) => {
            Box::pin(forward_cancel(shared, &key)).await;
            return None;
        }
        Ok(Ok(Opening::Startup(s))) => s,
    };
    if tls.mode == TlsMode::Require && !client.is_tls() {
        let e = PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "pgrouter: cluster \"{}\": TLS is required (tls.mode = \"require\"); connect with sslmode=require or stronger",
                shared.scope
            ),
        );
        tracing::info!(%peer, %port, "refused a plaintext client: TLS required");
        send_error(shared, &mut client, &e).await;
        return None;
    }
    if !permitted {
        let e = PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "pgrouter: cluster \"{}\": too many client connections (listen.max_client_conn = {})",
                shared.scope,
                shared.config().listen.max_client_conn
            ),
        );
        tracing::debug!(%peer, %port, "refused a client past max_client_conn");
        send_error(shared, &mut client, &e).await;
        return None;
    }
    Some((client, startup, peer))
}

/// One server connection for this client, authentication relayed, then the relay.
async fn passthrough(
    shared: Arc<Shared>,
    port: Port,
    mut client: Stream,
    startup: Startup,
    peer: String,
    mut state: StateGauge,
) {
    state.set(ClientState::Held);
    let began = tokio::time::Instant::now();
    let (route, mut server, first) = match connect(&shared, port, &client, &startup.raw).await {
        Ok(connected) => connected,
        Err(Unserved::ClientLeft(waited)) => return left_waiting(&shared, port, &peer, waited),
        Err(Unserved::Refused(e)) => {
            tracing::warn!(%peer, %port, error = %e, "no member for client");
            return send_error(&shared, &mut client, &e).await;
        }
    };
    let member = route.member.name.clone();
    let server_gauge = shared
        .metrics
        .server_connections
        .with_label_values(&[&member]);
    server_gauge.inc();
    tracing::debug!(%peer, %port, %member, user = startup.user(), database = startup.database(), "routed");
    let tally = Tally::default();
    let mut follow = Follow::new(&shared, port, &route.member.addr).tally(&tally);
    let login = login::run(
        &shared,
        &route,
        &mut follow,
        &mut client,
        &mut server,
        first,
    )
    .await;
    // How the session ended, for `finish`; None when the member refused the login.
    let mut refused = None;
    let end = match login {
        Ok(()) => {
            let relay = Relay {
                shared: &shared,
                route: &route,
                port,
                database: startup.database(),
                began,
            };
            Some(
                relay
                    .run(&mut client, &mut server, follow, &mut state)
                    .await,
            )
        }
        Err(login::Refused::Ended(end)) => Some(end),
        Err(login::Refused::Member { code, response }) => {
            tracing::info!(%peer, %port, %member, sqlstate = %code, "the member refused the login");
            send_response(&shared, &mut client, &code, &response).await;
            refused = Some(code);
            None
        }
    };
    let (ended, sqlstate) = match end {
        Some(end) => {
            let kind = end.kind();
            let told = finish(&shared, &route, port, &peer, end, &mut client, &mut server).await;
            (kind, told.unwrap_or_default().to_owned())
        }
        None => ("login_refused", refused.unwrap_or_default()),
    };
    server_gauge.dec();
    if shared.config().log.connections {
        SessionEnd {
            cluster: &shared.scope,
            client: &peer,
            listener: port.label(),
            user: startup.user(),
            database: startup.database(),
            application_name: startup.param("application_name").unwrap_or_default(),
            member: &member,
            duration: began.elapsed(),
            bytes: Some(tally.get()),
            end: ended,
            sqlstate: &sqlstate,
        }
        .log();
    }
}

enum Opening {
    Startup(Startup),
    Cancel(CancelKey),
    Refused(startup::StartupError),
    Closed,
}

/// Reads packets until a StartupMessage or CancelRequest. An SSLRequest gets 'S' and a TLS
/// handshake when TLS is configured, else 'N'; a GSSENCRequest gets 'N'; a TLS ClientHello
/// as the very first bytes (PostgreSQL 17's direct TLS, ALPN "postgresql") is accepted too.
async fn read_startup(client: &mut Stream, tls: &Transport) -> std::io::Result<Opening> {
    if let (Some(acceptor), Stream::Plain(tcp)) = (&tls.acceptor, &*client) {
        let mut first = [0u8; 1];
        // 0x16 starts a TLS handshake record; a startup packet starts with its length's high byte.
        if tcp.peek(&mut first).await? == 1 && first[0] == 0x16 {
            Box::pin(upgrade(client, acceptor)).await?;
            let alpn = match &*client {
                Stream::Tls(s) => s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
                _ => None,
            };
            if alpn.as_deref() != Some(crate::tls::ALPN) {
                return Ok(Opening::Refused(startup::StartupError::Malformed(
                    "direct TLS without ALPN \"postgresql\"",
                )));
            }
        }
    }
    loop {
        let packet = match startup::read_packet(client).await? {
            None => return Ok(Opening::Closed),
            Some(Err(e)) => return Ok(Opening::Refused(e)),
            Some(Ok(p)) => p,
        };
        match startup::decode(packet) {
            Ok(FirstPacket::SslRequest) => match (&tls.acceptor, client.is_tls()) {
                (Some(acceptor), false) => {
                    client.send(b"S").await?;
                    Box::pin(upgrade(client, acceptor)).await?;
                }
                _ => client.send(b"N").await?,
            },
            Ok(FirstPacket::GssEncRequest) => client.send(b"N").await?,
            Ok(FirstPacket::Cancel(key)) => return Ok(Opening::Cancel(key)),
            Ok(FirstPacket::Startup(s)) => return Ok(Opening::Startup(s)),
            Err(e) => return Ok(Opening::Refused(e)),
        }
    }
}

/// Replaces a plain client connection by TLS over it.
async fn upgrade(client: &mut Stream, acceptor: &tokio_rustls::TlsAcceptor) -> std::io::Result<()> {
    let Stream::Plain(tcp) = std::mem::replace(client, Stream::Closed) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let tls = acceptor.accept(tcp).await?;
    *client = Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
    Ok(())
}

/// Picks a member, connects to it and forwards `startup`, holding the client while the port
/// is paused or the cluster has none to offer (no leader, a switchover under way, a member
/// unreachable or not accepting connections) up to hold_timeout. Returns the member's first
/// bytes with the connection, for the relay to pass on.
async fn connect(
    shared: &Shared,
    port: Port,
    client: &Stream,
    startup: &[u8],
) -> Result<(Route, Stream, Vec<u8>), Unserved> {
    let transport = shared.transport();
    let hold = Hold::begin(shared, port, client, tokio::time::Instant::now()).await?;
    let (connected, waited) = hold
        .run(|current, config| {
            let transport = &transport;
            async move {
                let route = match shared.router.pick(&config, &current, port) {
                    Ok(route) => route,
                    Err(why) => return without_member(shared, &config, &current, port, &why),
                };
                let limit = config.routing.connect_timeout.0;
                let opened = timeout(limit, open(transport, &route.member.addr, startup));
                let opened = unless_left(client, opened).await;
                if let Some(Ok(Err(_)) | Err(_)) = opened {
                    shared.metrics.member_connect_error(&route.member.name);
                }
                let error = match opened {
                    None => return Attempt::Left,
                    Some(Ok(Ok(Answer::Relay(server, first)))) => {
                        return Attempt::Served((route, server, first))
                    }
                    Some(Ok(Ok(Answer::NotNow(why)))) => not_now(&shared.scope, &route, &why),
                    Some(Ok(Err(e))) => unreachable(&shared.scope, &route, &e.to_string()),
                    Some(Err(_)) => unreachable(
                        &shared.scope,
                        &route,
                        &format!(
                            "no answer within connect_timeout ({}s)",
                            limit.as_secs_f64()
                        ),
                    ),
                };
                Attempt::Retry { error, soon: true }
            }
        })
        .await?;
    shared
        .metrics
        .hold_seconds
        .with_label_values(&[port.label()])
        .observe(waited.as_secs_f64());
    Ok(connected)
}

/// What a member made of a forwarded startup packet.
enum Answer {
    /// Its first bytes, for the relay to pass on: an authentication request, most often.
    Relay(Stream, Vec<u8>),
    /// ErrorResponse 57P03: the member is starting up, shutting down or recovering, as the old
    /// leader is during a switchover. Not for the client, who is held and tried again.
    NotNow(String),
}

/// Most of a member's first answer read before relaying starts; an ErrorResponse is read
/// whole when it fits.
const FIRST_ANSWER: usize = 8 * 1024;

/// Connects to `addr`, sends `startup` and reads the member's first bytes.
async fn open(tls: &Transport, addr: &str, startup: &[u8]) -> std::io::Result<Answer> {
    let mut server = tls.dial(addr).await?;
    server.send(startup).await?;
    let mut first = vec![0; FIRST_ANSWER];
    let mut filled = 0;
    loop {
        match server.read(&mut first[filled..]).await? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the member closed the connection before answering the startup",
                ))
            }
            n => filled += n,
        }
        match classify(&first[..filled]) {
            First::Partial => {}
            First::NotNow(why) => return Ok(Answer::NotNow(why)),
            First::Relay => break,
        }
    }
    first.truncate(filled);
    Ok(Answer::Relay(server, first))
}

#[derive(Debug, PartialEq)]
enum First {
    /// An ErrorResponse not read whole yet, or not even a header.
    Partial,
    NotNow(String),
    Relay,
}

/// What the start of a member's answer to a startup packet calls for.
fn classify(answer: &[u8]) -> First {
    match frame::header(answer) {
        Ok(None) => First::Partial,
        Ok(Some((b'E', len))) if len <= FIRST_ANSWER => {
            let Some(body) = answer.get(5..len) else {
                return First::Partial;
            };
            let fields = wire::error_fields(body);
            match wire::field(&fields, b'C') {
                Some(sqlstate::CANNOT_CONNECT_NOW) => {
                    First::NotNow(wire::field(&fields, b'M').unwrap_or_default().to_owned())
                }
                _ => First::Relay,
            }
        }
        _ => First::Relay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, PoolMode};
    use crate::metrics::Metrics;
    use crate::topology::Topology;
    use bytes::Bytes;

    /// 10,000 idle pooled clients must fit in a few KiB each: the task of one holds the
    /// session and the idle wait, every larger step is boxed while it runs.
    #[tokio::test]
    async fn an_idle_pooled_client_task_is_small() {
        let config =
            Config::from_toml("[cluster]\nscope = \"d\"\netcd = [\"127.0.0.1:1\"]\n").unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Topology::empty("d")));
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(Shared::new(config, rx, metrics.clone()));
        let shared2 = shared.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let startup = Startup {
            raw: Bytes::new(),
            version: (3, 0),
            params: vec![("user".into(), "u".into())],
        };
        let session = size_of::<crate::pool::session::PooledSession>();
        let task = crate::pool::session::start(
            shared,
            Port::PRIMARY,
            PoolMode::Transaction,
            Stream::Plain(tcp),
            startup,
            String::new(),
            StateGauge::new(&metrics, "primary"),
        );
        let task = std::mem::size_of_val(&task);
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let outer = run(shared2, Port::PRIMARY, tcp, None, crate::shards::MAIN);
        let outer = std::mem::size_of_val(&outer);
        println!("PooledSession {session} bytes, task future {task} bytes, client task {outer}");
        assert!(task < 2048, "task future {task} bytes");
        // Every idle client carries its whole task: a branch `run` awaits inline (the cancel
        // forward did, 1,608 bytes in all, +780 bytes per idle client in W4) costs them all.
        assert!(outer < 1024, "client task {outer} bytes");
    }

    #[test]
    fn a_member_not_accepting_connections_is_told_from_one_to_relay() {
        let shutting_down = PgError::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            "the database system is shutting down",
        )
        .encode();
        for cut in 0..shutting_down.len() {
            assert_eq!(
                classify(&shutting_down[..cut]),
                First::Partial,
                "cut at {cut}"
            );
        }
        assert_eq!(
            classify(&shutting_down),
            First::NotNow("the database system is shutting down".into())
        );
        let no_database = PgError::fatal("3D000", "database \"nope\" does not exist").encode();
        assert_eq!(classify(&no_database), First::Relay);
        // AuthenticationSASL, read in part: relayed as it comes.
        assert_eq!(classify(b"R\0\0\0\x17\0\0\0\x0aSCRAM"), First::Relay);
        // An ErrorResponse longer than what is read before relaying is relayed too.
        let mut long = vec![b'E'];
        long.extend_from_slice(&(FIRST_ANSWER as u32 + 10).to_be_bytes());
        assert_eq!(classify(&long), First::Relay);
    }
}
