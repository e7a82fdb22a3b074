//! Where pgrouter answers for the server or keeps the client's statements, the client hears
//! what PostgreSQL would say on a direct connection (issue 24): DEALLOCATE of a statement the
//! connection lacks, a failed or repeated Parse, a plan gone stale, the skip to Sync.

use super::tests::*;
use super::*;
use crate::pool::statements::Statement;
use crate::servers::tracked::Tracked;

/// What the client is owed right after its messages, before any server answer.
fn owed_now(case: &mut Case) -> String {
    let mut out = BytesMut::new();
    case.conversation.answer_owed(&mut out);
    messages(&out).into_iter().map(|(t, _)| t).collect()
}

#[test]
fn deallocate_of_a_statement_the_connection_lacks_is_answered_by_pgrouter() {
    // ActiveRecord's disconnect sends DEALLOCATE a1 after dropping the table a1 used: a Parse
    // of it first would fail and leave the Query unanswered, client and server waiting.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("a1", "select * from dropped"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    case.conn = ConnState::new(Tracked::default());
    let sent = case.client(&[query("DEALLOCATE a1")]);
    assert!(sent.is_empty(), "nothing for the server: {sent:?}");
    assert_eq!(owed_now(&mut case), "CZ");
    assert!(case.conversation.releasable());
    // The name is gone, as it would be directly.
    let sent = case.client(&[bind("a1"), sync()]);
    assert_eq!(
        sent[0],
        ('B', "a1".to_owned()),
        "forwarded as is: the server says 26000"
    );
}

#[test]
fn an_extended_deallocate_of_a_statement_the_connection_lacks_drops_a_stand_in() {
    // psycopg's conn.execute("DEALLOCATE s1") (Parse, Bind, Execute, Sync) after the table s1
    // read was dropped: directly it succeeds; preparing s1 first to drop it would fail.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "select * from dropped"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    case.conn = ConnState::new(Tracked::default());
    let sent = case.client(&[parse("", "DEALLOCATE s1"), bind(""), execute(), sync()]);
    let stand_in = STAND_IN.to_owned();
    assert_eq!(
        sent,
        vec![
            ('C', stand_in.clone()),
            ('P', stand_in.clone()),
            ('P', String::new()),
            ('B', String::new()),
            ('E', String::new()),
            ('S', String::new()),
        ]
    );
    let (tags, _) = case.server(&[
        msg(b'3', b""),
        msg(b'1', b""),
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"DEALLOCATE\0"),
        ready(b'I'),
    ]);
    assert_eq!(tags, "12CZ", "the client hears its own three answers");
    assert!(case.conversation.releasable());
    // s1 is gone for the client; the server was never asked to prepare it.
    let sent = case.client(&[bind("s1"), sync()]);
    assert_eq!(sent[0], ('B', "s1".to_owned()));

    // In a failed transaction the client's Parse fails with 25P02 as it would directly; the
    // stand-in's own Parse (an empty query) does not, so the error is the client's.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "select 1"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    case.conn = ConnState::new(Tracked::default());
    case.client(&[query("begin"), query("select nope")]);
    case.server(&[
        msg(b'C', b"BEGIN\0"),
        ready(b'T'),
        error("ERROR", "column does not exist"),
        ready(b'E'),
    ]);
    case.client(&[parse("", "DEALLOCATE s1"), bind(""), execute(), sync()]);
    let (tags, _) = case.server(&[
        msg(b'3', b""),
        msg(b'1', b""),
        error_with("ERROR", "25P02", "current transaction is aborted"),
        ready(b'E'),
    ]);
    assert_eq!(tags, "EZ");
}

#[test]
fn a_made_up_deallocate_waits_its_turn_and_fails_in_a_failed_transaction() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("a1", "select 1"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    case.conn = ConnState::new(Tracked::default());
    case.client(&[query("begin"), query("select nope"), query("DEALLOCATE a1")]);
    assert_eq!(
        owed_now(&mut case),
        "",
        "the queries before it are not answered yet"
    );
    let (tags, _) = case.server(&[
        msg(b'C', b"BEGIN\0"),
        ready(b'T'),
        error("ERROR", "column does not exist"),
        ready(b'E'),
    ]);
    assert_eq!(
        tags, "CZEZEZ",
        "25P02 in the failed transaction, then ReadyForQuery 'E'"
    );
}

