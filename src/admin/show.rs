//! The admin console's SHOW POOLS, CLIENTS, SERVERS, STATS and CONFIG: result sets in text
//! format, read from the pools, the pooled clients and the settings in force.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};

use super::console::command_complete;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::wire;
use crate::servers::pools::{ClientActivity, Pool};
use crate::shared::Shared;

/// A result set in text format.
pub(super) struct Table {
    columns: &'static [&'static str],
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn encode(&self, out: &mut BytesMut, tag: &str) {
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

/// The table `SHOW <what>` answers (`what` in lower case).
pub(super) fn show(shared: &Shared, what: &str) -> Result<Table, PgError> {
    let table = match what {
        "pools" => pools(&shared.pools.all()),
        "clients" => clients(shared),
        "servers" => servers(shared, &shared.pools.all()),
        "stats" => stats(&shared.pools.all()),
        "config" => config(shared),
        other => {
            return Err(PgError::error(
                sqlstate::SYNTAX_ERROR,
                format!("pgrouter: SHOW {other}: try POOLS, CLIENTS, SERVERS, STATS or CONFIG"),
            ))
        }
    };
    Ok(table)
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn pools(pools: &[Arc<Pool>]) -> Table {
    Table {
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
    }
}

fn clients(shared: &Shared) -> Table {
    Table {
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
    }
}

fn servers(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    let mut rows = Vec::new();
    for p in pools {
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

fn stats(pools: &[Arc<Pool>]) -> Table {
    Table {
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
    }
}

fn config(shared: &Shared) -> Table {
    let config = shared.config();
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
        ("pool.stuck_check", d(&p.stuck_check)),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
