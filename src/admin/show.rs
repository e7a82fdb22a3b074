//! The admin console's SHOW commands, with pgbouncer 1.18's columns: result sets in text
//! format, read from the pools, the pooled clients and the settings in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};

use super::console::command_complete;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::wire;
use crate::servers::pools::{ClientActivity, Pool};
use crate::servers::stats::by_database;
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
        "stats" => stats(shared, &pools),
        "stats_totals" => stats_totals(&pools),
        "stats_averages" => stats_averages(shared),
        "totals" => totals(shared, &pools),
        "lists" => lists(shared, &pools),
        "databases" => databases(shared, &pools),
        "users" => users(shared),
        "config" => config(shared),
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
pub(super) const HELP: &str = "\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATE\n\tSHOW LISTS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\tRELOAD\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tRECONNECT [<db>]\n\tKILL <db>\n\tWAIT_CLOSE [<db>]\n\tSHUTDOWN";

fn n(v: impl ToString) -> String {
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

fn stats(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    let averages = shared
        .pools
        .averages
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rows = by_database(pools)
        .into_iter()
        .map(|(db, t)| {
            let a = averages.last.get(&db).copied().unwrap_or_default();
            vec![
                db,
                n(t.xact_count),
                n(t.query_count),
                n(t.received),
                n(t.sent),
                n(t.xact_micros),
                n(t.query_micros),
                n(t.wait_micros),
                n(a.xact_count),
                n(a.query_count),
                n(a.received),
                n(a.sent),
                n(a.xact_time),
                n(a.query_time),
                n(a.wait_time),
                // pgbouncer before 1.8 called the query count total_requests; older
                // exporters still read it.
                n(t.query_count),
                n(t.opened),
                n(t.moved),
            ]
        })
        .collect();
    Table {
        columns: &[
            "database",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            "total_requests",
            "total_server_opened",
            "total_server_moved",
        ],
        rows,
    }
}

const STATS_COLUMNS: &[&str] = &[
    "database",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
];

fn stats_totals(pools: &[Arc<Pool>]) -> Table {
    let rows = by_database(pools)
        .into_iter()
        .map(|(db, t)| {
            vec![
                db,
                n(t.xact_count),
                n(t.query_count),
                n(t.received),
                n(t.sent),
                n(t.xact_micros),
                n(t.query_micros),
                n(t.wait_micros),
            ]
        })
        .collect();
    Table {
        columns: STATS_COLUMNS,
        rows,
    }
}

fn stats_averages(shared: &Shared) -> Table {
    let averages = shared
        .pools
        .averages
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let rows = averages
        .last
        .iter()
        .map(|(db, a)| {
            vec![
                db.clone(),
                n(a.xact_count),
                n(a.query_count),
                n(a.received),
                n(a.sent),
                n(a.xact_time),
                n(a.query_time),
                n(a.wait_time),
            ]
        })
        .collect();
    Table {
        columns: STATS_COLUMNS,
        rows,
    }
}

fn totals(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    let mut t = crate::servers::stats::Totals::default();
    for each in by_database(pools).values() {
        t.xact_count += each.xact_count;
        t.query_count += each.query_count;
        t.received += each.received;
        t.sent += each.sent;
        t.xact_micros += each.xact_micros;
        t.query_micros += each.query_micros;
        t.wait_micros += each.wait_micros;
    }
    let averages = shared
        .pools
        .averages
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let sum = |f: fn(&crate::servers::stats::Averaged) -> u64| -> u64 {
        averages.last.values().map(f).sum()
    };
    let rows = [
        ("total_xact_count", t.xact_count),
        ("total_query_count", t.query_count),
        ("total_client_bytes", t.received),
        ("total_server_bytes", t.sent),
        ("total_xact_time", t.xact_micros),
        ("total_query_time", t.query_micros),
        ("total_wait_time", t.wait_micros),
        ("avg_xact_count", sum(|a| a.xact_count)),
        ("avg_query_count", sum(|a| a.query_count)),
        ("avg_client_bytes", sum(|a| a.received)),
        ("avg_server_bytes", sum(|a| a.sent)),
        (
            "avg_xact_time",
            t.xact_micros.checked_div(t.xact_count).unwrap_or(0),
        ),
        (
            "avg_query_time",
            t.query_micros.checked_div(t.query_count).unwrap_or(0),
        ),
        (
            "avg_wait_time",
            t.wait_micros.checked_div(t.xact_count).unwrap_or(0),
        ),
    ];
    named_rows(&["name", "value"], &rows)
}

/// A two-column table of named numbers (SHOW TOTALS, SHOW LISTS).
fn named_rows(columns: &'static [&'static str], rows: &[(&str, impl ToString)]) -> Table {
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
            vec![
                db.clone(),
                host.clone(),
                port.clone(),
                db,
                String::new(),
                n(config.pool.pool_size),
                n(config.pool.min_pool_size),
                n(0),
                config.listen.primary_pool_mode.label().to_owned(),
                n(0),
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
    let mut names: BTreeSet<String> = shared.credentials.user_names().into_iter().collect();
    for c in shared.pools.clients() {
        names.insert(c.user.clone());
    }
    Table {
        columns: &["name", "pool_mode"],
        rows: names.into_iter().map(|u| vec![u, String::new()]).collect(),
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

fn config(shared: &Shared) -> Table {
    let config = shared.config();
    let defaults = crate::config::Config {
        cluster: config.cluster.clone(),
        listen: Default::default(),
        routing: Default::default(),
        pool: Default::default(),
        auth: Default::default(),
        tls: Default::default(),
        upstream_tls: Default::default(),
        log: Default::default(),
        runtime: Default::default(),
        tcp: Default::default(),
        peers: Default::default(),
        listeners: Default::default(),
    };
    let rows = settings(&config)
        .into_iter()
        .zip(settings(&defaults))
        .map(|((key, value, changeable), (_, default, _))| {
            vec![
                key.to_owned(),
                value,
                default,
                if changeable { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    Table {
        columns: &["key", "value", "default", "changeable"],
        rows,
    }
}

/// The settings SHOW CONFIG lists: key, value, and whether a reload changes it.
fn settings(config: &crate::config::Config) -> Vec<(&'static str, String, bool)> {
    let (l, p, r) = (&config.listen, &config.pool, &config.routing);
    let d = |d: &crate::units::HumanDuration| format!("{}s", d.0.as_secs_f64());
    vec![
        ("cluster.scope", config.cluster.scope.clone(), false),
        ("listen.primary", l.primary.to_string(), true),
        ("listen.replicas", l.replicas.to_string(), true),
        (
            "listen.primary_pool_mode",
            l.primary_pool_mode.label().to_owned(),
            true,
        ),
        (
            "listen.replicas_pool_mode",
            l.replicas_pool_mode.label().to_owned(),
            true,
        ),
        (
            "listen.max_client_conn",
            l.max_client_conn.to_string(),
            true,
        ),
        ("pool.pool_size", p.pool_size.to_string(), true),
        ("pool.min_pool_size", p.min_pool_size.to_string(), true),
        ("pool.query_wait_timeout", d(&p.query_wait_timeout), true),
        ("pool.server_idle_timeout", d(&p.server_idle_timeout), true),
        ("pool.server_lifetime", d(&p.server_lifetime), true),
        ("pool.server_check_delay", d(&p.server_check_delay), true),
        ("pool.stuck_check", d(&p.stuck_check), true),
        ("pool.message_memory", p.message_memory.0.to_string(), true),
        (
            "pool.ignore_startup_parameters",
            p.ignore_startup_parameters.join(","),
            true,
        ),
        (
            "pool.track_extra_parameters",
            p.track_extra_parameters.join(","),
            true,
        ),
        ("pool.stats_period", d(&p.stats_period), true),
        ("routing.hold_timeout", d(&r.hold_timeout), true),
        ("routing.drain_timeout", d(&r.drain_timeout), true),
        ("routing.connect_timeout", d(&r.connect_timeout), true),
        (
            "routing.max_replica_lag",
            r.max_replica_lag.0.to_string(),
            true,
        ),
        ("routing.max_replica_delay", d(&r.max_replica_delay), true),
        ("routing.lag_check_interval", d(&r.lag_check_interval), true),
        ("routing.balance", r.balance.label().to_owned(), true),
        (
            "runtime.worker_threads",
            config.runtime.worker_threads.to_string(),
            false,
        ),
        ("peers.id", config.peers.id.to_string(), true),
        ("peers.routers", config.peers.routers.join(", "), true),
    ]
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
