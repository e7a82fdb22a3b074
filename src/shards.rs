//! The threads that run client sessions: `runtime.worker_threads` of them, each with its own
//! current-thread runtime, the first being the thread that runs the rest of the router.
//! An accepted client goes to the thread with the fewest clients, the accepting one when it
//! has no more than the others (so one client at a time never crosses threads), and stays
//! there: no task is stolen or woken across threads on the way through a transaction, which
//! tokio's multi-thread scheduler does (and on two shared cores lost to one thread). Pools are
//! shared by all threads: a returned server connection goes to a client of its own thread
//! first (`pool::slots`), and an idle one taken by a client of another thread is moved to
//! that thread's event loop (`ServerConn::move_home`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

/// The worker that is the thread running the rest of the router (etcd, upkeep, admin).
pub const MAIN: usize = 0;

pub struct Shards {
    /// The threads besides the calling one.
    others: Vec<Shard>,
    /// Clients running on each thread, `MAIN` first.
    clients: Vec<Arc<AtomicUsize>>,
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
        let clients = (0..=others.len()).map(|_| Arc::default()).collect();
        Ok(Shards { others, clients })
    }

    pub fn count(&self) -> usize {
        self.others.len() + 1
    }

    /// The thread for the next client: the one with the fewest clients, the lowest number
    /// (`MAIN` first) among equals. A handover to another thread costs a wake-up of it, and
    /// a pooled server connection last used here then moves too.
    fn least_loaded(&self) -> usize {
        (0..self.clients.len())
            .min_by_key(|&i| self.clients[i].load(Ordering::Relaxed))
            .unwrap_or(MAIN)
    }

    /// Runs `serve` on the client's socket on the least loaded thread, tracked by `tracker`;
    /// `serve` is told the thread's number (`MAIN` being the calling thread).
    pub fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream, usize) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let turn = self.least_loaded();
        let counted = Counted::new(&self.clients[turn]);
        let Some(shard) = turn.checked_sub(1).map(|i| &self.others[i]) else {
            tracker.spawn(async move {
                let _counted = counted;
                serve(stream, MAIN).await
            });
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
                let _counted = counted;
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

/// One client counted on its thread until its task ends (or is dropped unrun).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(clients: &Arc<AtomicUsize>) -> Counted {
        clients.fetch_add(1, Ordering::Relaxed);
        Counted(clients.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A client on its thread: where it ran, and the sender that ends its session.
    struct Open {
        turn: usize,
        thread: std::thread::ThreadId,
        release: oneshot::Sender<()>,
    }

    /// Accepts one client, hands it to `shards`, and checks it reads and writes on its thread;
    /// the session lasts until released.
    async fn open(shards: &Shards, tracker: &TaskTracker, listener: &TcpListener) -> Open {
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (tx, rx) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        shards.spawn(tracker, stream, move |mut s: TcpStream, turn| async move {
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
            let _ = tx.send((turn, std::thread::current().id()));
            let _ = released.await;
        });
        client.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        client.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        let (turn, thread) = rx.await.unwrap();
        Open {
            turn,
            thread,
            release,
        }
    }

    /// Waits until the threads count `want` clients each.
    async fn counts(shards: &Shards, want: &[usize]) {
        for _ in 0..500 {
            let now: Vec<usize> = shards
                .clients
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            if now == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("client counts never reached {want:?}");
    }

    /// Clients open at once spread over the threads, each reading and writing on its own; one
    /// at a time, they all stay on the accepting thread; a thread left with fewer clients
    /// takes the next one.
    #[tokio::test]
    async fn clients_go_to_the_least_loaded_thread_the_accepting_one_first() {
        let shards = Shards::start(3).unwrap();
        let tracker = TaskTracker::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut open_ones = Vec::new();
        for _ in 0..6 {
            open_ones.push(open(&shards, &tracker, &listener).await);
        }
        let turns: Vec<usize> = open_ones.iter().map(|o| o.turn).collect();
        assert_eq!(turns, [MAIN, 1, 2, MAIN, 1, 2]);
        let threads: Vec<_> = open_ones.iter().map(|o| o.thread).collect();
        let me = std::thread::current().id();
        assert_eq!((threads[0], threads[3]), (me, me));
        assert_ne!(threads[1], me);
        assert_ne!(threads[2], me);
        assert_ne!(threads[1], threads[2]);
        assert_eq!(threads[1], threads[4]);
        assert_eq!(threads[2], threads[5]);
        counts(&shards, &[2, 2, 2]).await;

        // Thread 2 loses a client: it takes the next.
        let _ = open_ones.remove(2).release.send(());
        counts(&shards, &[2, 2, 1]).await;
        let next = open(&shards, &tracker, &listener).await;
        assert_eq!(next.turn, 2);
        open_ones.push(next);
        for o in open_ones.drain(..) {
            let _ = o.release.send(());
        }
        counts(&shards, &[0, 0, 0]).await;

        // One at a time: never handed over.
        for _ in 0..4 {
            let one = open(&shards, &tracker, &listener).await;
            assert_eq!((one.turn, one.thread), (MAIN, me));
            let _ = one.release.send(());
            counts(&shards, &[0, 0, 0]).await;
        }
        tracker.close();
        tracker.wait().await;
    }
}
