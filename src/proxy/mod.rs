//! The client-facing side: listeners, sessions, routing rules, the relay and cancel forwarding.

pub mod cancel;
pub mod listener;
pub mod login;
pub mod relay;
pub mod route;
pub mod session;
pub mod shared;
pub mod signal;
