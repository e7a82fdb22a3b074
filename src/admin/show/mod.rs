//! The admin console's SHOW commands, with pgbouncer 1.18's columns: result sets in text
//! format, read from the pools, the pooled clients and the settings in force. The statistics
//! tables are in `stats`, SHOW CONFIG in `config`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};

mod config;
mod stats;

use super::console::command_complete;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::wire;
use crate::servers::clients::ClientActivity;
use crate::servers::pools::Pool;
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

/// The table `SHOW <what>` answers (`what` in lower case). The columns are pgbouncer 1.18's,
/// in its order, so its exporters and scripts read them; pgrouter's own (the member and its
/// role) follow at the end.
pub(super) fn show(shared: &Shared, what: &str) -> Result<Table, PgError> {
    let pools = shared.pools.all();
    let table = match what {
        "pools" => pools_table(shared, &pools),
        "clients" => clients(shared),
        "servers" => servers(shared, &pools),
        "stats" => stats::stats(shared, &pools),
        "stats_totals" => stats::stats_totals(&pools),
        "stats_averages" => stats::stats_averages(shared),
        "totals" => stats::totals(shared, &pools),
        "lists" => lists(shared, &pools),
        "databases" => databases(shared, &pools),
        "users" => users(shared),
        "config" => config::config(shared),
        "version" => Table {
            columns: &["version"],
            rows: vec![vec![format!("pgrouter {}", env!("CARGO_PKG_VERSION"))]],
        },
        "state" => state(shared),
        other => {
            return Err(PgError::error(
                sqlstate::SYNTAX_ERROR,
                format!("pgrouter: SHOW {other} is not a console command; SHOW HELP lists them"),
            ))
        }
    };
    Ok(table)
}

/// The commands, as SHOW HELP tells them.
pub(super) const HELP: &str = "\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATE\n\tSHOW LISTS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\tRELOAD\n\tPAUSE\n\tRESUME\n\tRECONNECT [<db>]\n\tKILL <db>\n\tWAIT_CLOSE [<db>]\n\tSHUTDOWN";

pub(super) fn n(v: impl ToString) -> String {
    v.to_string()
}

/// "addr:port" as pgbouncer's two columns.
fn split_addr(peer: &str) -> (String, String) {
    match peer.rsplit_once(':') {
        Some((addr, port)) => (addr.trim_matches(['[', ']']).to_owned(), port.to_owned()),
        None => (peer.to_owned(), String::new()),
    }
}

fn time_text(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 as a Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The pool mode of the listeners a database's clients came through.
fn mode_of(shared: &Shared, port: &str) -> &'static str {
    let config = shared.config();
    let index = shared
        .ports()
        .iter()
        .position(|p| p.label() == port)
        .unwrap_or(0);
    config.rules(index).pool_mode.label()
}

fn pools_table(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    // One row per (database, user), as pgbouncer has one pool per pair; the members serving
    // it (one pool each in pgrouter) are summed and named at the end.
    let clients = shared.pools.clients();
    let mut rows: BTreeMap<(String, String), Vec<&Arc<Pool>>> = BTreeMap::new();
    for p in pools {
        rows.entry((p.key.database.clone(), p.key.user.clone()))
            .or_default()
            .push(p);
    }
    for c in &clients {
        rows.entry((c.database.clone(), c.user.clone()))
            .or_default();
    }
    let table_rows = rows
        .into_iter()
        .map(|((database, user), members)| {
            let mine = clients
                .iter()
                .filter(|c| c.database == database && c.user == user);
            let (mut cl_active, mut cl_waiting, mut maxwait, mut mode) = (0, 0, Duration::ZERO, "");
            for c in mine {
                mode = mode_of(shared, c.port);
                match c.waiting_for() {
                    Some(w) => {
                        cl_waiting += 1;
                        maxwait = maxwait.max(w);
                    }
                    None => cl_active += 1,
                }
            }
            let sum = |f: &dyn Fn(&Pool) -> usize| members.iter().map(|p| f(p)).sum::<usize>();
            let sv_active = sum(&|p| p.stats.active.load(Ordering::Relaxed));
            let sv_idle = sum(&|p| p.idle_count());
            let names: Vec<String> = members
                .iter()
                .map(|p| format!("{}({})", p.key.member, p.key.target.label()))
                .collect();
            vec![
                database,
                user,
                n(cl_active),
                n(cl_waiting),
                n(0),
                n(0),
                n(sv_active),
                n(0),
                n(0),
                n(sv_idle),
                n(0),
                n(0),
                n(0),
                n(maxwait.as_secs()),
                n(maxwait.subsec_micros()),
                mode.to_owned(),
                names.join(","),
            ]
        })
        .collect();
    Table {
        columns: &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "members",
        ],
        rows: table_rows,
    }
}

const SOCKET_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "member",
];

fn clients(shared: &Shared) -> Table {
    let config = shared.config();
    let listeners = config.client_listeners();
    let rows = shared
        .pools
        .clients()
        .iter()
        .map(|c| {
            let waiting = c.waiting_for();
            let state = match (c.activity(), waiting) {
                (_, Some(_)) => "waiting",
                (ClientActivity::Active, None) => "active",
                _ => "idle",
            };
            let (addr, port) = split_addr(&c.peer);
            let local = listeners
                .iter()
                .find(|(name, _)| *name == c.port)
                .map(|(_, a)| *a);
            let wait = waiting.unwrap_or_default();
            vec![
                "C".to_owned(),
                c.user.clone(),
                c.database.clone(),
                state.to_owned(),
                addr,
                port,
                local.map(|a| a.ip().to_string()).unwrap_or_default(),
                local.map(|a| a.port().to_string()).unwrap_or_default(),
                time_text(c.since),
                time_text(c.since),
                n(wait.as_secs()),
                n(wait.subsec_micros()),
                n(0),
                format!("{:#x}", c.id),
                match c.server() {
                    0 => String::new(),
                    id => format!("{id:#x}"),
                },
                n(0),
                String::new(),
                c.application_name.clone(),
                String::new(),
            ]
        })
        .collect();
    Table {
        columns: SOCKET_COLUMNS,
        rows,
    }
}

