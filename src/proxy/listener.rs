//! Accept loop for one port: a connection limit, then one tracked task per client, on the
//! least loaded worker thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::session;
use crate::route::Port;
use crate::shards::Shards;
use crate::shared::Shared;

/// Accepts until the task is aborted (on reload to another address) or shutdown begins.
/// Clients past `limits` still get their startup read, so they receive 53300 instead of a
/// reset (and a CancelRequest among them is still served).
pub async fn serve(
    listener: TcpListener,
    port: Port,
    shared: Arc<Shared>,
    limits: Arc<Semaphore>,
    sessions: TaskTracker,
    shards: Arc<Shards>,
) {
    let accepted_total = shared
        .metrics
        .accepted_connections
        .with_label_values(&[port.label()]);
    let mut refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%port, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        accepted_total.inc();
        let permit = limits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            if let Some(others) = refusals.note(Instant::now()) {
                let limit = shared.config().listen.max_client_conn;
                tracing::info!(%peer, %port, max_client_conn = limit, others, "client past listen.max_client_conn: refused with 53300 after its startup packet (a cancel request is still served); others: refused since the last such line");
            }
        }
        let shared = shared.clone();
        shards.spawn(&sessions, stream, move |stream, home| {
            session::run(shared, port, stream, permit, home)
        });
    }
}

/// Refusals at `max_client_conn` logged at info, one line a second at most: a flood of
/// clients past the limit is told in a line a second with how many came since.
#[derive(Debug, Default)]
struct Refusals {
    last_logged: Option<Instant>,
    since: u64,
}

impl Refusals {
    const EVERY: Duration = Duration::from_secs(1);

    /// Notes a refusal at `now`; Some(refusals not logged since the last line) when this one
    /// is to be logged.
    fn note(&mut self, now: Instant) -> Option<u64> {
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < Self::EVERY)
        {
            self.since += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_a_second_with_the_count_between() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.note(t0), Some(0));
        for ms in [1, 200, 999] {
            assert_eq!(r.note(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(r.note(t0 + Duration::from_millis(1000)), Some(3));
        assert_eq!(r.note(t0 + Duration::from_millis(1500)), None);
        assert_eq!(r.note(t0 + Duration::from_millis(2600)), Some(1));
    }
}
