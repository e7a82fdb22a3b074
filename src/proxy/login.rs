//! The pass-through login: the member's answer to the startup and the authentication exchange,
//! relayed whole message by whole message up to the first ReadyForQuery, so that a member
//! refusing the login (wrong password, no such database, no pg_hba.conf entry, too many
//! clients, shutting down) is reported naming pgrouter, the cluster and the member.

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::relay::{End, Follow, RoleCheck};
use crate::protocol::limits::{MAX_LOGIN_CLIENT_MESSAGE, MAX_LOGIN_SERVER_MESSAGE};
use crate::protocol::wire;
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
    let mut from_server = BytesMut::from(&first[..]);
    let mut from_client = BytesMut::new();
    let mut out = BytesMut::new();
    loop {
        while let Some(msg) = wire::take_message_within(&mut from_server, MAX_LOGIN_SERVER_MESSAGE)
            .map_err(server_gone)?
        {
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
        }
        if !out.is_empty() {
            keeps_role()?;
            client.send(&out).await.map_err(to_client)?;
            out.clear();
        }
        tokio::select! {
            r = server.read_buf(&mut from_server) => match r {
                Ok(0) => return Err(server_gone("the member closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(server_gone(e)),
            },
            r = client.read_buf(&mut from_client) => match r {
                Ok(0) => return Err(Refused::Ended(End::ClientClosed)),
                Err(e) => return Err(to_client(e)),
                Ok(_) => {
                    while let Some(msg) =
                        wire::take_message_within(&mut from_client, MAX_LOGIN_CLIENT_MESSAGE).map_err(client_broke)?
                    {
                        follow.client_bytes(&msg).map_err(client_broke)?;
                        out.extend_from_slice(&msg);
                    }
                    if !out.is_empty() {
                        server.send(&out).await.map_err(server_gone)?;
                        out.clear();
                    }
                }
            },
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
