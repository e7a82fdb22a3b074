//! Pooled modes (session and transaction): pgrouter authenticates clients itself and lends
//! them server connections from pools keyed by (member, role, database, user).
//!
//! - `session`: one pooled client, from its authentication to its last message, around its
//!   pure protocol core (`session::conversation`).
//! - `statements`: protocol-level prepared statements renamed per server connection.
//! - `client_auth`, `auth_query`: who may connect (secrets from `servers::credentials`).
//! - `maintain` (here): pool upkeep. The pools and server connections are `crate::servers`.

pub mod auth_query;
pub mod client_auth;
pub mod session;
pub mod statements;

use std::sync::Arc;
use std::time::Duration;

use crate::route::{Target, Verdict};
use crate::servers::pools::{Ask, PoolKey, TargetKey};
use crate::shared::Shared;
use crate::topology::Topology;

/// Whether `key`'s member still has the role its pool serves under `topology`, as a session
/// there would be told (`Router::check_member`): idle connections close when it has not.
fn keeps_role(topology: &Topology, key: &PoolKey) -> bool {
    let target = match key.target {
        TargetKey::Leader => Target::Leader,
        TargetKey::Replica => Target::Replica,
    };
    crate::route::check_member(topology, &key.member, target, None) == Verdict::Keep
}

/// Every `pool.stats_period`: the averages SHOW STATS_AVERAGES gives, and pgbouncer's stats
/// line for each database that had traffic.
fn log_stats(shared: &Shared, pool: &crate::config::PoolConfig) {
    let totals = crate::servers::stats::by_database(&shared.pools.all());
    let mut averages = shared
        .pools
        .averages
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let period = pool.stats_period.0;
    let Some(busy) = averages.tick(std::time::Instant::now(), totals, period) else {
        return;
    };
    for (database, a) in busy {
        tracing::info!(
            %database,
            "stats: {} xacts/s, {} queries/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
            a.xact_count, a.query_count, a.received, a.sent, a.xact_time, a.query_time, a.wait_time
        );
    }
}

/// The pool_size in force for each pool, as `pgrouter_pool_size` (pools gone lose theirs).
fn export_pool_sizes(shared: &Shared, config: &crate::config::Config) {
    let gauge = &shared.metrics.pool_size;
    gauge.reset();
    for pool in shared.pools.all() {
        let k = &pool.key;
        // The plan a session picks the pool by: the client's database, the server user.
        let size = config.plan(&k.database, &k.user).pool_size;
        gauge
            .with_label_values(&[k.member.as_str(), k.target.label(), &k.database, &k.user])
            .set(size as i64);
    }
}

/// Pool upkeep: at once on every topology change (idle connections to a member that lost its
/// role close), and every second (idle timeout, lifetime, min_pool_size, pool_size changes).
pub async fn maintain(shared: Arc<Shared>) {
    let mut topology = shared.topology.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            changed = topology.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let current = topology.borrow_and_update().clone();
        let config = shared.config();
        shared
            .pools
            .maintain(&config, |key| keeps_role(&current, key));
        shared.pools.export(&shared.metrics);
        export_pool_sizes(&shared, &config);
        log_stats(&shared, &config.pool);
        if config.pool.min_pool_size == 0 {
            continue;
        }
        for pool in shared.pools.all() {
            if !keeps_role(&current, &pool.key)
                || pool.open_count() >= config.pool.min_pool_size
                || !pool.has_room()
            {
                continue;
            }
            let Some(login) = shared.credentials.login_from_file(&pool.key.user) else {
                continue;
            };
            let shared = shared.clone();
            let timeout = config.routing.connect_timeout.0;
            // On this, the router's own thread: connections opened here have it as home.
            tokio::spawn(async move {
                let config = shared.config();
                let open_with = || (login, shared.transport());
                match pool
                    .checkout(
                        Ask {
                            config: &config.pool,
                            home: crate::shards::MAIN,
                            asked: tokio::time::Instant::now(),
                        },
                        &shared.pools,
                        open_with,
                        timeout,
                    )
                    .await
                {
                    Ok((lease, _)) => lease.release(),
                    Err(e) => {
                        tracing::debug!(pool = %pool.name(), error = %e, "min_pool_size connection failed")
                    }
                }
            });
        }
    }
}
