//! How a pass-through session ends: what the client is told, counted and logged.

use crate::protocol::error::{sqlstate, PgError};
use crate::route::{Port, Route};
use crate::shared::Shared;
use crate::stream::Stream;
use tokio::io::AsyncWriteExt;

use super::relay::{terminate, End};

/// Tells the client why its session ended, when it can still be told, and logs it; the
/// SQLSTATE it was told, if any.
pub(super) async fn finish(
    shared: &Shared,
    route: &Route,
    port: Port,
    peer: &str,
    end: End,
    client: &mut Stream,
    server: &mut Stream,
) -> Option<&'static str> {
    let ends_server = matches!(end, End::Drained(_) | End::Killed { .. });
    let told = match end {
        End::Lost { .. } | End::Drained(_) | End::DrainTimeout { .. } | End::Killed { .. } => {
            cut(shared, route, port, peer, end)
        }
        end => failed(shared, route, port, peer, end),
    };
    if let Some(e) = &told {
        send_error(shared, client, e).await;
    }
    if ends_server {
        terminate(server).await;
    }
    told.map(|e| e.code)
}

/// A session pgrouter ended because its member may no longer serve it: counted and logged;
/// the error the client is told when it stands at a message boundary.
fn cut(shared: &Shared, route: &Route, port: Port, peer: &str, end: End) -> Option<PgError> {
    let scope = &shared.scope;
    let member = &route.member.name;
    let closing = |reason: &str| {
        PgError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            format!("pgrouter: cluster \"{scope}\": closing session on \"{member}\": {reason}"),
        )
    };
    let drained = |kind: &str| {
        shared
            .metrics
            .sessions_drained
            .with_label_values(&[kind])
            .inc()
    };
    match end {
        End::Lost {
            reason,
            at_boundary,
        } => {
            drained("leader_lost");
            tracing::info!(%peer, %port, %member, %reason, "cut session on a member that lost the leader key");
            at_boundary.then(|| closing(&reason).with_hint("Reconnect to reach the new leader."))
        }
        End::Drained(cause) => {
            drained(cause.kind);
            tracing::info!(%peer, %port, %member, reason = %cause.reason, "drained idle session");
            Some(closing(&cause.reason).with_hint("Reconnect to reach an eligible member."))
        }
        End::Killed { at_boundary } => {
            drained("killed");
            tracing::info!(%peer, %port, %member, "cut session: KILL of its database from the admin console");
            at_boundary.then(|| closing("KILL of its database from the admin console"))
        }
        End::DrainTimeout { cause, at_boundary } => {
            drained("drain_timeout");
            tracing::info!(%peer, %port, %member, reason = %cause.reason, "cut busy session after drain_timeout");
            let reason = format!("{} (still busy after drain_timeout)", cause.reason);
            at_boundary.then(|| closing(&reason))
        }
        _ => None,
    }
}

/// A session that ended on its own or failed: logged; the error the client is told, if any.
fn failed(shared: &Shared, route: &Route, port: Port, peer: &str, end: End) -> Option<PgError> {
    let scope = &shared.scope;
    let member = &route.member.name;
    let session = |e: &dyn std::fmt::Display| {
        let message = format!("pgrouter: cluster \"{scope}\": session on \"{member}\": {e}");
        Some(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, message))
    };
    match end {
        End::ClientProtocol(e) => {
            tracing::info!(%peer, %port, %member, error = %e, "client broke the protocol");
            session(&e)
        }
        End::ClientTruncated => {
            tracing::info!(%peer, %port, %member, "client closed the connection inside a message");
            session(&"the client closed the connection inside a message")
        }
        End::ServerProtocol(e) => {
            tracing::warn!(%peer, %port, %member, error = %e, "server broke the protocol");
            None
        }
        End::ServerGone { error, tell } => {
            let why = error.map_or_else(
                || "the server closed the connection".to_owned(),
                |e| e.to_string(),
            );
            tracing::info!(%peer, %port, %member, %why, "lost the server connection");
            let message = format!(
                "pgrouter: cluster \"{scope}\": lost the server connection to member \"{member}\": {why}"
            );
            tell.then(|| PgError::fatal(sqlstate::CONNECTION_FAILURE, message))
        }
        End::ClientClosed => {
            tracing::debug!(%peer, %port, %member, "session ended");
            None
        }
        End::ClientError(e) => {
            tracing::debug!(%peer, %port, %member, error = %e, "session failed");
            None
        }
        _ => None,
    }
}

pub(super) async fn send_error(shared: &Shared, client: &mut Stream, e: &PgError) {
    send_response(shared, client, e.code, &e.encode()).await
}

/// Sends an ErrorResponse with SQLSTATE `code`, counted, and closes.
pub(super) async fn send_response(
    shared: &Shared,
    client: &mut Stream,
    code: &str,
    response: &[u8],
) {
    shared
        .metrics
        .client_errors
        .with_label_values(&[code])
        .inc();
    let _ = client.send(response).await;
    let _ = client.shutdown().await;
}
