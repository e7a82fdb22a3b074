//! Wake-ups for rare control events (topology, settings, pause, shutdown, KILL) that cost a
//! session almost nothing to poll on every data wake-up: an atomic flag and an atomic waker per
//! session, no lock shared between sessions.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// The console's KILL: when each database was last killed. A session of the database that
/// began before that ends at its next wake-up (`Signals::raise_all` wakes it).
#[derive(Default)]
pub struct Kills {
    at: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Whether any KILL was ever given: sessions look no further on every wake-up if not.
    any: AtomicBool,
}

impl Kills {
    pub fn kill(&self, database: &str) {
        lock(&self.at).insert(database.to_owned(), tokio::time::Instant::now());
        self.any.store(true, Ordering::Release);
    }

    /// Whether a session of `database` begun at `began` was killed.
    pub fn killed(&self, database: &str, began: tokio::time::Instant) -> bool {
        self.any.load(Ordering::Acquire)
            && lock(&self.at).get(database).is_some_and(|at| *at >= began)
    }
}

#[derive(Default)]
pub struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once the signal has been raised since the last time it was; the task is woken
    /// when it is raised otherwise. A plain load first: raises are rare, and a load leaves
    /// the flag's cache line shared.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        let take =
            || self.raised.load(Ordering::Relaxed) && self.raised.swap(false, Ordering::Acquire);
        if take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the check and the registration: do not miss it.
        if take() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Resolves once the signal has been raised since the last time it resolved.
    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_wait(cx)).await
    }
}

/// The signals of all running sessions.
#[derive(Default)]
pub struct Signals {
    sessions: Arc<Mutex<HashMap<u64, Arc<Signal>>>>,
    next_id: AtomicU64,
}

/// A session's signal; deregistered when dropped.
pub struct Subscription {
    id: u64,
    signal: Arc<Signal>,
    sessions: Arc<Mutex<HashMap<u64, Arc<Signal>>>>,
}

impl Signals {
    pub fn subscribe(&self) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(Signal::default());
        lock(&self.sessions).insert(id, signal.clone());
        Subscription {
            id,
            signal,
            sessions: self.sessions.clone(),
        }
    }

    /// Wakes every session so it looks at the state again.
    pub fn raise_all(&self) {
        for signal in lock(&self.sessions).values() {
            signal.raise();
        }
    }
}

impl Subscription {
    pub async fn wait(&self) {
        self.signal.wait().await
    }

    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.signal.poll_wait(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.sessions).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Inserts and removes cannot leave the map half-updated on a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_raise_wakes_each_subscriber_once() {
        let signals = Signals::default();
        let (a, b) = (signals.subscribe(), signals.subscribe());
        signals.raise_all();
        tokio::time::timeout(Duration::from_secs(1), a.wait())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), b.wait())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a.wait())
                .await
                .is_err(),
            "consumed"
        );
        let waiting = tokio::spawn(async move { a.wait().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        signals.raise_all();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        drop(b);
        assert_eq!(signals.sessions.lock().unwrap().len(), 0);
    }
}
