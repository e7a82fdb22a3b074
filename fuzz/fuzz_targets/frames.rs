//! The frame scanner (`protocol::frame::Scanner`) and the relay's state machine
//! (`proxy::relay::{Pump, Follow}`) fed arbitrary bytes in arbitrary chunks.
//!
//! Input: 2 bytes of chunk-schedule seed, a 2-byte length, the client stream (after its
//! startup packet), then the server stream.
//!
//! Invariants:
//! - Scanner: feeding a stream whole or split anywhere gives the same messages (tag and
//!   captured body), the same error and the same boundary state; both agree with a plain
//!   whole-buffer reference reader (captured bodies are the real bodies when at most
//!   CAPTURE_MAX bytes, empty otherwise; an impossible length is reported at its header);
//!   `at_boundary` holds exactly at message ends.
//! - Pump: whatever the read and write sizes, the writer gets exactly the reader's bytes in
//!   order, but for a short ErrorResponse the server stream ends inside (kept back, as the
//!   relay keeps one the batch ends inside until it is whole); with `flushes` (TLS) nothing written is left unflushed when the pump reads again
//!   or reaches EOF; `pending` is false once a read returns EOF.
//! - Follow: client lengths outside 4..=MAX_CLIENT_MESSAGE and server lengths below 4 are
//!   errors as soon as their header is read, never earlier; the relay's transaction state (queries awaiting ReadyForQuery, last status,
//!   idle), the transactions counter and the cancel key registration, driven by pumps over
//!   both streams interleaved at random, equal at every step a model that applies whole
//!   messages in the order they complete; its scanners are at a boundary exactly when the
//!   model is; dropping it leaves no cancel key registered; where it says the client stands at
//!   a message boundary (so may be told why its session is cut, the unwritten rest dropped),
//!   the bytes written to the client end at a message end.
#![no_main]

mod common;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use common::{ref_scan, ChunkedReader, ChunkedWriter, Schedule};
use libfuzzer_sys::fuzz_target;
use pgrouter::testing::frame::{BadLength, Scanner};
use pgrouter::testing::limits::{CAPTURE_MAX, MAX_CLIENT_MESSAGE};
use pgrouter::testing::relay::{self, Follow, Pump, Step};
use pgrouter::testing::startup::CancelKey;
use pgrouter::testing::Port;
use pgrouter::testing::Shared;

const MEMBER: &str = "127.0.0.1:5432";

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let config = pgrouter::config::Config::from_toml(
            "[cluster]\nscope = \"fuzz\"\netcd = [\"127.0.0.1:1\"]\n",
        )
        .expect("config");
        let (tx, rx) =
            tokio::sync::watch::channel(Arc::new(pgrouter::testing::Topology::empty("fuzz")));
        std::mem::forget(tx);
        Shared::new(config, rx, Arc::new(pgrouter::testing::Metrics::new()))
    })
}

type Seen = Vec<(u8, Vec<u8>)>;

/// Feeds `parts` to a fresh scanner; the messages seen, the error (feeding stops there) and
/// whether it ended at a boundary.
fn scan(parts: &[&[u8]], capture: &'static [u8]) -> (Seen, Option<BadLength>, bool) {
    let mut s = Scanner::new(capture);
    let mut seen = Vec::new();
    for part in parts {
        if let Err(e) = s.feed(part, |tag, body| seen.push((tag, body.to_vec()))) {
            return (seen, Some(e), s.at_boundary());
        }
    }
    (seen, None, s.at_boundary())
}

fn check_scanner(data: &[u8], schedule: &mut Schedule, capture: &'static [u8]) {
    let whole = scan(&[data], capture);
    let parts = schedule.split(data);
    let split = scan(&parts, capture);
    assert_eq!(whole.0, split.0, "split changed the messages");
    assert_eq!(whole.1, split.1, "split changed the error");
    if whole.1.is_none() {
        assert_eq!(whole.2, split.2, "split changed the boundary state");
    }
    let reference = ref_scan(data);
    let expected: Seen = reference
        .messages
        .iter()
        .map(|m| {
            let body = &data[m.start + 5..m.end];
            let captured = capture.contains(&m.tag) && body.len() <= CAPTURE_MAX;
            (m.tag, if captured { body.to_vec() } else { Vec::new() })
        })
        .collect();
    assert_eq!(
        whole.0, expected,
        "scanner disagrees with the reference reader"
    );
    match reference.bad {
        Some((_, tag, len)) => assert_eq!(whole.1, Some(BadLength { tag, len })),
        None => {
            assert_eq!(whole.1, None);
            let end = reference.messages.last().map_or(0, |m| m.end);
            assert_eq!(whole.2, end == data.len(), "at_boundary at the end");
        }
    }
}

