//! The pooled clients connected now and what each is doing, for the console's SHOW CLIENTS
//! and SHOW POOLS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

type Registry = Arc<Mutex<HashMap<u64, Arc<ClientEntry>>>>;

/// The registry: a client is in it from its login to the end of its session.
#[derive(Default)]
pub struct Clients(Registry);

impl Clients {
    pub fn register(
        &self,
        id: u64,
        user: &str,
        database: &str,
        peer: &str,
        port: &'static str,
        application_name: &str,
    ) -> ClientRegistration {
        let entry = Arc::new(ClientEntry {
            id,
            user: user.to_owned(),
            database: database.to_owned(),
            peer: peer.to_owned(),
            port,
            since: SystemTime::now(),
            registered: Instant::now(),
            application_name: application_name.to_owned(),
            waiting_since: AtomicU64::new(0),
            activity: Default::default(),
            server: AtomicU64::new(0),
        });
        lock(&self.0).insert(id, entry.clone());
        ClientRegistration {
            entry,
            clients: self.0.clone(),
        }
    }

    /// Every client, in the order they logged in.
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        let mut v: Vec<_> = lock(&self.0).values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// What a pooled client is doing, for SHOW CLIENTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientActivity {
    Idle = 0,
    Waiting = 1,
    Active = 2,
}

pub struct ClientEntry {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub peer: String,
    pub port: &'static str,
    pub since: SystemTime,
    /// `since` on the monotonic clock: what `waiting_since` counts from.
    registered: Instant,
    pub application_name: String,
    /// When it began waiting for a server connection (micros after `registered`, plus one);
    /// 0 when it is not waiting.
    waiting_since: AtomicU64,
    activity: std::sync::atomic::AtomicU8,
    /// Id of the server connection in use, 0 when none.
    server: AtomicU64,
}

impl ClientEntry {
    /// What it does now; `at` is the time it began waiting (read once by the caller, who
    /// uses it too), when `activity` is `Waiting`.
    pub fn set(&self, activity: ClientActivity, server: u64, at: Option<Instant>) {
        let was = self.activity.swap(activity as u8, Ordering::Relaxed);
        self.server.store(server, Ordering::Relaxed);
        if activity == ClientActivity::Waiting && was != ClientActivity::Waiting as u8 {
            let at = at.map_or(Duration::ZERO, |at| at.duration_since(self.registered));
            self.waiting_since
                .store(at.as_micros() as u64 + 1, Ordering::Relaxed);
        } else if activity != ClientActivity::Waiting {
            self.waiting_since.store(0, Ordering::Relaxed);
        }
    }

    /// How long it has been waiting for a server connection; None when it is not.
    pub fn waiting_for(&self) -> Option<Duration> {
        let since = self.waiting_since.load(Ordering::Relaxed);
        let at = self.registered + Duration::from_micros(since.saturating_sub(1));
        (since != 0).then(|| at.elapsed())
    }

    pub fn activity(&self) -> ClientActivity {
        match self.activity.load(Ordering::Relaxed) {
            1 => ClientActivity::Waiting,
            2 => ClientActivity::Active,
            _ => ClientActivity::Idle,
        }
    }

    pub fn server(&self) -> u64 {
        self.server.load(Ordering::Relaxed)
    }
}

/// Removes the client from the registry when its session ends.
pub struct ClientRegistration {
    pub entry: Arc<ClientEntry>,
    clients: Registry,
}

impl Drop for ClientRegistration {
    fn drop(&mut self) {
        lock(&self.clients).remove(&self.entry.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Inserts and removes only: a panic cannot tear the map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
