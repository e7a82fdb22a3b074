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

/// The console's database names: pgrouter's own, and pgbouncer's for its tools and exporters.
pub fn is_console(database: &str) -> bool {
    database == DATABASE || database == "pgbouncer"
}

pub(super) fn command_complete(out: &mut BytesMut, tag: &str) {
    wire::message(out, b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Show(String),
    Help,
    Pause,
    Resume,
    Reload,
    /// Server connections of a database (or all) closed once given back.
    Reconnect(Option<String>),
    /// Waits until the connections RECONNECT marked are closed.
    WaitClose(Option<String>),
    Shutdown,
    /// Ends every session of a database now, pooled and pass-through, and closes its pools'
    /// server connections.
    Kill(String),
}

fn parse(sql: &str) -> Result<Command, String> {
    let raw: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    let words: Vec<String> = raw.iter().map(|w| w.to_ascii_lowercase()).collect();
    // A database name as written: names are case-sensitive, commands are not.
    let db = |_: &str| raw[1].trim_matches('"').to_owned();
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["show", "help"] => Ok(Command::Help),
        ["show", what] => Ok(Command::Show(what.to_string())),
        ["pause"] => Ok(Command::Pause),
        ["resume"] => Ok(Command::Resume),
        ["pause" | "resume", _] => Err(
            "pgrouter pauses and resumes whole listeners: PAUSE and RESUME take no database (POST /pause?port= names a listener)"
                .to_owned(),
        ),
        ["reload"] => Ok(Command::Reload),
        ["reconnect"] => Ok(Command::Reconnect(None)),
        ["reconnect", name] => Ok(Command::Reconnect(Some(db(name)))),
        ["wait_close"] => Ok(Command::WaitClose(None)),
        ["wait_close", name] => Ok(Command::WaitClose(Some(db(name)))),
        ["shutdown"] => Ok(Command::Shutdown),
        ["kill", name] => Ok(Command::Kill(db(name))),
        ["kill"] => Err("KILL takes a database: KILL <db>".to_owned()),
        ["suspend" | "disable" | "enable" | "set", ..] => Err(format!(
            "{} is not supported by pgrouter; SHOW HELP lists the commands",
            words[0].to_ascii_uppercase()
        )),
        _ => Err(format!(
            "unknown command {:?}; SHOW HELP lists the commands",
            sql.trim()
        )),
    }
}

/// Serves an admin user: authentication as for pooled clients, then commands.
pub async fn run(shared: Arc<Shared>, mut client: Stream, user: &str, peer: &str) {
    let scope = shared.scope.clone();
    let config = shared.config();
    let admin = config.auth.admin_users.iter().any(|u| u == user);
    if !admin && !config.auth.stats_users.iter().any(|u| u == user) {
        let e = PgError::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("pgrouter: cluster \"{scope}\": user \"{user}\" is not in auth.admin_users or auth.stats_users"),
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
                    if let Err(e) = execute(&shared, statement, admin, &mut out).await {
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

async fn execute(
    shared: &Shared,
    sql: &str,
    admin: bool,
    out: &mut BytesMut,
) -> Result<(), PgError> {
    let command =
        parse(sql).map_err(|e| PgError::error(sqlstate::SYNTAX_ERROR, format!("pgrouter: {e}")))?;
    if !admin && !matches!(command, Command::Show(_) | Command::Help) {
        return Err(PgError::error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "pgrouter: auth.stats_users may only SHOW; this command takes auth.admin_users",
        ));
    }
    match command {
        Command::Show(what) => {
            show(shared, &what)?.encode(out, "SHOW");
        }
        Command::Help => {
            wire::message(out, b'N', |b| {
                for (code, text) in [
                    (b'S', "NOTICE"),
                    (b'V', "NOTICE"),
                    (b'C', "00000"),
                    (b'M', "Console usage"),
                    (b'D', super::show::HELP),
                ] {
                    b.put_u8(code);
                    b.put_slice(text.as_bytes());
                    b.put_u8(0);
                }
                b.put_u8(0);
            });
            command_complete(out, "SHOW");
        }
        Command::Reconnect(database) => {
            let n = shared.pools.reconnect(database.as_deref());
            tracing::info!(database = ?database, idle_closed = n, "RECONNECT from the admin console");
            command_complete(out, "RECONNECT");
        }
        Command::WaitClose(database) => {
            let limit = shared.config().routing.drain_timeout.0;
            let start = std::time::Instant::now();
            while shared.pools.marked_open(database.as_deref()) > 0 {
                if start.elapsed() > limit {
                    return Err(PgError::error(
                        sqlstate::QUERY_CANCELED,
                        format!(
                            "pgrouter: WAIT_CLOSE waited {:.1}s (routing.drain_timeout) and {} server connection(s) are still in use",
                            limit.as_secs_f64(),
                            shared.pools.marked_open(database.as_deref())
                        ),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            command_complete(out, "WAIT_CLOSE");
        }
        Command::Kill(database) => {
            shared.kills.kill(&database);
            let n = shared.pools.reconnect(Some(&database));
            shared.signals.raise_all();
            tracing::info!(%database, idle_closed = n, "KILL from the admin console: ending the database's sessions");
            command_complete(out, "KILL");
        }
        Command::Shutdown => {
            tracing::info!("SHUTDOWN from the admin console: draining sessions");
            shared.begin_shutdown();
            command_complete(out, "SHUTDOWN");
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
        assert_eq!(parse("SHOW HELP"), Ok(Command::Help));
        assert_eq!(
            parse("reconnect app"),
            Ok(Command::Reconnect(Some("app".into())))
        );
        assert_eq!(parse("WAIT_CLOSE"), Ok(Command::WaitClose(None)));
        assert_eq!(parse("shutdown;"), Ok(Command::Shutdown));
        assert!(parse("PAUSE app").unwrap_err().contains("whole listeners"));
        assert_eq!(parse("KILL \"App\";"), Ok(Command::Kill("App".into())));
        assert!(parse("KILL")
            .unwrap_err()
            .starts_with("KILL takes a database"));
        assert!(parse("SUSPEND")
            .unwrap_err()
            .starts_with("SUSPEND is not supported"));
        assert!(is_console("pgbouncer") && is_console("pgrouter") && !is_console("app"));
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
        execute(&shared, "PAUSE", true, &mut out).await.unwrap();
        assert!(
            finishes.is_finished(),
            "PAUSE answered before the transaction ended"
        );
        let done = wire::take_message(&mut out).unwrap().unwrap();
        assert_eq!(&done[..], b"C\0\0\0\x0aPAUSE\0");
        assert!(shared.is_paused(Port::PRIMARY) && shared.is_paused(Port::REPLICAS));
        execute(&shared, "RESUME", true, &mut out).await.unwrap();
        assert!(!shared.is_paused(Port::PRIMARY) && !shared.is_paused(Port::REPLICAS));
    }

    #[tokio::test]
    async fn pause_still_busy_at_drain_timeout_is_an_error_and_the_ports_stay_paused() {
        let shared = shared("300ms");
        let _busy = active_client(&shared, Port::PRIMARY);
        let mut out = BytesMut::new();
        let e = execute(&shared, "pause;", true, &mut out)
            .await
            .unwrap_err();
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
