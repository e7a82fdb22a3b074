//! Every length limit pgrouter puts on the PostgreSQL protocol, in one place.
//!
//! Each says what it counts: a message's *length field* (which counts itself but not the tag
//! byte, as PostgreSQL's own limits do), a message's *total* size (tag byte and length field
//! included: what a buffer holding it whole needs), or a *body* (after the 5-byte header).

/// Longest length field a client message may have. PostgreSQL refuses anything longer
/// (PQ_LARGE_MESSAGE_LIMIT, 1 GiB - 1; 2^31 and up are negative to it) by closing the
/// connection without a word, so pgrouter refuses it first, with an ErrorResponse.
/// A length field (the relay follows such messages, it never holds them whole).
pub const MAX_CLIENT_MESSAGE: u32 = 0x3fff_ffff;

/// Longest message pgrouter buffers whole (PostgreSQL's own limit for most messages is 1 GB;
/// the messages read whole here are statements, binds and small server replies).
/// A total size, header included.
pub const MAX_WHOLE_MESSAGE: usize = 256 * 1024 * 1024;

/// Longest body the relay's scanner captures: a server's FATAL ErrorResponse with its detail
/// and hint (BackendKeyData, with a protocol 3.2 secret of 256 bytes, needs 260).
/// A body size; longer messages of a captured tag are followed, not copied.
pub const CAPTURE_MAX: usize = 1024;

/// Longest authentication message (PasswordMessage, SASL response) taken whole from a client,
/// whether pgrouter authenticates it (pooled) or relays its login (pass-through): PostgreSQL
/// takes no authentication message with a body over 65,535 bytes (PG_MAX_AUTH_TOKEN_LENGTH).
/// A total size: the 5-byte header plus 65,535.
pub const MAX_AUTH_MESSAGE: usize = 5 + 65_535;

/// Longest message taken whole from a member during a pass-through login (parameter values
/// are short). A total size, header included.
pub const MAX_LOGIN_SERVER_MESSAGE: usize = 1024 * 1024;

/// PostgreSQL refuses startup packets over 10,000 bytes; so does pgrouter.
/// A startup packet has no tag: this bounds its length field, which is its whole size.
pub const MAX_STARTUP_LEN: usize = 10_000;
