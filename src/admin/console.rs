//! The admin console: the virtual database "pgrouter", pgbouncer-style commands over the
//! simple query protocol (SHOW POOLS/CLIENTS/SERVERS/STATS/CONFIG, PAUSE, RESUME, RELOAD).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::stream::Stream;
use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;

use super::pause;
use crate::pool::client_auth::AuthError;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::wire;
use crate::route::Port;
use crate::servers::pools::ClientActivity;
use crate::shared::Shared;

pub const DATABASE: &str = "pgrouter";

/// A result set in text format.
struct Table {
    columns: &'static [&'static str],
    rows: Vec<Vec<String>>,
}

impl Table {
    fn encode(&self, out: &mut BytesMut, tag: &str) {
        wire::message(out, b'T', |b| {
            b.put_i16(self.columns.len() as i16);
            for c in self.columns {
                b.put_slice(c.as_bytes());
                b.put_u8(0);
                b.put_i32(0); // table oid
                b.put_i16(0); // column number
                b.put_u32(25); // text
                b.put_i16(-1);
                b.put_i32(-1);
                b.put_i16(0); // text format
            }
        });
        for row in &self.rows {
            wire::message(out, b'D', |b| {
                b.put_i16(row.len() as i16);
                for v in row {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
            });
        }
        command_complete(out, &format!("{tag} {}", self.rows.len()));
    }
}

fn command_complete(out: &mut BytesMut, tag: &str) {
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
    for (k, v) in [
        ("server_version", "15.0 (pgrouter)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        wire::parameter_status(&mut out, k, v);
    }
    wire::backend_key_data(&mut out, 0, &[0; 4]);
    wire::ready_for_query(&mut out, b'I');
    if client.send(&out).await.is_err() {
        return;
    }
    let mut buf = BytesMut::new();
    loop {
        let msg = match wire::take_message(&mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(_) => return,
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

async fn execute(shared: &Shared, sql: &str, out: &mut BytesMut) -> Result<(), PgError> {
    let command =
        parse(sql).map_err(|e| PgError::error(sqlstate::SYNTAX_ERROR, format!("pgrouter: {e}")))?;
    match command {
        Command::Show(what) => {
            show(shared, &what)?.encode(out, "SHOW");
        }
        Command::Pause => pause_all(shared, out).await?,
        Command::Resume => {
            pause::resume(shared, &Port::ALL);
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
    let paused = pause::pause(shared, &Port::ALL, 1).await;
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

fn show(shared: &Shared, what: &str) -> Result<Table, PgError> {
    let config = shared.config();
    let pools = shared.pools.all();
    let secs = |d: std::time::Duration| format!("{:.1}", d.as_secs_f64());
    let table = match what {
        "pools" => Table {
            columns: &[
                "database",
                "user",
                "member",
                "role",
                "cl_active",
                "cl_waiting",
                "sv_active",
                "sv_idle",
                "pool_size",
                "maxwait_us",
            ],
            rows: pools
                .iter()
                .map(|p| {
                    let s = &p.stats;
                    vec![
                        p.key.database.clone(),
                        p.key.user.clone(),
                        p.key.member.clone(),
                        p.key.target.label().to_owned(),
                        s.active.load(Ordering::Relaxed).to_string(),
                        p.waiting().to_string(),
                        s.active.load(Ordering::Relaxed).to_string(),
                        p.idle_count().to_string(),
                        p.size().to_string(),
                        s.wait_micros.load(Ordering::Relaxed).to_string(),
                    ]
                })
                .collect(),
        },
        "clients" => Table {
            columns: &[
                "id",
                "user",
                "database",
                "port",
                "addr",
                "state",
                "server",
                "connected_for_s",
            ],
            rows: shared
                .pools
                .clients()
                .iter()
                .map(|c| {
                    let state = match c.activity() {
                        ClientActivity::Idle => "idle",
                        ClientActivity::Waiting => "waiting",
                        ClientActivity::Active => "active",
                    };
                    vec![
                        c.id.to_string(),
                        c.user.clone(),
                        c.database.clone(),
                        c.port.to_owned(),
                        c.peer.clone(),
                        state.to_owned(),
                        match c.server() {
                            0 => String::new(),
                            id => id.to_string(),
                        },
                        secs(c.since.elapsed().unwrap_or_default()),
                    ]
                })
                .collect(),
        },
        "servers" => {
            let mut rows = Vec::new();
            for p in &pools {
                for (id, pid, age, idle) in p.idle_servers() {
                    rows.push(vec![
                        id.to_string(),
                        p.key.user.clone(),
                        p.key.database.clone(),
                        p.key.member.clone(),
                        p.addr.clone(),
                        pid.to_string(),
                        "idle".to_owned(),
                        secs(age),
                        secs(idle),
                    ]);
                }
            }
            for c in shared.pools.clients() {
                if c.server() != 0 {
                    rows.push(vec![
                        c.server().to_string(),
                        c.user.clone(),
                        c.database.clone(),
                        String::new(),
                        String::new(),
                        String::new(),
                        format!("active (client {})", c.id),
                        String::new(),
                        "0.0".to_owned(),
                    ]);
                }
            }
            Table {
                columns: &[
                    "id", "user", "database", "member", "addr", "pid", "state", "age_s", "idle_s",
                ],
                rows,
            }
        }
        "stats" => Table {
            columns: &[
                "database",
                "user",
                "member",
                "total_xact_count",
                "total_query_count",
                "total_wait_time_us",
                "total_server_opened",
                "total_server_moved",
            ],
            rows: pools
                .iter()
                .map(|p| {
                    let s = &p.stats;
                    vec![
                        p.key.database.clone(),
                        p.key.user.clone(),
                        p.key.member.clone(),
                        s.transactions.load(Ordering::Relaxed).to_string(),
                        s.queries.load(Ordering::Relaxed).to_string(),
                        s.wait_micros.load(Ordering::Relaxed).to_string(),
                        s.opened.load(Ordering::Relaxed).to_string(),
                        s.moved.load(Ordering::Relaxed).to_string(),
                    ]
                })
                .collect(),
        },
        "config" => {
            let (l, p, r) = (&config.listen, &config.pool, &config.routing);
            let d = |d: &crate::units::HumanDuration| format!("{}s", d.0.as_secs_f64());
            let rows = [
                ("cluster.scope", config.cluster.scope.clone()),
                ("listen.primary", l.primary.to_string()),
                ("listen.replicas", l.replicas.to_string()),
                (
                    "listen.primary_pool_mode",
                    l.primary_pool_mode.label().to_owned(),
                ),
                (
                    "listen.replicas_pool_mode",
                    l.replicas_pool_mode.label().to_owned(),
                ),
                ("listen.max_client_conn", l.max_client_conn.to_string()),
                ("pool.pool_size", p.pool_size.to_string()),
                ("pool.min_pool_size", p.min_pool_size.to_string()),
                ("pool.query_wait_timeout", d(&p.query_wait_timeout)),
                ("pool.server_idle_timeout", d(&p.server_idle_timeout)),
                ("pool.server_lifetime", d(&p.server_lifetime)),
                ("pool.server_check_delay", d(&p.server_check_delay)),
                ("pool.message_memory", p.message_memory.0.to_string()),
                ("routing.hold_timeout", d(&r.hold_timeout)),
                ("routing.connect_timeout", d(&r.connect_timeout)),
                ("routing.max_replica_lag", r.max_replica_lag.0.to_string()),
                ("peers.id", config.peers.id.to_string()),
                ("peers.routers", config.peers.routers.join(", ")),
            ];
            Table {
                columns: &["key", "value"],
                rows: rows
                    .into_iter()
                    .map(|(k, v)| vec![k.to_owned(), v])
                    .collect(),
            }
        }
        other => {
            return Err(PgError::error(
                sqlstate::SYNTAX_ERROR,
                format!("pgrouter: SHOW {other}: try POOLS, CLIENTS, SERVERS, STATS or CONFIG"),
            ))
        }
    };
    Ok(table)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::admin::pause::tests::{active_client, shared};
    use crate::metrics::ClientState;

    #[test]
    fn commands() {
        assert_eq!(parse("show pools;"), Ok(Command::Show("pools".into())));
        assert_eq!(parse(" PAUSE "), Ok(Command::Pause));
        assert_eq!(parse("RELOAD"), Ok(Command::Reload));
        assert!(parse("drop table x").is_err());
    }

    #[test]
    fn tables_are_framed() {
        let t = Table {
            columns: &["a", "b"],
            rows: vec![vec!["1".into(), "x".into()]],
        };
        let mut out = BytesMut::new();
        t.encode(&mut out, "SHOW");
        let mut buf = out.clone();
        let tags: Vec<u8> = std::iter::from_fn(|| wire::take_message(&mut buf).unwrap())
            .map(|m| m[0])
            .collect();
        assert_eq!(tags, b"TDC");
    }

    #[tokio::test]
    async fn pause_answers_once_the_transactions_in_flight_have_finished() {
        let shared = shared("10s");
        // proxy::session counts the console's own session active on its port.
        let _this_session = active_client(&shared, Port::Primary);
        let mut client = active_client(&shared, Port::Replicas);
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
        assert!(shared.is_paused(Port::Primary) && shared.is_paused(Port::Replicas));
        execute(&shared, "RESUME", &mut out).await.unwrap();
        assert!(!shared.is_paused(Port::Primary) && !shared.is_paused(Port::Replicas));
    }

    #[tokio::test]
    async fn pause_still_busy_at_drain_timeout_is_an_error_and_the_ports_stay_paused() {
        let shared = shared("300ms");
        let _this_session = active_client(&shared, Port::Primary);
        let _busy = active_client(&shared, Port::Primary);
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
        assert!(shared.is_paused(Port::Primary) && shared.is_paused(Port::Replicas));
    }
}
