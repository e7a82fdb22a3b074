//! The hot loop: bytes both ways in batches, headers scanned on the fly, the topology checked
//! before every write to the client.

use std::sync::Arc;

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::cancel::Registration;
use super::route::{Port, Route, Verdict};
use super::shared::Shared;
use crate::config::Config;
use crate::metrics::{ClientState, StateGauge};
use crate::protocol::frame::{BadLength, Scanner};
use crate::protocol::startup::CancelKey;
use crate::topology::Topology;

/// Bytes read per direction in one batch.
const BATCH: usize = 16 * 1024;

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
    ServerClosed,
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
    ServerError(std::io::Error),
    ClientProtocol(BadLength),
    ServerProtocol(BadLength),
}

/// One direction: a buffer that is either being filled from the reader or drained to the writer.
/// Each step is a single read or write, so dropping a step in `select!` loses nothing.
struct Pump {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

enum Step {
    Read(usize),
    Wrote,
    Eof,
}

enum Side {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl Pump {
    fn new() -> Pump {
        Pump {
            buf: vec![0; BATCH].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn pending(&self) -> bool {
        self.start < self.end
    }

    async fn step<R, W>(&mut self, r: &mut R, w: &mut W) -> Result<Step, Side>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
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
                (self.start, self.end) = (0, 0);
            }
            return Ok(Step::Wrote);
        }
        match r.read(&mut self.buf).await.map_err(Side::Read)? {
            0 => Ok(Step::Eof),
            n => {
                self.end = n;
                Ok(Step::Read(n))
            }
        }
    }
}

/// Transaction state followed from the two streams.
struct TxState {
    /// Queries, Syncs and function calls sent that have not had their ReadyForQuery yet. The
    /// startup counts as one: the server ends it with the first ReadyForQuery.
    awaiting: u32,
    /// Status byte of the last ReadyForQuery: b'I', b'T' or b'E'; 0 before the first.
    status: u8,
}

impl TxState {
    fn idle(&self) -> bool {
        self.awaiting == 0 && self.status == b'I'
    }
}

/// Counters of one session, resolved once so the loop only adds to atomics.
struct Counters {
    up_bytes: IntCounter,
    down_bytes: IntCounter,
    transactions: IntCounter,
}

pub struct Relay<'a> {
    pub shared: &'a Shared,
    pub route: &'a Route,
    pub port: Port,
}