fn servers(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    let mut rows = Vec::new();
    let now = SystemTime::now();
    for p in pools {
        let (addr, port) = split_addr(&p.addr);
        for (id, pid, age, _idle) in p.idle_servers() {
            rows.push(vec![
                "S".to_owned(),
                p.key.user.clone(),
                p.key.database.clone(),
                "idle".to_owned(),
                addr.clone(),
                port.clone(),
                String::new(),
                String::new(),
                time_text(now - age),
                time_text(now - age),
                n(0),
                n(0),
                n(0),
                format!("{id:#x}"),
                String::new(),
                n(pid),
                String::new(),
                String::new(),
                format!("{}({})", p.key.member, p.key.target.label()),
            ]);
        }
    }
    for c in shared.pools.clients() {
        if c.server() != 0 {
            rows.push(vec![
                "S".to_owned(),
                c.user.clone(),
                c.database.clone(),
                "active".to_owned(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                n(0),
                n(0),
                n(0),
                format!("{:#x}", c.server()),
                format!("{:#x}", c.id),
                n(0),
                String::new(),
                c.application_name.clone(),
                String::new(),
            ]);
        }
    }
    Table {
        columns: SOCKET_COLUMNS,
        rows,
    }
}

/// A two-column table of named numbers (SHOW TOTALS, SHOW LISTS).
pub(super) fn named_rows(
    columns: &'static [&'static str],
    rows: &[(&str, impl ToString)],
) -> Table {
    Table {
        columns,
        rows: rows
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.to_string()])
            .collect(),
    }
}

fn lists(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    let clients = shared.pools.clients();
    let databases: BTreeSet<&str> = pools.iter().map(|p| p.key.database.as_str()).collect();
    let users: BTreeSet<&str> = pools.iter().map(|p| p.key.user.as_str()).collect();
    let pool_pairs: BTreeSet<(&str, &str)> = pools
        .iter()
        .map(|p| (p.key.database.as_str(), p.key.user.as_str()))
        .collect();
    let used_servers: usize = pools
        .iter()
        .map(|p| p.stats.active.load(Ordering::Relaxed))
        .sum();
    let free_servers: usize = pools.iter().map(|p| p.idle_count()).sum();
    let rows = [
        ("databases", databases.len()),
        ("users", users.len()),
        ("pools", pool_pairs.len()),
        ("free_clients", 0),
        ("used_clients", clients.len()),
        ("login_clients", 0),
        ("free_servers", free_servers),
        ("used_servers", used_servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    named_rows(&["list", "items"], &rows)
}

fn databases(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    let config = shared.config();
    let topology = shared.topology.borrow().clone();
    let leader = topology.writable_leader().map(|m| m.addr.clone());
    let (host, port) = leader.as_deref().map(split_addr).unwrap_or_default();
    let mut names: BTreeSet<String> = pools.iter().map(|p| p.key.database.clone()).collect();
    names.extend(config.databases.keys().cloned());
    for c in shared.pools.clients() {
        names.insert(c.database.clone());
    }
    let paused = shared.ports().iter().any(|p| shared.is_paused(*p));
    let rows = names
        .into_iter()
        .map(|db| {
            let current: usize = pools
                .iter()
                .filter(|p| p.key.database == db)
                .map(|p| p.open_count())
                .sum();
            let entry = config.databases.get(&db);
            let plan = config.plan(&db, "");
            let mode = plan.pool_mode.unwrap_or(config.listen.primary_pool_mode);
            vec![
                db.clone(),
                host.clone(),
                port.clone(),
                plan.dbname.to_owned(),
                entry.and_then(|e| e.user.clone()).unwrap_or_default(),
                n(plan.pool_size),
                n(config.pool.min_pool_size),
                n(plan.reserve_pool),
                mode.label().to_owned(),
                n(plan.max_db_connections),
                n(current),
                n(u8::from(paused)),
                n(0),
            ]
        })
        .collect();
    Table {
        columns: &[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool",
            "pool_mode",
            "max_connections",
            "current_connections",
            "paused",
            "disabled",
        ],
        rows,
    }
}

fn users(shared: &Shared) -> Table {
    let config = shared.config();
    let mut names: BTreeSet<String> = shared.credentials.user_names().into_iter().collect();
    names.extend(config.users.keys().cloned());
    for c in shared.pools.clients() {
        names.insert(c.user.clone());
    }
    let mode = |u: &str| config.users.get(u).and_then(|u| u.pool_mode);
    Table {
        columns: &["name", "pool_mode"],
        rows: names
            .into_iter()
            .map(|u| {
                let mode = mode(&u).map(|m| m.label().to_owned()).unwrap_or_default();
                vec![u, mode]
            })
            .collect(),
    }
}

fn state(shared: &Shared) -> Table {
    let paused = shared.ports().iter().any(|p| shared.is_paused(*p));
    let rows = [
        ("active", !paused && !shared.shutting_down()),
        ("paused", paused),
        ("suspended", false),
    ];
    Table {
        columns: &["key", "value"],
        rows: rows
            .iter()
            .map(|(k, v)| vec![k.to_string(), if *v { "yes" } else { "no" }.to_owned()])
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
