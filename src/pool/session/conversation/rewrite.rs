//! The client's statement messages in transaction mode: named statements prepared under
//! their pooled names on whichever connection runs them, DEALLOCATE and Close kept to the
//! client's names, and what running a statement does to the session (LISTEN, DISCARD ALL).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{ClientEnd, Conversation, Expect, CLOSED_KEPT, STAND_IN};
use crate::pool::statements::{self, sql_effects, SqlEffects, Statement};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::wire;
use crate::servers::conn_state::ConnState;

impl Conversation {
    /// Looks at a simple Query; returns true if it was handled without sending it as is.
    pub(super) fn query(&mut self, sql: &[u8], out: &mut BytesMut, conn: &mut ConnState) -> bool {
        let effects = sql_effects(sql);
        self.note_effects(&effects, conn);
        let Some(target) = effects.deallocate.filter(|_| self.rewrite()) else {
            return false;
        };
        let Some(s) = self.statements.remove(target.as_bytes()) else {
            return false;
        };
        if !conn.prepared.remove(&s.id) {
            // Nothing to drop on this connection. Preparing it first to drop it could fail
            // (its table dropped, say) and leave the Query unanswered: answer it here.
            self.expect.push_back(Expect::MadeUpDeallocate);
            return true;
        }
        wire::query(out, &format!("DEALLOCATE {}", s.server_name));
        self.expect.push_back(Expect::Ready);
        true
    }

