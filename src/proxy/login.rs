//! The pass-through login: the member's answer to the startup and the authentication exchange,
//! relayed whole message by whole message up to the first ReadyForQuery, so that a member
//! refusing the login (wrong password, no such database, no pg_hba.conf entry, too many
//! clients, shutting down) is reported naming pgrouter, the cluster and the member.

use bytes::BytesMut;

use super::relay::{End, Follow};
use crate::hold::RoleCheck;
use crate::protocol::limits::{MAX_AUTH_MESSAGE, MAX_LOGIN_SERVER_MESSAGE};
use crate::protocol::reader::{MessageReader, ReadError};
use crate::route::{Route, Verdict};
use crate::shared::Shared;
use crate::stream::Stream;

/// How a login ended without a ReadyForQuery.
#[derive(Debug)]
pub enum Refused {
    /// The member's ErrorResponse, named: for the client, then close.
    Member { code: String, response: BytesMut },
    /// Ended as a relayed session ends: a side gone or breaking the protocol, or the member's
    /// role lost.
    Ended(End),
}

/// Relays from the member's `first` bytes up to and including its first ReadyForQuery, feeding
/// `follow` as the relay would; the member's role is checked before every write to the client.
pub async fn run(
    shared: &Shared,
    route: &Route,
    follow: &mut Follow<'_>,
    client: &mut Stream,
    server: &mut Stream,
    first: Vec<u8>,
) -> Result<(), Refused> {
    let mut roles = RoleCheck::new(shared);
    let mut keeps_role = || match roles.changed(shared, route) {
        Some(Verdict::CloseNow(reason)) => Err(Refused::Ended(End::Lost {
            reason,
            at_boundary: true,
        })),
        // Drained by the relay at the session's first idle point.
        Some(Verdict::Keep | Verdict::Drain(_)) | None => Ok(()),
    };
    let to_client = |e| Refused::Ended(End::ClientError(e));
    let mut from_server = MessageReader::starting_with(&first, MAX_LOGIN_SERVER_MESSAGE);
    let mut from_client = MessageReader::new(MAX_AUTH_MESSAGE);
    let mut out = BytesMut::new();
    // What the member sent before the client's first read, taken whole as the loop below takes
    // the rest.
    let mut next = from_server.take().map_err(server_gone)?;
    loop {
        // The member's messages that are here, passed to the client in one write.
        while let Some(msg) = next {
            if msg[0] == b'E' {
                keeps_role()?;
                return Err(named(&shared.scope, &route.member.name, &msg[5..]));
            }
            follow.server_bytes(&msg).map_err(server_gone)?;
            out.extend_from_slice(&msg);
            if msg[0] == b'Z' {
                keeps_role()?;
                return client.send(&out).await.map_err(to_client);
            }
            next = from_server.take().map_err(server_gone)?;
        }
        if !out.is_empty() {
            keeps_role()?;
            client.send(&out).await.map_err(to_client)?;
            out.clear();
        }
        tokio::select! {
            r = from_server.read(server) => match r {
                Ok(msg) => next = Some(msg),
                Err(ReadError::Eof) => {
                    return Err(server_gone("the member closed the connection"))
                }
                Err(ReadError::BadLength(e)) => return Err(server_gone(e)),
                Err(ReadError::Io(e)) => return Err(server_gone(e)),
            },
            r = from_client.read(client) => {
                // The client's messages that are here, passed to the member in one write.
                let mut msg = match r {
                    Ok(msg) => Some(msg),
                    Err(ReadError::Eof) => return Err(Refused::Ended(End::ClientClosed)),
                    Err(ReadError::BadLength(e)) => return Err(client_broke(e)),
                    Err(ReadError::Io(e)) => return Err(to_client(e)),
                };
                while let Some(m) = msg {
                    follow.client_bytes(&m).map_err(client_broke)?;
                    out.extend_from_slice(&m);
                    msg = from_client.take().map_err(client_broke)?;
                }
                server.send(&out).await.map_err(server_gone)?;
                out.clear();
            }
        }
    }
}

/// The member failed, closed, or sent what cannot be framed, during login: the client is told.
fn server_gone(why: impl std::fmt::Display) -> Refused {
    Refused::Ended(End::ServerGone {
        error: Some(std::io::Error::other(format!("{why} during login"))),
        tell: true,
    })
}

/// The client sent what cannot be framed, or a message too long for a login.
fn client_broke(why: impl std::fmt::Display) -> Refused {
    Refused::Ended(End::ClientProtocol(format!("{why} during login")))
}

fn named(scope: &str, member: &str, body: &[u8]) -> Refused {
    let (code, response) = super::relay::named(scope, member, body);
    Refused::Member { code, response }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire;

    fn error_body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (code, value) in fields {
            body.push(*code);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    #[test]
    fn a_member_error_keeps_its_fields_and_gets_named() {
        let body = error_body(&[
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28P01"),
            (b'M', "password authentication failed for user \"app\""),
            (b'H', "check it"),
        ]);
        let Refused::Member { code, response } = named("demo", "pg1", &body) else {
            panic!("not a member refusal");
        };
        assert_eq!(code, "28P01");
        assert_eq!(response[0], b'E');
        let fields = wire::error_fields(&response[5..]);
        assert_eq!(wire::field(&fields, b'V'), Some("FATAL"));
        assert_eq!(wire::field(&fields, b'H'), Some("check it"));
        assert_eq!(
            wire::field(&fields, b'M'),
            Some("pgrouter: cluster \"demo\": member \"pg1\": password authentication failed for user \"app\"")
        );
    }

    #[test]
    fn an_error_without_code_or_message_is_still_named() {
        let Refused::Member { code, response } =
            named("demo", "pg0", &error_body(&[(b'S', "FATAL")]))
        else {
            panic!("not a member refusal");
        };
        assert_eq!(code, "XX000");
        let fields = wire::error_fields(&response[5..]);
        assert_eq!(
            wire::field(&fields, b'M'),
            Some("pgrouter: cluster \"demo\": member \"pg0\"")
        );
    }
}
