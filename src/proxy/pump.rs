//! One direction of a relayed connection: a buffer filled from one side and drained to the
//! other, a single read or write per step.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read per direction in one batch.
pub const BATCH: usize = 16 * 1024;

/// One direction: a buffer that is either being filled from the reader or drained to the writer.
/// Each step is a single read or write, so dropping a step in `select!` loses nothing.
/// Public for the fuzz targets (fuzz/fuzz_targets/frames.rs).
pub struct Pump {
    pub buf: Box<[u8]>,
    pub(super) start: usize,
    pub(super) end: usize,
    /// The writer is TLS: what it accepted goes out only on flush.
    flushes: bool,
    unflushed: bool,
    /// Bytes of the batch kept back for the next one, at `buf[end..end + kept]` (moved to the
    /// front once the rest is written; the next read lands after them).
    kept: usize,
    /// Where the last read's bytes begin in the batch.
    fresh: usize,
}

/// How much of the batch has been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// None of it: the writer has what came before the batch, exactly.
    Untouched,
    /// Some of it.
    Partly,
    /// All of it (or there is none); bytes kept back for the next batch are not written.
    Done,
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

    pub fn progress(&self) -> Progress {
        if self.start == self.end {
            Progress::Done
        } else if self.start == 0 {
            Progress::Untouched
        } else {
            Progress::Partly
        }
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
