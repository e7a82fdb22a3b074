//! The hot loop: bytes both ways in batches, headers scanned on the fly, the topology checked
//! before every write to the client.

use std::pin::Pin;
use std::sync::Arc;

use crate::stream::Stream;
use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::cancel::Registration;
use crate::config::Config;
use crate::metrics::{ClientState, StateGauge};
use crate::protocol::frame::{BadLength, Scanner};
// Re-exported for src/pool/session.rs, which still names it here.
pub use crate::protocol::limits::MAX_CLIENT_MESSAGE;
use crate::protocol::startup::CancelKey;
use crate::route::{Port, Route, Verdict};
use crate::shared::Shared;
use crate::topology::Topology;

/// Bytes read per direction in one batch.
pub const BATCH: usize = 16 * 1024;

/// Why pgrouter ends a session itself; `kind` is the metric label.
#[derive(Debug, Clone)]
pub struct Cause {
    pub kind: &'static str,
    pub reason: String,
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

/// One direction: a buffer that is either being filled from the reader or drained to the writer.
/// Each step is a single read or write, so dropping a step in `select!` loses nothing.
/// Public for the fuzz targets (fuzz/fuzz_targets/frames.rs).
pub struct Pump {
    pub buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The writer is TLS: what it accepted goes out only on flush.
    flushes: bool,
    unflushed: bool,
    /// Bytes of the batch kept back for the next one, at `buf[end..end + kept]` (moved to the
    /// front once the rest is written; the next read lands after them).
    kept: usize,
    /// Where the last read's bytes begin in the batch.
    fresh: usize,
}

pub enum Step {
    Read(usize),
    Wrote,
    Eof,
}

pub enum Side {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl Pump {
    pub fn new(flushes: bool) -> Pump {
        Pump {
            buf: vec![0; BATCH].into_boxed_slice(),
            start: 0,
            end: 0,
            flushes,
            unflushed: false,
            kept: 0,
            fresh: 0,
        }
    }

    /// The batch being relayed, and where the bytes of the last read begin in it.
    #[inline]
    pub fn batch(&self) -> (&[u8], usize) {
        (&self.buf[..self.end], self.fresh)
    }

    /// Bytes kept back for the next batch.
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Keeps the last `len` bytes of the batch back, before any of it is written: they go out
    /// at the front of the next batch.
    pub fn keep_back(&mut self, len: usize) -> bool {
        if self.start != 0 || len > self.end {
            return false;
        }
        self.end -= len;
        self.kept = len;
        true
    }

    /// Replaces the read batch's bytes from `from` on with `bytes`, if they fit; before any of
    /// it is written.
    pub fn replace_tail(&mut self, from: usize, bytes: &[u8]) -> bool {
        let end = from + bytes.len();
        if self.start != 0 || from > self.end || end > self.buf.len() {
            return false;
        }
        self.buf[from..end].copy_from_slice(bytes);
        self.end = end;
        true
    }

    pub fn pending(&self) -> bool {
        self.start < self.end || self.unflushed
    }

    pub async fn step<R, W>(&mut self, r: &mut R, w: &mut W) -> Result<Step, Side>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.start == self.end && self.unflushed {
            w.flush().await.map_err(Side::Write)?;
            self.unflushed = false;
            return Ok(Step::Wrote);
        }
        if self.pending() {
            let n = w
                .write(&self.buf[self.start..self.end])
                .await
                .map_err(Side::Write)?;
            if n == 0 {
                return Err(Side::Write(std::io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
            if self.start == self.end {
                if self.kept > 0 {
                    self.buf.copy_within(self.end..self.end + self.kept, 0);
                }
                (self.start, self.end) = (0, 0);
                self.unflushed = self.flushes;
            }
            return Ok(Step::Wrote);
        }
        // Here everything is written: bytes kept back wait at the front.
        let kept = self.kept;
        match r.read(&mut self.buf[kept..]).await.map_err(Side::Read)? {
            0 => Ok(Step::Eof),
            n => {
                (self.fresh, self.end, self.kept) = (kept, kept + n, 0);
                Ok(Step::Read(n))
            }
        }
    }
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
    registration: Option<Registration>,
    up_bytes: IntCounter,
    down_bytes: IntCounter,
    transactions: IntCounter,
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
            registration: None,
            up_bytes: bytes("client_to_server"),
            down_bytes: bytes("server_to_client"),
            transactions: shared
                .metrics
                .transactions
                .with_label_values(&[port.label()]),
        }
    }

