//! pgrouter: a PostgreSQL-aware router for Patroni clusters.
//!
//! # Modules, lowest first
//! Each depends only on those above it (`tests/layers.rs` fails on an import cycle).
//! - `units`, `config`: settings and their units; `shards`: the worker threads.
//! - `protocol`: the wire protocol pgrouter understands (`wire`: framing, the message reader,
//!   encoders; `frame`: the relay's header-only scanner; `startup`; `error`: ErrorResponse).
//! - `auth`: SCRAM and md5, secrets, userlists.
//! - `topology`, `dcs`: the cluster as Patroni's keys in etcd describe it, kept fresh.
//! - `metrics`, `session_log`, `stream`, `tcp`, `tls`: series; the per-connection log line;
//!   the client/server stream; socket options; `tls::Transport`, which accepts clients and
//!   dials members.
//! - `route`: which member a port's client gets, and whether a member may go on serving.
//! - `signal`, `cancel`: waking sessions; cancel keys and where cancels go.
//! - `servers`: server connections and their pools, and what conversations leave on them.
//! - `shared`: what every session shares (settings, topology, pools, cancel keys, pause).
//! - `hold`: holding a client until a member can take it, and the role check while served.
//! - `pool`: pooled clients (login, statements, the session around its pure `Conversation`).
//! - `admin`: the HTTP API and the admin console, one PAUSE.
//! - `proxy`: listeners, startup, pass-through sessions and the relay; hands pooled clients
//!   to `pool` and console clients to `admin`.
//! - `cli_docs`: the man page and bash completion, from the command line's definition.
//! - `app`, `status_cli`, `notify`: the process: start, reload, shutdown (readiness told to
//!   systemd); `pgrouter status`.
//!
//! # Data flows
//! Pass-through: `proxy::listener` accepts on :5000 (primary) or :5001 (replicas) and spawns
//! a session on the next worker thread (`shards`); `proxy::session` reads the first packet
//! (`protocol::startup`: SSL/GSS requests, a CancelRequest forwarded through `cancel`,
//! garbage gets FATAL 08P01); `hold` waits for `route` to pick a member from the latest
//! `topology::Topology` (which `dcs::etcd` keeps fresh from Patroni's keys) and dials it;
//! `proxy::login` relays the authentication and `proxy::relay` forwards bytes both ways,
//! following message headers (`protocol::frame`) for ReadyForQuery and BackendKeyData.
//!
//! Pooled: after the startup packet `pool::session::start` authenticates the client itself
//! (`pool::client_auth`, secrets from `servers::credentials` or `pool::auth_query`); per
//! transaction, `hold` and `servers::pools` lend it a server connection, and the session's
//! `Conversation` turns the client's messages into the server's (renaming statements,
//! keeping parameters in step) and the server's answers into the client's.
//!
//! # Invariants, stated once
//! - Only the holder of Patroni's leader key is the primary: every served session asks
//!   `hold::RoleCheck` before each write to the client, so nothing from a member that lost
//!   its role reaches a client after the topology saying so was published.
//! - An idle client costs a small task: its future holds the session and its idle wait;
//!   every larger step (login, transaction, relay, console) is boxed while it runs, and an
//!   idle pooled client holds no server connection and one small buffer (checked by
//!   `proxy::session`'s `an_idle_pooled_client_task_is_small`).
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod app;
pub(crate) mod auth;
pub(crate) mod cancel;
pub mod cli_docs;
pub mod config;
pub(crate) mod dcs;
pub(crate) mod fnv;
pub(crate) mod hold;
pub mod import_pgbouncer;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod pool;
pub(crate) mod protocol;
pub(crate) mod proxy;
pub(crate) mod reads;
pub(crate) mod route;
pub(crate) mod servers;
pub(crate) mod session_log;
pub(crate) mod shards;
pub(crate) mod shared;
pub(crate) mod signal;
pub mod status_cli;
pub(crate) mod stream;
pub(crate) mod tcp;
pub(crate) mod tls;
pub(crate) mod topology;
pub(crate) mod units;

/// Internals the fuzz targets, benches and integration tests drive directly; not an API
/// (the library's API is `app::run`, `config` and `status_cli`).
#[doc(hidden)]
pub mod testing {
    pub use crate::cancel::cancel_packet;
    pub use crate::dcs::patroni;
    pub use crate::metrics::{Metrics, RouterMetrics, StateGauge};
    pub use crate::pool::session::Conversation;
    pub use crate::pool::statements;
    pub use crate::protocol::{frame, limits, startup, wire};
    pub use crate::proxy::relay;
    pub use crate::route::{Port, Route, Target};
    pub use crate::servers::conn_state::ConnState;
    pub use crate::servers::tracked::Tracked;
    pub use crate::shared::Shared;
    pub use crate::stream::Stream;
    pub use crate::topology::{Member, Role, Topology};

    /// SCRAM and md5 as a client speaks them, secrets and userlists.
    pub mod auth {
        pub use crate::auth::{md5, messages, scram, secret, userlist};
        pub use crate::auth::{ScramSecret, Secret};
    }
}
