//! The relay's message following: boundaries, FATAL errors, cancel keys, client lengths.

use super::*;
use crate::topology::Topology;
use std::sync::Arc;
use tokio::sync::watch;

#[test]
fn idle_needs_every_query_answered_and_no_transaction() {
    let mut tx = TxState {
        awaiting: 1,
        status: 0,
    };
    assert!(!tx.idle(), "startup not finished");
    tx = TxState {
        awaiting: 0,
        status: b'I',
    };
    assert!(tx.idle());
    tx.status = b'T';
    assert!(!tx.idle(), "inside a transaction");
    tx = TxState {
        awaiting: 1,
        status: b'I',
    };
    assert!(!tx.idle(), "a query is in flight");
}

fn shared() -> Shared {
    let config =
        crate::config::Config::from_toml("[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:1\"]\n")
            .expect("config");
    let (_tx, rx) = watch::channel(Arc::new(Topology::empty("demo")));
    Shared::new(config, rx, Arc::new(crate::metrics::Metrics::new()))
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[test]
fn a_tally_counts_the_session_bytes_each_way_beside_the_port_counters() {
    let shared = shared();
    let tally = Tally::default();
    let mut follow = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:1").tally(&tally);
    follow.client_bytes(&tagged(b'Q', b"select 1\0")).unwrap();
    follow.server_bytes(&tagged(b'Z', b"I")).unwrap();
    follow.client_bytes(&tagged(b'X', b"")).unwrap();
    assert_eq!(tally.get(), (14 + 5, 6));
    let port = |direction| {
        shared
            .metrics
            .bytes
            .with_label_values(&["primary", direction])
            .get()
    };
    assert_eq!(
        (port("client_to_server"), port("server_to_client")),
        (19, 6)
    );
    // A follow without a tally counts the port's bytes only.
    let mut other = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:1");
    other.client_bytes(&tagged(b'Q', b"select 1\0")).unwrap();
    assert_eq!(tally.get(), (19, 6));
    assert_eq!(port("client_to_server"), 33);
}

const FATAL: &[u8] =
    b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";

#[test]
fn a_fatal_error_ending_a_batch_is_found_only_when_whole_in_it() {
    let shared = shared();
    let rows = [
        tagged(b'D', b"\0\x01\0\0\0\x01x"),
        tagged(b'C', b"SELECT 1\0"),
    ]
    .concat();
    let fatal = tagged(b'E', FATAL);
    let stream = [rows.clone(), fatal.clone()].concat();
    for cut in 0..stream.len() {
        let mut follow = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:5432");
        follow.server_bytes(&stream[..cut]).unwrap();
        assert_eq!(follow.server_fatal, None, "cut {cut}: not whole yet");
        follow.server_bytes(&stream[cut..]).unwrap();
        let found = follow.server_fatal.take();
        if cut <= rows.len() {
            let start = rows.len() - cut;
            assert_eq!(found, Some((start, FATAL.to_vec())), "cut {cut}");
        } else {
            assert_eq!(found, None, "cut {cut}: began in the batch before");
        }
    }
    // An ERROR, or a FATAL followed by more, is left alone.
    let mut follow = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:5432");
    let error = tagged(b'E', b"SERROR\0VERROR\0C42P01\0Mno such table\0\0");
    follow.server_bytes(&error).unwrap();
    assert_eq!(follow.server_fatal, None);
    follow
        .server_bytes(&[fatal, tagged(b'Z', b"I")].concat())
        .unwrap();
    assert_eq!(follow.server_fatal, None);
}

/// The server's rows and FATAL arrive in two reads, cut at every byte: the client gets the
/// rows as sent and the FATAL named, also when the cut falls inside the FATAL (its start is
/// kept back until the rest comes). An ERROR cut the same way goes out as sent.
#[tokio::test]
async fn a_fatal_split_across_reads_is_named_whole() {
    let shared = shared();
    let rows = [
        tagged(b'D', b"\0\x01\0\0\0\x01x"),
        tagged(b'C', b"SELECT 1\0"),
    ]
    .concat();
    let (_, named_fatal) = named("demo", "pg0", FATAL);
    let error = tagged(b'E', b"SERROR\0VERROR\0C42P01\0Mno such table\0\0");
    let cases = [
        (
            [rows.clone(), tagged(b'E', FATAL)].concat(),
            [rows.clone(), named_fatal.to_vec()].concat(),
        ),
        (
            [rows.clone(), error.clone()].concat(),
            [rows.clone(), error].concat(),
        ),
    ];
    for (stream, want) in cases {
        for cut in 1..stream.len() {
            let mut follow = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:5432");
            let mut down = Pump::new(false);
            let mut client = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                let mut from_server = part;
                assert!(matches!(
                    down.step(&mut from_server, &mut client).await,
                    Ok(Step::Read(_))
                ));
                server_batch(&mut follow, &mut down, "demo", "pg0").unwrap();
                while down.pending() {
                    let mut nothing: &[u8] = &[];
                    assert!(matches!(
                        down.step(&mut nothing, &mut client).await,
                        Ok(Step::Wrote)
                    ));
                }
            }
            assert_eq!(client, want, "cut {cut}");
            assert!(follow.down_scan.at_boundary());
        }
    }
}

