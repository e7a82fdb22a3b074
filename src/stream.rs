//! A connection that is plain TCP or TLS over it, on either side of the router, and halves of
//! it that read and write at once (TCP's own split, free; TLS's through tokio's split).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// Only while a plain connection is being replaced by TLS over it.
    Closed,
}

impl Stream {
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::Closed => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Writes all of `bytes` and flushes them (TLS holds records until flushed).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Read and write halves usable at the same time.
    pub fn halves(&mut self) -> (ReadSide<'_>, WriteSide<'_>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadSide::Plain(r), WriteSide::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadSide::Tls(r), WriteSide::Tls(w))
            }
            Stream::Closed => (ReadSide::Closed, WriteSide::Closed),
        }
    }

    /// True if the peer has sent nothing and not closed: checked on idle pooled connections
    /// before reuse, without a round trip. Bytes found are consumed; the caller drops the
    /// connection then.
    pub fn quiet(&self) -> bool {
        let mut probe = [0u8; 64];
        let Some(tcp) = self.tcp() else { return false };
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Resolves once the peer has closed or reset the connection, reading nothing: for a client
    /// held or in line for a server while its request waits. Bytes the peer sends meanwhile
    /// stay for the session to read; while they wait, the close is looked for every
    /// `CLOSE_CHECK` instead of on the socket's event.
    pub async fn closed(&self) {
        let Some(tcp) = self.tcp() else { return };
        loop {
            // The read slot first: it costs no entry in the socket's list of waiters.
            if std::future::poll_fn(|cx| tcp.poll_read_ready(cx))
                .await
                .is_err()
            {
                return;
            }
            match tcp.ready(tokio::io::Interest::READABLE).await {
                Ok(r) if !r.is_read_closed() && !r.is_error() => {
                    tokio::time::sleep(CLOSE_CHECK).await
                }
                _ => return,
            }
        }
    }
}

impl Stream {
    /// Whether the peer has closed or reset the connection, as far as the socket's last events
    /// tell; reads nothing and waits for nothing.
    pub fn has_closed(&self) -> bool {
        use std::future::Future;
        let Some(tcp) = self.tcp() else { return true };
        let ready = std::pin::pin!(tcp.ready(tokio::io::Interest::READABLE));
        match ready.poll(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Ok(r)) => r.is_read_closed() || r.is_error(),
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        }
    }
}

/// How often [`Stream::closed`] looks again when the peer has sent bytes nobody read yet.
const CLOSE_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

pub enum ReadSide<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream>),
    Closed,
}

pub enum WriteSide<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream>),
    Closed,
}

impl AsyncRead for ReadSide<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadSide::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ReadSide::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for WriteSide<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteSide::Tls(s) => Pin::new(s).poll_write(cx, buf),
            WriteSide::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteSide::Tls(s) => Pin::new(s).poll_flush(cx),
            WriteSide::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteSide::Tls(s) => Pin::new(s).poll_shutdown(cx),
            WriteSide::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    async fn pair() -> (Stream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        (Stream::Plain(ours), peer)
    }

    const A_WHILE: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn closed_resolves_when_the_peer_closes_and_not_before() {
        let (ours, peer) = pair().await;
        assert!(timeout(A_WHILE, ours.closed()).await.is_err());
        drop(peer);
        timeout(LONG, ours.closed()).await.expect("close seen");
    }

    #[tokio::test]
    async fn has_closed_tells_a_close_from_sent_bytes() {
        let (ours, mut peer) = pair().await;
        assert!(!ours.has_closed());
        peer.write_all(b"Q").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!ours.has_closed(), "bytes sent are not a close");
        drop(peer);
        timeout(LONG, async {
            while !ours.has_closed() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("close seen");
    }

    #[tokio::test]
    async fn closed_leaves_sent_bytes_unread_and_still_sees_a_later_close() {
        let (mut ours, mut peer) = pair().await;
        peer.write_all(b"Q-pipelined").await.unwrap();
        assert!(timeout(A_WHILE, ours.closed()).await.is_err());
        let mut read = [0u8; 11];
        ours.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"Q-pipelined");
        peer.write_all(b"more").await.unwrap();
        {
            let waiting = ours.closed();
            tokio::pin!(waiting);
            assert!(timeout(A_WHILE, &mut waiting).await.is_err());
            drop(peer);
            timeout(LONG, waiting)
                .await
                .expect("close seen behind unread bytes");
        }
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"more");
    }
}
