//! A CancelRequest's way to the server running the client's query.

use crate::cancel::{self, send_cancel, Elsewhere};
use crate::protocol::startup::CancelKey;
use crate::shared::Shared;

/// Sends a cancel to the member that issued the key. A key this router does not know goes to
/// the peer router that issued it (`[peers]`), or, when it is a member's own (issued through
/// another pgrouter, or already gone), to every member, which ignore keys not theirs.
pub(super) async fn forward_cancel(shared: &Shared, key: &CancelKey) {
    let config = shared.config();
    let timeout = config.routing.connect_timeout.0;
    let (key, forwarded) = cancel::unmark(key);
    let targets: Vec<(String, CancelKey)> = match shared.cancels.lookup(&key) {
        Some(Some(target)) => vec![target],
        // A pooled client between queries: nothing to cancel.
        Some(None) => return,
        None => match cancel::elsewhere(&key, forwarded, &config.peers) {
            Elsewhere::Members => shared
                .topology
                .borrow()
                .members
                .values()
                .map(|m| (m.addr.clone(), key.clone()))
                .collect(),
            Elsewhere::Peer(addr, marked) => {
                tracing::debug!(pid = key.pid, peer = %addr, "forwarding cancel request to the peer router that issued the key");
                if let Err(e) = cancel::send_to_peer(&addr, &marked, timeout).await {
                    tracing::warn!(peer = %addr, error = %e, "could not forward cancel request to a peer router");
                }
                return;
            }
            Elsewhere::Nowhere => {
                tracing::debug!(
                    pid = key.pid,
                    forwarded,
                    "cancel request for a session no longer here"
                );
                return;
            }
        },
    };
    tracing::debug!(
        pid = key.pid,
        targets = targets.len(),
        "forwarding cancel request"
    );
    let mut sends = tokio::task::JoinSet::new();
    let tls = shared.transport();
    for (addr, key) in targets {
        let tls = tls.clone();
        sends.spawn(async move {
            let result = send_cancel(&tls, &addr, &key, timeout).await;
            (addr, result)
        });
    }
    while let Some(Ok((addr, result))) = sends.join_next().await {
        if let Err(e) = result {
            tracing::warn!(member_addr = %addr, error = %e, "could not forward cancel request");
        }
    }
}
