//! The distributed configuration store Patroni writes to, and how its keys become a `Topology`.

pub mod access;
pub mod etcd;
pub mod outage;
pub mod patroni;
pub mod rest;
pub mod rest_source;

use std::sync::Mutex;

/// Why the DCS view cannot be trusted right now (etcd unreachable, TLS or credentials refused,
/// no Patroni keys under the prefix), for `/health`, `/status` and `pgrouter status`.
#[derive(Default)]
pub struct DcsHealth {
    problem: Mutex<Option<String>>,
}

impl DcsHealth {
    pub fn set(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