/// The relay's transaction state, computed from whole messages.
#[derive(Debug, Default)]
struct Model {
    awaiting: u32,
    status: u8,
    transactions: u64,
    key: Option<CancelKey>,
}

impl Model {
    fn client_message(&mut self, tag: u8) {
        if matches!(tag, b'Q' | b'S' | b'F') {
            self.awaiting += 1;
        }
    }

    fn server_message(&mut self, tag: u8, body: &[u8]) {
        // The relay captures only bodies of at most CAPTURE_MAX bytes.
        let body = if body.len() <= CAPTURE_MAX { body } else { &[] };
        match tag {
            b'Z' => {
                self.awaiting = self.awaiting.saturating_sub(1);
                if body.first() == Some(&b'I') && self.status != 0 {
                    self.transactions += 1;
                }
                self.status = body.first().copied().unwrap_or(0);
            }
            b'K' if body.len() >= 8 => {
                let key = CancelKey {
                    pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    secret: Bytes::copy_from_slice(&body[4..]),
                };
                self.key = Some(key);
            }
            _ => {}
        }
    }
}

/// One direction of the relay: a pump between mock sockets, and where the model is in the
/// stream.
struct Direction<'a> {
    pump: Pump,
    reader: ChunkedReader,
    writer: ChunkedWriter,
    flushes: bool,
    data: &'a [u8],
    messages: Vec<common::RefMessage>,
    bad: Option<usize>,
    next: usize,
    read: usize,
    eof: bool,
}

