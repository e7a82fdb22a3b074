//! The readiness loop while a client holds a server connection: one wait over both
//! sockets with bounded buffers, the conversation deciding what each side's bytes become,
//! and the member's role checked before anything it said reaches the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio_util::io::poll_read_buf;

use super::conversation::{Broken, Heard, Taken};
use super::idle::{READ_CHUNK, READ_MIN};
use super::recovery::{Done, Lost};
use super::{Exit, PooledSession};
use crate::protocol::error::{sqlstate, PgError};
use crate::route::Verdict;
use crate::stream::Stream;

/// What woke the exchange.
enum Event {
    Signal,
    WroteServer(std::io::Result<usize>),
    WroteClient(std::io::Result<usize>),
    FlushedServer,
    FlushedClient,
    ReadServer(std::io::Result<usize>),
    ReadClient(std::io::Result<usize>),
    /// The server has been silent `pool.stuck_check` while owing an answer.
    StuckCheck,
}

/// The clock read once per turn of the loop, when first asked: a turn's timings share it.
#[derive(Default)]
pub(super) struct TurnClock(Option<Instant>);

impl TurnClock {
    pub(super) fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// What a transaction adds to its pool's counters, kept in the session and added once as
/// the connection goes back (`settle_tally`): the counters are shared by every session on
/// every thread, and each addition there moves their cache line between cores.
#[derive(Default)]
pub(super) struct Tally {
    received: u64,
    sent: u64,
    queries: u64,
    transactions: u64,
    query_micros: u64,
}

/// A TLS stream written to but not flushed yet, per side.
#[derive(Default)]
struct Unflushed {
    server: bool,
    client: bool,
}

impl PooledSession {
    /// Runs the client's work on the held connection until a point where it can go back.
    pub(super) async fn exchange(&mut self) -> Result<Done, Exit> {
        let held = self.held.as_ref().expect("exchange runs with a server");
        // The session's role check sees every change since its last look; a route it has
        // not checked yet (a new member, a new pick) is checked at once.
        if !self
            .roles_route
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, &held.route))
        {
            self.roles.recheck();
            self.roles_route = Some(held.route.clone());
        }
        let server_tls = held.lease.conn.stream.is_tls();
        let client_tls = self.client.is_tls();
        let mut unflushed = Unflushed::default();
        let pool = &self.settings().pool;
        let (stuck_after, idle_tx_after) = (pool.stuck_check.0, pool.idle_transaction_timeout.0);
        let mut silent_since = None;
        let mut idle_tx_since: Option<Instant> = None;
        // Since when the server owes answers, for the pool's query time.
        let mut owed_since: Option<Instant> = None;
        loop {
            let mut clock = TurnClock::default();
            self.take_client()?;
            match (self.conversation.owes_answers(), owed_since) {
                (true, None) => owed_since = Some(clock.now()),
                (false, Some(since)) => {
                    let micros = clock.now().duration_since(since).as_micros() as u64;
                    self.tally.query_micros += micros;
                    owed_since = None;
                }
                _ => {}
            }
            // Checked before every read and write, so nothing from a member that lost its
            // role reaches the client after the topology saying so was published.
            if let Some(lost) = self.check_role() {
                return Box::pin(self.abort(lost)).await;
            }
            self.killed()?;
            // What fits in the sockets now goes without a wait (plain TCP; TLS records go
            // through `next_event`, which flushes them).
            let held = self.held.as_mut().expect("exchange runs with a server");
            if let Err(e) = write_now(&held.lease.conn.stream, &mut self.to_server) {
                return Box::pin(self.abort(Lost::Server(e.to_string()))).await;
            }
            let unwritten = self.to_client.len();
            if write_now(&self.client, &mut self.to_client).is_err() {
                return Err(Exit::ClientGone);
            }
            if self.to_client.len() < unwritten {
                self.wrote_client();
            }
            let flushed = self.to_client.is_empty()
                && self.to_server.is_empty()
                && !unflushed.server
                && !unflushed.client;
            if flushed && self.conversation.settings_due() {
                // The transaction is over: its SETs and RESETs of the client's settings are
                // settled before the connection goes back or the next one runs.
                let held = self.held.as_mut().expect("exchange runs with a server");
                let conn = &mut held.lease.conn.state;
                self.conversation.settle_settings(conn, &mut self.to_server);
                continue;
            }
            if flushed && self.conversation.releasable() {
                return Ok(Done::Idle);
            }
            let stuck_at =
                self.stuck_check_at(stuck_after, unflushed.server, &mut silent_since, &mut clock);
            let idle_tx = !idle_tx_after.is_zero()
                && flushed
                && self.from_client.is_empty()
                && self.conversation.idle_in_transaction();
            if !idle_tx {
                idle_tx_since = None;
            }
            let idle_tx_at =
                idle_tx.then(|| *idle_tx_since.get_or_insert_with(|| clock.now()) + idle_tx_after);
            if idle_tx_at.is_some_and(|at| clock.now() >= at) {
                return Err(Exit::Fatal(PgError::fatal(
                    sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                    format!(
                        "pgrouter: cluster \"{}\": terminating connection due to idle-in-transaction timeout (pool.idle_transaction_timeout {}s)",
                        self.shared.scope,
                        idle_tx_after.as_secs_f64()
                    ),
                )));
            }
            let wake_at = match (stuck_at, idle_tx_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match self.next_event(&unflushed, wake_at).await {
                Event::Signal => {}
                Event::StuckCheck if stuck_at.is_none_or(|at| Instant::now() < at) => {}
                Event::StuckCheck => {
                    let stuck = Box::pin(self.stuck(stuck_after)).await;
                    silent_since = None;
                    if self.server_spoke() {
                        if let Err(Broken(why)) = self.take_server() {
                            return Box::pin(self.abort(Lost::Server(why))).await;
                        }
                    } else if let Some(why) = stuck {
                        self.count_stuck(&why);
                        return Box::pin(self.abort(Lost::Server(why))).await;
                    }
                }
                Event::WroteServer(Ok(n)) if n > 0 => {
                    self.to_server.advance(n);
                    unflushed.server = server_tls;
                }
                Event::FlushedServer => unflushed.server = false,
                Event::WroteServer(Ok(_)) | Event::ReadServer(Ok(0)) => {
                    let lost = Lost::Server("the server closed the connection".into());
                    return Box::pin(self.abort(lost)).await;
                }
                Event::WroteServer(Err(e)) | Event::ReadServer(Err(e)) => {
                    return Box::pin(self.abort(Lost::Server(e.to_string()))).await
                }
                Event::ReadServer(Ok(_)) => {
                    silent_since = None;
                    if let Err(Broken(why)) = self.take_server() {
                        return Box::pin(self.abort(Lost::Server(why))).await;
                    }
                }
                Event::WroteClient(Ok(n)) if n > 0 => {
                    self.to_client.advance(n);
                    self.wrote_client();
                    unflushed.client = client_tls;
                }
                Event::FlushedClient => unflushed.client = false,
                Event::ReadClient(Ok(0)) => return Ok(Done::ClientLeft),
                Event::ReadClient(Ok(_)) => {}
                Event::WroteClient(_) | Event::ReadClient(Err(_)) => return Err(Exit::ClientGone),
            }
        }
    }

