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

    // In a failed transaction the client's Parse goes as it is: PostgreSQL refuses it with
    // 25P02 and s1 stays, as directly.
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
    let sent = case.client(&[parse("", "DEALLOCATE s1"), bind(""), execute(), sync()]);
    assert_eq!(sent[0], ('P', String::new()));
    assert_eq!(sent.len(), 4, "no stand-in: {sent:?}");
    let (tags, _) = case.server(&[
        error_with("ERROR", "25P02", "current transaction is aborted"),
        ready(b'E'),
    ]);
    assert_eq!(tags, "EZ");
    case.client(&[query("rollback")]);
    case.server(&[msg(b'C', b"ROLLBACK\0"), ready(b'I')]);
    let sent = case.client(&[bind("s1"), sync()]);
    assert_eq!(
        sent[1],
        ('B', pooled_name("select 1")),
        "s1 is still defined"
    );
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
        std::time::Instant::now(),
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

/// The next transaction runs on another server connection.
fn next_connection(case: &mut Case) {
    assert!(case.conversation.releasable());
    case.conversation.forget_server();
    case.conn = ConnState::new(Tracked::default());
}

#[test]
fn the_unnamed_statement_follows_its_client_to_the_next_connection() {
    // pgx without its statement cache: Parse "" + Describe + Sync, then Bind "" + Execute +
    // Sync in a second round trip, which may be another transaction on another connection,
    // where another client's unnamed statement would answer (wrong rows, no error).
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("", "select $1::int"), describe_statement(""), sync()]);
    case.server(&[
        msg(b'1', b""),
        msg(b't', b"\0\0"),
        msg(b'n', b""),
        ready(b'I'),
    ]);
    next_connection(&mut case);
    let sent = case.client(&[bind(""), execute(), sync()]);
    let tags: String = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, "PBES", "the client's unnamed Parse sent again first");
    let (tags, _) = case.server(&[
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"SELECT 1\0"),
        ready(b'I'),
    ]);
    assert_eq!(tags, "2CZ", "its ParseComplete is not the client's");
    // On the same connection it is there already.
    let sent = case.client(&[bind(""), execute(), sync()]);
    assert_eq!(sent.len(), 3);
    case.server(&[msg(b'2', b""), msg(b'C', b"SELECT 1\0"), ready(b'I')]);

    // A simple Query drops it, as directly: the next Bind of "" gets 26000.
    case.client(&[query("select 1")]);
    case.server(&[msg(b'C', b"SELECT 1\0"), ready(b'I')]);
    next_connection(&mut case);
    let sent = case.client(&[bind(""), execute(), sync()]);
    assert_eq!(
        sent,
        vec![('S', String::new())],
        "nothing runs but the Sync"
    );
    let (tags, _) = case.server(&[ready(b'I')]);
    assert_eq!(tags, "EZ");
}

#[test]
fn a_client_without_an_unnamed_statement_gets_26000_not_anothers() {
    let mut case = Case::new(PoolMode::Transaction);
    let sent = case.client(&[bind(""), execute(), sync()]);
    assert_eq!(sent, vec![('S', String::new())]);
    let mut out = BytesMut::new();
    let heard = case
        .conversation
        .from_server(
            &mut BytesMut::from(&ready(b'I')[..]),
            &mut out,
            &mut case.conn,
        )
        .unwrap();
    assert_eq!(heard.ready, 1);
    let fields = wire::error_fields(&out[5..]);
    assert_eq!(wire::field(&fields, b'C'), Some("26000"));
    assert_eq!(
        wire::field(&fields, b'M'),
        Some("unnamed prepared statement does not exist")
    );
}

