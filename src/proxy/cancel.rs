//! Cancel requests: which member issued each BackendKeyData, and forwarding a cancel there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::protocol::startup::CancelKey;

/// Where a pooled client's query runs: (member address, the server connection's key), or
/// nothing between transactions.
pub type PooledTarget = Arc<Mutex<Option<(Arc<str>, CancelKey)>>>;

enum Entry {
    /// Passthrough: the key is the server's own, issued by this member.
    Member(String),
    /// Pooled: the key is pgrouter's, standing for whichever server runs the client's query.
    Pooled(PooledTarget),
}

/// Keys of the sessions this router serves, each mapped to where a cancel for it must go.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    keys: Arc<Mutex<HashMap<CancelKey, Entry>>>,
}

/// Removes its key from the registry when the session ends.
pub struct Registration {
    registry: CancelRegistry,
    key: CancelKey,
}

impl CancelRegistry {
    pub fn register(&self, key: CancelKey, member_addr: &str) -> Registration {
        self.insert(key, Entry::Member(member_addr.to_owned()))
    }

    /// A pooled client's key (made by pgrouter), following the server it currently uses.
    pub fn register_pooled(&self, key: CancelKey, target: PooledTarget) -> Registration {
        self.insert(key, Entry::Pooled(target))
    }

    fn insert(&self, key: CancelKey, entry: Entry) -> Registration {
        self.lock().insert(key.clone(), entry);
        Registration {
            registry: self.clone(),
            key,
        }
    }

    /// Where to send a cancel for `key`: `Some(None)` for a known pooled client with no
    /// query running, `None` for a key this router did not issue.
    pub fn lookup(&self, key: &CancelKey) -> Option<Option<(String, CancelKey)>> {
        match self.lock().get(key)? {
            Entry::Member(addr) => Some(Some((addr.clone(), key.clone()))),
            Entry::Pooled(target) => Some(
                target
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|(addr, key)| (addr.to_string(), key.clone())),
            ),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

/// The CancelRequest packet for `key`.
pub fn cancel_packet(key: &CancelKey) -> BytesMut {
    let mut p = BytesMut::with_capacity(12 + key.secret.len());
    p.put_u32(12 + key.secret.len() as u32);
    p.put_u32(80877102);
    p.put_i32(key.pid);
    p.put_slice(&key.secret);
    p
}

/// Sends the cancel to one member; the server answers nothing and closes.
pub async fn send_cancel(
    tls: &crate::tls::Tls,
    addr: &str,
    key: &CancelKey,
    timeout: Duration,
) -> std::io::Result<()> {
    let send = async {
        // Over TLS where upstream_tls says so: a member may require it.
        let mut stream = tls.connect(addr).await?;
        stream.send(&cancel_packet(key)).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(pid: i32) -> CancelKey {
        CancelKey {
            pid,
            secret: Bytes::from_static(b"\x01\x02\x03\x04"),
        }
    }

    #[test]
    fn registrations_end_with_their_session() {
        let registry = CancelRegistry::default();
        let a = registry.register(key(1), "127.0.0.1:1");
        let _b = registry.register(key(2), "127.0.0.1:2");
        assert_eq!(
            registry.lookup(&key(1)),
            Some(Some(("127.0.0.1:1".to_owned(), key(1))))
        );
        assert_eq!(
            registry.lookup(&key(2)),
            Some(Some(("127.0.0.1:2".to_owned(), key(2))))
        );
        drop(a);
        assert_eq!(registry.lookup(&key(1)), None);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn pooled_keys_follow_the_server_in_use() {
        let registry = CancelRegistry::default();
        let target: PooledTarget = Arc::new(Mutex::new(None));
        let _r = registry.register_pooled(key(7), target.clone());
        assert_eq!(registry.lookup(&key(7)), Some(None), "between queries");
        *target.lock().unwrap() = Some(("127.0.0.1:5432".into(), key(99)));
        assert_eq!(
            registry.lookup(&key(7)),
            Some(Some(("127.0.0.1:5432".to_owned(), key(99))))
        );
    }

    #[test]
    fn packet_matches_the_protocol() {
        let p = cancel_packet(&key(258));
        assert_eq!(
            &p[..],
            b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x01\x02\x01\x02\x03\x04"
        );
    }
}