    /// Waits for the first of: a signal, room to write either side (or a flush owed), bytes
    /// to read from either side while the buffer they go to has room, the stuck check.
    /// Polled by hand, in that order: both directions of a socket are polled one after the
    /// other through the one `&mut`, so a TLS stream is not split each turn.
    async fn next_event(&mut self, unflushed: &Unflushed, stuck_at: Option<Instant>) -> Event {
        use super::conversation::BUFFER_LIMIT;
        use std::task::Poll;
        let read_client = self.to_server.len() < BUFFER_LIMIT;
        let read_server = self.to_client.len() < BUFFER_LIMIT;
        for buf in [&mut self.from_client, &mut self.from_server] {
            if buf.capacity() - buf.len() < READ_MIN {
                buf.reserve(READ_CHUNK);
            }
        }
        let held = self.held.as_mut().expect("exchange runs with a server");
        let server = &mut held.lease.conn.stream;
        let client = &mut self.client;
        let write_server = !self.to_server.is_empty() || unflushed.server;
        let write_client = !self.to_client.is_empty() || unflushed.client;
        let (to_server, to_client) = (&self.to_server, &self.to_client);
        let (from_server, from_client) = (&mut self.from_server, &mut self.from_client);
        let signal = &self.signal;
        let mut timer = stuck_at.map(|at| arm(&mut self.timer, at));
        std::future::poll_fn(|cx| {
            if signal.poll_wait(cx).is_ready() {
                return Poll::Ready(Event::Signal);
            }
            if write_server {
                if let Poll::Ready(r) = poll_push(server, cx, to_server) {
                    return Poll::Ready(match r {
                        Ok(None) => Event::FlushedServer,
                        Ok(Some(n)) => Event::WroteServer(Ok(n)),
                        Err(e) => Event::WroteServer(Err(e)),
                    });
                }
            }
            if write_client {
                if let Poll::Ready(r) = poll_push(client, cx, to_client) {
                    return Poll::Ready(match r {
                        Ok(None) => Event::FlushedClient,
                        Ok(Some(n)) => Event::WroteClient(Ok(n)),
                        Err(e) => Event::WroteClient(Err(e)),
                    });
                }
            }
            if read_server {
                if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *server), cx, from_server) {
                    return Poll::Ready(Event::ReadServer(r));
                }
            }
            if read_client {
                if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut *client), cx, from_client) {
                    return Poll::Ready(Event::ReadClient(r));
                }
            }
            if let Some(timer) = timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::StuckCheck);
                }
            }
            Poll::Pending
        })
        .await
    }

    fn count_stuck(&self, why: &str) {
        let held = self.held.as_ref().expect("checked with a server");
        let (peer, member) = (&self.registration.entry.peer, &held.route.member.name);
        tracing::warn!(%peer, port = %self.port, %member, server = held.lease.conn.id, %why, "closing a stuck server connection");
        self.shared
            .metrics
            .pool_stuck_closed
            .with_label_values(&[self.port.label()])
            .inc();
    }

    /// Some of `to_client` went out: the client stands at a message boundary when all of it
    /// did and no message is being streamed to it.
    fn wrote_client(&mut self) {
        self.client_whole = self.to_client.is_empty() && !self.conversation.mid_server_message();
    }

    /// Hands the client's bytes to the conversation; a large message in progress is counted.
    fn take_client(&mut self) -> Result<(), Exit> {
        let held = self.held.as_mut().expect("exchange runs with a server");
        let conn = &mut held.lease.conn.state;
        let (had, owed) = (self.from_client.len(), self.to_client.len());
        let taken =
            self.conversation
                .from_client(&mut self.from_client, &mut self.to_server, conn)?;
        // Answers pgrouter gives itself go out as soon as they are due.
        self.conversation.answer_owed(&mut self.to_client);
        self.tally.received += had.saturating_sub(self.from_client.len()) as u64;
        self.tally.sent += self.to_client.len().saturating_sub(owed) as u64;
        match taken {
            Taken::All => Ok(()),
            Taken::Partial(len) => self.count_large_message(len),
        }
    }

    /// Hands the server's bytes to the conversation, and counts what they settled.
    pub(super) fn take_server(&mut self) -> Result<Heard, Broken> {
        let held = self.held.as_mut().expect("exchange runs with a server");
        let conn = &mut held.lease.conn.state;
        let before = self.to_client.len();
        let heard =
            self.conversation
                .from_server(&mut self.from_server, &mut self.to_client, conn)?;
        self.tally.sent += self.to_client.len().saturating_sub(before) as u64;
        self.tally.queries += u64::from(heard.ready);
        self.tally.transactions += u64::from(heard.idle);
        self.log_set_failure(&heard);
        Ok(heard)
    }

    /// Adds what the transaction did to `pool`'s counters, the port's transactions and the
    /// session's bytes.
    pub(super) fn settle_tally(&mut self, pool: &crate::servers::pools::Pool) {
        use std::sync::atomic::Ordering::Relaxed;
        let t = std::mem::take(&mut self.tally);
        self.bytes.0 += t.received;
        self.bytes.1 += t.sent;
        let stats = &pool.stats;
        for (counter, n) in [
            (&stats.received, t.received),
            (&stats.sent, t.sent),
            (&stats.queries, t.queries),
            (&stats.transactions, t.transactions),
            (&stats.query_micros, t.query_micros),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
        if t.transactions > 0 {
            self.transactions.inc_by(t.transactions);
        }
    }

    fn log_set_failure(&self, heard: &Heard) {
        if let Some((code, error)) = &heard.set_failed {
            let peer = &self.registration.entry.peer;
            tracing::warn!(%peer, %code, %error, "setting the client's parameters failed");
        }
    }

    /// Whether the held member may still serve; `Some` when nothing more from it may reach
    /// the client. A member that only stopped being eligible (a lagging replica) finishes
    /// the transaction and its connection closes when it is given back.
    pub(super) fn check_role(&mut self) -> Option<Lost> {
        let held = self.held.as_mut()?;
        match self.roles.changed(&self.shared, &held.route)? {
            Verdict::Keep => None,
            Verdict::CloseNow(reason) => Some(Lost::Role(reason)),
            Verdict::Drain(_) => {
                held.retire = true;
                None
            }
        }
    }
}