impl<'a> Direction<'a> {
    fn new(data: &'a [u8], max_len: u32, flushes: bool, schedule: &mut Schedule) -> Direction<'a> {
        let reference = common::ref_scan_limited(data, max_len);
        Direction {
            pump: Pump::new(flushes),
            reader: ChunkedReader::new(data, Schedule::new(&schedule.next_u64().to_le_bytes())),
            writer: ChunkedWriter::new(Schedule::new(&schedule.next_u64().to_le_bytes())),
            flushes,
            data,
            messages: reference.messages,
            bad: reference.bad.map(|(pos, _, _)| pos),
            next: 0,
            read: 0,
            eof: false,
        }
    }

    /// One pump step; the bytes it read, if any.
    fn step(&mut self) -> Option<std::ops::Range<usize>> {
        let was_pending = self.pump.pending();
        let step = common::block_on(self.pump.step(&mut self.reader, &mut self.writer));
        match step {
            Ok(Step::Read(n)) => {
                assert!(!was_pending, "read with bytes still to write");
                if self.flushes {
                    assert_eq!(self.writer.unflushed, 0, "TLS data left unflushed");
                }
                let (batch, fresh) = self.pump.batch();
                assert_eq!(&batch[fresh..], &self.data[self.read..self.read + n]);
                self.read += n;
                Some(self.read - n..self.read)
            }
            Ok(Step::Wrote) => None,
            Ok(Step::Eof) => {
                assert!(!self.pump.pending() && !was_pending);
                assert_eq!(self.read, self.data.len());
                // Short of what was kept back: a server stream ending inside a short message.
                let sent = self.data.len() - self.pump.kept();
                assert_eq!(
                    self.writer.written,
                    &self.data[..sent],
                    "bytes lost or reordered"
                );
                if self.flushes {
                    assert_eq!(self.writer.unflushed, 0, "TLS data left unflushed");
                }
                self.eof = true;
                None
            }
            Err(_) => unreachable!("mock I/O does not fail"),
        }
    }

    /// Messages completed by bytes read so far, not yet given to the model.
    fn completed(&mut self) -> Vec<common::RefMessage> {
        let mut done = Vec::new();
        while let Some(m) = self.messages.get(self.next) {
            if m.end > self.read {
                break;
            }
            done.push(m.clone());
            self.next += 1;
        }
        done
    }

    fn corrupt_by(&self, read: usize) -> bool {
        self.bad.is_some_and(|pos| pos + 5 <= read)
    }

    /// Whether the bytes the writer got end at a message end of the stream (or are none).
    fn written_at_boundary(&self) -> bool {
        let n = self.writer.written.len();
        n == 0 || self.messages.iter().any(|m| m.end == n)
    }

    fn model_at_boundary(&self) -> bool {
        let end = self.next.checked_sub(1).map_or(0, |i| self.messages[i].end);
        end == self.read
    }
}

/// The relay tells a client why its session was cut only where `client_at_boundary` says:
/// what the client got must then end at a message end; and it says so at least where nothing is
/// left to write and the scanner stands at a boundary.
fn check_client_boundary(follow: &Follow<'_>, down: &Direction<'_>) {
    let said = follow.client_at_boundary(&down.pump);
    if said {
        assert!(
            down.written_at_boundary(),
            "client told at a boundary inside a message"
        );
    }
    if !down.pump.pending() && follow.down_scan.at_boundary() {
        assert!(said, "client not told at a plain boundary");
    }
}

fn check_relay(client: &[u8], server: &[u8], schedule: &mut Schedule) {
    let shared = shared();
    let counter = shared
        .metrics
        .transactions
        .with_label_values(&[Port::PRIMARY.label()]);
    let before = counter.get();
    let flags = schedule.next_u64();
    // Client messages longer than PostgreSQL accepts are refused as soon as their header is in.
    let mut up = Direction::new(client, MAX_CLIENT_MESSAGE, flags & 1 == 1, schedule);
    let mut down = Direction::new(server, u32::MAX, flags & 2 == 2, schedule);
    let mut follow = Follow::new(shared, Port::PRIMARY, MEMBER);
    let mut model = Model {
        awaiting: 1,
        ..Model::default()
    };
    let mut steps = 0;
    while !(up.eof && down.eof) {
        steps += 1;
        assert!(steps < 1_000_000, "pumps make no progress");
        let client_turn = down.eof || (!up.eof && schedule.next_u64() & 1 == 0);
        let dir = if client_turn { &mut up } else { &mut down };
        let Some(range) = dir.step() else {
            check_client_boundary(&follow, &down);
            continue;
        };
        let (batch, fresh) = dir.pump.batch();
        let result = if client_turn {
            follow.client_bytes(&batch[fresh..])
        } else {
            // As the relay does: the start of a message the batch ends inside is kept back
            // when it began in this batch (an ErrorResponse always does: it is short).
            let result = follow.server_batch(batch, fresh);
            if result.is_ok() {
                let error_begun = follow.down_scan.partial(b'E').is_some();
                let kept = relay::keep_back_partial(&follow, &mut dir.pump);
                assert!(
                    kept || !error_begun,
                    "an ErrorResponse begun before the batch"
                );
            }
            result
        };
        if dir.corrupt_by(range.end) {
            assert!(result.is_err(), "impossible length not reported");
            return;
        }
        assert!(result.is_ok(), "error on a well-framed stream: {result:?}");
        for m in dir.completed() {
            if client_turn {
                model.client_message(m.tag);
            } else {
                model.server_message(m.tag, &server[m.start + 5..m.end]);
            }
        }
        assert_eq!(follow.tx.awaiting, model.awaiting, "awaiting ReadyForQuery");
        assert_eq!(follow.tx.status, model.status, "transaction status");
        assert_eq!(
            follow.tx.idle(),
            model.awaiting == 0 && model.status == b'I'
        );
        assert_eq!(counter.get() - before, model.transactions, "transactions");
        assert_eq!(follow.up_scan.at_boundary(), up.model_at_boundary());
        assert_eq!(follow.down_scan.at_boundary(), down.model_at_boundary());
        check_client_boundary(&follow, &down);
        if let Some(key) = &model.key {
            // The last key sent is registered, also when it repeats the one before.
            assert_eq!(
                shared.cancels.lookup(key),
                Some(Some((MEMBER.to_owned(), key.clone()))),
                "cancel key not registered"
            );
        }
        // Only that key: the one it replaced is no longer registered.
        assert_eq!(
            shared.cancels.len(),
            usize::from(model.key.is_some()),
            "cancel keys registered"
        );
    }
    drop(follow);
    assert!(shared.cancels.is_empty(), "cancel key left registered");
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, client, server)) = common::two_streams(data) else {
        return;
    };
    let mut schedule = Schedule::new(&seed);
    check_scanner(client, &mut schedule, b"");
    check_scanner(server, &mut schedule, b"ZK");
    check_scanner(server, &mut schedule, b"ZKSERDCTdc123tnsI");
    check_relay(client, server, &mut schedule);
});
