//! Client and server message sequences through the conversation, bytes out checked.

use super::*;
use crate::pool::statements::Statement;
use crate::servers::tracked::Tracked;

pub(super) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub(super) fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| [*p, b"\0"].concat()).collect()
}

pub(super) fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstrs(&[name.as_bytes(), sql.as_bytes()]);
    body.extend_from_slice(&[0, 0]);
    msg(b'P', &body)
}

pub(super) fn bind(name: &str) -> Vec<u8> {
    let mut body = cstrs(&[b"", name.as_bytes()]);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &body)
}

pub(super) fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstrs(&[sql.as_bytes()]))
}

pub(super) fn describe_statement(name: &str) -> Vec<u8> {
    msg(b'D', &[b"S", &cstrs(&[name.as_bytes()])[..]].concat())
}

pub(super) fn close_statement(name: &str) -> Vec<u8> {
    msg(b'C', &[b"S", &cstrs(&[name.as_bytes()])[..]].concat())
}

pub(super) fn execute() -> Vec<u8> {
    msg(b'E', &[0, 0, 0, 0, 0])
}

pub(super) fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

pub(super) fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

pub(super) fn error(severity: &str, text: &str) -> Vec<u8> {
    error_with(severity, "42P01", text)
}

/// An ErrorResponse of `severity` with SQLSTATE `code`.
pub(super) fn error_with(severity: &str, code: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (c, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', text),
    ] {
        body.push(c);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    msg(b'E', &body)
}

/// The tags of the whole messages in `bytes`, and the names in those that carry one
/// (Parse and Bind: the statement; Describe and Close: kind and name; Query: the SQL).
pub(super) fn messages(bytes: &[u8]) -> Vec<(char, String)> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(m) = wire::take_message(&mut buf).unwrap() {
        let body = &m[5..];
        let mut r = wire::Reader::new(body);
        let name = match m[0] {
            b'P' | b'Q' => r.cstr(),
            b'B' => r.cstr().and_then(|_| r.cstr()),
            b'D' | b'C' if body.len() > 1 => Some(&body[1..body.len() - 1]),
            _ => None,
        };
        let name = String::from_utf8_lossy(name.unwrap_or_default()).into_owned();
        out.push((char::from(m[0]), name));
    }
    assert!(buf.is_empty(), "a partial message was written");
    out
}

pub(super) struct Case {
    pub(super) conversation: Conversation,
    pub(super) conn: ConnState,
}

impl Case {
    pub(super) fn new(mode: PoolMode) -> Case {
        Case {
            conversation: Conversation::new(mode, Vars::new()),
            conn: ConnState::new(Tracked::default()),
        }
    }

    /// What the client's bytes become for the server.
    pub(super) fn client(&mut self, parts: &[Vec<u8>]) -> Vec<(char, String)> {
        let mut input = BytesMut::from(&parts.concat()[..]);
        let mut out = BytesMut::new();
        let taken = self
            .conversation
            .from_client(&mut input, &mut out, &mut self.conn)
            .unwrap();
        assert_eq!(taken, Taken::All);
        assert!(input.is_empty());
        messages(&out)
    }

    /// What the server's bytes become for the client, fed in pieces of `chunk` bytes.
    pub(super) fn server_in_chunks(&mut self, parts: &[Vec<u8>], chunk: usize) -> (String, Heard) {
        let all = parts.concat();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        let mut heard = Heard::default();
        for piece in all.chunks(chunk) {
            input.extend_from_slice(piece);
            let h = self
                .conversation
                .from_server(&mut input, &mut out, &mut self.conn)
                .unwrap();
            heard.ready += h.ready;
            heard.idle += h.idle;
            heard.set_failed = heard.set_failed.or(h.set_failed);
        }
        let tags = messages(&out).into_iter().map(|(t, _)| t).collect();
        (tags, heard)
    }

    pub(super) fn server(&mut self, parts: &[Vec<u8>]) -> (String, Heard) {
        self.server_in_chunks(parts, usize::MAX)
    }
}

pub(super) fn pooled_name(sql: &str) -> String {
    let mut def = cstrs(&[sql.as_bytes()]);
    def.extend_from_slice(&[0, 0]);
    Statement::new(Bytes::from(def)).server_name
}

