//! The client's statement messages in transaction mode: named statements prepared under
//! their pooled names on whichever connection runs them, DEALLOCATE and Close kept to the
//! client's names, and what running a statement does to the session (LISTEN, DISCARD ALL).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{ClientEnd, Conversation, Expect, Unnamed, STAND_IN, UNNAMED_KEPT};
use crate::pool::statements::{self, sql_effects, SqlEffects, Statement};
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::wire;
use crate::servers::conn_state::ConnState;

impl Conversation {
    /// Looks at a simple Query; returns true if it was handled without sending it as is.
    pub(super) fn query(&mut self, sql: &[u8], out: &mut BytesMut, conn: &mut ConnState) -> bool {
        let effects = sql_effects(sql);
        if !self.rewrite() {
            self.note_effects(&effects, conn);
            return false;
        }
        let sql_target = effects.deallocate.as_ref().filter(|t| self.sql.carries(t));
        if let Some(target) = sql_target {
            // PostgreSQL refuses it in a failed transaction and the statement stays. Else,
            // where the connection lacks it, answered here (preparing it again to drop it
            // could fail: its table gone, say).
            if self.aborted() || self.sql.drop(target) {
                return false;
            }
            self.expect.push_back(Expect::MadeUpDeallocate);
            return true;
        }
        self.sql_statements_named(sql, out);
        self.note_effects(&effects, conn);
        let Some(target) = effects.deallocate else {
            return false;
        };
        if self.statements.get(target.as_bytes()).is_none() {
            return false;
        }
        if self.aborted() {
            // PostgreSQL refuses it (25P02) and the statement stays.
            self.expect.push_back(Expect::MadeUpDeallocate);
            return true;
        }
        let Some(s) = self.statements.remove(target.as_bytes()) else {
            return false;
        };
        if conn.prepared.remove(&s.id).is_none() {
            // Nothing to drop on this connection. Preparing it first to drop it could fail
            // (its table dropped, say) and leave the Query unanswered: answer it here.
            self.expect.push_back(Expect::MadeUpDeallocate);
            return true;
        }
        wire::query(out, &format!("DEALLOCATE {}", s.server_name));
        self.expect.push_back(Expect::Ready);
        true
    }

    /// Prepares here first the client's SQL-level statements that `sql` names and the
    /// connection lacks (each its own Query, answered to pgrouter).
    fn sql_statements_named(&mut self, sql: &[u8], out: &mut BytesMut) {
        for (name, prepare) in self.sql.needed_by(sql) {
            wire::message(out, b'Q', |b| wire::put_cstr(b, &prepare));
            self.expect.push_back(Expect::InjectedQuery);
            self.injected
                .push_back(super::settings::Injected::Prepare(name));
        }
    }

