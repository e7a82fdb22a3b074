//! Pooled-mode message handling: `pool::wire` (framing, readers, writers), `pool::statements`
//! (statement renaming, `sql_effects`) and, over them, a step-for-step mirror of
//! `PooledSession::client_message` in transaction mode (that method needs a live session, so
//! the mirror calls the same functions in the same order; keep the two in step).
//!
//! Input: byte 0 picks the part; the rest is a client's message stream or SQL text.
//!
//! Invariants:
//! - framing: `take_message` splits a stream into messages whose length fields are right,
//!   loses and reorders no byte, refuses exactly the impossible lengths; the same stream
//!   split at any points and appended piece by piece gives the same messages;
//! - rewriting: what goes to the server is a well-formed message stream; messages not
//!   rewritten are forwarded byte for byte and in order; a rewritten Parse keeps the
//!   definition, a rewritten Bind its portal and parameters, a rewritten Describe its kind;
//!   server names are "pgr_" + 16 hex digits of the definition's hash; every rewritten Bind,
//!   Describe and DEALLOCATE names a statement the (simulated) server has, no Parse
//!   redefines one it has, and pgrouter's idea of the connection's statements equals the
//!   server's after every message;
//! - `sql_effects`: never panics; blanks or `;` around a query change nothing; any name
//!   written as `DEALLOCATE [PREPARE] "name"` (quotes doubled) comes back exactly, and an
//!   unquoted one folded to lower case, whatever blanks, comments and case surround it.
#![no_main]

mod common;

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use common::Schedule;
use libfuzzer_sys::fuzz_target;
use pgrouter::pool::statements::{self, sql_effects, ClientStatements, Statement};
use pgrouter::protocol::frame;
use pgrouter::protocol::limits::MAX_WHOLE_MESSAGE;
use pgrouter::protocol::wire::{self, Reader};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 | 1 => {
            check_framing(rest, mode);
            check_rewrite(rest);
        }
        2 => check_sql(rest),
        _ => check_deallocate_names(rest, mode),
    }
});