#[test]
fn a_named_statement_is_renamed_and_its_answers_reach_the_client() {
    let mut case = Case::new(PoolMode::Transaction);
    let name = pooled_name("select 1");
    let sent = case.client(&[parse("s1", "select 1"), bind("s1"), execute(), sync()]);
    let want: Vec<(char, String)> = vec![
        ('P', name.clone()),
        ('B', name.clone()),
        ('E', String::new()),
        ('S', String::new()),
    ];
    assert_eq!(sent, want);
    assert!(!case.conversation.releasable(), "answers are owed");
    let answers = [
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"SELECT 1\0"),
        ready(b'I'),
    ];
    for chunk in [1, 3, 7, usize::MAX] {
        let mut again = Case::new(PoolMode::Transaction);
        again.client(&[parse("s1", "select 1"), bind("s1"), execute(), sync()]);
        let (tags, heard) = again.server_in_chunks(&answers, chunk);
        assert_eq!(tags, "12CZ", "chunk {chunk}");
        assert_eq!((heard.ready, heard.idle), (1, 1));
        assert!(again.conversation.releasable(), "chunk {chunk}");
    }
}

#[test]
fn a_clients_parse_plans_afresh_even_where_the_connection_has_the_text() {
    // Directly a Parse always plans anew; a copy made before it may hold a plan from before
    // a DDL the client has seen (node-postgres after a migration got 0A000 on its first run).
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "select 1"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    let name = pooled_name("select 1");
    let sent = case.client(&[parse("other", "select 1"), bind("other"), sync()]);
    assert_eq!(
        sent,
        vec![
            ('C', name.clone()),
            ('P', name.clone()),
            ('B', name),
            ('S', String::new())
        ]
    );
    let (tags, _) = case.server(&[msg(b'3', b""), msg(b'1', b""), msg(b'2', b""), ready(b'I')]);
    assert_eq!(tags, "12Z", "the Close pgrouter added is not the client's");
    assert!(case.conversation.releasable());
    // s1, parsed before the copy now there was made, runs on it without another Parse.
    let sent = case.client(&[bind("s1"), sync()]);
    assert_eq!(sent.len(), 2, "{sent:?}");
}

#[test]
fn a_bind_on_a_connection_without_the_statement_gets_a_parse_whose_answer_is_swallowed() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "select 2"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    // The next transaction runs on a fresh connection.
    case.conn = ConnState::new(Tracked::default());
    let name = pooled_name("select 2");
    let sent = case.client(&[bind("s1"), describe_statement("s1"), sync()]);
    assert_eq!(
        sent,
        vec![
            ('P', name.clone()),
            ('B', name.clone()),
            ('D', name.clone()),
            ('S', String::new())
        ]
    );
    let (tags, _) = case.server(&[
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b't', b"\0\0"),
        msg(b'n', b""),
        ready(b'I'),
    ]);
    assert_eq!(
        tags, "2tnZ",
        "the injected Parse's answer is not the client's"
    );
    assert!(case.conn.prepared.contains_key(
        &Statement::new(Bytes::from([&cstrs(&[b"select 2"])[..], &[0, 0]].concat())).id
    ));
}

#[test]
fn close_of_a_named_statement_is_answered_by_pgrouter_and_keeps_the_server_copy() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "select 3"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    let sent = case.client(&[close_statement("s1"), sync()]);
    assert_eq!(sent, vec![('S', String::new())]);
    let (tags, _) = case.server(&[ready(b'I')]);
    assert_eq!(tags, "3Z");
    assert_eq!(
        case.conn.prepared.len(),
        1,
        "other clients may still use it"
    );
}

#[test]
fn deallocate_of_a_pooled_name_drops_the_server_copy() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "select 4"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    let sent = case.client(&[query("DEALLOCATE s1")]);
    assert_eq!(
        sent,
        vec![('Q', format!("DEALLOCATE {}", pooled_name("select 4")))]
    );
    assert!(case.conn.prepared.is_empty());
    let (tags, _) = case.server(&[msg(b'C', b"DEALLOCATE\0"), ready(b'I')]);
    assert_eq!(tags, "CZ");
}

#[test]
fn an_error_in_a_batch_settles_the_ledger_up_to_sync_and_forgets_the_failed_parse() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[
        parse("bad", "select * from nowhere"),
        bind("bad"),
        execute(),
        sync(),
    ]);
    assert_eq!(case.conn.prepared.len(), 1);
    let (tags, heard) = case.server(&[error("ERROR", "no such table"), ready(b'I')]);
    assert_eq!(tags, "EZ");
    assert_eq!(heard.ready, 1);
    assert!(
        case.conn.prepared.is_empty(),
        "the server has no such statement"
    );
    assert!(case.conversation.releasable());
}