    /// Bytes from the client: count what will earn a ReadyForQuery.
    pub fn client_bytes(&mut self, data: &[u8]) -> Result<(), BadLength> {
        self.up_bytes.inc_by(data.len() as u64);
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
        self.down_bytes.inc_by(data.len() as u64);
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

    /// Whether a client whose server went away can be told so: the stream to it stands at a
    /// message boundary and the server's last message was not an error of its own.
    fn can_tell(&self, down: &Pump) -> bool {
        !down.pending() && self.down_scan.at_boundary() && self.last_from_server != b'E'
    }
}

/// Whether a session's member may still serve, asked again only when the topology or the
/// settings changed since the last time (a change before the first time counts). Only
/// `has_changed` is asked of the receivers (an atomic load); wake-ups come from the session's
/// signal, which costs nothing to poll, unlike a `changed()` future shared by every session.
pub struct RoleCheck {
    topology: watch::Receiver<Arc<Topology>>,
    config: watch::Receiver<Arc<Config>>,
}

impl RoleCheck {
    pub fn new(shared: &Shared) -> RoleCheck {
        let mut topology = shared.topology.clone();
        // A change that arrived between routing and now must not be missed.
        topology.mark_changed();
        RoleCheck {
            topology,
            config: shared.config_changes(),
        }
    }

