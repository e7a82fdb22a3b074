//! Server connections and their pools, keyed by (member, role, database, user), and what
//! opening them needs.
//!
//! - `pools`, `slots`: the pools, and the idle connections each worker thread keeps.
//! - `budget`: connections per member and database or user (max_db/user_connections).
//! - `clients`: the pooled clients connected now, for the console.
//! - `server`: one server connection: login, parameters it reports, statements prepared on it.
//! - `conn_state`: what clients' conversations leave on a connection (parameters, statements).
//! - `defaults`: the parameters a fresh server connection reports, per database and user.
//! - `credentials`: users' secrets (auth_file), for clients' and servers' logins.
//! - `message_memory`: the budget pooled clients' large messages share.
//! - `tracked`: the parameters pgrouter keeps in step between a client and its servers.

pub mod budget;
pub mod clients;
pub mod conn_state;
pub mod credentials;
pub mod defaults;
pub mod message_memory;
pub mod pools;
pub mod server;
pub mod slots;
pub mod stats;
pub mod tracked;
