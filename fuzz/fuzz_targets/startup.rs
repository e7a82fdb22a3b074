//! The first packet a client sends (`protocol::startup`): `read_packet` over arbitrarily
//! chunked input, then `decode`.
//!
//! Invariants:
//! - reading the same bytes in any chunking gives the same packet (or the same refusal);
//! - a packet read has the length its header says, within 8..=10000; refused lengths are
//!   exactly the ones outside; empty input is a clean EOF;
//! - `decode` never panics, on read packets or on raw bytes of any length;
//! - a decoded StartupMessage is protocol 3.x, keeps the packet as `raw`, has a user, no
//!   parameter twice, no NUL in names or values, and its parameters re-encode to the body
//!   byte for byte (and through `pool::wire::startup` decode back to the same list);
//! - a CancelRequest keeps pid and secret (4..=256 bytes) and re-encodes to the same packet;
//!   SSL and GSSENC requests are exactly 8 bytes.
#![no_main]

mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgrouter::testing::limits::MAX_STARTUP_LEN;
use pgrouter::testing::startup::{self, FirstPacket, StartupError};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    // Half the inputs get their length field fixed up to the input's length, so the fuzzer
    // spends its time inside well-framed packets.
    let mut input = input.to_vec();
    if mode & 1 == 1 && input.len() >= 4 {
        let len = input.len() as u32;
        input[..4].copy_from_slice(&len.to_be_bytes());
    }

    // Raw decode of anything: no panic.
    let raw = startup::decode(Bytes::copy_from_slice(&input));
    if let Ok(p) = &raw {
        check_decoded(&input, p);
    }

    let whole = common::block_on(startup::read_packet(&mut &input[..]));
    let chunked = common::block_on(startup::read_packet(&mut common::ChunkedReader::new(
        &input,
        common::Schedule::new(&[mode]),
    )));
    match (&whole, &chunked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "chunking changed the packet read"),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind()),
        _ => panic!("chunking changed the outcome: {whole:?} vs {chunked:?}"),
    }
    let read = match whole {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            assert!(!input.is_empty());
            if input.len() >= 4 {
                let len = u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
                assert!((8..=MAX_STARTUP_LEN).contains(&len) && input.len() < len);
            }
            return;
        }
    };
    let Some(read) = read else {
        assert!(input.is_empty(), "EOF reported with bytes to read");
        return;
    };
    let len = u32::from_be_bytes([input[0], input[1], input[2], input[3]]);
    let packet = match read {
        Err(StartupError::BadLength(l)) => {
            assert_eq!(l, len);
            assert!(!(8..=MAX_STARTUP_LEN as u32).contains(&l));
            return;
        }
        Err(e) => panic!("read_packet refused with {e:?}"),
        Ok(p) => p,
    };
    assert!((8..=MAX_STARTUP_LEN).contains(&packet.len()));
    assert_eq!(packet.len(), len as usize);
    assert_eq!(&packet[..], &input[..packet.len()]);

    let decoded = startup::decode(packet.clone());
    if packet.len() == input.len() {
        assert_eq!(
            decoded, raw,
            "decode depends on how the packet was obtained"
        );
    }
    if let Ok(p) = &decoded {
        check_decoded(&packet, p);
    }
});

fn check_decoded(packet: &[u8], decoded: &FirstPacket) {
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match decoded {
        FirstPacket::SslRequest => assert_eq!((packet.len(), code), (8, 80877103)),
        FirstPacket::GssEncRequest => assert_eq!((packet.len(), code), (8, 80877104)),
        FirstPacket::Cancel(key) => {
            assert_eq!(code, 80877102);
            assert!((4..=256).contains(&key.secret.len()));
            let again = pgrouter::testing::cancel_packet(key);
            assert_eq!(&again[..], packet, "cancel key does not re-encode");
        }
        FirstPacket::Startup(s) => {
            assert_eq!(&s.raw[..], packet);
            assert_eq!(s.version.0, 3);
            assert_eq!(code, 3 << 16 | u32::from(s.version.1));
            assert!(s.param("user").is_some());
            let mut body = Vec::new();
            for (i, (k, v)) in s.params.iter().enumerate() {
                assert!(!k.is_empty(), "empty parameter name");
                assert!(!k.contains('\0') && !v.contains('\0'));
                assert!(
                    s.params[..i].iter().all(|(other, _)| other != k),
                    "parameter {k:?} given twice"
                );
                assert_eq!(s.param(k), Some(v.as_str()));
                body.extend_from_slice(k.as_bytes());
                body.push(0);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            assert_eq!(&packet[8..], &body[..], "parameters do not re-encode");
            assert_eq!(s.database(), s.param("database").unwrap_or(s.user()));
            // The startup pooled sessions send servers decodes to the same parameters.
            let params: Vec<(&str, &str)> = s
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let ours = pgrouter::testing::wire::startup(&params).freeze();
            match startup::decode(ours) {
                Ok(FirstPacket::Startup(t)) => {
                    assert_eq!(t.params, s.params);
                    assert_eq!(t.version, (3, 0));
                }
                other => panic!("wire::startup does not decode: {other:?}"),
            }
        }
    }
}
