//! Pooled-mode message handling: `protocol::wire` (framing, readers, writers),
//! `pool::statements` (statement renaming, `sql_effects`) and, over them, the pooled
//! session's real protocol core, `pool::session::Conversation`, in transaction mode, against
//! a simulated server.
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
//!   server's after every message; answered as a server would (in pieces at any points), the
//!   client hears exactly one answer per message of its own, in order (made-up ParseComplete
//!   and CloseComplete included, answers to pgrouter's own Parses swallowed);
//! - against a direct connection (`check_against_direct`, `server_model`): the same client
//!   messages, errors included, give as many ReadyForQuery through pgrouter as directly;
//! - `sql_effects`: never panics; blanks or `;` around a query change nothing; any name
//!   written as `DEALLOCATE [PREPARE] "name"` (quotes doubled) comes back exactly, and an
//!   unquoted one folded to lower case, whatever blanks, comments and case surround it.
#![no_main]

mod common;
mod server_model;

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use common::Schedule;
use libfuzzer_sys::fuzz_target;
use pgrouter::config::PoolMode;
use pgrouter::testing::frame;
use pgrouter::testing::limits::MAX_WHOLE_MESSAGE;
use pgrouter::testing::statements::{self, sql_effects, Statement};
use pgrouter::testing::wire::{self, Reader};
use pgrouter::testing::ConnState;
use pgrouter::testing::Conversation;
use pgrouter::testing::Tracked;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            check_framing(rest, mode);
            check_rewrite(rest, mode);
        }
        1 => check_against_direct(rest, mode),
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

    /// The answers PostgreSQL gives `m` when all goes well ('n' for a Describe).
    fn answers(m: &[u8]) -> &'static [u8] {
        match m[0] {
            b'P' => b"1",
            b'B' => b"2",
            b'C' => b"3",
            b'D' => b"n",
            b'E' => b"C",
            b'S' | b'F' => b"Z",
            b'Q' => b"CZ",
            _ => b"",
        }
    }
}

fn server_name_of(id: u64) -> String {
    format!("pgr_{id:016x}")
}

