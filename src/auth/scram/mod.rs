//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both ways.
//!
//! PostgreSQL's dialect: the user name in client-first-message is ignored (clients send
//! `n=,`; the startup packet names the user), there is no authorization identity, and the
//! GS2 header is `n,,` or `y,,`. pgrouter never offers SCRAM-SHA-256-PLUS, so a client that
//! asks for channel binding (`p=…`) is refused.
//!
//! [`ServerExchange`] (`server.rs`) checks a client against a
//! [`ScramSecret`](crate::auth::ScramSecret) and recovers the client's ClientKey;
//! [`ClientExchange`] (`client.rs`) logs in to PostgreSQL with a password or with
//! [`ScramKeys`](crate::auth::secret::ScramKeys).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientCredential, ClientExchange};
pub use server::ServerExchange;

/// SASL mechanism name, as listed in AuthenticationSASL.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Highest iteration count [`ClientExchange`] accepts from a server: PBKDF2 cost is linear
/// in it and a hostile server could otherwise pin a CPU for minutes.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Random bytes in a nonce before base64 (PostgreSQL uses 18 too).
const NONCE_LEN: usize = 18;

/// Why an exchange failed. Messages never contain keys, proofs or passwords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    #[error("SCRAM channel binding in client-final-message does not match client-first-message")]
    ChannelBindingMismatch,
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
    #[error("password authentication failed")]
    WrongPassword,
    #[error(
        "the stored SCRAM secret does not match the server's: salt or iteration count differ \
         (the password was changed on the server, or the userlist is stale)"
    )]
    SecretMismatch,
    #[error("server asks for {0} SCRAM iterations, more than the limit of {MAX_ITERATIONS}")]
    TooManyIterations(u32),
    #[error("server reported SCRAM error: {0}")]
    ServerError(String),
    #[error("SCRAM server signature does not match: the server does not hold this secret")]
    ServerSignatureMismatch,
    #[error("SCRAM exchange step called out of order")]
    OutOfOrder,
}

fn random_nonce() -> String {
    let mut raw = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut raw);
    BASE64.encode(raw)
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, ScramError> {
    std::str::from_utf8(bytes).map_err(|_| ScramError::Malformed(what))
}

/// The value of attribute `name` (`name=value`), or `Malformed(missing)`.
fn attr<'a>(part: &'a str, name: char, missing: &'static str) -> Result<&'a str, ScramError> {
    part.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('='))
        .ok_or(ScramError::Malformed(missing))
}

fn is_attr(part: &str) -> bool {
    let bytes = part.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'='
}

/// Printable ASCII except ',' (RFC 5802).
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn parse_iterations(text: &str) -> Result<u32, ScramError> {
    const BAD: ScramError = ScramError::Malformed("iteration count is not a positive integer");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    match text.parse::<u32>() {
        Ok(0) => Err(BAD),
        Ok(n) if n <= MAX_ITERATIONS => Ok(n),
        Ok(n) => Err(ScramError::TooManyIterations(n)),
        Err(_) => Err(ScramError::TooManyIterations(u32::MAX)),
    }
}