#[test]
fn a_named_deallocate_of_a_clients_statement_drops_a_stand_in_each_run() {
    // pgjdbc with prepareThreshold=1 sends DEALLOCATE "S_2" as a named statement S_4: the
    // server knows S_2 only by its pooled name.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("S_2", "select 1"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    let sent = case.client(&[
        parse("S_4", "DEALLOCATE \"S_2\""),
        bind("S_4"),
        execute(),
        sync(),
    ]);
    let stand_in = STAND_IN.to_owned();
    let tags: String = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, "PCPBES");
    assert_eq!(
        (sent[1].1.as_str(), sent[2].1.as_str()),
        (STAND_IN, STAND_IN)
    );
    let deallocate = pooled_name(&format!("DEALLOCATE {stand_in}"));
    assert_eq!(sent[0], ('P', deallocate));
    let (tags, _) = case.server(&[
        msg(b'1', b""),
        msg(b'3', b""),
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"DEALLOCATE\0"),
        ready(b'I'),
    ]);
    assert_eq!(tags, "12CZ");
    // S_2 is gone, as directly: its Bind goes under the client's name (26000).
    let sent = case.client(&[bind("S_2"), sync()]);
    assert_eq!(sent[0], ('B', "S_2".to_owned()));
}

#[test]
fn errors_name_statements_as_the_client_does() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s3", "select $1::int"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    case.client(&[bind("s3"), execute(), sync()]);
    let pooled = pooled_name("select $1::int");
    let text = format!(
        "bind message supplies 0 parameters, but prepared statement \"{pooled}\" requires 1"
    );
    let mut out = BytesMut::new();
    let answer = [error_with("ERROR", "08P01", &text), ready(b'I')].concat();
    case.conversation
        .from_server(&mut BytesMut::from(&answer[..]), &mut out, &mut case.conn)
        .unwrap();
    let fields = wire::error_fields(&out[5..]);
    assert_eq!(
        wire::field(&fields, b'M'),
        Some("bind message supplies 0 parameters, but prepared statement \"s3\" requires 1")
    );

    // A Parse skipped after an error in its batch: the Bind sent with it gets 26000 in the
    // client's name, though the name was forgotten meanwhile.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[
        parse("", "select 1/0"),
        bind(""),
        execute(),
        parse("s9", "select 9"),
        sync(),
        bind("s9"),
        execute(),
        sync(),
    ]);
    let pooled = pooled_name("select 9");
    let missing = format!("prepared statement \"{pooled}\" does not exist");
    let mut out = BytesMut::new();
    let answer = [
        msg(b'1', b""),
        msg(b'2', b""),
        error_with("ERROR", "22012", "division by zero"),
        ready(b'I'),
        error_with("ERROR", "26000", &missing),
        ready(b'I'),
    ]
    .concat();
    case.conversation
        .from_server(&mut BytesMut::from(&answer[..]), &mut out, &mut case.conn)
        .unwrap();
    let texts: Vec<String> = messages(&out)
        .iter()
        .filter(|(t, _)| *t == 'E')
        .map(|_| String::new())
        .collect();
    assert_eq!(texts.len(), 2);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("prepared statement \"s9\" does not exist"),
        "{text}"
    );
    assert!(!text.contains("pgr_"), "{text}");
}

#[test]
fn syncs_sent_before_a_copy_began_are_not_answered() {
    // tokio-postgres's copy_in: Bind, Execute, Sync; CopyInResponse; data, CopyDone, Sync.
    // PostgreSQL ignores the first Sync (it takes COPY data): one ReadyForQuery, then the
    // Close pgrouter answers itself must follow it, not the one before.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s1", "copy t from stdin"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    case.client(&[bind("s1"), execute(), sync()]);
    let (tags, _) = case.server(&[msg(b'2', b""), msg(b'G', b"\0\0\0")]);
    assert_eq!(tags, "2G");
    case.client(&[msg(b'd', b"1\n"), msg(b'c', b""), sync()]);
    case.client(&[close_statement("s1"), sync()]);
    let (tags, _) = case.server(&[msg(b'C', b"COPY 1\0"), ready(b'I')]);
    assert_eq!(
        tags, "CZ3",
        "the CloseComplete after the COPY's ReadyForQuery"
    );
    // The Close's Sync is the server's to answer.
    let (tags, _) = case.server(&[ready(b'I')]);
    assert_eq!(tags, "Z");
    assert!(case.conversation.releasable());
}