    pub(super) fn parse(
        &mut self,
        msg: &Bytes,
        body: &Bytes,
        out: &mut BytesMut,
        conn: &mut ConnState,
    ) -> Result<(), ClientEnd> {
        let Some((name, definition)) = statements::split_parse(body) else {
            return Err(ClientEnd::Protocol("malformed Parse".into()));
        };
        if name.is_empty() || !self.rewrite() {
            let query = statements::definition_query(&definition);
            let effects = sql_effects(query);
            self.note_effects(&effects, conn);
            let dropped = effects
                .deallocate
                .filter(|_| self.rewrite())
                .and_then(|target| self.statements.remove(target.as_bytes()));
            if let Some(s) = dropped {
                // DEALLOCATE of a pooled name: drop the server's copy instead; or, when the
                // connection lacks one, a stand-in (preparing the statement to drop it could
                // fail, its table dropped, say, where the client's DEALLOCATE would not).
                let target = if conn.prepared.remove(&s.id) {
                    s.server_name.as_str()
                } else {
                    wire::describe_or_close(out, b'C', b'S', STAND_IN.as_bytes());
                    self.expect.push_back(Expect::InjectedClose);
                    wire::parse(out, STAND_IN, b"\0\0\0");
                    self.expect.push_back(Expect::InjectedStandIn);
                    STAND_IN
                };
                let mut def = format!("DEALLOCATE {target}").into_bytes();
                def.push(0);
                def.extend_from_slice(&definition[query.len() + 1..]);
                wire::parse(out, "", &def);
            } else {
                out.extend_from_slice(msg);
            }
            self.expect.push_back(Expect::Parse(None));
            return Ok(());
        }
        // An earlier batch still unanswered may yet fail and leave the name undefined: then
        // the old way (the name defined anew) is the better guess.
        let settled = !self
            .expect
            .iter()
            .any(|e| matches!(e, Expect::Sync | Expect::Ready | Expect::MadeUpDeallocate));
        if settled && self.statements.get(&name).is_some() {
            // PostgreSQL refuses to redefine a name; so does pgrouter, in its words.
            let message = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(&name)
            );
            let e = PgError::error(sqlstate::DUPLICATE_PREPARED_STATEMENT, message);
            self.made_up_errors.push_back(e.encode().freeze());
            self.expect.push_back(Expect::MadeUpError);
            self.client_skipping = true;
            return Ok(());
        }
        let s = self.statements.define(name, definition);
        if let Some(i) = self.closed.iter().position(|id| *id == s.id) {
            // Closed by the client, prepared again: a fresh plan, as directly.
            self.closed.swap_remove(i);
            conn.mark_stale(s.id);
        }
        if conn.prepared.contains(&s.id) {
            self.expect.push_back(Expect::MadeUpParseComplete);
        } else {
            self.prepare(&s, out, conn, Expect::Parse(Some(s.id)));
        }
        Ok(())
    }

    pub(super) fn bind(
        &mut self,
        msg: &Bytes,
        body: &Bytes,
        out: &mut BytesMut,
        conn: &mut ConnState,
    ) -> Result<(), ClientEnd> {
        let mut r = wire::Reader::new(body);
        let (Some(portal), Some(name)) = (r.cstr(), r.cstr()) else {
            return Err(ClientEnd::Protocol("malformed Bind".into()));
        };
        let id = match self.pooled_statement(name) {
            Some(s) => {
                self.ensure_prepared(&s, out, conn);
                wire::bind(out, portal, &s.server_name, r.rest());
                // A named DISCARD ALL, DEALLOCATE ALL or LISTEN acts each time it runs.
                self.note_effects(&s.effects, conn);
                Some(s.id)
            }
            None => {
                out.extend_from_slice(msg);
                None
            }
        };
        self.expect.push_back(Expect::Bind(id));
        Ok(())
    }

    pub(super) fn describe_or_close(
        &mut self,
        msg: &Bytes,
        body: &Bytes,
        out: &mut BytesMut,
        conn: &mut ConnState,
    ) -> Result<(), ClientEnd> {
        let mut r = wire::Reader::new(body);
        let (Some(kind), Some(name)) = (r.byte(), r.cstr()) else {
            return Err(ClientEnd::Protocol("malformed Describe/Close".into()));
        };
        let statement = if kind == b'S' {
            self.pooled_statement(name)
        } else {
            None
        };
        let expect = match (msg[0], statement) {
            (b'C', Some(s)) => {
                // The client is done with its name; the server keeps the statement for other
                // clients and later Parses of the same text (the client's own next Parse of
                // it prepares it afresh).
                self.statements.remove(name);
                if !self.closed.contains(&s.id) {
                    if self.closed.len() == CLOSED_KEPT {
                        self.closed.remove(0);
                    }
                    self.closed.push(s.id);
                }
                Expect::MadeUpCloseComplete
            }
            (b'D', Some(s)) => {
                self.ensure_prepared(&s, out, conn);
                wire::describe_or_close(out, b'D', b'S', s.server_name.as_bytes());
                Expect::Describe(Some(s.id))
            }
            (tag, None) => {
                out.extend_from_slice(msg);
                if tag == b'D' {
                    Expect::Describe(None)
                } else {
                    Expect::Close
                }
            }
            _ => unreachable!("tags are D or C"),
        };
        self.expect.push_back(expect);
        Ok(())
    }

    pub(super) fn note_effects(&mut self, e: &SqlEffects, conn: &mut ConnState) {
        if e.listen {
            self.pinned = true;
        }
        if e.unlisten_all {
            self.pinned = false;
        }
        if e.drops_all_statements {
            self.statements.clear();
            conn.prepared.clear();
        }
    }

    /// The client's statement `name` when pgrouter renames statements (transaction mode).
    pub(super) fn pooled_statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        if !self.rewrite() || name.is_empty() {
            return None;
        }
        self.statements.get(name)
    }

    /// Prepares `s` on the connection first if it is not there yet.
    pub(super) fn ensure_prepared(
        &mut self,
        s: &Statement,
        out: &mut BytesMut,
        conn: &mut ConnState,
    ) {
        if !conn.prepared.contains(&s.id) {
            self.prepare(s, out, conn, Expect::InjectedParse(s.id));
        }
    }

    /// Sends a Parse of `s` under its pooled name, answered as `expect` says; the server's
    /// stale copy, if it holds one under that name, is closed first.
    pub(super) fn prepare(
        &mut self,
        s: &Statement,
        out: &mut BytesMut,
        conn: &mut ConnState,
        expect: Expect,
    ) {
        if conn.stale.remove(&s.id) {
            wire::describe_or_close(out, b'C', b'S', s.server_name.as_bytes());
            self.expect.push_back(Expect::InjectedClose);
        }
        wire::parse(out, &s.server_name, &s.definition);
        conn.prepared.insert(s.id);
        self.expect.push_back(expect);
    }
}
