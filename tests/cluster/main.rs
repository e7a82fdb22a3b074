//! Integration tests on a real lab: etcd, three Patroni-managed PostgreSQL members and pgrouter
//! processes, all on loopback. One lab is shared; tests run one after another and each leaves
//! the cluster healthy (one leader, two streaming replicas) for the next.
//!
//! Run: `cargo test --test cluster` (as root; PostgreSQL runs as the `postgres` user).
//! A name filter runs only matching tests: `cargo test --test cluster -- cancel`; `--skip NAME`
//! leaves some out; a selection that matches nothing fails.
//!
//! The runner prints each scenario's name before it runs it, counts a panic, an error or a
//! scenario past its time limit (`PGROUTER_SCENARIO_TIMEOUT_SECS`, default 900 s; the soak
//! gets its own duration on top) as that scenario's failure and goes on with the rest, and
//! always ends with `N passed, M failed` (`, K skipped` when a scenario could not run here).
//! A scenario stuck in a blocking call past its limit and a grace period ends the whole run
//! (the others cannot share the lab with it), still with that closing line.

mod balancers;
mod balancers_tls;
mod checkout;
mod clusters;
mod console;
mod dcs;
mod drivers;
mod failover;
mod hostile;
mod limits;
mod observability;
mod operations;
mod parity;
mod pooling;
mod reads;
mod restarts;
mod routing;
mod secured;
mod settings;
mod soak;
mod startup;
mod stuck;
mod support;
mod tls;
mod zookeeper;

mod runner;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;

use pgrouter_lab::{Lab, LabSpec};

type TestFn = for<'a> fn(&'a Lab) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'a>>;

/// Lab ports: etcd 17400, PostgreSQL 17410-17412, Patroni REST 17420-17422. Routers: 17500+.
/// `PGROUTER_LAB_BASE_PORT` moves the lab (not the routers), so two runs can share a machine.
const LAB_BASE_PORT: u16 = 17400;

