//! The parts of the PostgreSQL wire protocol pgrouter must understand; everything else is relayed.

pub mod error;
pub mod frame;
pub mod limits;
pub mod startup;
pub mod wire;
