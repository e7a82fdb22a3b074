//! Pass-through sessions: listeners, startup, the login relayed to a member, the relay.

mod finish;
mod forward_cancel;
pub mod listener;
pub mod login;
mod pump;
pub mod relay;
pub mod session;
