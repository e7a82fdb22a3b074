//! Client and server authentication for pooled modes.
//!
//! Pure, synchronous building blocks: nothing here does I/O or needs a runtime.
//! - [`secret`]: credentials as PostgreSQL stores them (plain, `md5…`, `SCRAM-SHA-256$…`).
//! - [`userlist`]: pgbouncer's `auth_file` format, mapping user names to secrets.
//! - [`scram`]: SCRAM-SHA-256 exchanges, as a server (clients log in to pgrouter) and as a
//!   client (pgrouter logs in to PostgreSQL).
//! - [`md5`]: PostgreSQL's md5 password scheme.
//! - [`messages`]: the Authentication* and password ('p') messages of the wire protocol.
//!
//! A SCRAM secret alone cannot log in to PostgreSQL: it holds StoredKey, not ClientKey. When a
//! client proves its password to pgrouter, [`scram::ServerExchange::finish`] recovers that client's
//! ClientKey; with the secret's ServerKey, salt and iteration count it forms [`secret::ScramKeys`],
//! which [`scram::ClientExchange`] uses to log in to a server holding the same secret.

mod crypto;
pub mod md5;
pub mod messages;
pub mod scram;
pub mod secret;
pub mod userlist;

pub use secret::{ScramSecret, Secret};
