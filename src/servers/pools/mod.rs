//! The server connection pools, one per (member, role, database, user), and the member's
//! connection budgets they open within.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

mod checkout;

pub use checkout::{Ask, Begun, CheckoutError};

use super::budget::Budget;
use super::clients::{ClientEntry, ClientRegistration, Clients};
use super::defaults::KnownDefaults;
use super::server::ServerConn;
use super::slots::{Homed, Slots};
use super::stats::PoolStats;
use crate::config::{Config, Plan};
use crate::route::Target;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub member: String,
    pub target: TargetKey,
    pub database: String,
    pub user: String,
}

/// What a connection budget counts, on one member.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BudgetOf {
    Database(String),
    User(String),
}

/// The role a pool serves; a pool whose member loses that role has its idle connections closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKey {
    Leader,
    Replica,
}

impl From<Target> for TargetKey {
    fn from(t: Target) -> Self {
        match t {
            Target::Leader => TargetKey::Leader,
            Target::Replica => TargetKey::Replica,
        }
    }
}

impl TargetKey {
    pub fn label(self) -> &'static str {
        match self {
            TargetKey::Leader => "leader",
            TargetKey::Replica => "replica",
        }
    }
}

pub struct Pool {
    pub key: PoolKey,
    pub addr: String,
    /// The database its connections open (`key.database` unless `[databases]` aliases it).
    pub dbname: String,
    /// The member's budgets for the pool's database and for its user.
    budgets: [Arc<Budget>; 2],
    /// Connections over its pool_size it may open now, from its reserve_pool.
    reserve_in_use: AtomicUsize,
    /// RECONNECT: connections opened before this close when given back.
    retire_before: Mutex<Option<Instant>>,
    /// Of those, the ones lent when RECONNECT came and not given back yet (WAIT_CLOSE).
    retiring: AtomicUsize,
    /// Connections boxed, like a lease's: they change hands by pointer, not by copying their
    /// ~500 bytes at every checkout and release.
    slots: Slots<Box<ServerConn>>,
    size: AtomicUsize,
    pub stats: PoolStats,
}

impl Homed for Box<ServerConn> {
    fn home(&self) -> usize {
        self.home
    }
}

/// A server connection checked out of its pool; `release` returns it, dropping it closes it.
pub struct Lease {
    pub conn: Box<ServerConn>,
    slot: Slot,
    /// When it was lent, for the pool's transaction time.
    taken: Instant,
}

/// A slot taken from a pool; given back when dropped, unless a connection went back with it.
struct Slot(Option<Arc<Pool>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.slots.free();
        }
    }
}

impl Pool {
    fn new(
        key: PoolKey,
        addr: String,
        dbname: String,
        size: usize,
        budgets: [Arc<Budget>; 2],
    ) -> Pool {
        Pool {
            key,
            addr,
            dbname,
            budgets,
            reserve_in_use: AtomicUsize::new(0),
            retire_before: Mutex::new(None),
            retiring: AtomicUsize::new(0),
            slots: Slots::new(size),
            size: AtomicUsize::new(size),
            stats: PoolStats::default(),
        }
    }

    pub fn name(&self) -> String {
        format!(
            "{}/{}@{}({})",
            self.key.user,
            self.key.database,
            self.key.member,
            self.key.target.label()
        )
    }

    pub fn idle_count(&self) -> usize {
        self.slots.with_idle(|idle| idle.len())
    }

    /// (id, backend pid, age, idle for) of the idle connections.
    pub fn idle_servers(&self) -> Vec<(u64, i32, Duration, Duration)> {
        let now = Instant::now();
        self.slots.with_idle(|idle| {
            idle.iter()
                .map(|c| {
                    (
                        c.id,
                        c.key.pid,
                        now.duration_since(c.created),
                        now.duration_since(c.last_used),
                    )
                })
                .collect()
        })
    }

