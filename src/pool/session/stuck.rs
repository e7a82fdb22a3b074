//! The safety net under the no-hang rule: a held server connection whose server owes the
//! client an answer, has been sent everything and yet waits to read from its client is stuck
//! for good (client and server wait on each other). It is looked for only after
//! `pool.stuck_check` of silence, from a second connection, so normal traffic never trips it:
//! a long query is not waiting on its client, and COPY FROM STDIN or a batch without Sync is
//! owed something by the client.

use std::time::{Duration, Instant};

use super::exchange::TurnClock;
use super::idle::{READ_CHUNK, READ_MIN};
use super::PooledSession;
use crate::servers::server::{Endpoint, ServerConn};

/// A backend waiting to read from its client, as pg_stat_activity says.
const CLIENT_READ: &str = "ClientRead";

impl PooledSession {
    /// When the stuck check is due: the server owes an answer, nothing is left to send it,
    /// and it has said nothing since `silent_since` (set here when the wait begins).
    pub(super) fn stuck_check_at(
        &self,
        after: Duration,
        server_unflushed: bool,
        silent_since: &mut Option<Instant>,
        clock: &mut TurnClock,
    ) -> Option<Instant> {
        if after.is_zero()
            || server_unflushed
            || !self.to_server.is_empty()
            || !self.conversation.awaits_server()
        {
            *silent_since = None;
            return None;
        }
        Some(*silent_since.get_or_insert_with(|| clock.now()) + after)
    }

    /// Whether the held server waits to read from its client, asked of pg_stat_activity from
    /// a second connection as the same user; why, when it does. A check that cannot be made
    /// says no (logged).
    pub(super) async fn stuck(&self, silent: Duration) -> Option<String> {
        let held = self.held.as_ref()?;
        let conn = &held.lease.conn;
        let pool = held.lease.pool();
        let shared = &self.shared;
        let limit = shared.config().routing.connect_timeout.0;
        let to = Endpoint {
            id: shared.pools.next_server_id(),
            member: &conn.member,
            addr: &conn.addr,
            user: &pool.key.user,
            database: &pool.dbname,
        };
        let login = shared.credentials.login(&self.server_user, &self.login);
        let asked = async {
            let mut side = ServerConn::open(&to, &login, limit, &shared.transport())
                .await?
                .conn;
            let sql = "select wait_event from pg_stat_activity where pid = $1::int";
            let row = side.query_row(sql, &conn.key.pid.to_string()).await;
            side.close().await;
            row
        };
        let wait_event = match tokio::time::timeout(limit * 2, asked).await {
            Ok(Ok(row)) => row.and_then(|cols| cols.into_iter().next().flatten()),
            Ok(Err(e)) => {
                tracing::info!(member = %conn.member, server = conn.id, error = %e, "could not check a silent server connection");
                return None;
            }
            Err(_) => {
                tracing::info!(member = %conn.member, server = conn.id, "checking a silent server connection timed out");
                return None;
            }
        };
        (wait_event.as_deref() == Some(CLIENT_READ)).then(|| {
            format!(
                "closed by pgrouter: the server waited {}s to read from its client while owing it an answer, with nothing left to send it (pool.stuck_check)",
                silent.as_secs()
            )
        })
    }

    /// Whether the held server said something (or closed) since the last read, without
    /// waiting; what it said is in `from_server`.
    pub(super) fn server_spoke(&mut self) -> bool {
        use std::future::Future;
        use tokio::io::AsyncReadExt;
        let Some(held) = self.held.as_mut() else {
            return false;
        };
        if self.from_server.capacity() - self.from_server.len() < READ_MIN {
            self.from_server.reserve(READ_CHUNK);
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let read = held.lease.conn.stream.read_buf(&mut self.from_server);
        std::pin::pin!(read).poll(&mut cx).is_ready()
    }
}
