//! `[databases.<name>]` and `[users.<name>]`: pgbouncer's per-database and per-user settings
//! for pooled clients, and what they make of one client's database and user (`Plan`).

use serde::Deserialize;

use super::{Config, ConfigError, PoolMode};

/// A database as pooled clients name it, as a line of pgbouncer's `[databases]`. pgrouter
/// picks the member (Patroni does), so there is no host or port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The database server connections open (pgbouncer's `dbname`); the entry's name when unset.
    pub dbname: Option<String>,
    /// Server connections log in as this user whoever the client is (pgbouncer's `user`,
    /// a "forced user"); its plain or md5 password comes from auth.auth_file.
    pub user: Option<String>,
    /// Overrides pool.pool_size for this database's pools.
    pub pool_size: Option<usize>,
    /// Overrides pool.reserve_pool_size (pgbouncer's `reserve_pool`).
    pub reserve_pool: Option<usize>,
    /// session or transaction, for this database's clients of pooled listeners.
    pub pool_mode: Option<PoolMode>,
    /// Most server connections to one member for this database, all users together;
    /// overrides pool.max_db_connections (0: no limit).
    pub max_db_connections: Option<usize>,
}

/// A user's pool settings, as a line of pgbouncer's `[users]`; they win over its database's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    pub pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    /// Most server connections to one member as this user, all databases together;
    /// overrides pool.max_user_connections (0: no limit).
    pub max_user_connections: Option<usize>,
}

/// What the settings make of a pooled client's database and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// The database server connections open.
    pub dbname: &'a str,
    /// The user server connections log in as, and whose `[users]` entry applies.
    pub user: &'a str,
    /// `user` is the database's forced user, not the client's.
    pub forced: bool,
    pub pool_size: usize,
    pub reserve_pool: usize,
    /// The pool mode to use instead of the listener's, when one is set.
    pub pool_mode: Option<PoolMode>,
    pub max_db_connections: usize,
    pub max_user_connections: usize,
}

impl Config {
    /// The plan for a pooled client of `database` logged in as `user`: the user's `[users]`
    /// settings over its database's over `[pool]`'s, per-user ones looked up for the user
    /// server connections log in as (the forced one, if any), as pgbouncer does.
    pub fn plan<'a>(&'a self, database: &'a str, user: &'a str) -> Plan<'a> {
        let db = self.databases.get(database);
        let forced = db.and_then(|d| d.user.as_deref());
        let server_user = forced.unwrap_or(user);
        let u = self.users.get(server_user);
        let p = &self.pool;
        Plan {
            dbname: db.and_then(|d| d.dbname.as_deref()).unwrap_or(database),
            user: server_user,
            forced: forced.is_some(),
            pool_size: u
                .and_then(|u| u.pool_size)
                .or(db.and_then(|d| d.pool_size))
                .unwrap_or(p.pool_size),
            reserve_pool: db
                .and_then(|d| d.reserve_pool)
                .unwrap_or(p.reserve_pool_size),
            pool_mode: u.and_then(|u| u.pool_mode).or(db.and_then(|d| d.pool_mode)),
            max_db_connections: db
                .and_then(|d| d.max_db_connections)
                .unwrap_or(p.max_db_connections),
            max_user_connections: u
                .and_then(|u| u.max_user_connections)
                .unwrap_or(p.max_user_connections),
        }
    }

    pub(super) fn validate_databases(&self) -> Result<(), ConfigError> {
        for (name, d) in &self.databases {
            let key = |k: &str| format!("databases.{name}.{k}");
            if name.is_empty() || name == "pgrouter" || name == "pgbouncer" {
                return Err(ConfigError::invalid(
                    &format!("databases.{name}"),
                    "\"pgrouter\" and \"pgbouncer\" name the admin console; an entry needs another name",
                ));
            }
            if d.dbname.as_deref() == Some("") {
                return Err(ConfigError::invalid(&key("dbname"), "must not be empty"));
            }
            if d.user.as_deref() == Some("") {
                return Err(ConfigError::invalid(&key("user"), "must not be empty"));
            }
            if d.pool_size == Some(0) {
                return Err(ConfigError::invalid(
                    &key("pool_size"),
                    "must be at least 1",
                ));
            }
            if d.pool_mode == Some(PoolMode::Passthrough) {
                return Err(ConfigError::invalid(&key("pool_mode"), POOLED_ONLY));
            }
        }
        for (name, u) in &self.users {
            let key = |k: &str| format!("users.{name}.{k}");
            if u.pool_size == Some(0) {
                return Err(ConfigError::invalid(
                    &key("pool_size"),
                    "must be at least 1",
                ));
            }
            if u.pool_mode == Some(PoolMode::Passthrough) {
                return Err(ConfigError::invalid(&key("pool_mode"), POOLED_ONLY));
            }
        }
        Ok(())
    }
}

const POOLED_ONLY: &str = "must be \"session\" or \"transaction\": it chooses between pooled modes on pooled listeners (a listener's pool_mode decides pass-through)";

#[cfg(test)]
mod tests {
    use crate::config::PoolMode;

    fn config(extra: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:2379\"]\n[pool]\npool_size = 20\nreserve_pool_size = 2\nmax_db_connections = 50\n{extra}"
        );
        crate::config::Config::from_toml(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_users_settings_win_over_its_databases_over_the_pools() {
        let c = config(
            "[databases.app]\ndbname = \"app_prod\"\npool_size = 10\npool_mode = \"session\"\nmax_db_connections = 12\n\
             [databases.shared]\nuser = \"svc\"\n\
             [users.alice]\npool_size = 3\npool_mode = \"transaction\"\nmax_user_connections = 4\n\
             [users.svc]\npool_size = 7\n",
        )
        .unwrap();
        let p = c.plan("app", "alice");
        assert_eq!(
            (p.dbname, p.user, p.forced, p.pool_size, p.pool_mode),
            ("app_prod", "alice", false, 3, Some(PoolMode::Transaction))
        );
        assert_eq!(
            (p.max_db_connections, p.max_user_connections, p.reserve_pool),
            (12, 4, 2)
        );
        let p = c.plan("app", "bob");
        assert_eq!(
            (p.pool_size, p.pool_mode, p.max_user_connections),
            (10, Some(PoolMode::Session), 0)
        );
        // A forced user's own entry applies, whoever the client is.
        let p = c.plan("shared", "alice");
        assert_eq!(
            (p.dbname, p.user, p.forced, p.pool_size),
            ("shared", "svc", true, 7)
        );
        let p = c.plan("other", "bob");
        assert_eq!(
            (p.dbname, p.pool_size, p.pool_mode, p.max_db_connections),
            ("other", 20, None, 50)
        );
    }

    #[test]
    fn bad_entries_are_refused_by_key() {
        let e = config("[databases.app]\npool_mode = \"passthrough\"\n").unwrap_err();
        assert!(e.starts_with("databases.app.pool_mode: must be"), "{e}");
        let e = config("[users.bob]\npool_size = 0\n").unwrap_err();
        assert!(
            e.starts_with("users.bob.pool_size: must be at least 1"),
            "{e}"
        );
        let e = config("[databases.pgbouncer]\n").unwrap_err();
        assert!(e.starts_with("databases.pgbouncer: "), "{e}");
        let e = config("[databases.app]\nhost = \"10.0.0.1\"\n").unwrap_err();
        assert!(e.contains("host"), "{e}");
        let e = config("[databases.app]\nuser = \"\"\n").unwrap_err();
        assert!(
            e.starts_with("databases.app.user: must not be empty"),
            "{e}"
        );
    }
}
