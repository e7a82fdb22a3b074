//! Reading whole messages from a stream: for the exchanges that look at every message
//! (logins, authentication, the queries pgrouter runs itself), not for the relay, which
//! follows headers with [`super::frame::Scanner`] and never holds a message whole.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::frame::BadLength;
use super::wire::take_message_within;

/// Why [`MessageReader::read`] returned no message.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A length field below 4, or a message longer than the reader's bound (refused from its
    /// header, before its body is read).
    #[error(transparent)]
    BadLength(#[from] BadLength),
    /// The stream ended before a whole message; [`MessageReader::buffered`] holds any part
    /// of one that came.
    #[error("the connection closed")]
    Eof,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A buffer that reads a stream into whole messages of at most `max` bytes, header included.
pub struct MessageReader {
    buf: BytesMut,
    max: usize,
}

impl MessageReader {
    /// An empty reader taking messages of at most `max` bytes, header included.
    pub fn new(max: usize) -> MessageReader {
        MessageReader::with_capacity(0, max)
    }

    /// [`MessageReader::new`] with room for `capacity` bytes before it grows.
    pub fn with_capacity(capacity: usize, max: usize) -> MessageReader {
        MessageReader {
            buf: BytesMut::with_capacity(capacity),
            max,
        }
    }

    /// A reader starting with `bytes` already read from the stream.
    pub fn starting_with(bytes: &[u8], max: usize) -> MessageReader {
        MessageReader {
            buf: BytesMut::from(bytes),
            max,
        }
    }

    /// The next whole message if it is buffered already; reads nothing.
    pub fn take(&mut self) -> Result<Option<Bytes>, BadLength> {
        take_message_within(&mut self.buf, self.max)
    }

    /// The next whole message (header included), reading from `r` until it is all there.
    ///
    /// Cancel safe: what a dropped call read stays buffered for the next one, so it can be a
    /// branch of `tokio::select!`.
    pub async fn read<R>(&mut self, r: &mut R) -> Result<Bytes, ReadError>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        read_message(&mut self.buf, self.max, r).await
    }

    /// Bytes read and not taken yet: the start of the next message, or more.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

/// [`MessageReader::read`] over a buffer the caller keeps (a pooled session's input, which
/// its server connections lend and take back): the next whole message of at most `max`
/// bytes, reading from `r` into `buf` until it is all there.
pub async fn read_message<R>(buf: &mut BytesMut, max: usize, r: &mut R) -> Result<Bytes, ReadError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    loop {
        if let Some(msg) = take_message_within(buf, max)? {
            return Ok(msg);
        }
        if r.read_buf(buf).await? == 0 {
            return Err(ReadError::Eof);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::{AsyncWriteExt, ReadBuf};

    use super::*;
    use crate::protocol::wire;

    /// A stream whose reads return these chunks one by one (empty ones left out), then EOF.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        reads: usize,
    }

    impl Chunks {
        fn new<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Chunks {
            Chunks {
                chunks: chunks
                    .into_iter()
                    .filter(|c| !c.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect(),
                reads: 0,
            }
        }
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads += 1;
            if let Some(mut chunk) = self.chunks.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn two_messages() -> (Vec<u8>, Vec<u8>) {
        let mut out = BytesMut::new();
        wire::parameter_status(&mut out, "application_name", "psql");
        let first = out.split().to_vec();
        wire::ready_for_query(&mut out, b'I');
        (first, out.to_vec())
    }

    #[tokio::test]
    async fn a_message_split_anywhere_comes_whole() {
        let (first, second) = two_messages();
        let stream = [&first[..], &second[..]].concat();
        for at in 0..=stream.len() {
            let mut r = Chunks::new([&stream[..at], &stream[at..]]);
            let mut reader = MessageReader::new(1024);
            assert_eq!(
                &reader.read(&mut r).await.unwrap()[..],
                first,
                "split at {at}"
            );
            assert_eq!(
                &reader.read(&mut r).await.unwrap()[..],
                second,
                "split at {at}"
            );
            assert!(reader.buffered().is_empty());
            assert!(matches!(reader.read(&mut r).await, Err(ReadError::Eof)));
        }
        // A byte per read.
        let mut r = Chunks::new(stream.chunks(1));
        let mut reader = MessageReader::new(1024);
        assert_eq!(&reader.read(&mut r).await.unwrap()[..], first);
        assert_eq!(&reader.read(&mut r).await.unwrap()[..], second);
    }

    #[tokio::test]
    async fn what_is_buffered_is_taken_without_reading() {
        let (first, second) = two_messages();
        let stream = [&first[..], &second[..]].concat();
        let mut reader = MessageReader::starting_with(&stream, 1024);
        let mut r = Chunks::new([]);
        assert_eq!(&reader.read(&mut r).await.unwrap()[..], first);
        assert_eq!(&reader.take().unwrap().unwrap()[..], second);
        assert_eq!(reader.take().unwrap(), None);
        assert_eq!(r.reads, 0);
    }

    #[tokio::test]
    async fn a_too_long_length_is_refused_from_the_header() {
        // The limit counts the whole message: 8 bytes pass, 9 do not.
        let fits = b"p\0\0\0\x07ab\0";
        let mut reader = MessageReader::new(8);
        let mut r = Chunks::new([&fits[..]]);
        assert_eq!(&reader.read(&mut r).await.unwrap()[..], fits);

        let long = [&b"p\0\0\0\x08"[..], &b"abc\0"[..]];
        let mut reader = MessageReader::new(8);
        let mut r = Chunks::new(long);
        match reader.read(&mut r).await {
            Err(ReadError::BadLength(e)) => assert_eq!(e, BadLength { tag: b'p', len: 8 }),
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(r.reads, 1, "the body was not waited for");

        let mut reader = MessageReader::new(1024);
        let mut r = Chunks::new([&b"Q\0\0"[..], &b"\0\x03"[..]]);
        match reader.read(&mut r).await {
            Err(ReadError::BadLength(e)) => assert_eq!(e, BadLength { tag: b'Q', len: 3 }),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn eof_inside_a_message_is_an_error_with_the_part_kept() {
        let (first, _) = two_messages();
        for at in 0..first.len() {
            let mut r = Chunks::new([&first[..at]]);
            let mut reader = MessageReader::new(1024);
            assert!(
                matches!(reader.read(&mut r).await, Err(ReadError::Eof)),
                "at {at}"
            );
            assert_eq!(reader.buffered(), &first[..at]);
        }
    }

    #[tokio::test]
    async fn a_dropped_read_loses_nothing() {
        let (first, _) = two_messages();
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let mut reader = MessageReader::new(1024);
        tx.write_all(&first[..7]).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(20), reader.read(&mut rx)).await;
        assert!(pending.is_err(), "half a message is not a message");
        tx.write_all(&first[7..]).await.unwrap();
        assert_eq!(&reader.read(&mut rx).await.unwrap()[..], first);
    }
}