impl Relay<'_> {
    /// Relays until either side closes or pgrouter ends the session. The caller has already
    /// forwarded the startup packet; `state` counts the client under active or idle.
    pub async fn run(
        &self,
        client: &mut TcpStream,
        server: &mut TcpStream,
        state: &mut StateGauge,
    ) -> End {
        let shared = self.shared;
        let port = self.port.label();
        let counters = Counters {
            up_bytes: shared
                .metrics
                .bytes
                .with_label_values(&[port, "client_to_server"]),
            down_bytes: shared
                .metrics
                .bytes
                .with_label_values(&[port, "server_to_client"]),
            transactions: shared.metrics.transactions.with_label_values(&[port]),
        };
        let mut topology = shared.topology.clone();
        let mut config = shared.config_changes();
        let mut paused = shared.pause_switch(self.port);
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let (mut up, mut down) = (Pump::new(), Pump::new());
        let mut up_scan = Scanner::new(b"");
        let mut down_scan = Scanner::new(b"ZK");
        let mut tx = TxState {
            awaiting: 1,
            status: 0,
        };
        let mut registration: Option<Registration> = None;
        let mut drain: Option<(Instant, Cause)> = None;
        // A change that arrived between routing and now must not be missed.
        topology.mark_changed();
        state.set(ClientState::Active);

        loop {
            let flushed = !up.pending()
                && !down.pending()
                && up_scan.at_boundary()
                && down_scan.at_boundary();
            let idle = flushed && tx.idle();
            state.set(if idle {
                ClientState::Idle
            } else {
                ClientState::Active
            });
            if let Some((_, cause)) = &drain {
                if idle {
                    return End::Drained(cause.clone());
                }
            }
            // Paused: an idle client's next transaction waits, unread, until resume.
            let hold_client = idle && *paused.borrow_and_update();
            let drain_deadline = drain.as_ref().map(|(d, _)| *d);
            tokio::select! {
                biased;
                changed = recheck(&mut topology, &mut config) => {
                    if changed.is_err() {
                        return End::Drained(Cause { kind: "shutdown", reason: "pgrouter is shutting down".into() });
                    }
                    match self.verdict(&mut topology) {
                        Verdict::Keep => drain = drain.filter(|(_, c)| c.kind == "shutdown"),
                        Verdict::CloseNow(reason) => return End::Lost { reason, at_boundary: !down.pending() && down_scan.at_boundary() },
                        Verdict::Drain(reason) => {
                            if drain.is_none() {
                                drain = Some(self.drain_from_now(Cause { kind: "replica_ineligible", reason }));
                            }
                        }
                    }
                }
                _ = shared.shutdown.cancelled(), if drain.as_ref().is_none_or(|(_, c)| c.kind != "shutdown") => {
                    drain = Some(self.drain_from_now(Cause { kind: "shutdown", reason: "pgrouter is shutting down".into() }));
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                    let cause = drain.take().map(|(_, c)| c).expect("a drain deadline has a cause");
                    return End::DrainTimeout { cause, at_boundary: !down.pending() && down_scan.at_boundary() };
                }
                _ = paused.changed() => {}
                step = down.step(&mut sr, &mut cw) => match step {
                    Ok(Step::Read(n)) => {
                        counters.down_bytes.inc_by(n as u64);
                        let scanned = down_scan.feed(&down.buf[..n], |tag, body| match tag {
                            b'Z' => {
                                tx.awaiting = tx.awaiting.saturating_sub(1);
                                if body.first() == Some(&b'I') && tx.status != 0 {
                                    counters.transactions.inc();
                                }
                                tx.status = body.first().copied().unwrap_or(0);
                            }
                            b'K' if body.len() >= 8 => {
                                let key = CancelKey {
                                    pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                                    secret: Bytes::copy_from_slice(&body[4..]),
                                };
                                registration = Some(shared.cancels.register(key, &self.route.member.addr));
                            }
                            _ => {}
                        });
                        if let Err(e) = scanned {
                            return End::ServerProtocol(e);
                        }
                    }
                    Ok(Step::Wrote) => {}
                    Ok(Step::Eof) => return End::ServerClosed,
                    Err(Side::Read(e)) => return End::ServerError(e),
                    Err(Side::Write(e)) => return End::ClientError(e),
                },
                step = up.step(&mut cr, &mut sw), if !hold_client => match step {
                    Ok(Step::Read(n)) => {
                        counters.up_bytes.inc_by(n as u64);
                        let scanned = up_scan.feed(&up.buf[..n], |tag, _| {
                            if matches!(tag, b'Q' | b'S' | b'F') {
                                tx.awaiting += 1;
                            }
                        });
                        if let Err(e) = scanned {
                            return End::ClientProtocol(e);
                        }
                    }
                    Ok(Step::Wrote) => {}
                    Ok(Step::Eof) => return End::ClientClosed,
                    Err(Side::Read(e)) => return End::ClientError(e),
                    Err(Side::Write(e)) => return End::ServerError(e),
                },
            }
        }
    }

    fn verdict(&self, topology: &mut watch::Receiver<Arc<Topology>>) -> Verdict {
        let current = topology.borrow_and_update().clone();
        self.shared
            .router
            .check(&self.shared.config().routing, &current, self.route)
    }

    fn drain_from_now(&self, cause: Cause) -> (Instant, Cause) {
        (
            Instant::now() + self.shared.config().routing.drain_timeout.0,
            cause,
        )
    }
}

/// Resolves when the topology or the settings in force change: the member must be checked
/// again. Errs when the router is going away.
async fn recheck(
    topology: &mut watch::Receiver<Arc<Topology>>,
    config: &mut watch::Receiver<Arc<Config>>,
) -> Result<(), watch::error::RecvError> {
    tokio::select! {
        biased;
        changed = topology.changed() => changed,
        changed = config.changed() => changed,
    }
}

/// Sends Terminate so the server ends the backend cleanly instead of logging a lost client.
pub async fn terminate(server: &mut TcpStream) {
    let _ = server.write_all(&[b'X', 0, 0, 0, 4]).await;
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
}
