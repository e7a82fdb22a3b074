//! A pool's checkout, in the steps a pooled session takes one by one: `begin` (a free idle
//! connection lent as it is, or a place in line), `waited` (what the line gave), `finish`
//! (the check of a connection left idle, or a new one opened within the member's budgets).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Lease, Pool, Pools, Slot};
use crate::config::PoolConfig;
use crate::servers::budget::{self, Admission};
use crate::servers::server::{Endpoint, Login, ServerConn, ServerError};
use crate::servers::slots::{Expired, Granted, Queued, Take};

/// A checkout's asking: the pool settings in force, the worker thread of the session asking
/// (`crate::shards`), and when it asked.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    pub config: &'a PoolConfig,
    pub home: usize,
    pub asked: Instant,
}

/// What a checkout's first step found (`Pool::begin`).
pub enum Begun<'a> {
    /// A slot and an idle connection fit for use as it was.
    Lent(Lease),
    /// In line for a slot: `Pool::waited` takes what the wait comes to.
    Queued(Queued<'a, Box<ServerConn>>),
    /// A slot, and the rest to do in `Pool::finish`.
    Rest(Rest),
}

/// A slot taken whose connection is still to be had: the idle one to check first
/// (unused for `server_check_delay`), or none idle, so one is opened.
pub struct Rest {
    slot: Slot,
    check: Option<Box<ServerConn>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(
        "no server connection free in pool {pool} after waiting {waited:?} (pool_size {size})"
    )]
    Busy {
        pool: String,
        waited: Duration,
        size: usize,
    },
    #[error(
        "{limit} ({max}) server connections to the member are open, and none came free after waiting {waited:?}"
    )]
    Limit {
        limit: &'static str,
        max: usize,
        waited: Duration,
    },
    #[error("{0}")]
    Server(#[from] ServerError),
}

/// The budget names, in the order of `Pool::budgets`.
const LIMITS: [&str; 2] = ["max_db_connections", "max_user_connections"];

impl Pool {
    /// Takes an idle connection or opens one (logging in as `open_with` says), waiting up to
    /// `query_wait_timeout` for a slot, for a session running on worker thread `home`: an
    /// idle connection of that thread first, one from another moved to it. The steps below
    /// (`begin`, `waited`, `finish`) in one; a pooled session takes them one by one.
    pub async fn checkout(
        self: &Arc<Pool>,
        ask: Ask<'_>,
        pools: &Pools,
        open_with: impl FnOnce() -> (Login, crate::tls::Transport),
        connect_timeout: Duration,
    ) -> Result<(Lease, Option<crate::auth::secret::ScramKeys>), CheckoutError> {
        let rest = match self.begin(ask) {
            Begun::Lent(lease) => return Ok((lease, None)),
            Begun::Queued(queued) => match self.waited(queued.await, ask)? {
                Ok(lease) => return Ok((lease, None)),
                Err(rest) => rest,
            },
            Begun::Rest(rest) => rest,
        };
        self.finish(rest, ask, pools, open_with, connect_timeout)
            .await
    }

