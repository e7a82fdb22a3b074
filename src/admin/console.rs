//! The admin console: the virtual database "pgrouter", pgbouncer-style commands over the
//! simple query protocol (SHOW POOLS/CLIENTS/SERVERS/STATS/CONFIG, PAUSE, RESUME, RELOAD).
//! The tables SHOW answers are in `show.rs`, PAUSE and RESUME in `pause.rs`.

use std::sync::Arc;

use crate::stream::Stream;
use bytes::{BufMut, BytesMut};

use super::pause;
use super::show::show;
use crate::pool::client_auth::AuthError;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::limits::MAX_WHOLE_MESSAGE;
use crate::protocol::reader::MessageReader;
use crate::protocol::wire;
use crate::shared::Shared;

pub const DATABASE: &str = "pgrouter";

pub(super) fn command_complete(out: &mut BytesMut, tag: &str) {
    wire::message(out, b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Show(String),
    Pause,
    Resume,
    Reload,
}

fn parse(sql: &str) -> Result<Command, String> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["show", what] => Ok(Command::Show(what.to_string())),
        ["pause"] => Ok(Command::Pause),
        ["resume"] => Ok(Command::Resume),
        ["reload"] => Ok(Command::Reload),
        _ => Err(format!(
            "unknown command {:?}; try SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW CONFIG, PAUSE, RESUME, RELOAD",
            sql.trim()
        )),
    }
}

/// Serves an admin user: authentication as for pooled clients, then commands.
pub async fn run(shared: Arc<Shared>, mut client: Stream, user: &str, peer: &str) {
    let scope = shared.scope.clone();
    let config = shared.config();
    if !config.auth.admin_users.iter().any(|u| u == user) {
        let e = PgError::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("pgrouter: cluster \"{scope}\": user \"{user}\" is not in auth.admin_users"),
        );
        tracing::info!(%peer, %user, "refused the admin console");
        let _ = client.send(&e.encode()).await;
        return;
    }
    let limit = config.listen.startup_timeout.0;
    let auth = crate::pool::session::authenticate(&shared, &mut client, user, DATABASE);
    let mut out = match tokio::time::timeout(limit, auth).await {
        Ok(Ok(passed)) => passed.unsent,
        Ok(Err(AuthError::Refused(e))) => {
            let _ = client.send(&e.encode()).await;
            return;
        }
        _ => return,
    };
    tracing::info!(%peer, %user, "admin console opened");
    greet(&mut out);
    if client.send(&out).await.is_err() {
        return;
    }
    let mut reader = MessageReader::new(MAX_WHOLE_MESSAGE);
    loop {
        let Ok(msg) = reader.read(&mut client).await else {
            return;
        };
        let mut out = BytesMut::new();
        match msg[0] {
            b'X' => return,
            b'Q' => {
                let sql = wire::Reader::new(&msg[5..]).cstr().unwrap_or_default();
                let sql = String::from_utf8_lossy(sql).into_owned();
                let statements: Vec<&str> =
                    sql.split(';').filter(|s| !s.trim().is_empty()).collect();
                if statements.is_empty() {
                    wire::message(&mut out, b'I', |_| {});
                }
                for statement in statements {
                    if let Err(e) = execute(&shared, statement, &mut out).await {
                        out.extend_from_slice(&e.encode());
                        break;
                    }
                }
                wire::ready_for_query(&mut out, b'I');
            }
            b'S' => {
                let e = PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "pgrouter: the admin console speaks the simple query protocol only",
                );
                out.extend_from_slice(&e.encode());
                wire::ready_for_query(&mut out, b'I');
            }
            _ => {} // the rest of an extended batch: answered at its Sync
        }
        if client.send(&out).await.is_err() {
            return;
        }
    }
}

