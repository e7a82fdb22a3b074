//! The server's side of the conversation: its answers forwarded, swallowed or answered for
//! as the ledger says, and what they settle.

use bytes::{Buf, Bytes, BytesMut};

use super::settings::Injected;
use super::{Broken, Conversation, Expect, Heard, Unnamed};
use crate::pool::statements::Statement;
use crate::protocol::error::{sqlstate, PgError};
use crate::protocol::frame;
use crate::protocol::wire;
use crate::servers::conn_state::ConnState;
use crate::servers::tracked::TRACKED;

impl Conversation {
    /// Forwards, swallows or answers for the server's messages in `input` as the ledger says,
    /// while `to_client` has room.
    pub fn from_server(
        &mut self,
        input: &mut BytesMut,
        to_client: &mut BytesMut,
        conn: &mut ConnState,
    ) -> Result<Heard, Broken> {
        let mut heard = Heard::default();
        loop {
            if self.server_stream_left > 0 {
                let n = self.server_stream_left.min(input.len());
                if n == 0 {
                    return Ok(heard);
                }
                if !self.server_stream_drop {
                    to_client.extend_from_slice(&input[..n]);
                }
                input.advance(n);
                self.server_stream_left -= n;
                continue;
            }
            // Only between messages: one being streamed came before them.
            self.answer_owed(to_client);
            let (tag, len) = match frame::header(input) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(heard),
                Err(e) => return Err(Broken(e.to_string())),
            };
            let taken_whole =
                matches!(tag, b'Z' | b'S' | b'E') || (tag == b'D' && self.reading_back());
            if !taken_whole {
                if matches!(tag, b'G' | b'W') {
                    self.copy_began();
                }
                let forward = self.settle(tag);
                self.server_stream_left = len;
                self.server_stream_drop = !forward;
                continue;
            }
            match wire::take_message(input) {
                Ok(Some(msg)) => self.server_message(msg, to_client, conn, &mut heard)?,
                Ok(None) => return Ok(heard),
                Err(e) => return Err(Broken(e.to_string())),
            }
        }
    }

    /// A DataRow answering a read-back of the client's settings is next.
    fn reading_back(&self) -> bool {
        self.expect.front() == Some(&Expect::InjectedQuery)
            && matches!(self.injected.front(), Some(Injected::Readback(_)))
    }

    /// A ReadyForQuery, ParameterStatus, ErrorResponse or read-back DataRow, taken whole.
    fn server_message(
        &mut self,
        msg: Bytes,
        to_client: &mut BytesMut,
        conn: &mut ConnState,
        heard: &mut Heard,
    ) -> Result<(), Broken> {
        let body = &msg[5..];
        let swallowing = self.expect.front() == Some(&Expect::InjectedQuery);
        if msg[0] == b'D' {
            if let Some(Injected::Readback(names)) = self.injected.front().cloned() {
                self.read_back(&names, body, conn);
            }
            return Ok(());
        }
        if msg[0] != b'S' {
            // An error ends a COPY; ReadyForQuery comes after one.
            self.copy_in = false;
        }
        match msg[0] {
            b'Z' => {
                self.status = body.first().copied().unwrap_or(b'I');
                if self.settle_front() == Some(Expect::InjectedQuery) {
                    self.injected.pop_front();
                } else {
                    to_client.extend_from_slice(&msg);
                    heard.ready += 1;
                    heard.idle += u32::from(self.status == b'I');
                }
            }
            b'S' => {
                let mut r = wire::Reader::new(body);
                if let (Some(k), Some(v)) = (r.cstr(), r.cstr()) {
                    let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
                    self.note_param(&k, &v);
                    conn.note_param(&k, &v);
                }
                if !swallowing || self.injected.front() == Some(&Injected::Restore) {
                    to_client.extend_from_slice(&msg);
                }
            }
            _ => {
                let fields = wire::error_fields(body);
                let severity = fields
                    .iter()
                    .find(|(c, _)| *c == b'V' || *c == b'S')
                    .map(|(_, v)| v.as_str());
                let message = wire::field(&fields, b'M').unwrap_or_default();
                if matches!(severity, Some("FATAL") | Some("PANIC")) {
                    return Err(Broken(message.to_owned()));
                }
                if swallowing {
                    match self.injected.front() {
                        // The client's SQL-level statement did not prepare here again.
                        Some(Injected::Prepare(name)) => self.sql.failed(name.clone()),
                        _ => {
                            let code = wire::field(&fields, b'C').unwrap_or_default();
                            heard.set_failed = Some((code.to_owned(), message.to_owned()));
                        }
                    }
                    return Ok(());
                }
                if wire::field(&fields, b'C') == Some(sqlstate::FEATURE_NOT_SUPPORTED) {
                    // "cached plan must not change result type": prepared afresh next time.
                    if let Some(Expect::Bind(Some(id)) | Expect::Describe(Some(id))) =
                        self.expect.front().copied()
                    {
                        conn.mark_stale(id);
                    }
                }
                self.skip_to_sync(conn);
                match self.in_client_names(&fields) {
                    Some(named) => to_client.extend_from_slice(&named),
                    None => to_client.extend_from_slice(&msg),
                }
            }
        }
        Ok(())
    }

    /// An ErrorResponse naming a statement by its pooled name (26000, 42P05, 08P01 "bind
    /// message supplies ..."), in the client's name for it, as PostgreSQL would have said.
    fn in_client_names(&self, fields: &[(u8, String)]) -> Option<BytesMut> {
        const MARK: &str = "\"pgr_";
        if !self.rewrite() || !fields.iter().any(|(_, v)| v.contains(MARK)) {
            return None;
        }
        let rename = |text: &str| {
            let mut out = String::with_capacity(text.len());
            let mut rest = text;
            while let Some(at) = rest.find(MARK) {
                out.push_str(&rest[..at]);
                let quoted = &rest[at + 1..];
                let end = quoted.find('"').unwrap_or(quoted.len());
                let client_name = Statement::id_of_server_name(&quoted.as_bytes()[..end])
                    .and_then(|id| self.client_name(id));
                match client_name {
                    Some(name) => out.push_str(&format!("\"{}", String::from_utf8_lossy(&name))),
                    None => out.push_str(&rest[at..at + 1 + end]),
                }
                rest = &quoted[end..];
            }
            out.push_str(rest);
            out
        };
        let renamed: Vec<(u8, String)> = fields.iter().map(|(c, v)| (*c, rename(v))).collect();
        let renamed: Vec<(u8, &str)> = renamed.iter().map(|(c, v)| (*c, v.as_str())).collect();
        let mut out = BytesMut::new();
        wire::error_response(&mut out, b'E', &renamed);
        Some(out)
    }

    /// The client's name for statement `id`, also just after it was forgotten.
    fn client_name(&self, id: u64) -> Option<Bytes> {
        self.statements.name_of(id).or_else(|| {
            self.forgotten
                .as_ref()
                .filter(|(forgotten, _)| *forgotten == id)
                .map(|(_, name)| name.clone())
        })
    }

    /// A tracked parameter the server reported: the client's from now on.
    fn note_param(&mut self, name: &str, value: &str) {
        if let Some(slot) = self.vars.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = value.to_owned();
        } else if let Some(k) = TRACKED.iter().find(|t| **t == name) {
            self.vars.push((k, value.to_owned()));
        }
    }

    /// An ErrorResponse in an extended batch: the server skips to Sync, so does the ledger.
    fn skip_to_sync(&mut self, conn: &mut ConnState) {
        if matches!(
            self.expect.front(),
            Some(Expect::Ready | Expect::MadeUpDeallocate)
        ) {
            // A simple Query's own error: ReadyForQuery follows, nothing is skipped.
            return;
        }
        // The batch's Sync not sent yet: the server ignores what comes before it.
        self.client_skipping = !self.expect.contains(&Expect::Sync);
        while let Some(e) = self.expect.front().copied() {
            if e == Expect::Sync {
                break;
            }
            self.expect.pop_front();
            match e {
                Expect::Parse(Some(id)) => {
                    conn.prepared.remove(&id);
                    // Never defined, as directly: a Bind of the name now gets 26000.
                    if let Some(name) = self.statements.remove_id(id) {
                        self.forgotten = Some((id, name));
                    }
                }
                // The client's unnamed Parse failed or was skipped: it has none.
                Expect::Parse(None) => self.unnamed_state = Unnamed::None,
                Expect::InjectedParse(Some(id)) => {
                    conn.prepared.remove(&id);
                }
                Expect::InjectedParse(None) if self.unnamed_state == Unnamed::Here => {
                    // Perhaps the client's unnamed statement prepared again: again next time.
                    self.unnamed_state = if self.unnamed.is_empty() {
                        Unnamed::Lost
                    } else {
                        Unnamed::Elsewhere
                    };
                }
                Expect::MadeUpError => {
                    // The server's error came first: directly, the client hears only that.
                    self.made_up_errors.pop_front();
                }
                _ => {}
            }
        }
    }

    /// Settles the ledger for a streamed message; returns whether to forward it.
    fn settle(&mut self, tag: u8) -> bool {
        let head = self.expect.front().copied();
        let (settles, forward) = match (tag, head) {
            (_, Some(Expect::InjectedQuery)) => (false, false),
            (b'1', Some(Expect::InjectedParse(_))) | (b'3', Some(Expect::InjectedClose)) => {
                (true, false)
            }
            (b'1', Some(Expect::Parse(_)))
            | (b'2', Some(Expect::Bind(_)))
            | (b'3', Some(Expect::Close))
            | (b'T' | b'n', Some(Expect::Describe(_)))
            | (b'C' | b'I' | b's', Some(Expect::Execute)) => (true, true),
            _ => (false, true),
        };
        if settles {
            self.settle_front();
        }
        forward
    }

    /// Writes the answers pgrouter owes for messages it did not forward, in order, once
    /// everything before them is answered (and no answer is half-way through).
    pub fn answer_owed(&mut self, to_client: &mut BytesMut) {
        if self.server_stream_left > 0 {
            return;
        }
        while let Some(e) = self.expect.front() {
            match e {
                Expect::MadeUpCloseComplete => wire::message(to_client, b'3', |_| {}),
                Expect::MadeUpError => {
                    let e = self.made_up_errors.pop_front().unwrap_or_default();
                    to_client.extend_from_slice(&e);
                }
                Expect::MadeUpDeallocate if self.status == b'E' => {
                    let e = PgError::error(
                        sqlstate::IN_FAILED_SQL_TRANSACTION,
                        "current transaction is aborted, commands ignored until end of transaction block",
                    );
                    to_client.extend_from_slice(&e.encode());
                    wire::ready_for_query(to_client, self.status);
                }
                Expect::MadeUpDeallocate => {
                    wire::message(to_client, b'C', |b| b.extend_from_slice(b"DEALLOCATE\0"));
                    wire::ready_for_query(to_client, self.status);
                }
                _ => return,
            }
            self.settle_front();
        }
    }
}
