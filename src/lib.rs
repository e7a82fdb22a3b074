//! pgrouter: a PostgreSQL-aware router for Patroni clusters.
//!
//! Data flow of one client:
//! 1. `proxy::listener` accepts on :5000 (primary) or :5001 (replicas) and spawns a session
//!    on the next worker thread (`shards`).
//! 2. `proxy::session` reads the first packet (`protocol::startup`): SSL/GSS requests get 'N',
//!    a CancelRequest is forwarded (`proxy::cancel`), garbage gets FATAL 08P01.
//! 3. `proxy::route` picks the member from the latest `topology::Topology`, which
//!    `dcs::etcd` keeps fresh from Patroni's keys (`dcs::patroni`) through a `watch` channel.
//!    With no member to offer, the client is held until one appears or `hold_timeout` passes.
//! 4. `proxy::relay` forwards bytes both ways, following message headers (`protocol::frame`)
//!    for ReadyForQuery and BackendKeyData, and re-checks the topology before every write to
//!    the client: a member that lost the leader key never gets another byte to a client.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cancel;
pub mod config;
pub mod dcs;
pub mod hold;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod route;
pub mod servers;
pub mod shards;
pub mod shared;
pub mod signal;
pub mod status_cli;
pub mod stream;
pub mod tcp;
pub mod tls;
pub mod topology;
pub mod units;
