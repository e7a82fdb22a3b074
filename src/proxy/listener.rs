//! Accept loop for one port: a connection limit, then one task per client.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::route::Port;
use super::session::{self, Shared};

/// Accepts until the task is dropped. Clients past `limits` still get their startup read, so
/// they receive 53300 instead of a reset (and a CancelRequest among them is still served).
pub async fn serve(listener: TcpListener, port: Port, shared: Arc<Shared>, limits: Arc<Semaphore>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%port, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = limits.clone().try_acquire_owned().ok();
        tokio::spawn(session::run(shared.clone(), port, stream, permit));
    }
}
