//! When a transaction cannot run or cannot go on: the client's unit of work fails with an
//! error and its connection stays; and server connections going back to their pool, or
//! closed when their state is unknown.

use bytes::BytesMut;

use super::{Exit, Held, PooledSession};
use crate::config::PoolMode;
use crate::hold::RoleCheck;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::limits::MAX_WHOLE_MESSAGE;
use crate::protocol::reader::{read_message, ReadError};
use crate::protocol::wire;
use crate::route::{Route, Verdict};

/// How a transaction ended for the server connection.
pub(super) enum Done {
    /// At a transaction boundary: the connection can serve another client.
    Idle,
    /// The client left; the connection is returned if clean.
    ClientLeft,
}

/// Why a held server connection cannot go on.
#[derive(Debug)]
pub(super) enum Lost {
    /// Its member lost the leader key.
    Role(String),
    /// It failed, closed, or said FATAL.
    Server(String),
}

impl PooledSession {
    /// Answers a unit of work (a Query, or an extended batch up to its Sync) with `e` when
    /// there is no server to run it: the transaction fails, the connection stays.
    pub(super) async fn fail_unit(&mut self, e: PgError) -> Result<(), Exit> {
        self.shared
            .metrics
            .client_errors
            .with_label_values(&[e.code])
            .inc();
        tracing::info!(peer = %self.registration.entry.peer, port = %self.port, error = %e, "transaction refused");
        let mut out = e.encode();
        loop {
            let read = read_message(&mut self.from_client, MAX_WHOLE_MESSAGE, &mut self.client);
            let msg = match read.await {
                Ok(m) => m,
                Err(ReadError::BadLength(e)) => return Err(Exit::ClientProtocol(e.to_string())),
                Err(ReadError::Eof | ReadError::Io(_)) => return Err(Exit::ClientGone),
            };
            match msg[0] {
                b'X' => return Err(Exit::ClientGone),
                b'Q' | b'F' | b'S' => break,
                _ => {
                    // Extended batch: the error goes out now, ReadyForQuery at its Sync.
                    if !out.is_empty() {
                        self.client.send(&out).await.map_err(|_| Exit::ClientGone)?;
                        out.clear();
                    }
                }
            }
        }
        wire::ready_for_query(&mut out, b'I');
        self.conversation.forget_server();
        self.client.send(&out).await.map_err(|_| Exit::ClientGone)
    }

    /// The held connection is gone or may no longer be used: nothing more from it reaches
    /// the client; the client's unanswered work fails, its connection stays.
    pub(super) async fn abort(&mut self, lost: Lost) -> Result<Done, Exit> {
        let mut held = self.held.take().expect("abort with a server");
        // Whole answers a dying server completed (queued, not yet written) are the client's,
        // as they would be on a direct connection; not once its member has lost its role.
        let mid_message = self.conversation.mid_server_message();
        let answers_whole = matches!(lost, Lost::Server(_))
            && !mid_message
            && !matches!(
                RoleCheck::new(&self.shared).now(&self.shared, &held.route),
                Verdict::CloseNow(_)
            );
        let answers = if answers_whole {
            std::mem::take(&mut self.to_client)
        } else {
            BytesMut::new()
        };
        let e = self.aborted(&lost, &held.route);
        // Anything else the lost server said and was not yet written is dropped. When the
        // client stands at a message boundary, the units those answers ended fail with the
        // rest; when it saw half a message, it cannot be answered in step: close it.
        let partial = !answers_whole && !self.client_whole;
        let dropped = if partial {
            0
        } else {
            ready_messages(&self.to_client)
        };
        self.to_client.clear();
        let streaming = self.conversation.mid_client_message();
        let mut loss = self.conversation.lose_server();
        loss.unanswered += dropped;
        self.give_back_buffers(&mut held);
        self.settle_tally(held.lease.pool());
        held.lease.discard();
        if partial {
            return Err(Exit::ClientGone);
        }
        if streaming {
            // The client is inside a message that was being streamed: the rest of it must not
            // be read as messages (nor sent to another server). Tell it and close.
            return Err(Exit::Fatal(PgError {
                fatal: true,
                hint: None,
                ..e
            }));
        }
        let mut out = answers;
        for _ in 0..loss.unanswered {
            out.extend_from_slice(&e.encode());
            wire::ready_for_query(&mut out, b'I');
        }
        self.client.send(&out).await.map_err(|_| Exit::ClientGone)?;
        if loss.unsynced {
            // The client's batch goes on up to its Sync: fail it there.
            self.fail_unit(e).await?;
        } else if loss.unanswered == 0 && loss.in_transaction {
            // Idle inside a transaction: its next statement learns the transaction is gone.
            self.owed = Some(Box::new(e));
        }
        Ok(Done::Idle)
    }