    /// Before a Parse or Bind that opens an extended batch (no Query may come inside one):
    /// the SQL-level statements its query names, as for a simple Query (tokio-postgres sends
    /// `EXECUTE name(...)` as a Parse, then a Bind in a later batch).
    pub(super) fn sql_statements_for(&mut self, msg: &Bytes, out: &mut BytesMut) {
        if !self.rewrite() || !self.sql.any() {
            return;
        }
        let mut r = wire::Reader::new(&msg[5..]);
        let definition = match msg[0] {
            b'P' => statements::split_parse(&msg.slice(5..)).map(|(_, d)| d),
            _ => r
                .cstr()
                .and(r.cstr())
                .and_then(|name| self.pooled_statement(name))
                .map(|s| s.definition.clone()),
        };
        let Some(definition) = definition else {
            return;
        };
        let query = statements::definition_query(&definition);
        // A DEALLOCATE of one needs it nowhere (`deallocating`).
        if sql_effects(query).deallocate.is_none() {
            self.sql_statements_named(query, out);
        }
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
        if !self.rewrite() {
            let query = statements::definition_query(&definition);
            self.note_effects(&sql_effects(query), conn);
            out.extend_from_slice(msg);
            self.expect.push_back(Expect::Parse(None));
            return Ok(());
        }
        if name.is_empty() {
            let (definition, stand_in) = self.deallocating(definition);
            let query = statements::definition_query(&definition);
            self.note_effects(&sql_effects(query), conn);
            if stand_in {
                self.prepare_stand_in(out);
            }
            let start = out.len();
            wire::parse(out, "", &definition);
            self.keep_unnamed(&out[start..]);
            self.expect.push_back(Expect::Parse(None));
            return Ok(());
        }
        if self.settled() && self.statements.get(&name).is_some() {
            // PostgreSQL refuses to redefine a name; so does pgrouter, in its words. (With an
            // earlier batch still unanswered, which may yet fail and leave the name undefined,
            // the name is defined anew: the better guess.)
            let message = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(&name)
            );
            self.refuse(PgError::error(
                sqlstate::DUPLICATE_PREPARED_STATEMENT,
                message,
            ));
            return Ok(());
        }
        // A client's Parse plans afresh, as directly: a copy on this connection from before
        // it may hold a plan from before a DDL the client has seen.
        let (definition, _) = self.deallocating(definition);
        let s = self.statements.define(name, definition);
        self.prepare(&s, out, conn, Expect::Parse(Some(s.id)));
        Ok(())
    }

    /// A Parse of `DEALLOCATE name` (named or not) of one of the client's statements becomes
    /// one of [`STAND_IN`], prepared before each run of it (the server knows the client's
    /// statement by its pooled name, or not at all), and the name is gone; as is, in a
    /// failed transaction, where PostgreSQL refuses the Parse.
    /// Whether it did.
    fn deallocating(&mut self, definition: Bytes) -> (Bytes, bool) {
        let query = statements::definition_query(&definition);
        let target = match sql_effects(query).deallocate {
            Some(t) if !self.aborted() && t != STAND_IN => t,
            _ => return (definition, false),
        };
        if self.statements.remove(target.as_bytes()).is_none() {
            // The client's SQL-level statement is dropped under its own name where the
            // connection has it; where it lacks it, the stand-in is.
            if !self.sql.carries(&target) || self.sql.drop(&target) {
                return (definition, false);
            }
        }
        let mut def = format!("DEALLOCATE {STAND_IN}").into_bytes();
        def.push(0);
        def.extend_from_slice(&definition[query.len() + 1..]);
        (Bytes::from(def), true)
    }

    /// Prepares [`STAND_IN`] on the server: the DEALLOCATE that follows drops it.
    fn prepare_stand_in(&mut self, out: &mut BytesMut) {
        wire::describe_or_close(out, b'C', b'S', STAND_IN.as_bytes());
        self.expect.push_back(Expect::InjectedClose);
        wire::parse(out, STAND_IN, b"\0\0\0");
        self.expect.push_back(Expect::InjectedParse(None));
    }

    /// Remembers the client's unnamed Parse just sent, to prepare it again in a later
    /// transaction.
    fn keep_unnamed(&mut self, parse: &[u8]) {
        self.unnamed.clear();
        if parse.len() <= UNNAMED_KEPT {
            self.unnamed.extend_from_slice(parse);
        } else if self.unnamed.capacity() > UNNAMED_KEPT {
            self.unnamed = BytesMut::new();
        }
        self.unnamed_state = Unnamed::Here;
    }

    /// Before a Bind or Describe of the unnamed statement: the client's own, prepared on this
    /// connection if it was on another; false when there is none to run (answered with
    /// PostgreSQL's 26000, or pgrouter's error when it was too long to keep).
    fn ensure_unnamed(&mut self, out: &mut BytesMut) -> bool {
        let e = match self.unnamed_state {
            Unnamed::Here => return true,
            Unnamed::Elsewhere => {
                if statements::definition_query(&self.unnamed[6..]).starts_with(b"DEALLOCATE ") {
                    self.prepare_stand_in(out);
                }
                out.extend_from_slice(&self.unnamed);
                self.expect.push_back(Expect::InjectedParse(None));
                self.unnamed_state = Unnamed::Here;
                return true;
            }
            Unnamed::None => PgError::error(
                sqlstate::INVALID_SQL_STATEMENT_NAME,
                "unnamed prepared statement does not exist",
            ),
            Unnamed::Lost => PgError::error(
                sqlstate::INVALID_SQL_STATEMENT_NAME,
                format!("pgrouter: the unnamed prepared statement, over {} KiB, was not kept past its transaction: parse it again", UNNAMED_KEPT / 1024),
            ),
        };
        self.refuse(e);
        false
    }

    /// Answers the client's message with `e` in its turn, as PostgreSQL would; its messages up
    /// to its Sync are then dropped, as PostgreSQL ignores them.
    fn refuse(&mut self, e: PgError) {
        self.made_up_errors.push_back(e.encode().freeze());
        self.expect.push_back(Expect::MadeUpError);
        self.client_skipping = true;
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
                if s.effects.deallocate.as_deref() == Some(STAND_IN) {
                    self.prepare_stand_in(out);
                }
                wire::bind(out, portal, &s.server_name, r.rest());
                // A named DISCARD ALL, DEALLOCATE ALL, LISTEN or PREPARE acts each time it
                // runs.
                self.note_effects(&s.effects, conn);
                Some(s.id)
            }
            None => {
                if name.is_empty() && self.rewrite() && !self.ensure_unnamed(out) {
                    return Ok(());
                }
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
            (b'C', Some(_)) => {
                // The client is done with its name; the server keeps the statement for other
                // clients (the client's own next Parse of it prepares it afresh).
                self.statements.remove(name);
                Expect::MadeUpCloseComplete
            }
            (b'D', Some(s)) => {
                self.ensure_prepared(&s, out, conn);
                wire::describe_or_close(out, b'D', b'S', s.server_name.as_bytes());
                Expect::Describe(Some(s.id))
            }
            (tag, None) => {
                let unnamed = kind == b'S' && name.is_empty() && self.rewrite();
                if tag == b'D' && unnamed && !self.ensure_unnamed(out) {
                    return Ok(());
                }
                if tag == b'C' && unnamed {
                    self.unnamed_state = Unnamed::None;
                }
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

    /// What running a statement does to the session (`e`, its effects). In a failed transaction
    /// PostgreSQL refuses it, and nothing changes.
    pub(super) fn note_effects(&mut self, e: &SqlEffects, conn: &mut ConnState) {
        if e.listen {
            self.pinned = true;
        }
        if e.unlisten_all {
            self.pinned = false;
        }
        if e.closes_all_cursors {
            self.held_cursors.clear();
        }
        self.held_cursors.retain(|c| !e.closes_cursors.contains(c));
        if self.rewrite() {
            self.held_cursors.extend(e.holds_cursors.iter().cloned());
        }
        if self.aborted() {
            return;
        }
        self.note_settings(e);
        if e.drops_all_statements {
            self.statements.clear();
            conn.prepared.clear();
            self.sql.clear();
        }
        if !self.rewrite() {
            return;
        }
        for (name, prepare) in &e.sql_prepares {
            if !self.sql.keep(name, prepare.as_bytes()) {
                self.session_state = true;
            }
        }
        if e.session_state {
            self.session_state = true;
        }
    }

    /// The client's statement `name` when pgrouter renames statements (transaction mode).
    pub(super) fn pooled_statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        if !self.rewrite() || name.is_empty() {
            return None;
        }
        self.statements.get(name)
    }

    /// Prepares `s` on the connection first unless a copy made since the client parsed it
    /// is there.
    pub(super) fn ensure_prepared(
        &mut self,
        s: &Statement,
        out: &mut BytesMut,
        conn: &mut ConnState,
    ) {
        if !conn.serves(s.id, s.parsed) {
            self.prepare(s, out, conn, Expect::InjectedParse(Some(s.id)));
        }
    }

    /// Sends a Parse of `s` under its pooled name, answered as `expect` says; the server's
    /// copy under that name, if it holds one, is closed first.
    pub(super) fn prepare(
        &mut self,
        s: &Statement,
        out: &mut BytesMut,
        conn: &mut ConnState,
        expect: Expect,
    ) {
        if conn.prepared.remove(&s.id).is_some() | conn.stale.remove(&s.id) {
            wire::describe_or_close(out, b'C', b'S', s.server_name.as_bytes());
            self.expect.push_back(Expect::InjectedClose);
        }
        wire::parse(out, &s.server_name, &s.definition);
        conn.prepared.insert(s.id, std::time::Instant::now());
        self.expect.push_back(expect);
    }
}
