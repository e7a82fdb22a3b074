//! Users' secrets (auth_file, reloaded with the config) and how to log in to PostgreSQL as each.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::server::Login;
use crate::auth::secret::{ScramKeys, ScramSecret, Secret};
use crate::auth::userlist;

#[derive(Default)]
pub struct Credentials {
    users: RwLock<Arc<HashMap<String, Secret>>>,
    /// SCRAM secrets pgrouter made to verify clients whose auth_file secret is a plain
    /// password, with the password they were made from.
    generated: Mutex<HashMap<String, (String, Arc<ScramSecret>)>>,
    /// SCRAM keys that log in to PostgreSQL as a user: recovered from a client's proof, or
    /// derived once from a plain password.
    keys: Mutex<HashMap<String, ScramKeys>>,
}

impl Credentials {
    /// Reads an auth file; the error names the line and never the secret.
    pub fn read_file(path: &Path) -> Result<HashMap<String, Secret>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        userlist::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn set_users(&self, users: HashMap<String, Secret>) {
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
        lock(&self.generated).clear();
        lock(&self.keys).clear();
    }

    /// The users of the auth file, in name order.
    pub fn user_names(&self) -> Vec<String> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut names: Vec<String> = users.keys().cloned().collect();
        names.sort();
        names
    }

    /// The secret of `user` from the auth file.
    pub fn secret(&self, user: &str) -> Option<Secret> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned()
    }

    /// A SCRAM secret to verify `user`'s password with, made once per password (PBKDF2 runs
    /// on the blocking pool, not on the I/O threads).
    pub async fn scram_for_password(&self, user: &str, password: &str) -> Arc<ScramSecret> {
        if let Some((p, s)) = lock(&self.generated).get(user) {
            if p == password {
                return s.clone();
            }
        }
        let pw = password.to_owned();
        let secret = tokio::task::spawn_blocking(move || ScramSecret::generate(&pw))
            .await
            .expect("PBKDF2 does not panic");
        let secret = Arc::new(secret);
        lock(&self.generated).insert(user.to_owned(), (password.to_owned(), secret.clone()));
        secret
    }

    pub fn remember_keys(&self, user: &str, keys: ScramKeys) {
        lock(&self.keys).insert(user.to_owned(), keys);
    }

    /// Forgets keys that no longer log in (the server's secret changed).
    pub fn forget_keys(&self, user: &str) {
        lock(&self.keys).remove(user);
    }

    /// How to log in to PostgreSQL as `user`: cached SCRAM keys (no PBKDF2 per connection)
    /// if there are any, else what the client's authentication gave.
    pub fn login(&self, user: &str, fallback: &Login) -> Login {
        match lock(&self.keys).get(user) {
            Some(keys) => Login::Scram(keys.clone()),
            None => fallback.clone(),
        }
    }

    /// How to log in as `user` from the auth file alone (auth_user, min_pool_size).
    pub fn login_from_file(&self, user: &str) -> Option<Login> {
        let fallback = match self.secret(user)? {
            Secret::Plain(p) => Login::Password(p),
            Secret::Md5(m) => Login::Md5(m),
            Secret::Scram(_) => Login::None,
        };
        Some(self.login(user, &fallback))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Inserts and clears only: a panic cannot leave these maps half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