    /// Whether `conn`, given back, is one RECONNECT retired (and no longer waited for).
    fn retired(&self, conn: &ServerConn) -> bool {
        let before = *lock(&self.retire_before);
        let retired = before.is_some_and(|t| conn.created <= t);
        if retired {
            let _ = self
                .retiring
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        retired
    }

    /// RECONNECT: idle connections close now, lent ones when given back; how many closed.
    pub fn reconnect(&self) -> usize {
        *lock(&self.retire_before) = Some(Instant::now());
        self.retiring
            .store(self.stats.active.load(Ordering::Relaxed), Ordering::Relaxed);
        self.close_idle(|_| true)
    }

    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Checkouts in line for a slot.
    pub fn waiting(&self) -> usize {
        self.slots.waiting()
    }

    /// Server connections open: idle plus those leased to clients.
    pub fn open_count(&self) -> usize {
        self.idle_count() + self.stats.active.load(Ordering::Relaxed)
    }

    /// Whether its member's budgets for its database and user have room for a connection.
    pub fn has_room(&self) -> bool {
        self.budgets.iter().all(|b| b.has_room())
    }

    /// Closes idle connections matching `close`.
    fn close_idle(&self, mut close: impl FnMut(&ServerConn) -> bool) -> usize {
        let closing: Vec<Box<ServerConn>> = self.slots.with_idle(|idle| {
            let (drop, keep): (Vec<_>, Vec<_>) = idle.drain(..).partition(|c| close(c));
            *idle = keep;
            drop
        });
        let n = closing.len();
        for conn in closing {
            tokio::spawn(conn.close());
        }
        n
    }

    /// Reserve connections it may open now: one more each upkeep while its oldest waiter has
    /// waited `timeout`, up to `reserve`; none once nobody waits.
    fn reserve(&self, reserve: usize, timeout: Duration, now: Instant) -> usize {
        let in_use = self.reserve_in_use.load(Ordering::Relaxed);
        let wanted = match self.slots.oldest_since() {
            None => 0,
            Some(since) if now.duration_since(since) >= timeout && in_use < reserve => {
                tracing::info!(pool = %self.name(), reserve_in_use = in_use + 1, reserve_pool = reserve, "a client waited reserve_pool_timeout: opening a reserve connection");
                in_use + 1
            }
            Some(_) => in_use.min(reserve),
        };
        self.reserve_in_use.store(wanted, Ordering::Relaxed);
        wanted
    }

    fn resize(&self, size: usize) {
        self.size.store(size, Ordering::Relaxed);
        self.slots.resize(size);
    }
}

impl Lease {
    pub fn pool(&self) -> &Arc<Pool> {
        self.slot.0.as_ref().expect("a lease holds its slot")
    }

    /// When the connection was lent.
    pub fn taken(&self) -> Instant {
        self.taken
    }

    /// Returns the connection to its pool for the next transaction.
    pub fn release(self) {
        let Lease {
            mut conn,
            mut slot,
            taken,
        } = self;
        conn.last_used = Instant::now();
        let pool = slot.0.take().expect("a lease holds its slot");
        pool.stats.lent(conn.last_used.duration_since(taken));
        if pool.retired(&conn) {
            drop(slot.0.replace(pool));
            tokio::spawn(conn.close());
            return;
        }
        pool.slots.put(conn);
    }

    /// Closes the connection (its state is unknown or its member lost its role).
    pub fn discard(self) {
        let pool = self.pool();
        pool.stats.lent(self.taken.elapsed());
        pool.retired(&self.conn);
        tokio::spawn(self.conn.close());
    }
}

#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// Connection budgets per member and database, and per member and user.
    budgets: Mutex<HashMap<(String, BudgetOf), Arc<Budget>>>,
    /// ParameterStatus of a fresh server connection per (database, user): the defaults a new
    /// client is told at login without borrowing a server.
    pub defaults: KnownDefaults,
    clients: Clients,
    next_id: AtomicU64,
    /// What pooled clients' large messages hold together.
    pub message_memory: Arc<super::message_memory::MessageMemory>,
    /// Per-database averages over the last `pool.stats_period`.
    pub averages: Mutex<super::stats::Averages>,
}

