//! The hot loop: bytes both ways in batches, headers scanned on the fly, the topology checked
//! before every write to the client.

use std::pin::Pin;

use crate::stream::Stream;
use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::time::Sleep;

use crate::cancel::Registration;
use crate::hold::RoleCheck;
use crate::metrics::{ClientState, StateGauge};
use crate::protocol::frame::{BadLength, Scanner};
// Re-exported for src/pool/session.rs, which still names it here.
use crate::protocol::limits::MAX_CLIENT_MESSAGE;
use crate::protocol::startup::CancelKey;
use crate::route::{Port, Route, Verdict};
use crate::shared::Shared;

pub use super::pump::{Progress, Pump, Side, Step, BATCH};

/// Why pgrouter ends a session itself; `kind` is the metric label.
#[derive(Debug, Clone)]
pub struct Cause {
    pub kind: &'static str,
    pub reason: String,
}

impl End {
    /// How the session ended, for its log line.
    pub fn kind(&self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::ServerGone { .. } => "server_gone",
            End::Lost { .. } => "leader_lost",
            End::Drained(cause) => cause.kind,
            End::Killed { .. } => "killed",
            End::DrainTimeout { .. } => "drain_timeout",
            End::ClientError(_) => "client_error",
            End::ClientProtocol(_) => "client_protocol",
            End::ClientTruncated => "client_truncated",
            End::ServerProtocol(_) => "server_protocol",
        }
    }
}

/// Why a relayed session ended.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    /// The server closed or failed (`error`); `tell` says whether the client can be told: at a
    /// message boundary, and the server's last word was not an ErrorResponse of its own.
    ServerGone {
        error: Option<std::io::Error>,
        tell: bool,
    },
    /// The member lost the leader key mid-session; `at_boundary` says whether the client can be told.
    Lost {
        reason: String,
        at_boundary: bool,
    },
    /// Closed at an idle point after the member left the eligible set, or for shutdown.
    Drained(Cause),
    /// The console's KILL of the session's database; `at_boundary` as for `Lost`.
    Killed {
        at_boundary: bool,
    },
    /// Still busy `drain_timeout` after it should have drained.
    DrainTimeout {
        cause: Cause,
        at_boundary: bool,
    },
    ClientError(std::io::Error),
    /// The client sent what cannot be framed (why).
    ClientProtocol(String),
    /// The client closed its side with a message half sent.
    ClientTruncated,
    ServerProtocol(BadLength),
}

/// Transaction state followed from the two streams.
pub struct TxState {
    /// Queries, Syncs and function calls sent that have not had their ReadyForQuery yet. The
    /// startup counts as one: the server ends it with the first ReadyForQuery.
    pub awaiting: u32,
    /// Status byte of the last ReadyForQuery: b'I', b'T' or b'E'; 0 before the first.
    pub status: u8,
}

impl TxState {
    pub fn idle(&self) -> bool {
        self.awaiting == 0 && self.status == b'I'
    }
}

/// What the relay follows of the two streams: message boundaries, transaction state, the
/// cancel key, and the session's counters (resolved once, so the loop only adds to atomics).
/// Public, like `Pump` and `TxState`, for the fuzz targets.
pub struct Follow<'a> {
    shared: &'a Shared,
    member_addr: &'a str,
    pub up_scan: Scanner,
    pub down_scan: Scanner,
    pub tx: TxState,
    /// Tag of the last whole message from the server.
    pub last_from_server: u8,
    /// The client sent Terminate: the server closing is the end it asked for.
    pub terminated: bool,
    /// The last batch from the server ended with a whole FATAL or PANIC ErrorResponse: where it
    /// starts in the batch, and its body, for the relay to name the member in it.
    pub server_fatal: Option<(usize, Vec<u8>)>,
    /// The server batch being relayed begins at a message boundary.
    batch_at_boundary: bool,
    registration: Option<Registration>,
    up_bytes: IntCounter,
    down_bytes: IntCounter,
    transactions: IntCounter,
    /// This session's bytes, for its log line (`Follow::tally`).
    tally: Option<&'a Tally>,
}

/// One session's bytes from the client and to it, kept apart from the port's counters so
/// the session's log line can give them after the relay ends.
#[derive(Debug, Default)]
pub struct Tally {
    pub from_client: std::sync::atomic::AtomicU64,
    pub to_client: std::sync::atomic::AtomicU64,
}

impl Tally {
    /// (from the client, to the client) so far.
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.from_client.load(Relaxed), self.to_client.load(Relaxed))
    }
}

