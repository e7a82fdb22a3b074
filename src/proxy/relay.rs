//! The hot loop: bytes both ways in batches, headers scanned on the fly, the topology checked
//! before every write to the client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::cancel::{CancelRegistry, Registration};
use super::route::{Route, Router, Verdict};
use crate::protocol::frame::{BadLength, Scanner};
use crate::protocol::startup::CancelKey;
use crate::topology::Topology;

/// Bytes read per direction in one batch.
const BATCH: usize = 16 * 1024;

/// Why a relayed session ended.
#[derive(Debug)]
pub enum End {
    ClientClosed,
    ServerClosed,
    /// The member lost its role mid-session; `at_boundary` says whether the client can be told.
    Lost {
        reason: String,
        at_boundary: bool,
    },
    /// Closed at an idle point after the member left the eligible set.
    Drained(String),
    /// Still busy `drain_timeout` after the member left the eligible set.
    DrainTimeout {
        reason: String,
        at_boundary: bool,
    },
    ClientError(std::io::Error),
    ServerError(std::io::Error),
    ClientProtocol(BadLength),
    ServerProtocol(BadLength),
    RouterStopping,
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

enum Side {
    Read(std::io::Error),
    Write(std::io::Error),
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

pub struct Relay<'a> {
    pub router: &'a Router,
    pub route: &'a Route,
    pub cancels: &'a CancelRegistry,
    pub drain_timeout: Duration,
}

impl Relay<'_> {
    /// Relays until either side closes or the topology ends the session. The caller has
    /// already forwarded the startup packet.
    pub async fn run(
        &self,
        client: &mut TcpStream,
        server: &mut TcpStream,
        topology: &mut watch::Receiver<Arc<Topology>>,
    ) -> End {
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
        let mut drain: Option<(Instant, String)> = None;
        // A change that arrived between routing and now must not be missed.
        topology.mark_changed();

        loop {
            let flushed = !up.pending()
                && !down.pending()
                && up_scan.at_boundary()
                && down_scan.at_boundary();
            if let Some((_, reason)) = &drain {
                if flushed && tx.idle() {
                    return End::Drained(reason.clone());
                }
            }
            let drain_deadline = drain.as_ref().map(|(d, _)| *d);
            tokio::select! {
                biased;
                changed = topology.changed() => {
                    if changed.is_err() {
                        return End::RouterStopping;
                    }
                    let current = topology.borrow_and_update().clone();
                    match self.router.check(&current, self.route) {
                        Verdict::Keep => drain = None,
                        Verdict::CloseNow(reason) => {
                            let at_boundary = !down.pending() && down_scan.at_boundary();
                            return End::Lost { reason, at_boundary };
                        }
                        Verdict::Drain(reason) => {
                            if drain.is_none() {
                                drain = Some((Instant::now() + self.drain_timeout, reason));
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                    let reason = drain.take().map(|(_, r)| r).unwrap_or_default();
                    let at_boundary = !down.pending() && down_scan.at_boundary();
                    return End::DrainTimeout { reason, at_boundary };
                }
                step = down.step(&mut sr, &mut cw) => match step {
                    Ok(Step::Read(n)) => {
                        let scanned = down_scan.feed(&down.buf[..n], |tag, body| match tag {
                            b'Z' => {
                                tx.awaiting = tx.awaiting.saturating_sub(1);
                                tx.status = body.first().copied().unwrap_or(0);
                            }
                            b'K' if body.len() >= 8 => {
                                let key = CancelKey {
                                    pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                                    secret: Bytes::copy_from_slice(&body[4..]),
                                };
                                registration = Some(self.cancels.register(key, &self.route.member.addr));
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
                step = up.step(&mut cr, &mut sw) => match step {
                    Ok(Step::Read(n)) => {
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