#[test]
fn a_deallocate_in_a_failed_transaction_is_refused_and_the_statement_stays() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[parse("s5", "select 1"), sync()]);
    case.server(&[msg(b'1', b""), ready(b'I')]);
    case.client(&[query("begin")]);
    case.server(&[msg(b'C', b"BEGIN\0"), ready(b'T')]);
    case.client(&[query("select nope")]);
    case.server(&[error("ERROR", "no such column"), ready(b'E')]);
    let sent = case.client(&[query("deallocate s5")]);
    assert!(sent.is_empty());
    assert_eq!(owed_now(&mut case), "EZ");
    case.client(&[query("rollback")]);
    case.server(&[msg(b'C', b"ROLLBACK\0"), ready(b'I')]);
    let sent = case.client(&[bind("s5"), sync()]);
    assert_eq!(sent[0], ('B', pooled_name("select 1")), "s5 still defined");
}

#[test]
fn sql_prepared_statements_follow_their_client_and_are_dropped_at_release() {
    // Django's raw PREPARE / EXECUTE in autocommit: each its own transaction, perhaps on
    // another connection, where another client's statement of that name must never answer.
    let mut case = Case::new(PoolMode::Transaction);
    let prepare = "PREPARE add (int, int) AS SELECT $1 + $2";
    let sent = case.client(&[query(prepare)]);
    assert_eq!(sent, vec![('Q', prepare.to_owned())]);
    case.server(&[msg(b'C', b"PREPARE\0"), ready(b'I')]);
    assert_eq!(
        case.conversation.take_sql_cleanup(),
        vec!["DEALLOCATE \"add\"".to_owned()],
        "given back without it"
    );
    next_connection(&mut case);
    // A query naming it gets it prepared first; the answers to that are not the client's.
    let sent = case.client(&[query("select 1")]);
    assert_eq!(sent.len(), 1, "not named: nothing added");
    case.server(&[msg(b'C', b"SELECT 1\0"), ready(b'I')]);
    let sent = case.client(&[query("EXECUTE add(1, 2)")]);
    assert_eq!(
        sent,
        vec![
            ('Q', prepare.to_owned()),
            ('Q', "EXECUTE add(1, 2)".to_owned())
        ]
    );
    let (tags, _) = case.server(&[
        msg(b'C', b"PREPARE\0"),
        ready(b'I'),
        msg(b'C', b"SELECT 1\0"),
        ready(b'I'),
    ]);
    assert_eq!(tags, "CZ");
    // Here now: not again. A second PREPARE of the name is PostgreSQL's to refuse (42P05).
    let sent = case.client(&[query("PREPARE add AS SELECT 0")]);
    assert_eq!(sent.len(), 1);
    case.server(&[error_with("ERROR", "42P05", "already exists"), ready(b'I')]);
    // DEALLOCATE of it goes to the server, which has it: nothing more to carry or drop.
    let sent = case.client(&[query("deallocate add")]);
    assert_eq!(sent, vec![('Q', "deallocate add".to_owned())]);
    case.server(&[msg(b'C', b"DEALLOCATE\0"), ready(b'I')]);
    assert!(case.conversation.take_sql_cleanup().is_empty());
    assert!(!case.conversation.left_session_state());
    next_connection(&mut case);
    let sent = case.client(&[query("EXECUTE add(1, 2)")]);
    assert_eq!(sent.len(), 1, "gone: PostgreSQL's 26000");
}