#[test]
fn a_named_fatal_replaces_the_batch_tail_when_it_fits() {
    let mut pump = Pump::new(false);
    pump.buf[..10].copy_from_slice(b"DDDDDEEEEE");
    (pump.start, pump.end) = (0, 10);
    let (code, named) = named("demo", "pg0", FATAL);
    assert_eq!(code, "57P01");
    assert!(pump.replace_tail(5, &named));
    assert_eq!(&pump.buf[..5], b"DDDDD");
    assert_eq!(&pump.buf[5..pump.end], &named[..]);
    let fields = crate::protocol::wire::error_fields(&named[5..]);
    assert_eq!(
        crate::protocol::wire::field(&fields, b'M'),
        Some("pgrouter: cluster \"demo\": member \"pg0\": terminating connection due to administrator command")
    );
    assert!(!pump.replace_tail(BATCH - 3, &named), "past the batch");
}

fn backend_key(pid: i32, secret: &'static [u8]) -> (CancelKey, Vec<u8>) {
    let key = CancelKey {
        pid,
        secret: Bytes::from_static(secret),
    };
    let message = tagged(b'K', &[&pid.to_be_bytes()[..], secret].concat());
    (key, message)
}

/// Follows `stream` from the server cut in two at every byte; after it, `latest` is
/// registered for the member and no other key is (`replaced` included); after the Follow
/// is dropped, nothing is.
fn check_backend_keys(stream: &[u8], latest: &CancelKey, replaced: Option<&CancelKey>) {
    const MEMBER: &str = "127.0.0.1:5432";
    let shared = shared();
    for cut in 0..=stream.len() {
        let mut follow = Follow::new(&shared, Port::PRIMARY, MEMBER);
        follow.server_bytes(&stream[..cut]).unwrap();
        follow.server_bytes(&stream[cut..]).unwrap();
        assert_eq!(
            shared.cancels.lookup(latest),
            Some(Some((MEMBER.to_owned(), latest.clone()))),
            "cut {cut}: the latest key is not registered"
        );
        if let Some(old) = replaced {
            assert_eq!(shared.cancels.lookup(old), None, "cut {cut}: old key kept");
        }
        assert_eq!(shared.cancels.len(), 1, "cut {cut}: keys registered");
        drop(follow);
        assert!(shared.cancels.is_empty(), "cut {cut}: key left registered");
    }
}

/// Found while writing fuzz/fuzz_targets/frames.rs: a server sending the same
/// BackendKeyData twice lost its key, the old registration being dropped after the new one
/// was made.
#[test]
fn a_backend_key_sent_twice_stays_registered() {
    let (key, message) = backend_key(4242, b"\x01\x02\x03\x04");
    let stream = [message.clone(), message, tagged(b'Z', b"I")].concat();
    check_backend_keys(&stream, &key, None);
}

#[test]
fn a_second_backend_key_replaces_the_first() {
    let (first, first_message) = backend_key(4242, b"\x01\x02\x03\x04");
    let (second, second_message) = backend_key(4243, b"\x05\x06\x07\x08");
    let stream = [first_message, second_message, tagged(b'Z', b"I")].concat();
    check_backend_keys(&stream, &second, Some(&first));
}

fn msg(tag: u8, len: u32, body: usize) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&len.to_be_bytes());
    m.resize(5 + body, b'x');
    m
}

#[test]
fn client_lengths_past_postgres_limit_are_refused_in_any_split() {
    let good = [msg(b'Q', 14, 10), msg(b'S', 4, 0), msg(b'd', 1004, 1000)].concat();
    let client = || Scanner::new(b"").with_max_len(MAX_CLIENT_MESSAGE);
    for bad_len in [
        MAX_CLIENT_MESSAGE + 1,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        3,
    ] {
        let stream = [good.clone(), msg(b'Q', bad_len, 0)].concat();
        for chunk in 1..=stream.len() {
            let mut scan = client();
            let result = stream
                .chunks(chunk)
                .try_for_each(|c| scan.feed(c, |_, _| {}));
            assert_eq!(
                result,
                Err(BadLength {
                    tag: b'Q',
                    len: bad_len
                }),
                "chunk {chunk}"
            );
        }
    }
    // The largest length PostgreSQL accepts passes; its body is followed, not buffered.
    let mut scan = client();
    scan.feed(&good, |_, _| {}).unwrap();
    scan.feed(&msg(b'Q', MAX_CLIENT_MESSAGE, 0), |_, _| {})
        .unwrap();
    assert!(!scan.at_boundary());
}