/// How late the session's timer may fire: a deadline that moved by less keeps the timer as
/// it is, so transactions under load do not each put a timer in the runtime's wheel and
/// take it out again. The stuck check (`pool.stuck_check`) and the idle-in-transaction
/// timeout are enforced up to this late, as pgbouncer's once-a-second janitor does.
const TIMER_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// The session's timer, set to fire between `at` and `at + TIMER_SLACK`. A timer left set
/// when the exchange ends fires once while the client idles, which it ignores.
fn arm(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    at: Instant,
) -> Pin<&mut tokio::time::Sleep> {
    let at = tokio::time::Instant::from_std(at);
    match timer {
        Some(t) if t.deadline() >= at && t.deadline() <= at + TIMER_SLACK => {}
        Some(t) => t.as_mut().reset(at + TIMER_SLACK),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at + TIMER_SLACK))),
    }
    timer.as_mut().expect("set above").as_mut()
}

/// Writes what a plain socket takes of `buf` without waiting; leaves TLS streams alone.
fn write_now(stream: &Stream, buf: &mut BytesMut) -> std::io::Result<()> {
    let Stream::Plain(tcp) = stream else {
        return Ok(());
    };
    while !buf.is_empty() {
        match tcp.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes some of `buf`, or flushes (TLS) once it is all written: `None` when flushed.
fn poll_push(
    stream: &mut Stream,
    cx: &mut std::task::Context<'_>,
    buf: &[u8],
) -> std::task::Poll<std::io::Result<Option<usize>>> {
    use tokio::io::AsyncWrite;
    let stream = Pin::new(stream);
    if buf.is_empty() {
        stream.poll_flush(cx).map_ok(|()| None)
    } else {
        stream.poll_write(cx, buf).map_ok(Some)
    }
}
