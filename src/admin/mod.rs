//! Administration: the HTTP admin endpoint and the admin console, and what both answer.
//!
//! - `http`: the admin endpoint (hyper): routes and the bearer token.
//! - `api`: what the endpoint answers: health, routability per port, status, pause, resume,
//!   reload.
//! - `console`: the pgbouncer-style admin console, the virtual database "pgrouter" on a pooled
//!   port (SHOW, PAUSE, RESUME, RELOAD).

pub mod api;
pub mod console;
pub mod http;