#[test]
fn prepares_among_other_statements_are_each_carried() {
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[query("select 1; prepare x as select 2")]);
    case.server(&[
        msg(b'C', b"SELECT 1\0"),
        msg(b'C', b"PREPARE\0"),
        ready(b'I'),
    ]);
    assert!(!case.conversation.left_session_state());
    assert_eq!(
        case.conversation.take_sql_cleanup(),
        vec!["DEALLOCATE \"x\"".to_owned()]
    );
    next_connection(&mut case);
    let sent = case.client(&[query("execute x")]);
    assert_eq!(sent[0], ('Q', "prepare x as select 2".to_owned()));
}

#[test]
fn a_sql_statement_whose_prepare_fails_again_is_deallocated_by_pgrouter() {
    // PREPARE b AS SELECT * FROM t; EXECUTE b (another connection: b prepared again);
    // DROP TABLE t; EXECUTE b (another again: its PREPARE fails); DEALLOCATE b, which
    // directly succeeds.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[query("PREPARE b AS SELECT * FROM t")]);
    case.server(&[msg(b'C', b"PREPARE\0"), ready(b'I')]);
    case.conversation.take_sql_cleanup();
    next_connection(&mut case);
    case.client(&[query("EXECUTE b")]);
    let (tags, heard) = case.server(&[
        error_with("ERROR", "42P01", "relation \"t\" does not exist"),
        ready(b'I'),
        error_with("ERROR", "26000", "prepared statement \"b\" does not exist"),
        ready(b'I'),
    ]);
    assert_eq!(
        tags, "EZ",
        "the client's EXECUTE fails; pgrouter's PREPARE is not its"
    );
    assert_eq!(heard.set_failed, None, "not the client's settings failing");
    let sent = case.client(&[query("deallocate b")]);
    assert!(sent.is_empty(), "nothing to drop here");
    assert_eq!(owed_now(&mut case), "CZ");
    assert!(case.conversation.take_sql_cleanup().is_empty());
}

#[test]
fn an_extended_deallocate_of_a_sql_statement_the_connection_lacks_drops_a_stand_in() {
    // tokio-postgres's client.execute("DEALLOCATE x", &[]) in a later transaction, x made by
    // SQL PREPARE over a table dropped since: preparing x again to drop it would fail.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[query(
        "create table t (id int); prepare x as select id from t",
    )]);
    case.server(&[
        msg(b'C', b"CREATE TABLE\0"),
        msg(b'C', b"PREPARE\0"),
        ready(b'I'),
    ]);
    case.conversation.take_sql_cleanup();
    next_connection(&mut case);
    let sent = case.client(&[
        parse("s7", "DEALLOCATE x"),
        describe_statement("s7"),
        sync(),
    ]);
    let tags: String = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, "PDS", "x is not prepared again: {sent:?}");
    assert_eq!(sent[0].1, pooled_name(&format!("DEALLOCATE {STAND_IN}")));
    assert!(
        case.conversation.take_sql_cleanup().is_empty(),
        "x is no longer the client's"
    );
}

#[test]
fn a_cursor_with_hold_keeps_the_connection_until_it_is_closed() {
    // Django's .iterator() in autocommit: DECLARE ... WITH HOLD, then FETCH in later
    // transactions, which must reach the server connection holding the cursor.
    let mut case = Case::new(PoolMode::Transaction);
    case.client(&[query(
        "DECLARE \"c1\" NO SCROLL CURSOR WITH HOLD FOR SELECT 1",
    )]);
    case.server(&[msg(b'C', b"DECLARE CURSOR\0"), ready(b'I')]);
    assert!(
        !case.conversation.releasable(),
        "kept while the cursor is open"
    );
    case.client(&[query("FETCH FORWARD 10 FROM \"c1\"")]);
    case.server(&[msg(b'C', b"FETCH 1\0"), ready(b'I')]);
    assert!(!case.conversation.releasable());
    case.client(&[query("CLOSE \"c1\"")]);
    case.server(&[msg(b'C', b"CLOSE CURSOR\0"), ready(b'I')]);
    assert!(case.conversation.releasable(), "given back once closed");
}