const TESTS: &[(&str, TestFn)] = &[
    (
        "writes_go_to_the_leader_reads_alternate_over_replicas",
        |lab| Box::pin(routing::writes_and_reads(lab)),
    ),
    (
        "tagged_and_lagging_replicas_are_skipped_and_drained",
        |lab| Box::pin(routing::tagged_and_lagging(lab)),
    ),
    ("malformed_oversized_and_slow_startups", |lab| {
        Box::pin(startup::bad_startups(lab))
    }),
    ("no_leader_past_hold_timeout_gives_57p03", |lab| {
        Box::pin(startup::no_leader(lab))
    }),
    (
        "cancel_on_the_replica_port_reaches_the_right_replica",
        |lab| Box::pin(startup::cancel_on_replicas(lab)),
    ),
    ("etcd_restart_keeps_routing_and_resyncs", |lab| {
        Box::pin(dcs::etcd_restart(lab))
    }),
    ("etcd_lost_unconfirmed_leader_holds_then_57p03", |lab| {
        Box::pin(dcs::etcd_lost_without_failsafe(lab))
    }),
    ("etcd_lost_failsafe_leader_keeps_writes", |lab| {
        Box::pin(dcs::etcd_lost_with_failsafe(lab))
    }),
    ("etcd_one_member_of_three_lost_changes_nothing", |lab| {
        Box::pin(dcs::one_etcd_member_lost(lab))
    }),
    ("etcd_unreachable_for_the_router_alone", |lab| {
        Box::pin(dcs::etcd_unreachable_for_the_router(lab))
    }),
    ("etcd_unreachable_reads_follow_replica_lag", |lab| {
        Box::pin(dcs::etcd_unreachable_reads_follow_replica_lag(lab))
    }),
    (
        "metrics_and_health_follow_a_switchover_and_an_etcd_stop",
        |lab| Box::pin(operations::metrics_and_health(lab)),
    ),
    ("pause_holds_pgbench_and_resume_lets_it_finish", |lab| {
        Box::pin(operations::pause_and_resume(lab))
    }),
    ("held_client_that_leaves_is_dropped_not_routed", |lab| {
        Box::pin(operations::held_client_that_leaves_is_dropped(lab))
    }),
    ("reload_bad_file_changes_nothing_good_file_applies", |lab| {
        Box::pin(operations::reload(lab))
    }),
    ("admin_endpoint_requires_its_token", |lab| {
        Box::pin(operations::admin_token(lab))
    }),
    ("sigterm_under_load_drains_and_exits_0", |lab| {
        Box::pin(operations::sigterm_drains(lab))
    }),
    ("connection_log_lines_and_incident_metrics", |lab| {
        Box::pin(observability::connection_log_and_new_metrics(lab))
    }),
    (
        "pooled_drivers_pgbench_modes_and_auth_in_transaction_mode",
        |lab| Box::pin(pooling::drivers_and_pgbench(lab)),
    ),
    ("pooled_protocol_errors_as_postgres_gives_them", |lab| {
        Box::pin(parity::errors_side_by_side(lab))
    }),
    (
        "pooled_stuck_server_connection_closed_long_query_left_alone",
        |lab| Box::pin(stuck::stuck_server_connection(lab)),
    ),
    ("pooled_driver_matrix_with_a_switchover", |lab| {
        Box::pin(drivers::matrix(lab))
    }),
    ("pooled_planned_switchover_unseen_by_clients", |lab| {
        Box::pin(pooling::switchover_unseen(lab))
    }),
    ("pooled_cancel_listen_console_and_session_mode", |lab| {
        Box::pin(pooling::cancel_listen_console_session(lab))
    }),
    (
        "pooled_kill_9_of_the_leader_keeps_clients_connected",
        |lab| Box::pin(pooling::kill_leader_keeps_clients(lab)),
    ),
    ("pooled_query_wait_timeout_refuses_then_serves", |lab| {
        Box::pin(pooling::wait_timeout(lab))
    }),
    (
        "pooled_waiter_that_leaves_is_dropped_its_query_not_run",
        |lab| Box::pin(pooling::waiter_that_leaves(lab)),
    ),
    (
        "pooled_checkout_checks_idle_connections_and_renews_old_ones",
        |lab| Box::pin(checkout::checks_and_lifetime(lab)),
    ),
    ("pooled_worker_threads_share_one_pool", |lab| {
        Box::pin(pooling::worker_threads_share_one_pool(lab))
    }),
    (
        "tls_verify_full_require_mutual_channel_binding_cancel_reload",
        |lab| Box::pin(tls::clients(lab)),
    ),
    ("tls_to_members_with_ssl_on_verify_full", |lab| {
        Box::pin(tls::members(lab))
    }),
    (
        "router_kill_9_under_load_restarts_on_the_same_ports",
        |lab| Box::pin(restarts::kill_9_under_load(lab)),
    ),
    (
        "two_routers_side_by_side_agree_and_cancel_through_each_other",
        |lab| Box::pin(restarts::side_by_side(lab)),
    ),
    (
        "soak_mixed_pgbench_switchovers_and_a_kill_9_failover",
        |lab| Box::pin(soak::soak(lab)),
    ),
    (
        "hostile_clients_bad_lengths_many_parameters_flood_slowloris",
        |lab| Box::pin(hostile::bad_frames_floods_and_slowloris(lab)),
    ),
    ("hostile_clients_not_reading_and_half_open_tcp", |lab| {
        Box::pin(hostile::slow_readers_and_half_open(lab))
    }),
    (
        "hostile_large_pooled_messages_share_message_memory",
        |lab| Box::pin(hostile::large_messages_share_message_memory(lab)),
    ),
    ("planned_switchover_under_writes", |lab| {
        Box::pin(failover::switchover(lab))
    }),
    ("kill_9_of_the_leader_holds_new_clients", |lab| {
        Box::pin(failover::kill_leader(lab))
    }),
    ("frozen_leader_loses_no_acknowledged_write", |lab| {
        Box::pin(failover::frozen_leader(lab))
    }),
    ("partitioned_leader_loses_no_acknowledged_write", |lab| {
        Box::pin(failover::partitioned_leader(lab))
    }),
    ("reads_stay_put_while_the_leader_writes_hard", |lab| {
        Box::pin(reads::reads_stay_put_while_the_leader_writes_hard(lab))
    }),
    ("paused_replay_leaves_the_read_set_and_returns", |lab| {
        Box::pin(reads::paused_replay_leaves_the_read_set_and_returns(lab))
    }),
    ("synchronous_port_follows_the_sync_standby", |lab| {
        Box::pin(reads::synchronous_port_follows_the_sync_standby(lab))
    }),
    ("tags_weights_and_least_connections_pick_members", |lab| {
        Box::pin(reads::tags_weights_and_least_connections_pick_members(lab))
    }),
    ("pooled_startup_options_and_reset_as_postgres_does", |lab| {
        Box::pin(settings::pooled_startup_options_and_reset(lab))
    }),
    ("pooled_timeouts_and_pgbouncer_session_settings", |lab| {
        Box::pin(settings::pooled_timeouts_and_pgbouncer_session_settings(
            lab,
        ))
    }),
    (
        "console_as_pgbouncer_has_it_and_its_exporter_reads_it",
        |lab| Box::pin(console::console_as_pgbouncer_has_it(lab)),
    ),
    (
        "pooled_database_and_user_limits_hold_under_load_and_kill",
        |lab| Box::pin(limits::pooled_limits_and_database_entries(lab)),
    ),
    ("a_scope_without_patroni_keys_is_reported", |lab| {
        Box::pin(secured::empty_prefix_is_reported(lab))
    }),
    ("secured_etcd_tls_rbac_and_https_rest_api", |lab| {
        Box::pin(secured::secured_etcd_and_https_rest(lab))
    }),
    ("zookeeper_cluster_read_through_patroni_rest_apis", |lab| {
        Box::pin(zookeeper::zookeeper_cluster_through_rest_apis(lab))
    }),
    ("two_clusters_behind_one_router", |lab| {
        Box::pin(clusters::two_clusters_behind_one_router(lab))
    }),
    (
        "balancers_haproxy_httpchk_options_and_get_in_front_of_two_routers",
        |lab| Box::pin(balancers::haproxy_in_front_of_two_routers(lab)),
    ),
    (
        "balancers_keepalived_track_script_as_shipped_in_ha_vip",
        |lab| Box::pin(balancers::keepalived_track_script(lab)),
    ),
    (
        "balancers_haproxy_check_ssl_verifies_the_https_admin_endpoint",
        |lab| Box::pin(balancers_tls::haproxy_check_ssl(lab)),
    ),
];