/// The real `Conversation` of a transaction-mode session over a client's message stream,
/// against a simulated server: what it sends keeps the server's statements and its own idea
/// of them equal, and the client gets exactly the answers its own messages call for.
fn check_rewrite(stream: &[u8], seed: u8) {
    let mut input = BytesMut::from(stream);
    let mut conversation = Conversation::new(PoolMode::Transaction, Vec::new());
    let mut conn = ConnState::new(Tracked::default());
    let mut server = Server::default();
    // Protocol-level names the client defined, as the client's own view (name -> definition).
    let mut client_view: HashMap<Bytes, Bytes> = HashMap::new();
    let (mut answers, mut owed) = (Vec::new(), Vec::new());
    // After an error in a batch the client's messages up to Sync go unanswered.
    let mut skipping = false;
    // A batch was sent whose answers come later.
    let mut answered_later = false;
    // The client has an unnamed statement (PostgreSQL drops it at a simple Query or a Close).
    let mut unnamed = false;
    while let Ok(Some(msg)) = wire::take_message(&mut input) {
        let mut out = BytesMut::new();
        if conversation
            .client_message(msg.clone(), &mut out, &mut conn)
            .is_err()
        {
            break;
        }
        let ignored = skipping && msg[0] != b'S';
        // PostgreSQL refuses a Parse of a name the client already has (42P05), and pgrouter
        // says so itself when no earlier batch is unanswered (here, before any Sync: every
        // answer comes at the end).
        let duplicate = !ignored
            && !answered_later
            && msg[0] == b'P'
            && statements::split_parse(&msg.slice(5..))
                .is_some_and(|(name, _)| !name.is_empty() && client_view.contains_key(&name));
        // A Bind or Describe of the unnamed statement the client does not have: 26000.
        let no_unnamed = !ignored && !unnamed && names_unnamed(&msg);
        if duplicate || no_unnamed {
            owed.push(b'E');
            skipping = true;
        } else if !ignored {
            skipping = false;
            owed.extend_from_slice(Server::answers(&msg));
        }
        // What was sent for this message parses back into whole messages.
        while let Some(m) = wire::take_message(&mut out).expect("pgrouter wrote a bad length") {
            sent(&mut server, &msg, &m, &client_view);
            answers.push(msg_of(Server::answers(&m)));
        }
        assert!(out.is_empty(), "pgrouter wrote a partial message");
        if !ignored && !duplicate && !no_unnamed {
            client_learns(&mut client_view, &msg);
            match msg[0] {
                b'P' => {
                    unnamed |= statements::split_parse(&msg.slice(5..))
                        .is_some_and(|(name, _)| name.is_empty())
                }
                b'Q' => unnamed = false,
                b'C' if msg.get(5..7) == Some(b"S\0") => unnamed = false,
                _ => {}
            }
        }
        answered_later |= matches!(msg[0], b'S' | b'Q' | b'F');
        assert_eq!(
            conn.prepared.keys().copied().collect::<HashSet<u64>>(),
            server.ids(),
            "pgrouter's statements differ from the server's"
        );
    }
    // The server's answers, arriving in pieces: the client hears one answer per message.
    let all: Vec<u8> = answers.concat();
    let (mut from_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    for part in Schedule::new(&[seed]).split(&all) {
        from_server.extend_from_slice(part);
        conversation
            .from_server(&mut from_server, &mut to_client, &mut conn)
            .expect("answers without errors lose nothing");
    }
    // Answers pgrouter gives itself that no server answer came after.
    conversation.answer_owed(&mut to_client);
    let mut heard = Vec::new();
    while let Some(m) = wire::take_message(&mut to_client).unwrap() {
        heard.push(m[0]);
    }
    assert_eq!(
        String::from_utf8_lossy(&heard),
        String::from_utf8_lossy(&owed),
        "the client's answers"
    );
}

/// The same client messages sent to a server directly and through the real `Conversation`
/// (transaction mode, another server connection now and then between transactions), the
/// server failing as its SQL says
/// (`server_model`): the client hears as many ReadyForQuery through pgrouter as directly,
/// whatever pgrouter added, answered itself or swallowed, errors included. A client left
/// waiting for an answer that never comes (or given one too many) fails here.
fn check_against_direct(stream: &[u8], seed: u8) {
    let mut input = BytesMut::from(stream);
    let mut conversation = Conversation::new(PoolMode::Transaction, Vec::new());
    let mut conn = ConnState::new(Tracked::default());
    let mut through = server_model::ServerModel::default();
    let mut direct = server_model::ServerModel::default();
    let (mut answers, mut direct_answers) = (BytesMut::new(), BytesMut::new());
    let (mut to_client, mut from_server) = (BytesMut::new(), BytesMut::new());
    let mut schedule = Schedule::new(&[seed]);
    let mut batches = 0usize;
    // The server's answers so far, arriving in pieces.
    let mut hear =
        |conversation: &mut Conversation, conn: &mut ConnState, answers: &mut BytesMut| {
            conversation.answer_owed(&mut to_client);
            for part in schedule.split(&answers.split()) {
                from_server.extend_from_slice(part);
                conversation
                    .from_server(&mut from_server, &mut to_client, conn)
                    .expect("the model's answers are well formed and never FATAL");
            }
            conversation.answer_owed(&mut to_client);
        };
    while let Ok(Some(msg)) = wire::take_message(&mut input) {
        let mut out = BytesMut::new();
        if conversation
            .client_message(msg.clone(), &mut out, &mut conn)
            .is_err()
        {
            break;
        }
        direct.answer(&msg, &mut direct_answers);
        while let Some(m) = wire::take_message(&mut out).expect("pgrouter wrote a bad length") {
            through.answer(&m, &mut answers);
        }
        // A client that waits for ReadyForQuery before its next batch (pipelining across
        // batches is `check_rewrite`'s, without errors).
        if matches!(msg[0], b'S' | b'Q' | b'F') {
            hear(&mut conversation, &mut conn, &mut answers);
            // Between transactions the connection is given back (what the conversation knows
            // of it forgotten, as the session's put_back does), and the next transaction may
            // run on another one.
            batches += 1;
            // The settings a transaction touched (DISCARD ALL) are settled as the session
            // settles them, before the connection goes back.
            if conversation.settings_due() {
                let mut out = BytesMut::new();
                conversation.settle_settings(&mut conn, &mut out);
                while let Some(m) =
                    wire::take_message(&mut out).expect("pgrouter wrote a bad length")
                {
                    through.answer(&m, &mut answers);
                }
                hear(&mut conversation, &mut conn, &mut answers);
            }
            if conversation.releasable() {
                conversation.take_sql_cleanup();
                conversation.forget_server();
                if (usize::from(seed) + batches) % 3 == 0 {
                    conn = ConnState::new(Tracked::default());
                    through = through.another_connection();
                }
            }
        }
    }
    hear(&mut conversation, &mut conn, &mut answers);
    drop(hear);
    let tags = |mut buf: BytesMut| {
        let mut tags = String::new();
        while let Some(m) = wire::take_message(&mut buf).unwrap() {
            tags.push(char::from(m[0]));
        }
        tags
    };
    let (through, direct) = (tags(to_client), tags(direct_answers));
    assert_eq!(
        through.matches('Z').count(),
        direct.matches('Z').count(),
        "ReadyForQuery through pgrouter ({through}) vs directly ({direct})"
    );
}

/// The server's answer messages for these tags, with the bodies the ledger looks at.
fn msg_of(tags: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for &tag in tags {
        match tag {
            b'Z' => wire::ready_for_query(&mut out, b'I'),
            b'C' => wire::message(&mut out, b'C', |b| b.extend_from_slice(b"SELECT 1\0")),
            t => wire::message(&mut out, t, |_| {}),
        }
    }
    out.to_vec()
}

/// Whether `msg` is a Bind of the unnamed statement or a Describe of it.
fn names_unnamed(msg: &Bytes) -> bool {
    let mut r = Reader::new(&msg[5..]);
    match msg[0] {
        b'B' => r.cstr().and_then(|_| r.cstr()) == Some(b""),
        b'D' => r.byte() == Some(b'S') && r.cstr() == Some(b""),
        _ => false,
    }
}

/// The statement DEALLOCATEs of a client's statement drop instead, and their query.
const STAND_IN: &[u8] = b"pgrouter_deallocate_stand_in";
const DEALLOCATE_STAND_IN: &[u8] = b"DEALLOCATE pgrouter_deallocate_stand_in";

/// Checks one message pgrouter sent for the client's `msg`, and applies it to `server`.
fn sent(server: &mut Server, msg: &Bytes, m: &Bytes, client_view: &HashMap<Bytes, Bytes>) {
    // A named Parse is always renamed, though it reads the same when the client chose the
    // very name pgrouter gives it.
    let named_parse = m[0] == b'P'
        && statements::split_parse(&m.slice(5..)).is_some_and(|(name, _)| !name.is_empty());
    if m == msg && !named_parse {
        return forwarded(server, m);
    }
    let (body, mbody) = (msg.slice(5..), m.slice(5..));
    match m[0] {
        b'P' => {
            let (name, def) = statements::split_parse(&mbody).expect("our Parse");
            if name.is_empty() {
                // A client's unnamed Parse of DEALLOCATE <its name>: of the stand-in, which
                // is prepared first.
                let sql = Reader::new(&def).cstr().unwrap();
                assert_eq!(sql, DEALLOCATE_STAND_IN, "an unnamed Parse rewritten");
                assert!(
                    server.statements.remove(STAND_IN).is_some(),
                    "no stand-in to drop"
                );
                return;
            }
            if &name[..] == STAND_IN {
                assert_eq!(&def[..], b"\0\0\0", "the stand-in is an empty query");
                assert!(
                    server.statements.insert(name.to_vec(), def).is_none(),
                    "stand-in twice"
                );
                return;
            }
            let id = Statement::new(def.clone()).id;
            assert_eq!(
                &name[..],
                server_name_of(id).as_bytes(),
                "name from the hash"
            );
            assert!(
                !server.statements.contains_key(&name[..]),
                "Parse of a statement the server already has"
            );
            if let Some((client_name, client_def)) = statements::split_parse(&body) {
                let stand_in = statements::definition_query(&def) == DEALLOCATE_STAND_IN;
                if msg[0] == b'P' && !client_name.is_empty() && !stand_in {
                    assert_eq!(def, client_def, "definition changed");
                }
            }
            server.statements.insert(name.to_vec(), def);
        }
        b'B' => {
            let mut ours = Reader::new(&mbody);
            let mut theirs = Reader::new(&body);
            assert_eq!(ours.cstr(), theirs.cstr(), "portal changed");
            let name = ours.cstr().unwrap();
            let client_name = theirs.cstr().unwrap();
            assert_eq!(ours.rest(), theirs.rest(), "parameters changed");
            assert!(name.starts_with(b"pgr_"), "renamed");
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
            // The server runs it: a DISCARD ALL or DEALLOCATE ALL under a name drops every
            // statement, the client's included.
            let query = statements::definition_query(&server.statements[name]).to_vec();
            apply_sql(server, &query);
        }
        b'D' => {
            assert_eq!(m[5], b'S');
            let name = Reader::new(&mbody[1..]).cstr().unwrap();
            assert!(name.starts_with(b"pgr_"), "renamed");
            assert!(
                server.statements.contains_key(name),
                "Describe of a missing statement"
            );
        }
        b'Q' => deallocated(server, Reader::new(&mbody).cstr().unwrap()),
        b'C' => {
            // The server's copy closed before the client's Parse prepares it afresh; the
            // stand-in closed before it is prepared.
            assert_eq!(m[5], b'S');
            let name = Reader::new(&mbody[1..]).cstr().unwrap();
            if name == STAND_IN {
                server.statements.remove(STAND_IN);
                return;
            }
            assert!(name.starts_with(b"pgr_"), "a pooled name");
            assert!(
                server.statements.remove(name).is_some(),
                "Close of a statement the server does not have"
            );
        }
        t => panic!("unexpected rewrite to '{}'", char::from(t)),
    }
}

/// A DEALLOCATE pgrouter sent for a client's DEALLOCATE of one of its names.
fn deallocated(server: &mut Server, sql: &[u8]) {
    let name = sql.strip_prefix(b"DEALLOCATE ").expect("a DEALLOCATE");
    assert!(name.starts_with(b"pgr_"), "of a pooled name");
    assert!(
        server.statements.remove(name).is_some(),
        "DEALLOCATE of a missing statement"
    );
}

/// The client's own view of its statement names after `msg`.
fn client_learns(client_view: &mut HashMap<Bytes, Bytes>, msg: &Bytes) {
    let body = msg.slice(5..);
    match msg[0] {
        b'P' => {
            let (name, def) = statements::split_parse(&body).unwrap();
            let query = statements::definition_query(&def);
            // DEALLOCATE of one of its statements: gone at the Parse, a stand-in dropped
            // instead when it runs.
            let target = sql_effects(query)
                .deallocate
                .filter(|t| t.as_bytes() != STAND_IN && client_view.contains_key(t.as_bytes()));
            if name.is_empty() {
                forget(client_view, query);
            } else if let Some(target) = target {
                client_view.remove(target.as_bytes());
                let mut stand_in = DEALLOCATE_STAND_IN.to_vec();
                stand_in.push(0);
                stand_in.extend_from_slice(&def[query.len() + 1..]);
                client_view.insert(name, Bytes::from(stand_in));
            } else {
                client_view.insert(name, def);
            }
        }
        b'C' if body.first() == Some(&b'S') => {
            if let Some(name) = Reader::new(&body[1..]).cstr() {
                client_view.remove(name);
            }
        }
        b'Q' => forget(client_view, Reader::new(&body).cstr().unwrap_or_default()),
        b'B' => {
            // A named statement runs here: DISCARD ALL or DEALLOCATE under a name acts.
            let mut r = Reader::new(&body);
            let name = r.cstr().and_then(|_| r.cstr()).unwrap_or_default();
            if let Some(def) = client_view.get(name).cloned() {
                forget(client_view, statements::definition_query(&def));
            }
        }
        _ => {}
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
    if sql.windows(2).any(|w| w == b"--" || w == b"/*")
        || sql.contains(&b'$')
        || sql.contains(&b'\\')
    {
        return true;
    }
    // Inside a literal or a quoted identifier at the end (a quote inside the other kind does
    // not count).
    let mut open: Option<u8> = None;
    for &b in sql {
        match open {
            None if b == b'\'' || b == b'"' => open = Some(b),
            Some(q) if b == q => open = None,
            _ => {}
        }
    }
    open.is_some()
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