/// What a client hears after authentication: parameters, a key (cancelling means nothing
/// here) and ReadyForQuery.
fn greet(out: &mut BytesMut) {
    for (k, v) in [
        ("server_version", "15.0 (pgrouter)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        wire::parameter_status(out, k, v);
    }
    wire::backend_key_data(out, 0, &[0; 4]);
    wire::ready_for_query(out, b'I');
}

async fn execute(shared: &Shared, sql: &str, out: &mut BytesMut) -> Result<(), PgError> {
    let command =
        parse(sql).map_err(|e| PgError::error(sqlstate::SYNTAX_ERROR, format!("pgrouter: {e}")))?;
    match command {
        Command::Show(what) => {
            show(shared, &what)?.encode(out, "SHOW");
        }
        Command::Pause => pause_all(shared, out).await?,
        Command::Resume => {
            pause::resume(shared, shared.ports());
            command_complete(out, "RESUME");
        }
        Command::Reload => {
            shared.request_reload().await.map_err(|e| {
                PgError::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("pgrouter: reload refused, the running config is unchanged: {e}"),
                )
            })?;
            command_complete(out, "RELOAD");
        }
    }
    Ok(())
}

/// PAUSE on both ports, as POST /pause: answered once no transaction is in flight. Still busy
/// at `routing.drain_timeout`, it answers ERROR 57014 (query_canceled, what PostgreSQL answers a
/// statement that ran out of time under statement_timeout): the wait was given up, not the
/// pause, and the ports stay paused until RESUME.
async fn pause_all(shared: &Shared, out: &mut BytesMut) -> Result<(), PgError> {
    // `proxy::session` counts this session active on its port while it is open: not waited for.
    let paused = pause::pause(shared, shared.ports()).await;
    if paused.active > 0 {
        let n = paused.active;
        return Err(PgError::error(
            sqlstate::QUERY_CANCELED,
            format!(
                "pgrouter: cluster \"{}\": PAUSE waited {:.1}s (routing.drain_timeout) and {n} {} still active; the ports stay paused (RESUME releases them)",
                shared.scope,
                paused.waited.as_secs_f64(),
                if n == 1 { "transaction is" } else { "transactions are" },
            ),
        ));
    }
    command_complete(out, "PAUSE");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::admin::pause::tests::{active_client, shared};
    use crate::metrics::ClientState;
    use crate::route::Port;

    #[test]
    fn commands() {
        assert_eq!(parse("show pools;"), Ok(Command::Show("pools".into())));
        assert_eq!(parse(" PAUSE "), Ok(Command::Pause));
        assert_eq!(parse("RELOAD"), Ok(Command::Reload));
        assert!(parse("drop table x").is_err());
    }

    #[tokio::test]
    async fn pause_answers_once_the_transactions_in_flight_have_finished() {
        let shared = shared("10s");
        let mut client = active_client(&shared, Port::REPLICAS);
        let finishes = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.set(ClientState::Idle);
            client
        });
        let mut out = BytesMut::new();
        execute(&shared, "PAUSE", &mut out).await.unwrap();
        assert!(
            finishes.is_finished(),
            "PAUSE answered before the transaction ended"
        );
        let done = wire::take_message(&mut out).unwrap().unwrap();
        assert_eq!(&done[..], b"C\0\0\0\x0aPAUSE\0");
        assert!(shared.is_paused(Port::PRIMARY) && shared.is_paused(Port::REPLICAS));
        execute(&shared, "RESUME", &mut out).await.unwrap();
        assert!(!shared.is_paused(Port::PRIMARY) && !shared.is_paused(Port::REPLICAS));
    }

    #[tokio::test]
    async fn pause_still_busy_at_drain_timeout_is_an_error_and_the_ports_stay_paused() {
        let shared = shared("300ms");
        let _busy = active_client(&shared, Port::PRIMARY);
        let mut out = BytesMut::new();
        let e = execute(&shared, "pause;", &mut out).await.unwrap_err();
        assert_eq!((e.code, e.fatal), (sqlstate::QUERY_CANCELED, false));
        assert!(
            e.message
                .starts_with("pgrouter: cluster \"d\": PAUSE waited ")
                && e.message
                    .contains("1 transaction is still active; the ports stay paused"),
            "{}",
            e.message
        );
        assert!(out.is_empty());
        assert!(shared.is_paused(Port::PRIMARY) && shared.is_paused(Port::REPLICAS));
    }
}