#[test]
fn a_fatal_error_loses_the_connection() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[query("select 1")]);
    let mut input = BytesMut::from(&error("FATAL", "terminating connection")[..]);
    let broken = case
        .conversation
        .from_server(&mut input, &mut BytesMut::new(), &mut case.conn)
        .unwrap_err();
    assert_eq!(broken, Broken("terminating connection".into()));
    let loss = case.conversation.lose_server();
    assert_eq!(loss.unanswered, 1);
}

#[test]
fn the_clients_settings_are_set_and_every_answer_to_the_set_is_swallowed() {
    let mut case = Case::new(PoolMode::Transaction);
    case.conversation.vars = vec![("application_name", "app".to_owned())];
    let mut out = BytesMut::new();
    case.conversation.sync_vars(&mut case.conn, &mut out);
    assert_eq!(
        messages(&out),
        vec![('Q', "SET application_name = 'app'".to_owned())]
    );
    assert!(case.conversation.setting_params());
    let param = msg(b'S', &cstrs(&[b"application_name", b"app"]));
    let (tags, heard) = case.server(&[msg(b'C', b"SET\0"), param, ready(b'I')]);
    assert_eq!(tags, "", "nothing reaches the client");
    assert_eq!(heard.ready, 0);
    assert!(!case.conversation.setting_params());
    assert_eq!(case.conn.tracked.get(5), Some("app"));
    // In step now: no second SET.
    let mut again = BytesMut::new();
    case.conversation.sync_vars(&mut case.conn, &mut again);
    assert!(again.is_empty());
}

#[test]
fn a_refused_set_is_reported_not_forwarded() {
    let mut case = Case::new(PoolMode::Transaction);
    case.conversation.vars = vec![("DateStyle", "nonsense".to_owned())];
    case.conversation
        .sync_vars(&mut case.conn, &mut BytesMut::new());
    let (tags, heard) = case.server(&[error("ERROR", "invalid value"), ready(b'I')]);
    assert_eq!(tags, "");
    assert_eq!(
        heard.set_failed.map(|(_, m)| m).as_deref(),
        Some("invalid value")
    );
}

#[test]
fn a_set_by_the_client_is_tracked_from_the_servers_report() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[query("set timezone = 'UTC'")]);
    let param = msg(b'S', &cstrs(&[b"TimeZone", b"UTC"]));
    let (tags, _) = case.server(&[msg(b'C', b"SET\0"), param, ready(b'I')]);
    assert_eq!(tags, "CSZ");
    assert_eq!(case.conversation.vars, vec![("TimeZone", "UTC".to_owned())]);
}

#[test]
fn a_transaction_or_listen_keeps_the_connection() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[query("begin")]);
    case.server(&[msg(b'C', b"BEGIN\0"), ready(b'T')]);
    assert!(!case.conversation.releasable(), "inside a transaction");
    case.client(&[query("commit")]);
    let (_, heard) = case.server(&[msg(b'C', b"COMMIT\0"), ready(b'I')]);
    assert_eq!((heard.ready, heard.idle), (1, 1));
    assert!(case.conversation.releasable());
    case.client(&[query("listen news")]);
    case.server(&[msg(b'C', b"LISTEN\0"), ready(b'I')]);
    assert!(!case.conversation.releasable(), "pinned by LISTEN");
    case.client(&[query("unlisten *")]);
    case.server(&[msg(b'C', b"UNLISTEN\0"), ready(b'I')]);
    assert!(case.conversation.releasable());
}

#[test]
fn session_mode_forwards_statements_as_they_are_and_never_releases() {
    let mut case = Case::new(PoolMode::Session);
    let sent = case.client(&[parse("s1", "select 1"), bind("s1"), sync()]);
    assert_eq!(sent[0], ('P', "s1".to_owned()));
    assert_eq!(sent[1], ('B', "s1".to_owned()));
    let (tags, _) = case.server(&[msg(b'1', b""), msg(b'2', b""), ready(b'I')]);
    assert_eq!(tags, "12Z");
    assert!(case.conversation.at_rest());
    assert!(!case.conversation.releasable());
}

#[test]
fn copy_data_streams_through_and_a_partial_message_asks_to_be_counted() {
    let mut case = Case::new(PoolMode::Transaction);
    let big = msg(b'd', &[7u8; 100]);
    let mut input = BytesMut::from(&big[..40]);
    let mut out = BytesMut::new();
    let taken = case
        .conversation
        .from_client(&mut input, &mut out, &mut case.conn)
        .unwrap();
    assert_eq!(taken, Taken::All);
    assert_eq!(&out[..], &big[..40], "streamed as it comes");
    assert!(case.conversation.mid_client_message());
    input.extend_from_slice(&big[40..]);
    case.conversation
        .from_client(&mut input, &mut out, &mut case.conn)
        .unwrap();
    assert_eq!(&out[..], &big[..]);
    assert!(!case.conversation.mid_client_message());
    // A Query is read whole: part of one is reported with its length.
    let q = query("select 'a long statement'");
    let mut input = BytesMut::from(&q[..10]);
    let taken = case
        .conversation
        .from_client(&mut input, &mut BytesMut::new(), &mut case.conn)
        .unwrap();
    assert_eq!(taken, Taken::Partial(q.len()));
}