impl Pools {
    pub fn next_server_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The pool for `key`, created on first use on the member at `addr` as `plan` says.
    pub fn get(&self, key: PoolKey, addr: &str, plan: &Plan) -> Arc<Pool> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(&key) {
            if p.addr == addr && p.dbname == plan.dbname {
                return p.clone();
            }
        }
        // New, or the member moved to another address, or the alias to another database: a
        // fresh pool (the old one's connections close as their leases end).
        let budgets = [
            self.budget(&key.member, BudgetOf::Database(key.database.clone())),
            self.budget(&key.member, BudgetOf::User(key.user.clone())),
        ];
        budgets[0].set_limit(plan.max_db_connections);
        budgets[1].set_limit(plan.max_user_connections);
        let pool = Arc::new(Pool::new(
            key.clone(),
            addr.to_owned(),
            plan.dbname.to_owned(),
            plan.pool_size,
            budgets,
        ));
        if let Some(old) = pools.insert(key, pool.clone()) {
            old.close_idle(|_| true);
        }
        pool
    }

    fn budget(&self, member: &str, of: BudgetOf) -> Arc<Budget> {
        let mut budgets = lock(&self.budgets);
        budgets.entry((member.to_owned(), of)).or_default().clone()
    }

    /// Closes the least recently used idle connection that `budget` counts; false if none is.
    fn close_one_idle(&self, budget: &Arc<Budget>) -> bool {
        let pools = self.all();
        let sharing = pools
            .iter()
            .filter(|p| p.budgets.iter().any(|b| Arc::ptr_eq(b, budget)));
        let oldest = sharing
            .filter_map(|p| {
                let used = p
                    .slots
                    .with_idle(|idle| idle.iter().map(|c| c.last_used).min())?;
                Some((used, p))
            })
            .min_by_key(|(used, _)| *used);
        let Some((used, pool)) = oldest else {
            return false;
        };
        let n = pool.close_idle(|c| c.last_used == used);
        if n > 0 {
            tracing::debug!(pool = %pool.name(), "closed an idle server connection to make room under a connection limit");
        }
        n > 0
    }

    /// Sets the per-pool gauges.
    pub fn export(&self, metrics: &crate::metrics::Metrics) {
        metrics
            .pooled_message_bytes
            .set(self.message_memory.in_use() as i64);
        metrics.pool_servers.reset();
        metrics.pool_waiting.reset();
        for p in self.all() {
            let k = &p.key;
            let labels = [k.member.as_str(), k.target.label(), &k.database, &k.user];
            let with = |state| {
                let mut l = labels.to_vec();
                l.push(state);
                metrics.pool_servers.with_label_values(&l)
            };
            with("idle").set(p.idle_count() as i64);
            with("active").set(p.stats.active.load(Ordering::Relaxed) as i64);
            metrics
                .pool_waiting
                .with_label_values(&labels)
                .set(p.waiting() as i64);
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = lock(&self.pools).values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    pub fn register_client(
        &self,
        user: &str,
        database: &str,
        peer: &str,
        port: &'static str,
        application_name: &str,
    ) -> ClientRegistration {
        let id = self.next_server_id();
        self.clients
            .register(id, user, database, peer, port, application_name)
    }

    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        self.clients.all()
    }

    /// RECONNECT [db]: every pool of `database` (or all) retires its connections.
    pub fn reconnect(&self, database: Option<&str>) -> usize {
        self.all()
            .iter()
            .filter(|p| database.is_none_or(|d| p.key.database == d))
            .map(|p| p.reconnect())
            .sum()
    }

    /// Lent connections RECONNECT retired and not given back yet (WAIT_CLOSE waits for 0).
    pub fn marked_open(&self, database: Option<&str>) -> usize {
        self.all()
            .iter()
            .filter(|p| database.is_none_or(|d| p.key.database == d))
            .map(|p| p.retiring.load(Ordering::Relaxed))
            .sum()
    }

    /// Closes idle connections whose pool's member no longer has the pool's role, and those
    /// past `server_idle_timeout` or `server_lifetime`; applies changed pool sizes and
    /// connection limits, and the reserve pools. Returns how many it closed.
    pub fn maintain(&self, all: &Config, keeps_role: impl Fn(&PoolKey) -> bool) -> usize {
        let config = &all.pool;
        let now = Instant::now();
        let mut closed = 0;
        for pool in self.all() {
            // query_wait_timeout, to the second; the rest of the line looks at its clients.
            pool.slots.expire(now);
            pool.slots.nudge_waiting();
            let plan = all.plan(&pool.key.database, &pool.key.user);
            pool.budgets[0].set_limit(plan.max_db_connections);
            pool.budgets[1].set_limit(plan.max_user_connections);
            let reserve = pool.reserve(plan.reserve_pool, config.reserve_pool_timeout.0, now);
            let size = plan.pool_size + reserve;
            if pool.size.load(Ordering::Relaxed) != size {
                pool.resize(size);
            }
            if !keeps_role(&pool.key) {
                let n = pool.close_idle(|_| true);
                if n > 0 {
                    tracing::info!(pool = %pool.name(), closed = n, "closed idle server connections: the member lost the pool's role");
                }
                closed += n;
                continue;
            }
            closed += pool.close_idle(|c| {
                now.duration_since(c.last_used) >= config.server_idle_timeout.0
                    || now.duration_since(c.created) >= config.server_lifetime.0
            });
        }
        closed
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps and lists are only pushed to and drained: a panic cannot tear them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
