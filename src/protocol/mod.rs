//! The parts of the PostgreSQL wire protocol pgrouter must understand; everything else is relayed.
//!
//! - [`frame`]: the 5-byte message header, read one way everywhere ([`frame::header`]), the one
//!   error for a length that cannot be taken ([`frame::BadLength`]), and the relay's
//!   header-only [`frame::Scanner`].
//! - [`limits`]: every length limit, each saying what it counts.
//! - [`reader`]: [`reader::MessageReader`], whole messages read from a stream.
//! - [`wire`]: whole messages split off a buffer, the one message encoder ([`wire::message`])
//!   with the messages pgrouter writes itself, and readers of message bodies.
//! - [`startup`]: the first packet a client sends (it has no tag); [`error`]: the
//!   ErrorResponses pgrouter sends.

pub mod error;
pub mod frame;
pub mod limits;
pub mod reader;
pub mod startup;
pub mod wire;