fn check_framing(stream: &[u8], seed: u8) {
    let mut buf = BytesMut::from(stream);
    let mut messages = Vec::new();
    let error = loop {
        match wire::take_message(&mut buf) {
            Ok(Some(m)) => messages.push(m),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut pos = 0;
    for m in &messages {
        assert!(m.len() >= 5);
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len + 1, m.len(), "message length");
        assert_eq!(&m[..], &stream[pos..pos + m.len()], "bytes changed");
        pos += m.len();
    }
    assert_eq!(&buf[..], &stream[pos..], "bytes lost");
    match &error {
        Some(e) => {
            assert_eq!(e.tag, stream[pos]);
            // The limit counts the tag byte, the length field does not.
            assert!(e.len < 4 || e.len as usize + 1 > MAX_WHOLE_MESSAGE);
        }
        None => {
            if let Ok(Some((_, len))) = frame::header(&buf) {
                assert!(buf.len() < len, "a whole message was left");
            }
        }
    }
    // Arriving piece by piece: the same messages.
    let mut incremental = BytesMut::new();
    let mut again = Vec::new();
    let mut again_error = None;
    'outer: for part in Schedule::new(&[seed]).split(stream) {
        incremental.extend_from_slice(part);
        loop {
            match wire::take_message(&mut incremental) {
                Ok(Some(m)) => again.push(m),
                Ok(None) => break,
                Err(e) => {
                    again_error = Some(e);
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(again, messages, "piecewise framing differs");
    assert_eq!(again_error, error, "piecewise framing error differs");
}

/// What pgrouter sends the server for one client message, and why.
#[derive(Debug, PartialEq)]
enum Out {
    /// The client's message, as is.
    Forwarded,
    /// A Parse pgrouter adds before a Bind or Describe (`ensure_prepared`).
    Injected(u64),
    /// The client's message under the statement's server name.
    Renamed(u64),
    /// DEALLOCATE of the statement's server name, for the client's DEALLOCATE.
    Deallocate(u64),
}

/// A mirror of the statement handling of `PooledSession::client_message`, transaction mode.
#[derive(Default)]
struct Session {
    statements: ClientStatements,
    /// Statement ids pgrouter believes the server connection has (`conn.prepared`).
    prepared: HashSet<u64>,
    to_server: BytesMut,
    sent: Vec<Out>,
}

impl Session {
    fn note_effects(&mut self, e: &statements::SqlEffects) {
        if e.drops_all_statements {
            self.statements.clear();
            self.prepared.clear();
        }
    }

    fn ensure_prepared(&mut self, s: &Statement) {
        if self.prepared.contains(&s.id) {
            return;
        }
        wire::parse(&mut self.to_server, &s.server_name, &s.definition);
        self.prepared.insert(s.id);
        self.sent.push(Out::Injected(s.id));
    }

    fn forward(&mut self, msg: &Bytes) {
        self.to_server.extend_from_slice(msg);
        self.sent.push(Out::Forwarded);
    }

    /// Err on the messages the session refuses as malformed.
    fn client_message(&mut self, msg: &Bytes) -> Result<(), ()> {
        let body = msg.slice(5..);
        match msg[0] {
            b'Q' => {
                let sql = Reader::new(&body).cstr().unwrap_or_default().to_vec();
                let effects = sql_effects(&sql);
                self.note_effects(&effects);
                if let Some(s) = effects
                    .deallocate
                    .and_then(|t| self.statements.remove(t.as_bytes()))
                {
                    self.ensure_prepared(&s);
                    wire::query(
                        &mut self.to_server,
                        &format!("DEALLOCATE {}", s.server_name),
                    );
                    self.prepared.remove(&s.id);
                    self.sent.push(Out::Deallocate(s.id));
                    return Ok(());
                }
                self.forward(msg);
            }
            b'P' => {
                let (name, definition) = statements::split_parse(&body).ok_or(())?;
                let query = statements::definition_query(&definition).to_vec();
                if name.is_empty() {
                    let effects = sql_effects(&query);
                    self.note_effects(&effects);
                    if let Some(target) = &effects.deallocate {
                        if let Some(s) = self.statements.remove(target.as_bytes()) {
                            self.ensure_prepared(&s);
                            let mut def = format!("DEALLOCATE {}", s.server_name).into_bytes();
                            def.push(0);
                            def.extend_from_slice(&definition[query.len() + 1..]);
                            wire::parse(&mut self.to_server, "", &def);
                            self.prepared.remove(&s.id);
                            self.sent.push(Out::Deallocate(s.id));
                            return Ok(());
                        }
                    }
                    self.forward(msg);
                    return Ok(());
                }
                let s = self.statements.define(name, definition);
                if !self.prepared.contains(&s.id) {
                    wire::parse(&mut self.to_server, &s.server_name, &s.definition);
                    self.prepared.insert(s.id);
                    self.sent.push(Out::Renamed(s.id));
                }
            }
            b'B' => {
                let mut r = Reader::new(&body);
                let (Some(portal), Some(name)) = (r.cstr(), r.cstr()) else {
                    return Err(());
                };
                match self.pooled_statement(name) {
                    Some(s) => {
                        self.ensure_prepared(&s);
                        wire::bind(&mut self.to_server, portal, &s.server_name, r.rest());
                        self.sent.push(Out::Renamed(s.id));
                        self.note_effects(&s.effects);
                    }
                    None => self.forward(msg),
                }
            }
            tag @ (b'D' | b'C') => {
                let mut r = Reader::new(&body);
                let (Some(kind), Some(name)) = (r.byte(), r.cstr()) else {
                    return Err(());
                };
                let statement = if kind == b'S' {
                    self.pooled_statement(name)
                } else {
                    None
                };
                match (tag, statement) {
                    (b'C', Some(_)) => {
                        self.statements.remove(name);
                    }
                    (b'D', Some(s)) => {
                        self.ensure_prepared(&s);
                        wire::describe_or_close(
                            &mut self.to_server,
                            b'D',
                            b'S',
                            s.server_name.as_bytes(),
                        );
                        self.sent.push(Out::Renamed(s.id));
                    }
                    _ => self.forward(msg),
                }
            }
            _ => self.forward(msg),
        }
        Ok(())
    }

    fn pooled_statement(&self, name: &[u8]) -> Option<std::sync::Arc<Statement>> {
        if name.is_empty() {
            return None;
        }
        self.statements.get(name)
    }
}

/// The statements a PostgreSQL server connection holds, by name.
#[derive(Default)]
struct Server {
    statements: HashMap<Vec<u8>, Bytes>,
}

impl Server {
    fn ids(&self) -> HashSet<u64> {
        self.statements
            .iter()
            .filter(|(name, _)| name.starts_with(b"pgr_"))
            .map(|(_, def)| Statement::new(def.clone()).id)
            .collect()
    }
}

fn server_name_of(id: u64) -> String {
    format!("pgr_{id:016x}")
}

fn check_rewrite(stream: &[u8]) {
    let mut cin = BytesMut::from(stream);
    let mut session = Session::default();
    let mut server = Server::default();
    // Protocol-level names the client defined, as the client's own view (name -> definition).
    let mut client_view: HashMap<Bytes, Bytes> = HashMap::new();
    while let Ok(Some(msg)) = wire::take_message(&mut cin) {
        let (out_before, sent_before) = (session.to_server.len(), session.sent.len());
        if session.client_message(&msg).is_err() {
            return;
        }
        // What was sent for this message parses back into whole messages, one per entry.
        let mut out = BytesMut::from(&session.to_server[out_before..]);
        let sent = &session.sent[sent_before..];
        let mut sent_msgs = Vec::new();
        while let Some(m) = wire::take_message(&mut out).expect("pgrouter wrote a bad length") {
            sent_msgs.push(m);
        }
        assert!(out.is_empty(), "pgrouter wrote a partial message");
        assert_eq!(sent_msgs.len(), sent.len(), "one message per action");
        let body = msg.slice(5..);
        for (m, action) in sent_msgs.iter().zip(sent) {
            let mbody = m.slice(5..);
            match action {
                Out::Forwarded => {
                    assert_eq!(m, &msg, "a forwarded message changed");
                    forwarded(&mut server, m);
                }
                Out::Injected(id) | Out::Renamed(id) if m[0] == b'P' => {
                    let (name, def) = statements::split_parse(&mbody).expect("our Parse");
                    assert_eq!(&name[..], server_name_of(*id).as_bytes());
                    assert_eq!(Statement::new(def.clone()).id, *id, "name from the hash");
                    assert!(
                        !server.statements.contains_key(&name[..]),
                        "Parse of a statement the server already has"
                    );
                    if matches!(action, Out::Renamed(_)) {
                        let (_, client_def) = statements::split_parse(&body).unwrap();
                        assert_eq!(def, client_def, "definition changed");
                    }
                    server.statements.insert(name.to_vec(), def);
                }
                Out::Renamed(id) if m[0] == b'B' => {
                    let mut ours = Reader::new(&mbody);
                    let mut theirs = Reader::new(&body);
                    assert_eq!(ours.cstr(), theirs.cstr(), "portal changed");
                    let name = ours.cstr().unwrap();
                    let client_name = theirs.cstr().unwrap();
                    assert_eq!(name, server_name_of(*id).as_bytes());
                    assert_eq!(ours.rest(), theirs.rest(), "parameters changed");
                    assert!(
                        server.statements.contains_key(name),
                        "Bind of a missing statement"
                    );
                    // The statement run is the one the client defined under its name.
                    assert_eq!(
                        server.statements.get(name),
                        client_view.get(client_name),
                        "Bind runs another definition"
                    );
                    // The server runs it: a DISCARD ALL or DEALLOCATE ALL under a name drops
                    // every statement, the client's included.
                    let def = server.statements[name].clone();
                    let query = statements::definition_query(&def).to_vec();
                    apply_sql(&mut server, &query);
                    forget(&mut client_view, &query);
                }
                Out::Renamed(id) if m[0] == b'D' => {
                    assert_eq!(m[5], b'S');
                    let name = Reader::new(&mbody[1..]).cstr().unwrap();
                    assert_eq!(name, server_name_of(*id).as_bytes());
                    assert!(
                        server.statements.contains_key(name),
                        "Describe of a missing statement"
                    );
                }
                Out::Deallocate(id) => {
                    let sql = match m[0] {
                        b'Q' => Reader::new(&mbody).cstr().unwrap().to_vec(),
                        b'P' => {
                            let (name, def) = statements::split_parse(&mbody).unwrap();
                            assert!(name.is_empty());
                            Reader::new(&def).cstr().unwrap().to_vec()
                        }
                        t => panic!("DEALLOCATE sent as '{}'", char::from(t)),
                    };
                    let name = server_name_of(*id);
                    assert_eq!(sql, format!("DEALLOCATE {name}").into_bytes());
                    assert!(
                        server.statements.remove(name.as_bytes()).is_some(),
                        "DEALLOCATE of a missing statement"
                    );
                }
                other => panic!("unexpected {other:?} as '{}'", char::from(m[0])),
            }
        }
        // The client's own view of its statement names.
        match msg[0] {
            b'P' => {
                let (name, def) = statements::split_parse(&body).unwrap();
                if name.is_empty() {
                    forget(&mut client_view, statements::definition_query(&def));
                } else {
                    client_view.insert(name, def);
                }
            }
            b'C' if body.first() == Some(&b'S') => {
                if let Some(name) = Reader::new(&body[1..]).cstr() {
                    client_view.remove(name);
                }
            }
            b'Q' => forget(
                &mut client_view,
                Reader::new(&body).cstr().unwrap_or_default(),
            ),
            _ => {}
        }
        assert_eq!(
            session.prepared,
            server.ids(),
            "pgrouter's statements differ from the server's"
        );
    }
}

/// The client's statements that `sql` deallocates.
fn forget(client_view: &mut HashMap<Bytes, Bytes>, sql: &[u8]) {
    let e = sql_effects(sql);
    if e.drops_all_statements {
        client_view.clear();
    }
    if let Some(name) = e.deallocate {
        client_view.remove(name.as_bytes());
    }
}

/// A message forwarded unchanged, as the server applies it to its statements.
fn forwarded(server: &mut Server, m: &Bytes) {
    let body = m.slice(5..);
    let sql: &[u8] = match m[0] {
        b'Q' => Reader::new(&body).cstr().unwrap_or_default(),
        // The session looks at the query of an unnamed Parse when it arrives.
        b'P' => match statements::split_parse(&body) {
            Some((name, def)) if name.is_empty() => {
                let q = statements::definition_query(&def).to_vec();
                return apply_sql(server, &q);
            }
            _ => return,
        },
        _ => return,
    };
    apply_sql(server, &sql.to_vec());
}

fn apply_sql(server: &mut Server, sql: &[u8]) {
    let e = sql_effects(sql);
    if e.drops_all_statements {
        server.statements.clear();
    }
    if let Some(name) = e.deallocate {
        server.statements.remove(name.as_bytes());
    }
}

fn check_sql(sql: &[u8]) {
    let e = sql_effects(sql);
    if let Some(name) = &e.deallocate {
        assert!(!name.is_empty());
    }
    let mut padded = b" \n\t".to_vec();
    padded.extend_from_slice(sql);
    padded.extend_from_slice(b"\r\n ;  ;");
    // A query ending inside a comment or literal swallows the padding: skip those.
    if !ends_open(sql) {
        assert_eq!(
            sql_effects(&padded),
            e,
            "blanks or ';' around the query changed it"
        );
    }
}

/// Whether the text ends inside a comment, literal or quoted identifier (roughly: an odd
/// count of quotes, or a `--`/`/*`/`$` anywhere).
fn ends_open(sql: &[u8]) -> bool {
    let count = |c: u8| sql.iter().filter(|b| **b == c).count();
    count(b'\'') % 2 == 1
        || count(b'"') % 2 == 1
        || sql.windows(2).any(|w| w == b"--" || w == b"/*")
        || sql.contains(&b'$')
        || sql.contains(&b'\\')
}

fn check_deallocate_names(data: &[u8], mode: u8) {
    let mut schedule = Schedule::new(data);
    let name: String = String::from_utf8_lossy(data)
        .chars()
        .filter(|c| *c != '\0')
        .take(80)
        .collect();
    let blanks = [
        " ",
        "\t",
        "\n",
        "\r\n",
        "  ",
        " /* c; */ ",
        "/**/",
        "\n-- c;\n",
    ];
    let mut blank = || blanks[schedule.next_u64() as usize % blanks.len()];
    let keyword = |k: &str, upper: bool| {
        if upper {
            k.to_ascii_uppercase()
        } else {
            k.to_owned()
        }
    };
    let prepare = if mode & 8 == 8 {
        format!("{}{}", keyword("prepare", mode & 16 == 16), blank())
    } else {
        String::new()
    };
    let head = format!(
        "{}{}{}{}",
        blank(),
        keyword("deallocate", mode & 32 == 32),
        blank(),
        prepare
    );
    let tail = if mode & 64 == 64 { ";" } else { "" };
    // Quoted: any name comes back as written.
    let quoted = format!("{head}\"{}\"{}{tail}", name.replace('"', "\"\""), blank());
    let e = sql_effects(quoted.as_bytes());
    if name.is_empty() {
        assert_eq!(e.deallocate, None, "{quoted:?}");
    } else {
        assert_eq!(e.deallocate.as_deref(), Some(name.as_str()), "{quoted:?}");
        assert!(!e.drops_all_statements && !e.listen && !e.unlisten_all);
    }
    // Unquoted: a plain identifier comes back folded to lower case.
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        let folded = name.to_ascii_lowercase();
        let unquoted = format!("{head}{name}{}{tail}", blank());
        let e = sql_effects(unquoted.as_bytes());
        if folded == "all" {
            assert!(
                e.drops_all_statements && e.deallocate.is_none(),
                "{unquoted:?}"
            );
        } else {
            assert_eq!(
                e.deallocate.as_deref(),
                Some(folded.as_str()),
                "{unquoted:?}"
            );
        }
    }
}