#[test]
fn a_name_whose_parse_failed_is_not_defined_so_its_bind_gets_26000() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "selec 1"), sync()]);
    let (tags, _) = case.server(&[error("ERROR", "syntax error"), ready(b'I')]);
    assert_eq!(tags, "EZ");
    // Directly, s1 does not exist: the Bind goes to the server under the client's name and
    // PostgreSQL answers 26000, not the Parse's 42601 again.
    let sent = case.client(&[bind("s1"), sync()]);
    assert_eq!(sent[0], ('B', "s1".to_owned()));
    assert!(case.conn.prepared.is_empty());
}

#[test]
fn a_plan_the_server_reports_invalid_is_closed_and_prepared_afresh() {
    // pgjdbc after ALTER TABLE: 0A000 at Bind, then Close of its statement and a Parse of the
    // same text, which must reach a fresh prepare, on this connection or another.
    let name = pooled_name("select * from t");
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("S_1", "select * from t"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    case.client(&[bind("S_1"), execute(), sync()]);
    let stale = error_with("ERROR", "0A000", "cached plan must not change result type");
    let (tags, _) = case.server(&[stale, ready(b'I')]);
    assert_eq!(tags, "EZ");
    // The same connection: its copy is closed before the Parse.
    let sent = case.client(&[
        close_statement("S_1"),
        parse("S_2", "select * from t"),
        sync(),
    ]);
    assert_eq!(
        sent,
        vec![
            ('C', name.clone()),
            ('P', name.clone()),
            ('S', String::new())
        ]
    );
    let (tags, _) = case.server(&[msg(b'3', b""), msg(b'1', b""), ready(b'I')]);
    assert_eq!(
        tags, "31Z",
        "the injected Close's answer swallowed, the client's made up"
    );
    // Another connection that has the old plan too: the client closed the statement, so its
    // next Parse of the text prepares it afresh there as well.
    let mut other = ConnState::new(Tracked::default());
    other.prepared.insert(
        Statement::new(Bytes::from(
            [&cstrs(&[b"select * from t"])[..], &[0, 0]].concat(),
        ))
        .id,
    );
    case.conn = other;
    case.client(&[close_statement("S_2"), sync()]);
    case.server(&[ready(b'I')]);
    let sent = case.client(&[parse("S_3", "select * from t"), sync()]);
    assert_eq!(sent[0], ('C', name.clone()));
    assert_eq!(sent[1], ('P', name));
}

#[test]
fn a_second_parse_of_a_name_gets_42p05_and_the_rest_of_its_batch_is_dropped() {
    // Found by pooled_rewrite comparing with a direct connection: pgrouter redefined the
    // name silently, and the client heard answers PostgreSQL would never have given.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("P_0", "select 1"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    let sent = case.client(&[parse("P_0", "select 2"), bind("P_0"), execute(), sync()]);
    assert_eq!(
        sent,
        vec![('S', String::new())],
        "only the Sync reaches the server"
    );
    let mut out = BytesMut::new();
    case.conversation.answer_owed(&mut out);
    let error = wire::take_message(&mut out).unwrap().unwrap();
    let fields = wire::error_fields(&error[5..]);
    assert_eq!(wire::field(&fields, b'C'), Some("42P05"));
    assert_eq!(
        wire::field(&fields, b'M'),
        Some("prepared statement \"P_0\" already exists")
    );
    let (tags, _) = case.server(&[ready(b'I')]);
    assert_eq!(tags, "Z");
    assert!(case.conversation.releasable());
}

#[test]
fn after_an_error_before_the_sync_the_clients_messages_are_ignored_as_the_server_does() {
    // Found by pooled_rewrite comparing with a direct connection: a FunctionCall and an
    // Execute sent after the error (before the Sync) each took a ledger entry the server never
    // answered, so the Sync's ReadyForQuery settled the wrong one and the client waited.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[bind("nope")]);
    let (tags, _) = case.server(&[error_with(
        "ERROR",
        "26000",
        "prepared statement does not exist",
    )]);
    assert_eq!(tags, "E");
    let sent = case.client(&[msg(b'F', b"\0\0\0\0"), execute(), sync()]);
    assert_eq!(
        sent,
        vec![('S', String::new())],
        "ignored by the server: not sent"
    );
    let (tags, heard) = case.server(&[ready(b'I')]);
    assert_eq!((tags.as_str(), heard.ready), ("Z", 1));
    assert!(case.conversation.releasable());
}
