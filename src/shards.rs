//! The threads that run client sessions: `runtime.worker_threads` of them, each with its own
//! current-thread runtime, the first being the thread that runs the rest of the router.
//! Accepted clients are dealt to them in turn and stay where they were dealt: no task is
//! stolen or woken across threads on the way through a transaction, which tokio's
//! multi-thread scheduler does (and on two shared cores lost to one thread). Pools are
//! shared by all threads: a returned server connection goes to a client of its own thread
//! first (`pool::slots`), and an idle one taken by a client of another thread is moved to
//! that thread's event loop (`ServerConn::move_home`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// The worker that is the thread running the rest of the router (etcd, upkeep, admin).
pub const MAIN: usize = 0;

pub struct Shards {
    /// The threads besides the calling one.
    others: Vec<Shard>,
    next: AtomicUsize,
}

struct Shard {
    handle: Handle,
    /// Dropped with the shards: the thread's runtime ends, dropping what still runs there.
    _stop: oneshot::Sender<()>,
}

impl Shards {
    /// The calling thread's runtime plus `count - 1` threads of their own.
    pub fn start(count: usize) -> std::io::Result<Shards> {
        let mut others = Vec::new();
        for i in 1..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("pgrouter-worker-{i}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
            others.push(Shard {
                handle,
                _stop: stop,
            });
        }
        Ok(Shards {
            others,
            next: AtomicUsize::new(0),
        })
    }

    pub fn count(&self) -> usize {
        self.others.len() + 1
    }

    /// Runs `serve` on the client's socket on the next thread in turn, tracked by `tracker`;
    /// `serve` is told the thread's number (`MAIN` being the calling thread).
    pub fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream, usize) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.count();
        let Some(shard) = turn.checked_sub(1).map(|i| &self.others[i]) else {
            tracker.spawn(serve(stream, MAIN));
            return;
        };
        // The socket leaves this thread's event loop for the other's.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a client to a worker thread");
                return;
            }
        };
        tracker.spawn_on(
            async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve(stream, turn).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "a worker thread could not take a client")
                    }
                }
            },
            &shard.handle,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Each accepted socket runs on the threads in turn and still reads and writes there.
    #[tokio::test]
    async fn clients_are_dealt_to_the_threads_in_turn() {
        let shards = Shards::start(3).unwrap();
        let tracker = TaskTracker::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut threads = Vec::new();
        for _ in 0..6 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let (tx, rx) = oneshot::channel();
            shards.spawn(&tracker, stream, move |mut s: TcpStream, turn| async move {
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
                let _ = tx.send((turn, std::thread::current().id()));
            });
            client.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            client.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            threads.push(rx.await.unwrap());
        }
        tracker.close();
        tracker.wait().await;
        let turns: Vec<usize> = threads.iter().map(|t| t.0).collect();
        assert_eq!(turns, [MAIN, 1, 2, MAIN, 1, 2]);
        let threads: Vec<_> = threads.into_iter().map(|t| t.1).collect();
        let me = std::thread::current().id();
        assert_eq!(threads[0], me);
        assert_eq!(threads[3], me);
        assert_ne!(threads[1], me);
        assert_ne!(threads[2], me);
        assert_ne!(threads[1], threads[2]);
        assert_eq!(threads[1], threads[4]);
        assert_eq!(threads[2], threads[5]);
    }
}
