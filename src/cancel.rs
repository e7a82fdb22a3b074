//! Cancel requests: which member issued each BackendKeyData, and forwarding a cancel there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::config::PeersConfig;
use crate::protocol::startup::CancelKey;
use crate::protocol::wire;

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

/// Bits 23 to 30 of a pooled key's pid carry the issuing router's `peers.id` (0 without
/// peers). PostgreSQL's own pids stay below 2^22 (Linux's largest pid_max), so a member's key
/// reads as issued by no router.
const ISSUER_SHIFT: u32 = 23;
/// Set on a cancel one router forwards to another: it goes no further.
const FORWARDED: i32 = i32::MIN;

/// A key for a pooled client of the router whose `peers.id` is `peer_id`; the rest of the pid
/// and the secret are random.
pub fn pooled_key(peer_id: usize) -> CancelKey {
    let issuer = (peer_id & 0xff) as i32;
    let random = rand::random::<i32>() & ((1 << ISSUER_SHIFT) - 1);
    CancelKey {
        pid: (issuer << ISSUER_SHIFT) | random,
        secret: Bytes::copy_from_slice(&rand::random::<[u8; 4]>()),
    }
}

/// Where a cancel for a key this router does not know goes.
#[derive(Debug, PartialEq)]
pub enum Elsewhere {
    /// A member's own key (a passthrough session of another router, or one that ended): every
    /// member, which ignore keys not theirs.
    Members,
    /// A pooled key of the peer router at this address, marked as forwarded.
    Peer(String, CancelKey),
    /// Nowhere: one of this router's own pooled keys whose session ended, or a cancel a peer
    /// forwarded already.
    Nowhere,
}

/// `key` without the forwarded mark, and whether it had it.
pub fn unmark(key: &CancelKey) -> (CancelKey, bool) {
    let unmarked = CancelKey {
        pid: key.pid & i32::MAX,
        secret: key.secret.clone(),
    };
    (unmarked, key.pid < 0)
}

/// Where a cancel for `key` (unmarked, not known here) goes, given this router's peers.
pub fn elsewhere(key: &CancelKey, forwarded: bool, peers: &PeersConfig) -> Elsewhere {
    let issuer = (key.pid >> ISSUER_SHIFT) as usize;
    if forwarded || (issuer != 0 && issuer == peers.id) {
        return Elsewhere::Nowhere;
    }
    match issuer.checked_sub(1).and_then(|i| peers.routers.get(i)) {
        Some(addr) => Elsewhere::Peer(
            addr.clone(),
            CancelKey {
                pid: key.pid | FORWARDED,
                secret: key.secret.clone(),
            },
        ),
        None => Elsewhere::Members,
    }
}

/// Sends a forwarded cancel to a peer router's client listener (plain TCP: a router takes a
/// CancelRequest before any TLS).
pub async fn send_to_peer(addr: &str, key: &CancelKey, timeout: Duration) -> std::io::Result<()> {
    send_packet(tokio::net::TcpStream::connect(addr), key, timeout).await
}

/// The CancelRequest packet for `key`.
pub fn cancel_packet(key: &CancelKey) -> BytesMut {
    let mut p = BytesMut::with_capacity(12 + key.secret.len());
    wire::packet(&mut p, |b| {
        b.put_u32(80877102);
        b.put_i32(key.pid);
        b.put_slice(&key.secret);
    });
    p
}

/// Sends the cancel to one member; the server answers nothing and closes.
pub async fn send_cancel(
    tls: &crate::tls::Transport,
    addr: &str,
    key: &CancelKey,
    timeout: Duration,
) -> std::io::Result<()> {
    // Over TLS where upstream_tls says so: a member may require it.
    send_packet(tls.dial(addr), key, timeout).await
}

/// Connects, writes the CancelRequest for `key` and closes, all within `timeout`; the other
/// side answers nothing.
async fn send_packet<S: AsyncWrite + Unpin>(
    connect: impl std::future::Future<Output = std::io::Result<S>>,
    key: &CancelKey,
    timeout: Duration,
) -> std::io::Result<()> {
    let send = async {
        let mut stream = connect.await?;
        stream.write_all(&cancel_packet(key)).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn pooled_keys_name_their_router_and_peers_forward_once() {
        let peers = PeersConfig {
            id: 1,
            routers: vec!["10.0.0.1:5000".into(), "10.0.0.2:5000".into()],
        };
        for _ in 0..100 {
            let (mine, theirs) = (pooled_key(1), pooled_key(2));
            assert!(mine.pid > 0 && theirs.pid > 0);
            assert_eq!(elsewhere(&mine, false, &peers), Elsewhere::Nowhere);
            let Elsewhere::Peer(addr, marked) = elsewhere(&theirs, false, &peers) else {
                panic!("a key of router 2 goes to router 2");
            };
            assert_eq!(addr, "10.0.0.2:5000");
            // At router 2: recognised as its own once unmarked, and never forwarded again.
            let (unmarked, forwarded) = unmark(&marked);
            assert_eq!((&unmarked, forwarded), (&theirs, true));
            let at_2 = PeersConfig {
                id: 2,
                ..peers.clone()
            };
            assert_eq!(elsewhere(&unmarked, forwarded, &at_2), Elsewhere::Nowhere);
            assert_eq!(elsewhere(&unmarked, forwarded, &peers), Elsewhere::Nowhere);
            // Without peers, pooled keys and members' keys alike go to the members.
            let unpeered = pooled_key(0);
            assert!(unpeered.pid < 1 << ISSUER_SHIFT);
            assert_eq!(elsewhere(&unpeered, false, &peers), Elsewhere::Members);
            assert_eq!(
                elsewhere(&theirs, false, &PeersConfig::default()),
                Elsewhere::Members
            );
        }
        // A member's pid (at most Linux's pid_max, 2^22) reads as no router's.
        assert_eq!(
            elsewhere(&key(4_194_304), false, &peers),
            Elsewhere::Members
        );
        assert_eq!(unmark(&key(77)), (key(77), false));
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