impl<'a> Follow<'a> {
    pub fn new(shared: &'a Shared, port: Port, member_addr: &'a str) -> Follow<'a> {
        let bytes = |direction| {
            shared
                .metrics
                .bytes
                .with_label_values(&[port.label(), direction])
        };
        Follow {
            shared,
            member_addr,
            up_scan: Scanner::new(b"").with_max_len(MAX_CLIENT_MESSAGE),
            down_scan: Scanner::new(b"ZKE"),
            tx: TxState {
                awaiting: 1,
                status: 0,
            },
            last_from_server: 0,
            terminated: false,
            server_fatal: None,
            batch_at_boundary: true,
            registration: None,
            up_bytes: bytes("client_to_server"),
            down_bytes: bytes("server_to_client"),
            transactions: shared
                .metrics
                .transactions
                .with_label_values(&[port.label()]),
            tally: None,
        }
    }

    /// Counts this session's bytes into `tally` too.
    pub fn tally(mut self, tally: &'a Tally) -> Follow<'a> {
        self.tally = Some(tally);
        self
    }

    /// Bytes from the client: count what will earn a ReadyForQuery.
    pub fn client_bytes(&mut self, data: &[u8]) -> Result<(), BadLength> {
        self.up_bytes.inc_by(data.len() as u64);
        if let Some(t) = self.tally {
            t.from_client
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let (tx, terminated) = (&mut self.tx, &mut self.terminated);
        self.up_scan.feed(data, |tag, _| match tag {
            b'Q' | b'S' | b'F' => tx.awaiting = tx.awaiting.saturating_add(1),
            b'X' => *terminated = true,
            _ => {}
        })
    }

    /// Bytes from the server: ReadyForQuery ends a wait, BackendKeyData is registered for
    /// cancels, a FATAL ErrorResponse ending the batch is noted in `server_fatal`.
    pub fn server_bytes(&mut self, data: &[u8]) -> Result<(), BadLength> {
        self.server_batch(data, 0)
    }

    /// [`Follow::server_bytes`] for a batch whose bytes from `fresh` on were just read (those
    /// before were kept back from the last one); a FATAL is noted by its start in the batch.
    #[inline]
    pub fn server_batch(&mut self, batch: &[u8], fresh: usize) -> Result<(), BadLength> {
        let data = &batch[fresh..];
        // Bytes kept back from the last batch are the start of an ErrorResponse.
        self.batch_at_boundary = fresh > 0 || self.down_scan.at_boundary();
        self.down_bytes.inc_by(data.len() as u64);
        if let Some(t) = self.tally {
            t.to_client
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let Follow {
            tx,
            last_from_server,
            registration,
            transactions,
            shared,
            member_addr,
            ..
        } = self;
        self.down_scan.feed(data, |tag, body| {
            *last_from_server = tag;
            match tag {
                b'Z' => {
                    tx.awaiting = tx.awaiting.saturating_sub(1);
                    if body.first() == Some(&b'I') && tx.status != 0 {
                        transactions.inc();
                    }
                    tx.status = body.first().copied().unwrap_or(0);
                }
                b'K' if body.len() >= 8 => {
                    let key = CancelKey {
                        pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        secret: Bytes::copy_from_slice(&body[4..]),
                    };
                    // Drop the old registration first: dropping it after would unregister a key
                    // sent twice.
                    *registration = None;
                    *registration = Some(shared.cancels.register(key, member_addr));
                }
                _ => {}
            }
        })?;
        if self.last_from_server == b'E' && self.down_scan.at_boundary() {
            // The batch ends with an ErrorResponse: if FATAL and begun in this batch, note it.
            let body = self.down_scan.last_captured();
            if is_fatal(body) {
                if let Some(start) = batch.len().checked_sub(5 + body.len()) {
                    self.server_fatal = Some((start, body.to_vec()));
                }
            }
        }
        Ok(())
    }

    /// Whether what the client was sent ends at a message boundary, so an error may follow it
    /// once the rest of the batch in `down` is dropped: none of the batch was written and it
    /// begins at one, or all of it was written and it ends at one (or only the start of an
    /// ErrorResponse is kept back).
    pub fn client_at_boundary(&self, down: &Pump) -> bool {
        match down.progress() {
            Progress::Untouched => self.batch_at_boundary,
            Progress::Partly => false,
            Progress::Done => down.kept() > 0 || self.down_scan.at_boundary(),
        }
    }

    /// Whether a client whose server went away can be told so: the stream to it stands at a
    /// message boundary and the server's last message was not an error of its own.
    fn can_tell(&self, down: &Pump) -> bool {
        let at_boundary = down.kept() > 0 || self.down_scan.at_boundary();
        !down.pending() && at_boundary && self.last_from_server != b'E'
    }

    /// The end of a session whose server closed or failed. When the client cannot be told,
    /// why not is logged: what was left to write, where the stream to the client stands, and
    /// the server's last message.
    fn server_gone(&self, error: Option<std::io::Error>, down: &Pump) -> End {
        let tell = self.can_tell(down);
        if !tell {
            tracing::debug!(
                pending = down.pending(),
                kept = down.kept(),
                at_boundary = self.down_scan.at_boundary(),
                last_from_server = %char::from(self.last_from_server),
                "the server went away where its client cannot be told"
            );
        }
        End::ServerGone { error, tell }
    }
}

/// Follows the batch just read from the server into `down` and readies it for the client: a
/// member's FATAL ending it is put in the words of [`named`] (its SQLSTATE returned); a short
/// ErrorResponse it ends inside is kept back for the next batch, so it is whole when looked at.
#[inline]
fn server_batch(
    follow: &mut Follow<'_>,
    down: &mut Pump,
    scope: &str,
    member: &str,
) -> Result<Option<String>, BadLength> {
    let (batch, fresh) = down.batch();
    follow.server_batch(batch, fresh)?;
    if let Some((start, body)) = follow.server_fatal.take() {
        let (code, response) = named(scope, member, &body);
        return Ok(down.replace_tail(start, &response).then_some(code));
    }
    keep_back_partial(follow, down);
    Ok(None)
}

/// The longest start of a message (other than an ErrorResponse, kept whole) a batch that ends
/// inside it keeps back for the next one.
pub const KEEP_BACK_MAX: usize = 1024;

/// Keeps back the start of a message the batch just read ends inside, when the message began
/// in this batch: an ErrorResponse (so it is whole when looked at) or a short message of
/// another kind. The client then stands at a message boundary while the rest is awaited, so a
/// server that dies mid-message, or a member that loses the leader key then, can still be
/// answered with an error instead of a cut message. Whether anything was kept.
pub fn keep_back_partial(follow: &Follow<'_>, down: &mut Pump) -> bool {
    let seen = match follow.down_scan.partial(b'E') {
        Some(seen) => seen,
        None => follow.down_scan.in_progress(),
    };
    (1..=KEEP_BACK_MAX.max(crate::protocol::limits::CAPTURE_MAX + 5)).contains(&seen)
        && down.keep_back(seen)
}

/// Whether an ErrorResponse body has severity FATAL or PANIC (the server closes after it).
fn is_fatal(body: &[u8]) -> bool {
    body.split(|b| *b == 0)
        .any(|field| matches!(field, b"VFATAL" | b"VPANIC" | b"SFATAL" | b"SPANIC"))
}

/// A member's ErrorResponse (`body`) with its message prefixed by pgrouter, the cluster and the
/// member, every other field as the member sent it; and its SQLSTATE.
pub fn named(scope: &str, member: &str, body: &[u8]) -> (String, bytes::BytesMut) {
    use crate::protocol::wire;
    let prefix = format!("pgrouter: cluster \"{scope}\": member \"{member}\": ");
    let mut fields = wire::error_fields(body);
    let code = wire::field(&fields, b'C').unwrap_or("XX000").to_owned();
    match fields.iter_mut().find(|(c, _)| *c == b'M') {
        Some((_, m)) => m.insert_str(0, &prefix),
        None => fields.push((b'M', prefix.trim_end_matches([':', ' ']).to_owned())),
    }
    let fields: Vec<(u8, &str)> = fields.iter().map(|(c, v)| (*c, v.as_str())).collect();
    let mut response = bytes::BytesMut::new();
    wire::error_response(&mut response, b'E', &fields);
    (code, response)
}

pub struct Relay<'a> {
    pub shared: &'a Shared,
    pub route: &'a Route,
    pub port: Port,
    /// The client's database, and when it connected: a KILL of it since ends the session.
    pub database: &'a str,
    pub began: tokio::time::Instant,
}

const SHUTDOWN: &str = "shutdown";

/// A session to close at its next idle point, and the timer that cuts it if none comes. The
/// timer is made once, when draining begins: not on every turn of the relay loop.
struct Draining {
    cause: Cause,
    deadline: Pin<Box<Sleep>>,
}

impl Draining {
    /// Resolves when the drain deadline passes; never without a drain.
    async fn deadline(drain: &mut Option<Draining>) {
        match drain {
            Some(d) => d.deadline.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

impl Relay<'_> {
    /// Relays until either side closes or pgrouter ends the session. The caller has already
    /// relayed the login up to the first ReadyForQuery, feeding `follow`; `state` counts the
    /// client under active or idle.
    pub async fn run(
        &self,
        client: &mut Stream,
        server: &mut Stream,
        mut follow: Follow<'_>,
        state: &mut StateGauge,
    ) -> End {
        let shared = self.shared;
        let mut roles = RoleCheck::new(shared);
        let signal = shared.signals.subscribe();
        let (up_flushes, down_flushes) = (server.is_tls(), client.is_tls());
        let (mut cr, mut cw) = client.halves();
        let (mut sr, mut sw) = server.halves();
        let (mut up, mut down) = (Pump::new(up_flushes), Pump::new(down_flushes));
        let mut drain: Option<Draining> = None;

        loop {
            // Checked before every step, so no byte from a member that lost its role is relayed
            // after the topology saying so was published. A batch read but not yet written is
            // dropped: the client is told why in its place when it had none of it.
            let at_boundary = follow.client_at_boundary(&down);
            if let Some(end) = self.review(&mut roles, &mut drain, at_boundary) {
                return end;
            }
            let flushed = !up.pending()
                && !down.pending()
                && follow.up_scan.at_boundary()
                && follow.down_scan.at_boundary();
            let idle = flushed && follow.tx.idle();
            state.set(if idle {
                ClientState::Idle
            } else {
                ClientState::Active
            });
            if let (Some(d), true) = (&drain, idle) {
                return End::Drained(d.cause.clone());
            }
            // Paused: an idle client's next transaction waits, unread, until resume.
            let hold_client = idle && shared.is_paused(self.port);
            tokio::select! {
                biased;
                _ = signal.wait() => {}
                () = Draining::deadline(&mut drain), if drain.is_some() => {
                    let cause = drain.take().expect("a deadline comes with a drain").cause;
                    return End::DrainTimeout { cause, at_boundary };
                }
                step = down.step(&mut sr, &mut cw) => match step {
                    Ok(Step::Read(_)) => {
                        match server_batch(&mut follow, &mut down, &shared.scope, &self.route.member.name) {
                            Err(e) => return End::ServerProtocol(e),
                            Ok(Some(code)) => shared.metrics.client_errors.with_label_values(&[&code]).inc(),
                            Ok(None) => {}
                        }
                    }
                    Ok(Step::Wrote) => {}
                    Ok(Step::Eof) if follow.terminated => return End::ClientClosed,
                    Ok(Step::Eof) => {
                        return follow.server_gone(None, &down)
                    }
                    Err(Side::Read(_)) if follow.terminated => return End::ClientClosed,
                    Err(Side::Read(e)) => {
                        return follow.server_gone(Some(e), &down)
                    }
                    Err(Side::Write(e)) => return End::ClientError(e),
                },
                step = up.step(&mut cr, &mut sw), if !hold_client => match step {
                    Ok(Step::Read(n)) => {
                        if let Err(e) = follow.client_bytes(&up.buf[..n]) {
                            return End::ClientProtocol(e.to_string());
                        }
                    }
                    Ok(Step::Wrote) => {}
                    Ok(Step::Eof) if !follow.up_scan.at_boundary() => return End::ClientTruncated,
                    Ok(Step::Eof) => return End::ClientClosed,
                    Err(Side::Read(e)) => return End::ClientError(e),
                    Err(Side::Write(e)) => {
                        return follow.server_gone(Some(e), &down)
                    }
                },
            }
        }
    }

    /// Applies what changed since the last step: the member's role (the session ends now,
    /// or drains) and shutdown (it drains); the end, if it is now.
    #[inline]
    fn review(
        &self,
        roles: &mut RoleCheck,
        drain: &mut Option<Draining>,
        at_boundary: bool,
    ) -> Option<End> {
        if let Some(verdict) = roles.changed(self.shared, self.route) {
            match verdict {
                Verdict::Keep => *drain = drain.take().filter(|d| d.cause.kind == SHUTDOWN),
                Verdict::CloseNow(reason) => {
                    return Some(End::Lost {
                        reason,
                        at_boundary,
                    })
                }
                Verdict::Drain(reason) if drain.is_none() => {
                    let kind = "replica_ineligible";
                    *drain = Some(self.drain_from_now(Cause { kind, reason }));
                }
                Verdict::Drain(_) => {}
            }
        }
        if self.shared.kills.killed(self.database, self.began) {
            return Some(End::Killed { at_boundary });
        }
        let shutting_down = self.shared.shutting_down();
        if shutting_down && drain.as_ref().is_none_or(|d| d.cause.kind != SHUTDOWN) {
            *drain = Some(self.drain_from_now(shutdown_cause(self.shared)));
        }
        None
    }

    fn drain_from_now(&self, cause: Cause) -> Draining {
        let timeout = self.shared.config().routing.drain_timeout.0;
        Draining {
            cause,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

fn shutdown_cause(shared: &Shared) -> Cause {
    Cause {
        kind: SHUTDOWN,
        reason: shared.shutdown_reason().into(),
    }
}

/// Sends Terminate so the server ends the backend cleanly instead of logging a lost client.
pub async fn terminate(server: &mut Stream) {
    let _ = server.send(&[b'X', 0, 0, 0, 4]).await;
    let _ = server.shutdown().await;
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
