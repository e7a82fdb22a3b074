//! What a fresh server connection reports for each (database, user): the parameters a new
//! pooled client is told at login without borrowing a server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::tracked::Tracked;

/// ParameterStatus values by name.
pub type Params = Arc<HashMap<String, String>>;

/// What a fresh server connection for a (database, user) reports: every ParameterStatus, told
/// to a new client at login, and the tracked ones by position.
#[derive(Clone)]
pub struct Defaults {
    pub params: Params,
    pub tracked: Arc<Tracked>,
}

/// The defaults remembered per (database, user).
#[derive(Default)]
pub struct KnownDefaults(Mutex<HashMap<(String, String), Defaults>>);

impl KnownDefaults {
    /// Remembers what a fresh server connection reported; the same values as already
    /// remembered give back the shared copy, which every client using them holds.
    pub fn remember(&self, database: &str, user: &str, params: Params) -> Defaults {
        let mut known = lock(&self.0);
        let key = (database.to_owned(), user.to_owned());
        if let Some(d) = known.get(&key).filter(|d| d.params == params) {
            return d.clone();
        }
        let defaults = Defaults {
            tracked: Arc::new(Tracked::from_params(&params)),
            params,
        };
        known.insert(key, defaults.clone());
        defaults
    }

    pub fn get(&self, database: &str, user: &str) -> Option<Defaults> {
        lock(&self.0)
            .get(&(database.to_owned(), user.to_owned()))
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Inserts only: a panic cannot tear the map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
