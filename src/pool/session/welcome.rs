//! The welcome after a pooled client's login: the server's parameters, its cancel key and
//! ReadyForQuery, with a server connection borrowed only when the client's settings are not
//! the remembered defaults.

use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::{Exit, PooledSession, Unserved};
use crate::metrics::ClientState;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::startup::CancelKey;
use crate::protocol::wire;
use crate::servers::defaults::{Defaults, Params};
use crate::servers::tracked;

use super::recovery::{server_gone, Done};

impl PooledSession {
    /// Tells the client the server's parameters, its cancel key and ReadyForQuery. A client
    /// asking for nothing but the defaults (remembered from a fresh server connection for
    /// its database and user), or an application_name the server reports as sent, needs no
    /// server; otherwise one is borrowed to apply its settings, and the server's own spelling
    /// of them is reported. The end of the authentication goes out in the same write, or on
    /// its own before the wait for a server.
    pub(super) async fn welcome(&mut self, key: &CancelKey) -> Result<(), Exit> {
        // AuthenticationOk and what came before it, from `start`.
        let mut out = std::mem::take(&mut self.to_client);
        let defaults = self
            .shared
            .pools
            .defaults
            .get(&self.registration.entry.database, &self.server_user);
        // Settings the server does not report are tried on a server: a bad one is refused
        // at login, as PostgreSQL refuses it.
        let fits = self.conversation.extra.is_empty()
            && defaults.as_ref().is_some_and(|d| {
                self.conversation
                    .vars
                    .iter()
                    .all(|(k, v)| d.params.get(*k) == Some(v) || tracked::reported_as_sent(k, v))
            });
        let (params, defaults) = match defaults {
            Some(d) if fits => {
                let mut params = d.params.clone();
                for (k, v) in &self.conversation.vars {
                    if d.params.get(*k) != Some(v) {
                        Arc::make_mut(&mut params).insert(k.to_string(), v.clone());
                    }
                }
                (params, d)
            }
            _ => {
                // The client hears it is in before it waits for a server.
                self.client.send(&out).await.map_err(|_| Exit::ClientGone)?;
                out.clear();
                self.params_from_server().await?
            }
        };
        let mut sorted: Vec<_> = params.iter().collect();
        sorted.sort();
        for (k, v) in sorted {
            wire::parameter_status(&mut out, k, v);
        }
        // Keep only what differs from the defaults: most clients then carry nothing.
        let mut vars = std::mem::take(&mut self.conversation.vars);
        for slot in &mut vars {
            if let Some(v) = params.get(slot.0) {
                slot.1 = v.clone();
            }
        }
        vars.retain(|(k, v)| defaults.params.get(*k) != Some(v));
        vars.shrink_to_fit();
        self.conversation.vars = vars;
        self.conversation.defaults = Some(defaults.tracked);
        wire::backend_key_data(&mut out, key.pid, &key.secret);
        wire::ready_for_query(&mut out, b'I');
        self.client.send(&out).await.map_err(|_| Exit::ClientGone)?;
        self.state.set(ClientState::Idle);
        Ok(())
    }

    /// Borrows a server connection to apply the client's settings: the parameters it then
    /// reports, and the defaults of the client's database and user remembered from it.
    async fn params_from_server(&mut self) -> Result<(Params, Defaults), Exit> {
        self.state.set(ClientState::Held);
        let held = match self.acquire(tokio::time::Instant::now()).await {
            Ok(held) => held,
            Err(Unserved::Refused(e)) => return Err(Exit::Fatal(PgError { fatal: true, ..e })),
            Err(Unserved::ClientLeft(waited)) => return Err(self.left_waiting(waited)),
        };
        self.hold(held);
        self.sync_vars();
        self.flush_to_server().await?;
        let mut failed = None;
        while self.conversation.setting_params() {
            failed = failed.or(self.read_server().await?);
        }
        if let Some((code, message)) = failed {
            let held = self.held.take().expect("held above");
            // The connection's settings are half applied: closed, not shared.
            self.settle_tally(held.lease.pool());
            held.lease.discard();
            self.conversation.forget_server();
            return Err(Exit::Fatal(setting_refused(&code, message)));
        }
        let held = self.held.take().expect("held above");
        let conn = &held.lease.conn;
        let mut params = (*conn.initial).clone();
        for (k, _) in &self.conversation.vars {
            if let Some(v) = tracked::position(k).and_then(|i| conn.state.tracked.get(i)) {
                params.insert(k.to_string(), v.to_owned());
            }
        }
        let defaults = self.shared.pools.defaults.remember(
            &self.registration.entry.database,
            &self.server_user,
            conn.initial.clone(),
        );
        self.put_back(held, Done::Idle).await;
        Ok((Arc::new(params), defaults))
    }

    async fn flush_to_server(&mut self) -> Result<(), Exit> {
        let held = self.held.as_mut().expect("held");
        let sent = held.lease.conn.stream.send(&self.to_server).await;
        sent.map_err(|e| {
            Exit::Fatal(server_gone(&self.shared.scope, &held.route, &e.to_string()))
        })?;
        self.to_server.clear();
        Ok(())
    }

    /// Reads and takes server messages (the answers to the SETs, before any client bytes);
    /// the server's refusal of one, if it refused.
    async fn read_server(&mut self) -> Result<Option<(String, String)>, Exit> {
        let held = self.held.as_mut().expect("held");
        let scope = &self.shared.scope;
        let n = held.lease.conn.stream.read_buf(&mut self.from_server).await;
        let n = n.map_err(|e| Exit::Fatal(server_gone(scope, &held.route, &e.to_string())))?;
        if n == 0 {
            return Err(Exit::Fatal(server_gone(scope, &held.route, "closed")));
        }
        let heard = match self.take_server() {
            Ok(heard) => heard,
            Err(broken) => {
                let e = PgError::fatal(sqlstate::CONNECTION_FAILURE, broken.0);
                return Err(Exit::Fatal(e));
            }
        };
        self.to_client.clear();
        Ok(heard.set_failed)
    }
}

/// The FATAL a client gets at login when the server refused one of its startup settings,
/// as PostgreSQL would refuse it (unknown name, bad value, not allowed).
fn setting_refused(code: &str, message: String) -> PgError {
    const CODES: [&str; 5] = ["42704", "22023", "42501", "55P02", "22P02"];
    let code = CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("22023");
    PgError::fatal(code, message)
}
