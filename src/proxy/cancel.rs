//! Cancel requests: which member issued each BackendKeyData, and forwarding a cancel there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::protocol::startup::CancelKey;

/// Keys of the sessions this router relays, each mapped to the member address that issued it.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    keys: Arc<Mutex<HashMap<CancelKey, String>>>,
}

/// Removes its key from the registry when the session ends.
pub struct Registration {
    registry: CancelRegistry,
    key: CancelKey,
}

impl CancelRegistry {
    pub fn register(&self, key: CancelKey, member_addr: &str) -> Registration {
        self.lock().insert(key.clone(), member_addr.to_owned());
        Registration {
            registry: self.clone(),
            key,
        }
    }

    pub fn lookup(&self, key: &CancelKey) -> Option<String> {
        self.lock().get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, String>> {
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
pub async fn send_cancel(addr: &str, key: &CancelKey, timeout: Duration) -> std::io::Result<()> {
    let send = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&cancel_packet(key)).await?;
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
        assert_eq!(registry.lookup(&key(1)).as_deref(), Some("127.0.0.1:1"));
        assert_eq!(registry.lookup(&key(2)).as_deref(), Some("127.0.0.1:2"));
        drop(a);
        assert_eq!(registry.lookup(&key(1)), None);
        assert_eq!(registry.len(), 1);
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
