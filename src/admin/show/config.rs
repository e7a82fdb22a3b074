//! SHOW CONFIG: each setting with its value, its default and whether a reload changes it.

use super::Table;
use crate::config::Config;
use crate::shared::Shared;

pub(super) fn config(shared: &Shared) -> Table {
    let config = shared.config();
    let defaults = Config {
        cluster: config.cluster.clone(),
        ..Default::default()
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
fn settings(config: &Config) -> Vec<(&'static str, String, bool)> {
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
        (
            "pool.reserve_pool_size",
            p.reserve_pool_size.to_string(),
            true,
        ),
        (
            "pool.reserve_pool_timeout",
            d(&p.reserve_pool_timeout),
            true,
        ),
        (
            "pool.max_db_connections",
            p.max_db_connections.to_string(),
            true,
        ),
        (
            "pool.max_user_connections",
            p.max_user_connections.to_string(),
            true,
        ),
        ("pool.client_idle_timeout", d(&p.client_idle_timeout), true),
        (
            "pool.idle_transaction_timeout",
            d(&p.idle_transaction_timeout),
            true,
        ),
        ("pool.log_connections", p.log_connections.to_string(), true),
        ("log.connections", config.log.connections.to_string(), true),
        (
            "pool.log_disconnections",
            p.log_disconnections.to_string(),
            true,
        ),
        (
            "pool.application_name_add_host",
            p.application_name_add_host.to_string(),
            true,
        ),
        (
            "pool.server_reset_query",
            p.server_reset_query.clone(),
            true,
        ),
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