fn main() -> ExitCode {
    let args = runner::Args::parse(std::env::args().skip(1));
    if args.list {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(name, _)| args.selects(name))
        .collect();
    if selected.is_empty() {
        println!(
            "no scenario matches {:?} (skipping {:?}); `--list` names them all",
            args.filters, args.skips
        );
        println!("0 passed, 1 failed");
        return ExitCode::FAILURE;
    }
    // The drivers the scenarios run (psql, pgbench, psycopg, asyncpg, PDO) read libpq's
    // variables: a PGSSLMODE or PGPASSWORD from the caller's shell would change what they do.
    let libpq = pgrouter_lab::libpq_variables();
    if !libpq.is_empty() {
        println!("leaving out the caller's {}", libpq.join(", "));
        for name in libpq {
            std::env::remove_var(name);
        }
    }
    let base_port = match std::env::var("PGROUTER_LAB_BASE_PORT") {
        Ok(port) => port.parse().expect("PGROUTER_LAB_BASE_PORT: a port number"),
        Err(_) => LAB_BASE_PORT,
    };
    let dir = std::env::temp_dir().join(format!("pgrouter-test-lab-{base_port}"));
    let started = std::time::Instant::now();
    let lab = match Lab::start(LabSpec::new(&dir, base_port)) {
        Ok(lab) => lab,
        Err(e) => {
            println!("could not start the lab: {e:#}");
            println!("0 passed, {} failed", selected.len());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "lab up in {:.1}s; running {} scenarios",
        started.elapsed().as_secs_f64(),
        selected.len()
    );
    let tally = runner::run(&lab, &selected);
    drop(lab);
    tally.exit_code()
}