#[test]
fn bad_client_input_ends_the_conversation_with_a_reason() {
    let mut case = Case::new(PoolMode::Transaction);
    let mut out = BytesMut::new();
    let mut bad_length = BytesMut::from(&b"Q\0\0\0\x02"[..]);
    let end = case
        .conversation
        .from_client(&mut bad_length, &mut out, &mut case.conn)
        .unwrap_err();
    assert!(matches!(end, ClientEnd::Protocol(_)));
    let mut malformed = BytesMut::from(&msg(b'B', b"no terminator")[..]);
    let end = case
        .conversation
        .from_client(&mut malformed, &mut out, &mut case.conn)
        .unwrap_err();
    assert_eq!(end, ClientEnd::Protocol("malformed Bind".into()));
    let mut terminate = BytesMut::from(&msg(b'X', b"")[..]);
    let end = case
        .conversation
        .from_client(&mut terminate, &mut out, &mut case.conn)
        .unwrap_err();
    assert_eq!(end, ClientEnd::Terminate);
}

#[test]
fn a_lost_server_reports_what_the_client_is_owed() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[query("begin")]);
    case.server(&[msg(b'C', b"BEGIN\0"), ready(b'T')]);
    case.client(&[parse("", "select 1"), bind("")]);
    let loss = case.conversation.lose_server();
    assert_eq!(
        loss,
        Loss {
            unanswered: 0,
            unsynced: true,
            in_transaction: true
        }
    );
    assert!(
        case.conversation.at_rest(),
        "the next connection starts afresh"
    );
}

#[test]
fn a_made_up_answer_waits_for_the_streamed_answer_before_it() {
    // Found by fuzzing `pooled_rewrite` against the real core: a made-up answer (then a
    // ParseComplete, here a CloseComplete) went out as soon as the CommandComplete before it
    // was settled, ahead of its bytes.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "select 1"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    let sent = case.client(&[bind("s1"), execute(), close_statement("s1"), sync()]);
    let tags: String = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, "BES");
    for chunk in [1, 2, 5, usize::MAX] {
        let mut again = Case::new(PoolMode::Transaction);
        again.client(&[parse("s1", "select 1"), sync()]);
        again.server(&[msg(b'1', b""), ready(b'I')]);
        again.client(&[bind("s1"), execute(), close_statement("s1"), sync()]);
        let (tags, _) = again.server_in_chunks(
            &[msg(b'2', b""), msg(b'C', b"SELECT 1\0"), ready(b'I')],
            chunk,
        );
        assert_eq!(tags, "2C3Z", "chunk {chunk}");
    }
}

#[test]
fn the_server_is_awaited_only_when_it_owes_a_ready_and_is_owed_nothing() {
    let mut case = Case::new(PoolMode::Transaction);
    assert!(!case.conversation.awaits_server(), "nothing sent");
    // An extended batch without Sync (with Flush): the server owes no ReadyForQuery yet.
    case.client(&[parse("", "select 1"), bind(""), execute(), msg(b'H', b"")]);
    assert!(!case.conversation.awaits_server(), "no Sync sent");
    case.client(&[sync()]);
    assert!(
        case.conversation.awaits_server(),
        "the Sync is owed its ReadyForQuery"
    );
    case.server(&[
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"SELECT 1\0"),
        ready(b'I'),
    ]);
    assert!(!case.conversation.awaits_server(), "answered");

    // COPY FROM STDIN: the server waits for the client's data, legitimately.
    case.client(&[query("copy t from stdin")]);
    assert!(case.conversation.awaits_server());
    case.server(&[msg(b'G', b"\0\0\0")]);
    assert!(
        !case.conversation.awaits_server(),
        "in COPY, the client owes data"
    );
    case.client(&[msg(b'd', b"1\n"), msg(b'c', b"")]);
    assert!(
        case.conversation.awaits_server(),
        "CopyDone sent: the server owes the rest"
    );
    case.server(&[msg(b'C', b"COPY 1\0"), ready(b'I')]);
    assert!(!case.conversation.awaits_server());
}
