//! What the clients' conversations leave on a server connection and the next client must
//! know: the tracked parameters it reports and the statements prepared on it.

use std::sync::Arc;
use std::time::Instant;

use super::tracked::{Tracked, Vars};
use crate::fnv::{FnvMap, FnvSet};

pub struct ConnState {
    /// The tracked parameters as the server last reported them.
    pub tracked: Tracked,
    /// A client's settings (its defaults and its own values) last found to need no SET
    /// here: the next client with the same ones skips the comparison. Cleared when the
    /// server reports a change.
    pub in_step: Option<(Arc<Tracked>, Vars)>,
    /// Ids of the client statements prepared here under their pooled names, and when.
    pub prepared: FnvMap<u64, Instant>,
    /// Settings the server does not report that pgrouter set here for a client (carried
    /// settings, `conversation::settings`): what the next client's must be compared with.
    pub extra: Vec<(String, String)>,
    /// Statements the server still holds under their pooled names but reported invalid
    /// (0A000, "cached plan must not change result type"): closed before they are prepared
    /// here again.
    pub stale: FnvSet<u64>,
}

impl ConnState {
    /// A fresh connection's state: what it reported at login, nothing prepared.
    pub fn new(tracked: Tracked) -> ConnState {
        ConnState {
            tracked,
            in_step: None,
            extra: Vec::new(),
            prepared: FnvMap::default(),
            stale: FnvSet::default(),
        }
    }

    /// The server's copy of statement `id` is not to be used again (its plan went stale, or
    /// its client closed it): it is closed before `id` is prepared here again.
    pub fn mark_stale(&mut self, id: u64) {
        if self.prepared.remove(&id).is_some() {
            self.stale.insert(id);
        }
    }

    /// Whether the copy of statement `id` here may run for a client that parsed it at `parsed`:
    /// made since (a copy from before may hold a plan from before a DDL the client's Parse saw;
    /// directly, a Parse always plans afresh).
    pub fn serves(&self, id: u64, parsed: Instant) -> bool {
        self.prepared.get(&id).is_some_and(|at| *at >= parsed)
    }

    /// Records a ParameterStatus the server sent.
    pub fn note_param(&mut self, name: &str, value: &str) {
        if self.tracked.update(name, value) {
            self.in_step = None;
        }
    }
}
