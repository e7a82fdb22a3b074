//! The client's settings across server connections: startup values, carried SETs, RESET.

use super::tests::{msg, query, ready, Case};
use super::*;
use crate::servers::tracked::Tracked;

fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut body = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        match v {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    msg(b'D', &body)
}

fn param(name: &str, value: &str) -> Vec<u8> {
    msg(
        b'S',
        &[name.as_bytes(), b"\0", value.as_bytes(), b"\0"].concat(),
    )
}

/// A transaction-mode client that asked at startup for DateStyle German and search_path app.
fn client() -> Case {
    let startup = StartupSettings {
        vars: vec![("DateStyle", "German".to_owned())],
        extra: vec![("search_path".to_owned(), "app, public".to_owned())],
    };
    Case {
        conversation: Conversation::with_settings(
            PoolMode::Transaction,
            startup,
            vec!["search_path".to_owned()],
        ),
        conn: ConnState::new(Tracked::default()),
    }
}

/// The SQL of the queries pgrouter sends to bring a connection in step with the client.
fn sync(case: &mut Case) -> Vec<String> {
    let mut out = BytesMut::new();
    case.conversation.sync_vars(&mut case.conn, &mut out);
    super::tests::messages(&out)
        .into_iter()
        .map(|(_, q)| q)
        .collect()
}

fn settle(case: &mut Case) -> Vec<String> {
    assert!(case.conversation.settings_due());
    let mut out = BytesMut::new();
    case.conversation.settle_settings(&mut case.conn, &mut out);
    super::tests::messages(&out)
        .into_iter()
        .map(|(_, q)| q)
        .collect()
}

#[test]
fn startup_settings_reach_every_connection_and_only_once() {
    let mut case = client();
    assert_eq!(
        sync(&mut case),
        ["SET DateStyle = 'German'; SELECT pg_catalog.set_config(E'search_path', E'app, public', false)"]
    );
    let (tags, heard) = case.server(&[
        param("DateStyle", "German, DMY"),
        msg(b'C', b"SET\0"),
        msg(b'T', b"\0\0"),
        msg(b'D', b"\0\x01\0\0\0\x0bapp, public"),
        msg(b'C', b"SELECT 1\0"),
        ready(b'I'),
    ]);
    assert_eq!(
        (tags.as_str(), heard.set_failed),
        ("", None),
        "all pgrouter's"
    );
    assert!(sync(&mut case).is_empty(), "in step now");
    // Another client's connection: its carried setting is reset, ours set.
    case.conn.extra = vec![("statement_timeout".to_owned(), "1s".to_owned())];
    assert_eq!(
        sync(&mut case),
        ["SELECT pg_catalog.set_config(E'search_path', E'app, public', false); RESET statement_timeout"]
    );
}

#[test]
fn a_set_of_a_tracked_setting_is_read_back_once_its_transaction_is_over() {
    let mut case = client();
    case.conn.extra = case.conversation.extra.clone();
    case.client(&[query("BEGIN; SET search_path TO tenant_7, public")]);
    case.server(&[msg(b'C', b"SET\0"), ready(b'T')]);
    assert!(!case.conversation.settings_due(), "the transaction is open");
    assert!(!case.conversation.releasable());
    case.client(&[query("COMMIT")]);
    case.server(&[msg(b'C', b"COMMIT\0"), ready(b'I')]);
    assert!(!case.conversation.releasable(), "settled first");
    assert_eq!(
        settle(&mut case),
        ["SELECT pg_catalog.current_setting(E'search_path', true)"]
    );
    let (tags, _) = case.server(&[
        msg(b'T', b"\0\0"),
        data_row(&[Some("tenant_7, public")]),
        msg(b'C', b"SELECT 1\0"),
        ready(b'I'),
    ]);
    assert_eq!(tags, "", "the read-back is pgrouter's");
    assert!(case.conversation.releasable());
    let carried = [("search_path".to_owned(), "tenant_7, public".to_owned())];
    assert_eq!(case.conversation.extra, carried);
    assert_eq!(case.conn.extra, carried, "this connection has it");
    // The next connection gets it.
    let mut next = ConnState::new(Tracked::default());
    std::mem::swap(&mut case.conn, &mut next);
    let sets = sync(&mut case);
    assert!(
        sets[0]
            .ends_with("SELECT pg_catalog.set_config(E'search_path', E'tenant_7, public', false)"),
        "{sets:?}"
    );
    // A SET of a setting not tracked is not carried (pool.track_extra_parameters).
    case.client(&[query("SET work_mem = '64MB'")]);
    case.server(&[msg(b'C', b"SET\0"), ready(b'I')]);
    assert!(!case.conversation.settings_due());
}

#[test]
fn reset_goes_back_to_the_startup_values() {
    let mut case = client();
    case.conn.extra = vec![("search_path".to_owned(), "other".to_owned())];
    case.conversation.extra = case.conn.extra.clone();
    case.client(&[query("RESET datestyle; RESET search_path")]);
    let (tags, _) = case.server(&[
        param("DateStyle", "ISO, MDY"),
        msg(b'C', b"RESET\0"),
        msg(b'C', b"RESET\0"),
        ready(b'I'),
    ]);
    assert_eq!(tags, "SCCZ");
    assert_eq!(
        settle(&mut case),
        ["SET DateStyle = E'German'; SELECT pg_catalog.set_config(E'search_path', E'app, public', false)"]
    );
    // The restored value is reported to the client, as its own RESET's would be directly.
    let (tags, _) = case.server(&[
        param("DateStyle", "German, DMY"),
        msg(b'C', b"SET\0"),
        msg(b'T', b"\0\0"),
        msg(b'D', b"\0\x01\0\0\0\x0bapp, public"),
        msg(b'C', b"SELECT 1\0"),
        ready(b'I'),
    ]);
    assert_eq!(tags, "S");
    assert_eq!(
        case.conversation.vars,
        [("DateStyle", "German, DMY".to_owned())]
    );
    let startup_extra = [("search_path".to_owned(), "app, public".to_owned())];
    assert_eq!(case.conversation.extra, startup_extra);
    assert_eq!(case.conn.extra, startup_extra);
    // RESET ALL and DISCARD ALL: everything back to startup, other carried settings dropped.
    case.conversation
        .extra
        .push(("myapp.tenant".to_owned(), "7".to_owned()));
    case.conn.extra = case.conversation.extra.clone();
    case.client(&[query("DISCARD ALL")]);
    case.server(&[msg(b'C', b"DISCARD ALL\0"), ready(b'I')]);
    let restore = settle(&mut case);
    assert_eq!(restore.len(), 1);
    assert!(
        restore[0]
            .starts_with("SET DateStyle = E'German'; SELECT pg_catalog.set_config(E'search_path'"),
        "{restore:?}"
    );
    assert_eq!(case.conversation.extra, startup_extra);
}
