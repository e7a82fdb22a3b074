//! Authenticating a pooled client: SCRAM-SHA-256 for SCRAM and plain secrets, md5 for md5
//! secrets. The outcome is how pgrouter will log in to PostgreSQL as that user.

use crate::stream::Stream;
use bytes::BytesMut;

use crate::auth::md5::verify_md5;
use crate::auth::messages::{
    auth_md5, auth_ok, auth_sasl, auth_sasl_continue, auth_sasl_final, decode_sasl_initial,
};
use crate::auth::scram::{ScramError, ServerExchange};
use crate::auth::secret::{ScramKeys, ScramSecret, Secret};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::frame::BadLength;
use crate::protocol::limits::MAX_AUTH_MESSAGE;
use crate::protocol::reader::{MessageReader, ReadError};
use crate::servers::credentials::Credentials;
use crate::servers::server::Login;

const MECHANISM: &str = "SCRAM-SHA-256";

pub enum AuthError {
    /// Tell the client this, then close.
    Refused(PgError),
    /// The client went away or broke the connection.
    Gone,
}

/// A client that passed: how pgrouter logs in for it, and the messages that end the exchange
/// (SCRAM's final message, AuthenticationOk), not sent yet: the caller sends them in one write
/// with what follows them (ParameterStatus, BackendKeyData, ReadyForQuery), as PostgreSQL does.
pub struct Passed {
    pub login: Login,
    pub unsent: BytesMut,
}

/// Runs the exchange for `user` with `secret`, up to the messages that end it.
pub async fn authenticate(
    client: &mut Stream,
    credentials: &Credentials,
    scope: &str,
    user: &str,
    secret: &Secret,
) -> Result<Passed, AuthError> {
    let (login, mut unsent) = match secret {
        Secret::Scram(s) => {
            let (client_key, last) = scram(client, s, scope, user).await?;
            let keys = ScramKeys::recovered(s, client_key);
            credentials.remember_keys(user, keys.clone());
            (Login::Scram(keys), last)
        }
        Secret::Plain(password) => {
            let s = credentials.scram_for_password(user, password).await;
            let (_, last) = scram(client, &s, scope, user).await?;
            let login = credentials.login(user, &Login::Password(password.clone()));
            (login, last)
        }
        Secret::Md5(m) => {
            let salt: [u8; 4] = rand::random();
            send(client, &auth_md5(salt)).await?;
            let msg = read_password_message(client, scope).await?;
            if !verify_md5(m, salt, &msg[5..]) {
                return Err(AuthError::Refused(wrong_password(scope, user)));
            }
            (Login::Md5(*m), BytesMut::new())
        }
    };
    unsent.extend_from_slice(&auth_ok());
    Ok(Passed { login, unsent })
}

/// The SCRAM exchange; returns the ClientKey recovered from the client's proof and the
/// server's final message, not sent yet.
async fn scram(
    client: &mut Stream,
    secret: &ScramSecret,
    scope: &str,
    user: &str,
) -> Result<([u8; 32], BytesMut), AuthError> {
    send(client, &auth_sasl(&[MECHANISM])).await?;
    let first = read_password_message(client, scope).await?;
    let (mechanism, data) =
        decode_sasl_initial(&first[5..]).map_err(|e| protocol(scope, &e.to_string()))?;
    if mechanism != MECHANISM {
        return Err(protocol(
            scope,
            &format!("SASL mechanism {mechanism:?} not offered (pgrouter offers {MECHANISM})"),
        ));
    }
    let (exchange, server_first) =
        ServerExchange::start(secret, &data).map_err(|e| scram_failure(scope, user, e))?;
    send(client, &auth_sasl_continue(&server_first)).await?;
    let last = read_password_message(client, scope).await?;
    let (server_final, client_key) = exchange
        .finish(&last[5..])
        .map_err(|e| scram_failure(scope, user, e))?;
    Ok((client_key, auth_sasl_final(&server_final)))
}

fn scram_failure(scope: &str, user: &str, e: ScramError) -> AuthError {
    match e {
        ScramError::WrongPassword => AuthError::Refused(wrong_password(scope, user)),
        other => protocol(scope, &format!("SCRAM exchange failed: {other}")),
    }
}

/// What PostgreSQL says for a wrong password or an unknown user, so neither can be told apart.
pub fn wrong_password(scope: &str, user: &str) -> PgError {
    PgError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!(
            "pgrouter: cluster \"{scope}\": password authentication failed for user \"{user}\""
        ),
    )
}

fn protocol(scope: &str, why: &str) -> AuthError {
    AuthError::Refused(PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!("pgrouter: cluster \"{scope}\": {why}"),
    ))
}

async fn send(client: &mut Stream, bytes: &[u8]) -> Result<(), AuthError> {
    client.send(bytes).await.map_err(|_| AuthError::Gone)
}

/// Reads the client's next message, which must be a PasswordMessage/SASL response ('p') of at
/// most [`MAX_AUTH_MESSAGE`] bytes (PostgreSQL takes no longer authentication message).
async fn read_password_message(
    client: &mut Stream,
    scope: &str,
) -> Result<bytes::Bytes, AuthError> {
    let mut reader = MessageReader::with_capacity(512, MAX_AUTH_MESSAGE);
    match reader.read(client).await {
        Ok(m) if m[0] == b'p' => Ok(m),
        Ok(m) => Err(protocol(
            scope,
            &format!(
                "expected a password message during authentication, got '{}'",
                char::from(m[0])
            ),
        )),
        Err(ReadError::BadLength(BadLength { tag: b'p', len })) if len >= 4 => {
            // Too long: the whole message, header included, as the limit counts it.
            let len = len as usize + 1;
            Err(protocol(
                scope,
                &format!(
                    "a password message of {len} bytes \
                     (at most {MAX_AUTH_MESSAGE} during authentication)"
                ),
            ))
        }
        Err(ReadError::BadLength(e)) => Err(protocol(scope, &e.to_string())),
        Err(ReadError::Eof | ReadError::Io(_)) => Err(AuthError::Gone),
    }
}
