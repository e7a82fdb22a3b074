//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS: the pools' counters per database
//! (`servers::stats`), in pgbouncer's columns.

use std::sync::Arc;

use super::{n, named_rows, Table};
use crate::servers::pools::Pool;
use crate::servers::stats::{by_database, Averaged, Averages, Totals};
use crate::shared::Shared;

fn averages(shared: &Shared) -> std::sync::MutexGuard<'_, Averages> {
    shared
        .pools
        .averages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A database's name, then `cells` as text.
fn row(db: String, cells: impl IntoIterator<Item = u64>) -> Vec<String> {
    std::iter::once(db)
        .chain(cells.into_iter().map(n))
        .collect()
}

pub(super) fn stats(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    let averages = averages(shared);
    let rows = by_database(pools)
        .into_iter()
        .map(|(db, t)| {
            let a = averages.last.get(&db).copied().unwrap_or_default();
            // pgbouncer before 1.8 called the query count total_requests; older exporters
            // still read it.
            let ours = [t.query_count, t.opened, t.moved];
            row(db, t.cells().into_iter().chain(a.cells()).chain(ours))
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

pub(super) fn stats_totals(pools: &[Arc<Pool>]) -> Table {
    Table {
        columns: STATS_COLUMNS,
        rows: by_database(pools)
            .into_iter()
            .map(|(db, t)| row(db, t.cells()))
            .collect(),
    }
}

pub(super) fn stats_averages(shared: &Shared) -> Table {
    Table {
        columns: STATS_COLUMNS,
        rows: averages(shared)
            .last
            .iter()
            .map(|(db, a)| row(db.clone(), a.cells()))
            .collect(),
    }
}

pub(super) fn totals(shared: &Shared, pools: &[Arc<Pool>]) -> Table {
    let t = by_database(pools)
        .values()
        .fold(Totals::default(), |sum, each| sum.plus(each));
    let averages = averages(shared);
    let sum = |f: fn(&Averaged) -> u64| -> u64 { averages.last.values().map(f).sum() };
    let per = |micros: u64, count: u64| micros.checked_div(count).unwrap_or(0);
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
        ("avg_xact_time", per(t.xact_micros, t.xact_count)),
        ("avg_query_time", per(t.query_micros, t.query_count)),
        ("avg_wait_time", per(t.wait_micros, t.xact_count)),
    ];
    named_rows(&["name", "value"], &rows)
}
