//! ErrorResponse messages pgrouter sends itself, with SQLSTATEs clients and operators know.

use bytes::BytesMut;

use super::wire;

pub mod sqlstate {
    /// No primary (or replica) to route to within hold_timeout.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// The session's member lost its role; pgrouter closed it.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const CONNECTION_FAILURE: &str = "08006";
    /// Wrong password or unknown user (pooled modes authenticate clients themselves).
    pub const INVALID_PASSWORD: &str = "28P01";
    /// Not allowed in (or not understood by) the admin console.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_OBJECT: &str = "42704";
    /// A Parse of a statement name already in use (PostgreSQL's own).
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    /// A command in a transaction block that already failed (PostgreSQL's own).
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// TLS required and not used.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// Authentication not finished in time (PostgreSQL's own code for its authentication_timeout);
    /// a console PAUSE that gave up waiting for transactions in flight.
    pub const QUERY_CANCELED: &str = "57014";
    /// PostgreSQL's idle_session_timeout and idle_in_transaction_session_timeout.
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
}

/// An error for a client; `message` should name pgrouter, the cluster and the member.
/// FATAL ends the connection; ERROR (pooled modes) ends only the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub fatal: bool,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            fatal: true,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An ERROR: the transaction fails, the connection stays usable.
    pub fn error(code: &'static str, message: impl Into<String>) -> PgError {
        PgError {
            fatal: false,
            ..PgError::fatal(code, message)
        }
    }

    #[cfg(test)]
    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    /// The wire form: an 'E' message with severity FATAL or ERROR.
    pub fn encode(&self) -> BytesMut {
        let severity = if self.fatal { "FATAL" } else { "ERROR" };
        let mut fields = vec![
            (b'S', severity),
            (b'V', severity),
            (b'C', self.code),
            (b'M', self.message.as_str()),
        ];
        fields.extend(self.detail.iter().map(|d| (b'D', d.as_str())));
        fields.extend(self.hint.iter().map(|h| (b'H', h.as_str())));
        let mut buf = BytesMut::new();
        wire::error_response(&mut buf, b'E', &fields);
        buf
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_fatal_error_response() {
        let e =
            PgError::fatal(sqlstate::CANNOT_CONNECT_NOW, "pgrouter: no leader").with_hint("wait");
        let wire = e.encode();
        assert_eq!(wire[0], b'E');
        let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
        assert_eq!(len + 1, wire.len());
        let body = &wire[5..];
        assert_eq!(
            body,
            b"SFATAL\0VFATAL\0C57P03\0Mpgrouter: no leader\0Hwait\0\0"
        );
    }

    /// The same bytes as pgwire's ErrorResponse, which encoded these before.
    #[test]
    fn encodes_as_pgwire_did() {
        use pgwire::messages::response::ErrorResponse;
        use pgwire::messages::Message;
        let errors = [
            PgError::fatal(sqlstate::ADMIN_SHUTDOWN, "pgrouter: bye"),
            PgError::error(sqlstate::SYNTAX_ERROR, "").with_detail("d"),
            PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "é ✓")
                .with_detail("detail")
                .with_hint("hint"),
        ];
        for e in errors {
            let severity = if e.fatal { "FATAL" } else { "ERROR" };
            let mut fields = vec![
                (b'S', severity.to_owned()),
                (b'V', severity.to_owned()),
                (b'C', e.code.to_owned()),
                (b'M', e.message.clone()),
            ];
            fields.extend(e.detail.iter().map(|d| (b'D', d.clone())));
            fields.extend(e.hint.iter().map(|h| (b'H', h.clone())));
            let mut before = BytesMut::new();
            ErrorResponse::new(fields).encode(&mut before).unwrap();
            assert_eq!(e.encode(), before, "{e}");
        }
    }
}