    /// The verdict on `route` if anything changed since the last call; None otherwise.
    pub fn changed(&mut self, shared: &Shared, route: &Route) -> Option<Verdict> {
        let changed =
            self.topology.has_changed().unwrap_or(true) | self.config.has_changed().unwrap_or(true);
        changed.then(|| {
            let current = self.topology.borrow_and_update().clone();
            let routing = self.config.borrow_and_update().routing.clone();
            shared.router.check(&routing, &current, route)
        })
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
    if let Some(seen) = follow.down_scan.partial(b'E') {
        down.keep_back(seen);
    }
    Ok(None)
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
    use pgwire::messages::Message;
    let prefix = format!("pgrouter: cluster \"{scope}\": member \"{member}\": ");
    let mut fields = wire::error_fields(body);
    let code = wire::field(&fields, b'C').unwrap_or("XX000").to_owned();
    match fields.iter_mut().find(|(c, _)| *c == b'M') {
        Some((_, m)) => m.insert_str(0, &prefix),
        None => fields.push((b'M', prefix.trim_end_matches([':', ' ']).to_owned())),
    }
    let mut response = bytes::BytesMut::new();
    pgwire::messages::response::ErrorResponse::new(fields)
        .encode(&mut response)
        .expect("an ErrorResponse always fits in a message");
    (code, response)
}

pub struct Relay<'a> {
    pub shared: &'a Shared,
    pub route: &'a Route,
    pub port: Port,
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
            let at_boundary = !down.pending() && follow.down_scan.at_boundary();
            // Checked before every step, so no byte from a member that lost its role is relayed
            // after the topology saying so was published.
            if let Some(verdict) = roles.changed(shared, self.route) {
                match verdict {
                    Verdict::Keep => drain = drain.filter(|d| d.cause.kind == SHUTDOWN),
                    Verdict::CloseNow(reason) => {
                        return End::Lost {
                            reason,
                            at_boundary,
                        }
                    }
                    Verdict::Drain(reason) => {
                        drain = drain.or_else(|| {
                            Some(self.drain_from_now(Cause {
                                kind: "replica_ineligible",
                                reason,
                            }))
                        });
                    }
                }
            }
            if shared.shutting_down() && drain.as_ref().is_none_or(|d| d.cause.kind != SHUTDOWN) {
                drain = Some(self.drain_from_now(shutdown_cause()));
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
                        return End::ServerGone { error: None, tell: follow.can_tell(&down) }
                    }
                    Err(Side::Read(_)) if follow.terminated => return End::ClientClosed,
                    Err(Side::Read(e)) => {
                        return End::ServerGone { error: Some(e), tell: follow.can_tell(&down) }
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
                        return End::ServerGone { error: Some(e), tell: follow.can_tell(&down) }
                    }
                },
            }
        }
    }

    fn drain_from_now(&self, cause: Cause) -> Draining {
        let timeout = self.shared.config().routing.drain_timeout.0;
        Draining {
            cause,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

fn shutdown_cause() -> Cause {
    Cause {
        kind: SHUTDOWN,
        reason: "pgrouter is shutting down".into(),
    }
}

/// Sends Terminate so the server ends the backend cleanly instead of logging a lost client.
pub async fn terminate(server: &mut Stream) {
    let _ = server.send(&[b'X', 0, 0, 0, 4]).await;
    let _ = server.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_needs_every_query_answered_and_no_transaction() {
        let mut tx = TxState {
            awaiting: 1,
            status: 0,
        };
        assert!(!tx.idle(), "startup not finished");
        tx = TxState {
            awaiting: 0,
            status: b'I',
        };
        assert!(tx.idle());
        tx.status = b'T';
        assert!(!tx.idle(), "inside a transaction");
        tx = TxState {
            awaiting: 1,
            status: b'I',
        };
        assert!(!tx.idle(), "a query is in flight");
    }

    fn shared() -> Shared {
        let config = crate::config::Config::from_toml(
            "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:1\"]\n",
        )
        .expect("config");
        let (_tx, rx) = watch::channel(Arc::new(Topology::empty("demo")));
        Shared::new(config, rx, Arc::new(crate::metrics::Metrics::new()))
    }

    fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    const FATAL: &[u8] =
        b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";

    #[test]
    fn a_fatal_error_ending_a_batch_is_found_only_when_whole_in_it() {
        let shared = shared();
        let rows = [
            tagged(b'D', b"\0\x01\0\0\0\x01x"),
            tagged(b'C', b"SELECT 1\0"),
        ]
        .concat();
        let fatal = tagged(b'E', FATAL);
        let stream = [rows.clone(), fatal.clone()].concat();
        for cut in 0..stream.len() {
            let mut follow = Follow::new(&shared, Port::Primary, "127.0.0.1:5432");
            follow.server_bytes(&stream[..cut]).unwrap();
            assert_eq!(follow.server_fatal, None, "cut {cut}: not whole yet");
            follow.server_bytes(&stream[cut..]).unwrap();
            let found = follow.server_fatal.take();
            if cut <= rows.len() {
                let start = rows.len() - cut;
                assert_eq!(found, Some((start, FATAL.to_vec())), "cut {cut}");
            } else {
                assert_eq!(found, None, "cut {cut}: began in the batch before");
            }
        }
        // An ERROR, or a FATAL followed by more, is left alone.
        let mut follow = Follow::new(&shared, Port::Primary, "127.0.0.1:5432");
        let error = tagged(b'E', b"SERROR\0VERROR\0C42P01\0Mno such table\0\0");
        follow.server_bytes(&error).unwrap();
        assert_eq!(follow.server_fatal, None);
        follow
            .server_bytes(&[fatal, tagged(b'Z', b"I")].concat())
            .unwrap();
        assert_eq!(follow.server_fatal, None);
    }

    /// The server's rows and FATAL arrive in two reads, cut at every byte: the client gets the
    /// rows as sent and the FATAL named, also when the cut falls inside the FATAL (its start is
    /// kept back until the rest comes). An ERROR cut the same way goes out as sent.
    #[tokio::test]
    async fn a_fatal_split_across_reads_is_named_whole() {
        let shared = shared();
        let rows = [
            tagged(b'D', b"\0\x01\0\0\0\x01x"),
            tagged(b'C', b"SELECT 1\0"),
        ]
        .concat();
        let (_, named_fatal) = named("demo", "pg0", FATAL);
        let error = tagged(b'E', b"SERROR\0VERROR\0C42P01\0Mno such table\0\0");
        let cases = [
            (
                [rows.clone(), tagged(b'E', FATAL)].concat(),
                [rows.clone(), named_fatal.to_vec()].concat(),
            ),
            (
                [rows.clone(), error.clone()].concat(),
                [rows.clone(), error].concat(),
            ),
        ];
        for (stream, want) in cases {
            for cut in 1..stream.len() {
                let mut follow = Follow::new(&shared, Port::Primary, "127.0.0.1:5432");
                let mut down = Pump::new(false);
                let mut client = Vec::new();
                for part in [&stream[..cut], &stream[cut..]] {
                    let mut from_server = part;
                    assert!(matches!(
                        down.step(&mut from_server, &mut client).await,
                        Ok(Step::Read(_))
                    ));
                    server_batch(&mut follow, &mut down, "demo", "pg0").unwrap();
                    while down.pending() {
                        let mut nothing: &[u8] = &[];
                        assert!(matches!(
                            down.step(&mut nothing, &mut client).await,
                            Ok(Step::Wrote)
                        ));
                    }
                }
                assert_eq!(client, want, "cut {cut}");
                assert!(follow.down_scan.at_boundary());
            }
        }
    }

    #[test]
    fn a_named_fatal_replaces_the_batch_tail_when_it_fits() {
        let mut pump = Pump::new(false);
        pump.buf[..10].copy_from_slice(b"DDDDDEEEEE");
        (pump.start, pump.end) = (0, 10);
        let (code, named) = named("demo", "pg0", FATAL);
        assert_eq!(code, "57P01");
        assert!(pump.replace_tail(5, &named));
        assert_eq!(&pump.buf[..5], b"DDDDD");
        assert_eq!(&pump.buf[5..pump.end], &named[..]);
        let fields = crate::protocol::wire::error_fields(&named[5..]);
        assert_eq!(
            crate::protocol::wire::field(&fields, b'M'),
            Some("pgrouter: cluster \"demo\": member \"pg0\": terminating connection due to administrator command")
        );
        assert!(!pump.replace_tail(BATCH - 3, &named), "past the batch");
    }

    fn backend_key(pid: i32, secret: &'static [u8]) -> (CancelKey, Vec<u8>) {
        let key = CancelKey {
            pid,
            secret: Bytes::from_static(secret),
        };
        let message = tagged(b'K', &[&pid.to_be_bytes()[..], secret].concat());
        (key, message)
    }

    /// Follows `stream` from the server cut in two at every byte; after it, `latest` is
    /// registered for the member and no other key is (`replaced` included); after the Follow
    /// is dropped, nothing is.
    fn check_backend_keys(stream: &[u8], latest: &CancelKey, replaced: Option<&CancelKey>) {
        const MEMBER: &str = "127.0.0.1:5432";
        let shared = shared();
        for cut in 0..=stream.len() {
            let mut follow = Follow::new(&shared, Port::Primary, MEMBER);
            follow.server_bytes(&stream[..cut]).unwrap();
            follow.server_bytes(&stream[cut..]).unwrap();
            assert_eq!(
                shared.cancels.lookup(latest),
                Some(Some((MEMBER.to_owned(), latest.clone()))),
                "cut {cut}: the latest key is not registered"
            );
            if let Some(old) = replaced {
                assert_eq!(shared.cancels.lookup(old), None, "cut {cut}: old key kept");
            }
            assert_eq!(shared.cancels.len(), 1, "cut {cut}: keys registered");
            drop(follow);
            assert!(shared.cancels.is_empty(), "cut {cut}: key left registered");
        }
    }

    /// Found while writing fuzz/fuzz_targets/frames.rs: a server sending the same
    /// BackendKeyData twice lost its key, the old registration being dropped after the new one
    /// was made.
    #[test]
    fn a_backend_key_sent_twice_stays_registered() {
        let (key, message) = backend_key(4242, b"\x01\x02\x03\x04");
        let stream = [message.clone(), message, tagged(b'Z', b"I")].concat();
        check_backend_keys(&stream, &key, None);
    }

    #[test]
    fn a_second_backend_key_replaces_the_first() {
        let (first, first_message) = backend_key(4242, b"\x01\x02\x03\x04");
        let (second, second_message) = backend_key(4243, b"\x05\x06\x07\x08");
        let stream = [first_message, second_message, tagged(b'Z', b"I")].concat();
        check_backend_keys(&stream, &second, Some(&first));
    }

    fn msg(tag: u8, len: u32, body: usize) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&len.to_be_bytes());
        m.resize(5 + body, b'x');
        m
    }

    #[test]
    fn client_lengths_past_postgres_limit_are_refused_in_any_split() {
        let good = [msg(b'Q', 14, 10), msg(b'S', 4, 0), msg(b'd', 1004, 1000)].concat();
        let client = || Scanner::new(b"").with_max_len(MAX_CLIENT_MESSAGE);
        for bad_len in [
            MAX_CLIENT_MESSAGE + 1,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            3,
        ] {
            let stream = [good.clone(), msg(b'Q', bad_len, 0)].concat();
            for chunk in 1..=stream.len() {
                let mut scan = client();
                let result = stream
                    .chunks(chunk)
                    .try_for_each(|c| scan.feed(c, |_, _| {}));
                assert_eq!(
                    result,
                    Err(BadLength {
                        tag: b'Q',
                        len: bad_len
                    }),
                    "chunk {chunk}"
                );
            }
        }
        // The largest length PostgreSQL accepts passes; its body is followed, not buffered.
        let mut scan = client();
        scan.feed(&good, |_, _| {}).unwrap();
        scan.feed(&msg(b'Q', MAX_CLIENT_MESSAGE, 0), |_, _| {})
            .unwrap();
        assert!(!scan.at_boundary());
    }
}
