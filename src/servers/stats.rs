//! The pools' counters summed per database, and their averages over the last
//! `pool.stats_period`, as pgbouncer's SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS
//! give them and its periodic stats line logs them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pools::Pool;

impl PoolStats {
    /// A lent connection came back after `held`.
    pub(super) fn lent(&self, held: Duration) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        let micros = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.xact_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Counters of one pool, for SHOW POOLS / SHOW STATS and the metrics.
#[derive(Default)]
pub struct PoolStats {
    pub active: AtomicUsize,
    pub transactions: AtomicU64,
    pub queries: AtomicU64,
    pub wait_micros: AtomicU64,
    pub opened: AtomicU64,
    /// Idle connections moved to another worker thread's event loop for a client there.
    pub moved: AtomicU64,
    /// Bytes taken from and sent to the pool's clients while they held a connection.
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Microseconds connections were lent to clients (a transaction each, in transaction
    /// mode), and of those, the time the server owed answers.
    pub xact_micros: AtomicU64,
    pub query_micros: AtomicU64,
}

/// Counters since start: transactions, queries, bytes from and to clients, microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub xact_count: u64,
    pub query_count: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_micros: u64,
    pub query_micros: u64,
    pub wait_micros: u64,
    /// Server connections opened, and idle ones moved to another worker thread's loop.
    pub opened: u64,
    pub moved: u64,
}

impl Totals {
    fn add(&mut self, pool: &Pool) {
        let s = &pool.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        self.xact_count += get(&s.transactions);
        self.query_count += get(&s.queries);
        self.received += get(&s.received);
        self.sent += get(&s.sent);
        self.xact_micros += get(&s.xact_micros);
        self.query_micros += get(&s.query_micros);
        self.wait_micros += get(&s.wait_micros);
        self.opened += get(&s.opened);
        self.moved += get(&s.moved);
    }

    /// pgbouncer's seven totals, in the order of its STATS_TOTALS columns.
    pub fn cells(&self) -> [u64; 7] {
        [
            self.xact_count,
            self.query_count,
            self.received,
            self.sent,
            self.xact_micros,
            self.query_micros,
            self.wait_micros,
        ]
    }

    /// These and `other` together (SHOW TOTALS sums the databases).
    pub fn plus(&self, other: &Totals) -> Totals {
        Totals {
            xact_count: self.xact_count + other.xact_count,
            query_count: self.query_count + other.query_count,
            received: self.received + other.received,
            sent: self.sent + other.sent,
            xact_micros: self.xact_micros + other.xact_micros,
            query_micros: self.query_micros + other.query_micros,
            wait_micros: self.wait_micros + other.wait_micros,
            opened: self.opened + other.opened,
            moved: self.moved + other.moved,
        }
    }

    fn since(&self, before: &Totals) -> Totals {
        Totals {
            xact_count: self.xact_count.saturating_sub(before.xact_count),
            query_count: self.query_count.saturating_sub(before.query_count),
            received: self.received.saturating_sub(before.received),
            sent: self.sent.saturating_sub(before.sent),
            xact_micros: self.xact_micros.saturating_sub(before.xact_micros),
            query_micros: self.query_micros.saturating_sub(before.query_micros),
            wait_micros: self.wait_micros.saturating_sub(before.wait_micros),
            opened: self.opened.saturating_sub(before.opened),
            moved: self.moved.saturating_sub(before.moved),
        }
    }
}

/// Totals per database, every pool of it (each member, each user) summed.
pub fn by_database(pools: &[Arc<Pool>]) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for p in pools {
        out.entry(p.key.database.clone()).or_default().add(p);
    }
    out
}

/// pgbouncer's averages over a period: counts and bytes per second, times per transaction
/// or query in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Averaged {
    pub xact_count: u64,
    pub query_count: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
}

impl Averaged {
    /// pgbouncer's seven averages, in the order of its STATS_AVERAGES columns.
    pub fn cells(&self) -> [u64; 7] {
        [
            self.xact_count,
            self.query_count,
            self.received,
            self.sent,
            self.xact_time,
            self.query_time,
            self.wait_time,
        ]
    }

    fn of(delta: &Totals, period: Duration) -> Averaged {
        let secs = period.as_secs_f64().max(0.001);
        let per_second = |n: u64| (n as f64 / secs).round() as u64;
        let per = |micros: u64, n: u64| micros.checked_div(n).unwrap_or(0);
        Averaged {
            xact_count: per_second(delta.xact_count),
            query_count: per_second(delta.query_count),
            received: per_second(delta.received),
            sent: per_second(delta.sent),
            xact_time: per(delta.xact_micros, delta.xact_count),
            query_time: per(delta.query_micros, delta.query_count),
            wait_time: per(delta.wait_micros, delta.xact_count),
        }
    }
}

/// The averages of the last full period, and where the current one started.
#[derive(Debug, Default)]
pub struct Averages {
    started: Option<(Instant, BTreeMap<String, Totals>)>,
    pub last: BTreeMap<String, Averaged>,
}

impl Averages {
    /// Closes the period if `period` has passed since it started: the averages of the
    /// databases with traffic in it, to log. The first call only starts one.
    pub fn tick(
        &mut self,
        now: Instant,
        totals: BTreeMap<String, Totals>,
        period: Duration,
    ) -> Option<Vec<(String, Averaged)>> {
        let Some((at, before)) = &self.started else {
            self.started = Some((now, totals));
            return None;
        };
        let elapsed = now.duration_since(*at);
        if elapsed < period {
            return None;
        }
        let none = Totals::default();
        self.last = totals
            .iter()
            .map(|(db, t)| {
                let delta = t.since(before.get(db).unwrap_or(&none));
                (db.clone(), Averaged::of(&delta, elapsed))
            })
            .collect();
        let busy = self
            .last
            .iter()
            .filter(|(db, _)| totals.get(*db) != before.get(*db))
            .map(|(db, a)| (db.clone(), *a))
            .collect();
        self.started = Some((now, totals));
        Some(busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_per_second_and_per_transaction() {
        let mut averages = Averages::default();
        let start = Instant::now();
        let db = |t: Totals| BTreeMap::from([("app".to_owned(), t)]);
        assert_eq!(
            averages.tick(start, db(Totals::default()), Duration::from_secs(60)),
            None
        );
        let later = Totals {
            xact_count: 600,
            query_count: 1200,
            received: 6000,
            sent: 60000,
            xact_micros: 600 * 1500,
            query_micros: 1200 * 500,
            wait_micros: 6000,
            ..Totals::default()
        };
        assert_eq!(
            averages.tick(
                start + Duration::from_secs(30),
                db(later),
                Duration::from_secs(60)
            ),
            None
        );
        let logged = averages
            .tick(
                start + Duration::from_secs(60),
                db(later),
                Duration::from_secs(60),
            )
            .unwrap();
        let a = averages.last["app"];
        assert_eq!(
            (a.xact_count, a.query_count, a.received, a.sent),
            (10, 20, 100, 1000)
        );
        assert_eq!((a.xact_time, a.query_time, a.wait_time), (1500, 500, 10));
        assert_eq!(logged.len(), 1);
        // A quiet period logs nothing and averages zero.
        let quiet = averages
            .tick(
                start + Duration::from_secs(120),
                db(later),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(quiet.is_empty());
        assert_eq!(averages.last["app"], Averaged::default());
    }
}
