//! A real local Patroni cluster on loopback (three etcd members, three PostgreSQL 15 members) for pgrouter's tests, demo and benches.
//!
//! ```no_run
//! use pgrouter_lab::{Lab, LabSpec};
//! let lab = Lab::start(LabSpec::new("/tmp/pgrouter-labtest", 16400))?;
//! let leader = lab.leader()?;
//! lab.psql(lab.pg_port(&leader), "select 1")?;
//! # anyhow::Ok(())
//! ```
//!
//! Port layout from `base_port` B (all on 127.0.0.1): etcd member `etcdN` client B+2N and peer
//! B+2N+1, member `pgN` PostgreSQL on B+10+N and Patroni REST on B+20+N.

mod b64;
mod client;
mod config;
mod control;
mod etcd;
mod http;
mod lab;
mod partition;
pub mod pgbouncer;
mod poll;
pub mod probe;
mod procs;
mod spec;
pub mod stats;
mod status;
pub mod tls;
mod zookeeper;

pub use client::{client_command, run_psql};
pub use etcd::get as etcd_get;
pub use lab::Lab;
pub use partition::IptablesRule;
pub use procs::libpq_variables;
pub use spec::{Dcs, LabSpec, Secure, ETCD_NOBODY, ETCD_PATRONI, ETCD_PGROUTER, ETCD_ROOT};
pub use status::MemberStatus;