/// A writer taking at most three bytes a write.
struct Trickle(Vec<u8>);

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(3);
        self.0.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A member that loses its role right after a batch of whole messages was read from it: the
/// batch is dropped and the client, which had none of it, can be told why (the frozen-leader
/// scenario once saw a bare close here). Once part of it went out, it cannot.
#[tokio::test]
async fn a_batch_read_but_not_yet_written_leaves_the_client_at_a_boundary() {
    let shared = shared();
    let mut follow = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:5432");
    let mut down = Pump::new(false);
    let mut client = Trickle(Vec::new());
    let reply = [tagged(b'C', b"INSERT 0 1\0"), tagged(b'Z', b"I")].concat();
    assert!(follow.client_at_boundary(&down), "nothing read yet");

    let mut from_server = &reply[..];
    assert!(matches!(
        down.step(&mut from_server, &mut client).await,
        Ok(Step::Read(_))
    ));
    server_batch(&mut follow, &mut down, "demo", "pg0").unwrap();
    assert_eq!(down.progress(), Progress::Untouched);
    assert!(follow.client_at_boundary(&down), "read, none of it written");

    let mut nothing: &[u8] = &[];
    assert!(matches!(
        down.step(&mut nothing, &mut client).await,
        Ok(Step::Wrote)
    ));
    assert_eq!(down.progress(), Progress::Partly);
    assert!(
        !follow.client_at_boundary(&down),
        "three bytes of it written"
    );

    while down.pending() {
        down.step(&mut nothing, &mut client).await.ok().unwrap();
    }
    assert_eq!(client.0, reply);
    assert!(follow.client_at_boundary(&down), "all of it written");

    // A batch that begins inside a message: the client stands inside it even with none of
    // the batch written. (A short message's start would be kept back: this one is long.)
    let row = tagged(b'D', &[b'x'; 3000]);
    let mut first = &row[..1500];
    down.step(&mut first, &mut client).await.ok().unwrap();
    server_batch(&mut follow, &mut down, "demo", "pg0").unwrap();
    while down.pending() {
        down.step(&mut nothing, &mut client).await.ok().unwrap();
    }
    let mut rest = &row[1500..];
    down.step(&mut rest, &mut client).await.ok().unwrap();
    server_batch(&mut follow, &mut down, "demo", "pg0").unwrap();
    assert_eq!(down.progress(), Progress::Untouched);
    assert!(
        !follow.client_at_boundary(&down),
        "the batch ends a message begun before it"
    );
}

/// A server gone inside a short message (a backend killed mid-send: immediate shutdown, a
/// demotion): the start of that message is kept back, so what the client was sent ends at a
/// boundary and it can be told why, instead of getting a cut message.
#[tokio::test]
async fn a_short_message_cut_by_the_server_is_kept_back_so_the_client_can_be_told() {
    let shared = shared();
    let rows = [
        tagged(b'D', b"\0\x01\0\0\0\x01x"),
        tagged(b'C', b"SELECT 1\0"),
    ]
    .concat();
    let next_row = tagged(b'D', b"\0\x01\0\0\0\x05hello");
    let stream = [rows.clone(), next_row[..7].to_vec()].concat();
    let mut follow = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:5432");
    let mut down = Pump::new(false);
    let mut client = Vec::new();
    let mut from_server: &[u8] = &stream;
    assert!(matches!(
        down.step(&mut from_server, &mut client).await,
        Ok(Step::Read(_))
    ));
    server_batch(&mut follow, &mut down, "demo", "pg0").unwrap();
    assert_eq!(down.kept(), 7, "the cut row's start is kept back");
    while down.pending() {
        let mut nothing: &[u8] = &[];
        down.step(&mut nothing, &mut client).await.ok();
    }
    assert_eq!(client, rows, "only whole messages went out");
    assert!(follow.client_at_boundary(&down));
    // A long message cut the same way streams as it comes (it cannot be held whole).
    let long_row = tagged(b'D', &[b'x'; 4000]);
    let mut follow = Follow::new(&shared, Port::PRIMARY, "127.0.0.1:5432");
    let mut down = Pump::new(false);
    let mut client = Vec::new();
    let mut from_server: &[u8] = &long_row[..3000];
    down.step(&mut from_server, &mut client).await.ok();
    server_batch(&mut follow, &mut down, "demo", "pg0").unwrap();
    assert_eq!(down.kept(), 0);
}
