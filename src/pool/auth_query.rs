//! auth_query: secrets of users missing from the auth file, looked up on the leader.

use crate::auth::secret::Secret;
use crate::protocol::error::{sqlstate, PgError};
use crate::servers::server::{Endpoint, ServerConn};
use crate::shared::Shared;

/// Runs `auth.auth_query` as `auth.auth_user` on the leader, in the client's database.
/// `Ok(None)`: no auth_query configured, or no such user (or a NULL password).
pub async fn lookup(
    shared: &Shared,
    user: &str,
    database: &str,
) -> Result<Option<Secret>, PgError> {
    let config = shared.config();
    let (Some(query), Some(auth_user)) = (&config.auth.auth_query, &config.auth.auth_user) else {
        return Ok(None);
    };
    let scope = &shared.scope;
    let fail = |why: String| {
        PgError::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("pgrouter: cluster \"{scope}\": auth_query for \"{user}\" failed: {why}"),
        )
    };
    let login = shared
        .credentials
        .login_from_file(auth_user)
        .ok_or_else(|| {
            fail(format!(
                "auth_user \"{auth_user}\" has no secret in auth_file"
            ))
        })?;
    let leader = shared
        .topology
        .borrow()
        .writable_leader()
        .cloned()
        .ok_or_else(|| fail("no writable leader to run it on".into()))?;
    let to = Endpoint {
        id: shared.pools.next_server_id(),
        member: &leader.name,
        addr: &leader.addr,
        user: auth_user,
        database,
    };
    let opened = ServerConn::open(
        &to,
        &login,
        config.routing.connect_timeout.0,
        &shared.transport(),
    )
    .await
    .map_err(|e| fail(format!("on member \"{}\": {e}", leader.name)))?;
    let mut conn = opened.conn;
    let row = conn.query_row(query, user).await;
    conn.close().await;
    let row = row.map_err(|e| fail(format!("on member \"{}\": {e}", leader.name)))?;
    Ok(row
        .and_then(|cols| cols.into_iter().nth(1).flatten())
        .map(|secret| Secret::parse(&secret)))
}
