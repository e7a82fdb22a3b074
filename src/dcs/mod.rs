//! The distributed configuration store Patroni writes to, and how its keys become a `Topology`.

pub mod etcd;
pub mod outage;
pub mod patroni;
pub mod rest;
