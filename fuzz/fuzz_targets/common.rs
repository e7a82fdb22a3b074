//! Helpers shared by the fuzz targets: deterministic chunk schedules, always-ready mock I/O
//! and a tiny executor for futures that never wait.
#![allow(dead_code)]

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Runs a future whose I/O is the always-ready mocks below to completion.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a future over always-ready mock I/O kept returning Pending");
}

/// Chunk sizes drawn from a seed: mostly small (to split headers and bodies anywhere),
/// sometimes large. Deterministic, so a crash reproduces from its input alone.
#[derive(Clone)]
pub struct Schedule {
    state: u64,
}

impl Schedule {
    pub fn new(seed: &[u8]) -> Schedule {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for b in seed {
            state = (state ^ u64::from(*b)).wrapping_mul(0x1000_0000_01B3);
        }
        Schedule { state: state | 1 }
    }

    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A chunk length of at least 1.
    pub fn chunk(&mut self) -> usize {
        let r = self.next_u64();
        match r % 8 {
            0..=4 => 1 + (r >> 8) as usize % 7,
            5 | 6 => 1 + (r >> 8) as usize % 64,
            _ => 1 + (r >> 8) as usize % 20_000,
        }
    }

    /// Splits `data` into consecutive chunks.
    pub fn split<'a>(&mut self, mut data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut parts = Vec::new();
        while !data.is_empty() {
            let n = self.chunk().min(data.len());
            parts.push(&data[..n]);
            data = &data[n..];
        }
        parts
    }
}

/// A reader that hands out its data in scheduled chunks, then EOF.
pub struct ChunkedReader {
    data: Vec<u8>,
    pos: usize,
    schedule: Schedule,
}

impl ChunkedReader {
    pub fn new(data: &[u8], schedule: Schedule) -> ChunkedReader {
        ChunkedReader {
            data: data.to_vec(),
            pos: 0,
            schedule,
        }
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .schedule
            .chunk()
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A writer that accepts scheduled amounts per write and records flushes.
pub struct ChunkedWriter {
    pub written: Vec<u8>,
    /// Bytes written since the last flush.
    pub unflushed: usize,
    pub flushes: usize,
    schedule: Schedule,
}

impl ChunkedWriter {
    pub fn new(schedule: Schedule) -> ChunkedWriter {
        ChunkedWriter {
            written: Vec::new(),
            unflushed: 0,
            flushes: 0,
            schedule,
        }
    }
}

impl AsyncWrite for ChunkedWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = self.schedule.chunk().min(buf.len());
        self.written.extend_from_slice(&buf[..n]);
        self.unflushed += n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.unflushed = 0;
        self.flushes += 1;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One message of a PostgreSQL stream as a plain reference reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefMessage {
    pub tag: u8,
    /// Offset of the message's first byte (its tag) in the stream.
    pub start: usize,
    /// Offset just past its last byte.
    pub end: usize,
}

/// The whole-buffer reading of a stream: its complete messages, and the offset and header of
/// an impossible length if there is one.
pub struct RefScan {
    pub messages: Vec<RefMessage>,
    pub bad: Option<(usize, u8, u32)>,
}

pub fn ref_scan(data: &[u8]) -> RefScan {
    ref_scan_limited(data, u32::MAX)
}

/// `ref_scan` with lengths above `max_len` impossible too.
pub fn ref_scan_limited(data: &[u8], max_len: u32) -> RefScan {
    let mut messages = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= 5 {
        let tag = data[pos];
        let len = u32::from_be_bytes([data[pos + 1], data[pos + 2], data[pos + 3], data[pos + 4]]);
        if !(4..=max_len).contains(&len) {
            return RefScan {
                messages,
                bad: Some((pos, tag, len)),
            };
        }
        let end = pos + 1 + len as usize;
        if end > data.len() {
            break;
        }
        messages.push(RefMessage {
            tag,
            start: pos,
            end,
        });
        pos = end;
    }
    RefScan {
        messages,
        bad: None,
    }
}

/// Splits fuzz input into a 4-byte header and up to two streams: byte 0-1 seed the chunk
/// schedule, bytes 2-3 give the length of the first stream (the rest is the second).
pub fn two_streams(data: &[u8]) -> Option<([u8; 2], &[u8], &[u8])> {
    if data.len() < 4 {
        return None;
    }
    let seed = [data[0], data[1]];
    let first_len = (u16::from_be_bytes([data[2], data[3]]) as usize).min(data.len() - 4);
    let (first, second) = data[4..].split_at(first_len);
    Some((seed, first, second))
}
