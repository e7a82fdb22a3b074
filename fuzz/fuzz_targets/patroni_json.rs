//! Patroni's keys read into a topology (`dcs::patroni`): member JSON, `leader`, `status`,
//! `failover`, `optime/leader`, whole key sets.
//!
//! Input: byte 0 picks the part. Member and failover parts take the rest as one value; the
//! key-set part reads `key NUL value NUL key NUL value ...`.
//!
//! Invariants:
//! - nothing panics, whatever the bytes;
//! - a member that parses has a usable address: `host:port` with a port of 1..=65535 and a
//!   non-empty host that is a bracketed IPv6 address or has no ':' (so it cannot be read
//!   two ways), and which reads back the same from `postgres://<addr>/db`;
//! - unknown fields change nothing (Patroni adds fields in new versions), nor does
//!   re-serialising the same JSON;
//! - a key set gives exactly the members whose keys parse on their own, the trimmed leader
//!   name (none when blank), a failover only when it names a member or a leader, and is
//!   synced.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use pgrouter::testing::patroni::{parse_member, topology_from_keys};
use pgrouter::testing::Member;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => check_member(rest),
        1 => check_keys(rest),
        _ => {
            let keys = BTreeMap::from([("failover".to_owned(), rest.to_vec())]);
            let t = topology_from_keys("fuzz", &keys);
            if let Some(f) = &t.failover {
                assert!(f.from.is_some() || f.to.is_some(), "an empty failover");
                assert!(f.from.as_deref() != Some("") && f.to.as_deref() != Some(""));
            }
        }
    }
});

fn check_addr(m: &Member) {
    let (host, port) = m.addr.rsplit_once(':').expect("host:port");
    let port: u16 = port.parse().expect("numeric port");
    assert_ne!(port, 0, "port 0");
    assert!(!host.is_empty(), "empty host");
    match host.strip_prefix('[') {
        Some(v6) => {
            let inner = v6.strip_suffix(']').expect("closing bracket");
            assert!(!inner.is_empty() && !inner.contains(['[', ']']), "{host:?}");
        }
        None => assert!(!host.contains(':'), "unbracketed ':' in host {host:?}"),
    }
    assert!(!host.contains(['/', '?', '@']), "{host:?}");
    let url = serde_json::json!({ "conn_url": format!("postgres://{}/db", m.addr) });
    let again = parse_member("x", url.to_string().as_bytes()).expect("address reads back");
    assert_eq!(again.addr, m.addr, "address does not read back");
}

fn check_member(value: &[u8]) {
    let parsed = parse_member("pg0", value);
    let Ok(member) = &parsed else { return };
    assert_eq!(member.name, "pg0");
    check_addr(member);
    // The same JSON re-serialised, and with a field from a future Patroni.
    // serde also reads a struct from a JSON array of its fields in order: not Patroni's form,
    // and harmless, so only objects are checked further.
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(value) else {
        return;
    };
    let again = serde_json::to_vec(&object).unwrap();
    assert_eq!(
        parse_member("pg0", &again).as_ref(),
        Ok(member),
        "re-serialised"
    );
    object.insert(
        "zz_new_field".into(),
        serde_json::json!({"nested": [1, "two", null]}),
    );
    let extended = serde_json::to_vec(&object).unwrap();
    assert_eq!(
        parse_member("pg0", &extended).as_ref(),
        Ok(member),
        "unknown field"
    );
}

fn check_keys(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let mut keys = BTreeMap::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        keys.insert(String::from_utf8_lossy(k).into_owned(), v.to_vec());
    }
    let t = topology_from_keys("fuzz", &keys);
    assert!(t.synced);
    for (name, member) in &t.members {
        assert_eq!(&member.name, name);
        let value = &keys[&format!("members/{name}")];
        assert_eq!(parse_member(name, value).as_ref(), Ok(&**member));
        check_addr(member);
    }
    for (key, value) in &keys {
        if let Some(name) = key.strip_prefix("members/") {
            assert_eq!(
                t.members.contains_key(name),
                parse_member(name, value).is_ok(),
                "member {name:?}"
            );
        }
    }
    let leader = keys
        .get("leader")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|l| !l.is_empty());
    assert_eq!(t.leader.as_deref(), leader, "leader");
    if let Some(f) = &t.failover {
        assert!(f.from.is_some() || f.to.is_some(), "an empty failover");
    }
}