    /// The error a client gets for a transaction lost with its server, counted and logged.
    fn aborted(&self, lost: &Lost, route: &Route) -> PgError {
        let scope = &self.shared.scope;
        let member = &route.member.name;
        let e = match lost {
            Lost::Role(reason) => PgError::error(
                sqlstate::ADMIN_SHUTDOWN,
                format!(
                    "pgrouter: cluster \"{scope}\": transaction on \"{member}\" aborted: {reason}"
                ),
            ),
            Lost::Server(why) => server_gone(scope, route, why),
        }
        .with_hint("The connection to pgrouter stays open; retry the transaction.");
        tracing::info!(peer = %self.registration.entry.peer, port = %self.port, %member, error = %e, "aborted a pooled transaction");
        self.shared
            .metrics
            .client_errors
            .with_label_values(&[e.code])
            .inc();
        e
    }

    /// Returns a connection to its pool, or closes it when its state is unknown.
    pub(super) async fn put_back(&mut self, mut held: Held, done: Done) {
        self.settle_tally(held.lease.pool());
        let clean = self.conversation.at_rest() && self.to_server.is_empty();
        let reusable = clean
            && !held.retire
            && !self.conversation.pinned()
            && !self.conversation.left_session_state();
        let cleanup = self.conversation.take_sql_cleanup();
        self.conversation.forget_server();
        self.give_back_buffers(&mut held);
        if !reusable {
            held.lease.discard();
            return;
        }
        let mut lease = held.lease;
        // The client's SQL-level prepared statements leave with it; one that was not there
        // (its PREPARE failed again) leaves the connection's state unknown: closed.
        for sql in cleanup {
            if Box::pin(lease.conn.run(&sql)).await.is_err() {
                lease.discard();
                return;
            }
        }
        if matches!(done, Done::ClientLeft) && self.conversation.mode() == PoolMode::Session {
            let reset = self.shared.config().pool.server_reset_query.clone();
            if Box::pin(lease.conn.run(&reset)).await.is_err() {
                lease.discard();
                return;
            }
            lease.conn.state.prepared.clear();
            lease.conn.state.extra.clear();
        }
        lease.release();
    }
}

/// How many ReadyForQuery messages are among the whole messages at the front of `buf`.
fn ready_messages(buf: &[u8]) -> usize {
    let mut rest = buf;
    let mut ready = 0;
    while let Ok(Some((tag, len))) = crate::protocol::frame::header(rest) {
        let Some(after) = rest.get(len..) else { break };
        ready += usize::from(tag == b'Z');
        rest = after;
    }
    ready
}

/// The error for a transaction whose server connection to `route`'s member was lost.
pub(super) fn server_gone(scope: &str, route: &Route, why: &str) -> PgError {
    PgError::error(
        sqlstate::CONNECTION_FAILURE,
        format!(
            "pgrouter: cluster \"{scope}\": lost the server connection to member \"{}\": {why}",
            route.member.name
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::ready_messages;

    #[test]
    fn ready_messages_counts_whole_ready_for_query_only() {
        let mut buf = bytes::BytesMut::new();
        crate::protocol::wire::ready_for_query(&mut buf, b'I');
        buf.extend_from_slice(b"C\0\0\0\x0fINSERT 0 1\0");
        crate::protocol::wire::ready_for_query(&mut buf, b'T');
        assert_eq!(ready_messages(&buf), 2);
        assert_eq!(
            ready_messages(&buf[..buf.len() - 1]),
            1,
            "the last one is cut"
        );
        assert_eq!(ready_messages(b""), 0);
    }
}
