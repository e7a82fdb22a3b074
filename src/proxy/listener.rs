//! Accept loop for one port: a connection limit, then one tracked task per client, on the
//! least loaded worker thread.

use std::sync::Arc;

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
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%port, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        accepted_total.inc();
        let permit = limits.clone().try_acquire_owned().ok();
        let shared = shared.clone();
        shards.spawn(&sessions, stream, move |stream, home| {
            session::run(shared, port, stream, permit, home)
        });
    }
}