    /// A checkout's first step, with no wait and no future: a free slot and an idle
    /// connection fit for use as it is (most checkouts under load), else a place in line or
    /// what is left to do. Nothing is read from the clock: `asked` stands for now.
    pub fn begin(self: &Arc<Pool>, ask: Ask<'_>) -> Begun<'_> {
        match self.slots.take(ask.config.query_wait_timeout.0, ask.home) {
            Take::Now(idle) => match self.lend(Slot(Some(self.clone())), idle, ask, ask.asked) {
                Ok(lease) => Begun::Lent(lease),
                Err(rest) => Begun::Rest(rest),
            },
            Take::Queued(queued) => Begun::Queued(queued),
        }
    }

    /// What a wait in line came to: a lease, or a slot with what is left to do, or `Busy`
    /// after `query_wait_timeout`. The wait is counted in the pool's statistics.
    pub fn waited(
        self: &Arc<Pool>,
        granted: Granted<Box<ServerConn>>,
        ask: Ask<'_>,
    ) -> Result<Result<Lease, Rest>, CheckoutError> {
        let now = Instant::now();
        let waited = now.duration_since(ask.asked);
        self.stats
            .wait_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        let idle = granted.map_err(|Expired| CheckoutError::Busy {
            pool: self.name(),
            waited,
            size: self.size(),
        })?;
        Ok(self.lend(Slot(Some(self.clone())), idle, ask, now))
    }

    /// Lends the slot's idle connection, or the next fit one, as it is (closing those past
    /// `server_lifetime` and those that spoke unasked, moving one of another thread); the
    /// slot and what is left to do when one needs its check first or none is idle.
    fn lend(
        &self,
        slot: Slot,
        mut idle: Option<Box<ServerConn>>,
        Ask { config, home, .. }: Ask<'_>,
        now: Instant,
    ) -> Result<Lease, Rest> {
        while let Some(mut conn) = idle.take() {
            if now.saturating_duration_since(conn.created) >= config.server_lifetime.0 {
                tokio::spawn(conn.close());
            } else if !conn.quiet() {
                tracing::info!(pool = %self.name(), server = conn.id, "dropped an idle server connection that spoke or closed unasked");
            } else if now.saturating_duration_since(conn.last_used) >= config.server_check_delay.0 {
                let check = Some(conn);
                return Err(Rest { slot, check });
            } else if conn.home != home && !self.move_home(&mut conn, home) {
                tracing::info!(pool = %self.name(), server = conn.id, "dropped a server connection that could not move to this worker thread");
            } else {
                self.stats.active.fetch_add(1, Ordering::Relaxed);
                return Ok(Lease {
                    conn,
                    slot,
                    taken: now,
                });
            }
            idle = self.slots.pop_idle(home);
        }
        Err(Rest { slot, check: None })
    }

    /// The rest of a checkout: the check of an idle connection unused for
    /// `server_check_delay`, or a new connection opened within the member's budgets.
    pub async fn finish(
        self: &Arc<Pool>,
        rest: Rest,
        ask: Ask<'_>,
        pools: &Pools,
        open_with: impl FnOnce() -> (Login, crate::tls::Transport),
        connect_timeout: Duration,
    ) -> Result<(Lease, Option<crate::auth::secret::ScramKeys>), CheckoutError> {
        let Rest {
            mut slot,
            mut check,
        } = rest;
        let Ask {
            config,
            home,
            asked,
        } = ask;
        while let Some(mut conn) = check.take() {
            if !Box::pin(conn.healthy(connect_timeout)).await {
                tracing::info!(pool = %self.name(), server = conn.id, "dropped a server connection that failed its check");
            } else if conn.home != home && !self.move_home(&mut conn, home) {
                tracing::info!(pool = %self.name(), server = conn.id, "dropped a server connection that could not move to this worker thread");
            } else {
                self.stats.active.fetch_add(1, Ordering::Relaxed);
                let taken = Instant::now();
                return Ok((Lease { conn, slot, taken }, None));
            }
            let idle = self.slots.pop_idle(home);
            match self.lend(slot, idle, ask, Instant::now()) {
                Ok(lease) => return Ok((lease, None)),
                Err(rest) => (slot, check) = (rest.slot, rest.check),
            }
        }
        let admission = Box::pin(self.admit(pools, asked + config.query_wait_timeout.0)).await?;
        let to = Endpoint {
            id: pools.next_server_id(),
            member: &self.key.member,
            addr: &self.addr,
            user: &self.key.user,
            database: &self.dbname,
        };
        let (login, tls) = open_with();
        let mut opened = Box::pin(ServerConn::open(&to, &login, connect_timeout, &tls)).await?;
        opened.conn.home = home;
        opened.conn.admission = admission;
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pool = %self.name(), server = opened.conn.id, "opened a server connection");
        Ok((
            Lease {
                conn: Box::new(opened.conn),
                slot,
                taken: Instant::now(),
            },
            opened.derived,
        ))
    }

    /// A place for one more connection in the member's budgets for the pool's database and
    /// user. When one is full, an idle connection of another pool it counts is closed to make
    /// room, and the wait for a close lasts until `until` (query_wait_timeout).
    async fn admit(&self, pools: &Pools, until: Instant) -> Result<Admission, CheckoutError> {
        let started = Instant::now();
        let budgets = [&self.budgets[0], &self.budgets[1]];
        loop {
            let freed = [budgets[0].freed(), budgets[1].freed()];
            let full = match budget::admit(&budgets) {
                Ok(admission) => return Ok(admission),
                Err(full) => full,
            };
            if !pools.close_one_idle(budgets[full]) && Instant::now() >= until {
                let waited = started.elapsed();
                self.stats
                    .wait_micros
                    .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
                return Err(CheckoutError::Limit {
                    limit: LIMITS[full],
                    max: budgets[full].limit(),
                    waited,
                });
            }
            let [db, user] = freed;
            let freed = if full == 0 { db } else { user };
            let _ =
                tokio::time::timeout_at(until.min(Instant::now() + Duration::from_secs(1)), freed)
                    .await;
        }
    }

    /// Moves `conn` to worker thread `home`'s event loop; false when it broke on the way.
    fn move_home(&self, conn: &mut ServerConn, home: usize) -> bool {
        if conn.move_home(home).is_err() {
            return false;
        }
        if conn.home == home {
            self.stats.moved.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}
