//! A pooled client between transactions: waiting for its next whole message with no server
//! connection, the budget its large messages draw on, and the buffers a server connection
//! lends it while it runs a transaction.

use std::future::Future;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio_util::io::poll_read_buf;

use super::{Exit, Held, PooledSession};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::frame;
use crate::protocol::limits::MAX_WHOLE_MESSAGE;
use crate::servers::message_memory::COUNTED_FROM;

/// A buffer grown past this is given back to the allocator when its client goes idle.
const KEEP_CAPACITY: usize = 8 * 1024;
/// A buffer a server connection lends is kept up to this size.
const LENT_CAPACITY: usize = 2 * super::conversation::BUFFER_LIMIT;
/// Reads go into buffers with at least this much room, grown by `READ_CHUNK`.
pub(super) const READ_MIN: usize = 4 * 1024;
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// What ended an idle wait.
enum IdleEvent {
    Signal,
    Read(std::io::Result<usize>),
    TimedOut,
}

impl PooledSession {
    /// Waits, holding no server connection, for the client's next whole message.
    pub(super) async fn idle_wait(&mut self) -> Result<(), Exit> {
        let timeout = self.settings().pool.client_idle_timeout.0;
        let deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
        loop {
            self.killed()?;
            if self.shared.shutting_down() {
                return Err(Exit::Fatal(PgError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    format!(
                        "pgrouter: cluster \"{}\": {}",
                        self.shared.scope,
                        self.shared.shutdown_reason()
                    ),
                )));
            }
            match frame::header(&self.from_client) {
                Ok(Some((_, len))) if self.from_client.len() >= len => return Ok(()),
                Ok(Some((_, len))) if len > MAX_WHOLE_MESSAGE => {
                    return Err(Exit::ClientProtocol(format!(
                        "message of {len} bytes is too long"
                    )))
                }
                // Room for the rest of the message (up to a chunk: a length is only a claim
                // until the bytes come): one read, not one per 64 bytes.
                Ok(Some((_, len))) => {
                    self.count_large_message(len)?;
                    let missing = len - self.from_client.len();
                    self.from_client.reserve(missing.min(READ_CHUNK));
                }
                Ok(None) => {}
                Err(e) => return Err(Exit::ClientProtocol(e.to_string())),
            }
            match self.next_idle_event(deadline).await {
                IdleEvent::Signal => {}
                IdleEvent::TimedOut => {
                    return Err(Exit::Fatal(PgError::fatal(
                        sqlstate::IDLE_SESSION_TIMEOUT,
                        format!(
                            "pgrouter: cluster \"{}\": closing a client idle for pool.client_idle_timeout ({}s)",
                            self.shared.scope,
                            timeout.as_secs_f64()
                        ),
                    )));
                }
                IdleEvent::Read(r) => match r {
                    // A half-close after part of a message: told why, as in pass-through.
                    Ok(0) if !self.from_client.is_empty() => {
                        return Err(Exit::ClientProtocol(
                            "the client closed the connection inside a message".into(),
                        ))
                    }
                    Ok(0) | Err(_) => return Err(Exit::ClientGone),
                    Ok(_) => {}
                },
            }
        }
    }

    /// Waits for the first of: a signal, bytes from the client, the idle deadline. Polled by
    /// hand in that order (no select's random start, no timer without a deadline). The timer
    /// is boxed: inline, every idle client would carry its room (about 100 bytes) in the
    /// session's future, with `pool.client_idle_timeout` set or not.
    async fn next_idle_event(&mut self, deadline: Option<tokio::time::Instant>) -> IdleEvent {
        use std::task::Poll;
        let mut timeout = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        let (signal, client, buf) = (&self.signal, &mut self.client, &mut self.from_client);
        std::future::poll_fn(|cx| {
            if signal.poll_wait(cx).is_ready() {
                return Poll::Ready(IdleEvent::Signal);
            }
            if let Poll::Ready(r) = poll_read_buf(std::pin::Pin::new(&mut *client), cx, buf) {
                return Poll::Ready(IdleEvent::Read(r));
            }
            match timeout.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(IdleEvent::TimedOut),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// Counts a message of `len` bytes being received against `pool.message_memory` when it
    /// is large (the grant already held may cover it); FATAL 53200 when it does not fit.
    pub(super) fn count_large_message(&mut self, len: usize) -> Result<(), Exit> {
        if len < COUNTED_FROM || self.large.as_ref().is_some_and(|g| g.bytes() >= len) {
            return Ok(());
        }
        self.large = None;
        let limit = self.shared.config().pool.message_memory.0;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match self.shared.pools.message_memory.grant(len, limit) {
            Ok(grant) => {
                self.large = Some(grant);
                Ok(())
            }
            Err(in_use) => {
                let mb = |b: usize| b as f64 / f64::from(1 << 20);
                Err(Exit::Fatal(PgError::fatal(
                    sqlstate::OUT_OF_MEMORY,
                    format!(
                        "pgrouter: cluster \"{}\": out of memory for large client messages: a message of {:.1} MB would take pool.message_memory ({:.1} MB) past its limit, {:.1} MB being held by other clients' messages",
                        self.shared.scope, mb(len), mb(limit), mb(in_use)
                    ),
                )))
            }
        }
    }

    /// Takes `held` and the buffers it lends; the client's unread bytes move into them.
    pub(super) fn hold(&mut self, mut held: Held) {
        let lent = &mut held.lease.conn.buffers;
        lent.from_client.extend_from_slice(&self.from_client);
        self.from_client.clear();
        std::mem::swap(&mut self.from_client, &mut lent.from_client);
        std::mem::swap(&mut self.from_server, &mut lent.from_server);
        std::mem::swap(&mut self.to_server, &mut lent.to_server);
        std::mem::swap(&mut self.to_client, &mut lent.to_client);
        self.held = Some(held);
    }

    /// Reads, without waiting, what the client has sent beyond the idle wait's small buffer,
    /// so a batch (Parse, Bind, Execute, Sync) reaches the server in one write, not two.
    /// An EOF or error is left for the exchange to read again.
    /// A lone simple Query needs no more: it is the whole batch.
    pub(super) fn read_sent_client(&mut self) {
        let lone_query = matches!(
            frame::header(&self.from_client),
            Ok(Some((b'Q', len))) if len == self.from_client.len()
        );
        if lone_query {
            return;
        }
        if self.from_client.capacity() - self.from_client.len() < READ_MIN {
            self.from_client.reserve(READ_CHUNK);
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = std::pin::pin!(self.client.read_buf(&mut self.from_client)).poll(&mut cx);
    }

    /// Gives `held` its buffers back, emptied; the client keeps its unread bytes. A buffer
    /// grown past what a connection keeps is dropped.
    pub(super) fn give_back_buffers(&mut self, held: &mut Held) {
        let lent = &mut held.lease.conn.buffers;
        if self.from_client.is_empty() {
            std::mem::swap(&mut self.from_client, &mut lent.from_client);
        }
        std::mem::swap(&mut self.from_server, &mut lent.from_server);
        std::mem::swap(&mut self.to_server, &mut lent.to_server);
        std::mem::swap(&mut self.to_client, &mut lent.to_client);
        for buf in [
            &mut lent.from_client,
            &mut lent.from_server,
            &mut lent.to_server,
            &mut lent.to_client,
        ] {
            buf.clear();
            if buf.capacity() > LENT_CAPACITY {
                *buf = BytesMut::new();
            }
        }
    }

    /// Gives large buffers back while the client is idle.
    pub(super) fn shrink(&mut self) {
        for buf in [
            &mut self.from_server,
            &mut self.to_server,
            &mut self.to_client,
        ] {
            if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
                *buf = BytesMut::new();
            }
        }
        if self.from_client.is_empty() {
            if self.from_client.capacity() > KEEP_CAPACITY {
                self.from_client = BytesMut::new();
            }
            // The large message is gone: freed here, or with the buffers lent back.
            self.large = None;
        }
    }
}
