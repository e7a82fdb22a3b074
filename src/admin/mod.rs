//! Administration: the HTTP admin endpoint and the admin console, and what both answer.
//!
//! - `http`: the admin endpoint (hyper, HTTPS with `tls`): the wire and the bearer token.
//! - `routes`: which answer a request asks for (methods, Patroni's aliases), without state.
//! - `checks`: health and whether a listener can route, for load balancers and keepalived.
//! - `api`: status, pause, resume, reload; `page`: the HTML status page at `/`.
//! - `tls`: the admin endpoint's certificate (`listen.admin_tls`).
//! - `console`: the pgbouncer-style admin console, the virtual database "pgrouter" on a pooled
//!   port (SHOW, PAUSE, RESUME, RELOAD).
//! - `show`: the tables the console's SHOW commands answer.
//! - `pause`: PAUSE and RESUME, the same for both: PAUSE waits for the transactions in flight.

pub mod api;
pub mod checks;
pub mod console;
pub mod http;
mod page;
pub mod pause;
pub mod routes;
mod show;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::task::TaskTracker;

use crate::shared::Shared;

/// What the admin endpoint reads of the running router; the app builds it when it binds the
/// endpoint. Reloads go through `Shared::request_reload`, which the app serves.
#[derive(Clone)]
pub struct Admin {
    pub shared: Arc<Shared>,
    sessions: TaskTracker,
}

impl Admin {
    /// `sessions`: the tracker of the client sessions running now.
    pub fn new(shared: Arc<Shared>, sessions: TaskTracker) -> Admin {
        Admin { shared, sessions }
    }

    /// Client sessions running now.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

/// The clusters further to the first one, by scope; the app adds and removes them.
pub type Others = Arc<Mutex<BTreeMap<String, Admin>>>;

/// What the admin endpoint serves: the first cluster (`[cluster]`), and the further ones
/// (`[clusters.<name>]`) that `?cluster=<scope>` picks.
pub struct Endpoint {
    pub first: Admin,
    others: Others,
}

impl Endpoint {
    pub fn new(first: Admin, others: Others) -> Endpoint {
        Endpoint { first, others }
    }

    /// The cluster `scope` names (the first when None); None for a scope not served.
    pub fn cluster(&self, scope: Option<&str>) -> Option<Admin> {
        match scope {
            None => Some(self.first.clone()),
            Some(s) if s == self.first.shared.scope => Some(self.first.clone()),
            Some(s) => self.lock().get(s).cloned(),
        }
    }

    /// The further clusters, by scope.
    pub fn others(&self) -> Vec<Admin> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Admin>> {
        self.others.lock().unwrap_or_else(|p| p.into_inner())
    }
}
