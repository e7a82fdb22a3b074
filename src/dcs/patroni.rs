//! Patroni's keys under `/<namespace>/<scope>/`, read into a `Topology` (Patroni 3.0.x to 4.x).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::topology::{Failover, Member, Role, Topology};

/// Builds a topology from the raw values of one cluster's keys, keyed by the path below the
/// prefix (`leader`, `members/pg0`, `status`, ...). Keys that fail to parse are skipped with a
/// warning: one bad member must not blind the router to the rest.
pub fn topology_from_keys(scope: &str, keys: &BTreeMap<String, Vec<u8>>) -> Topology {
    let mut topology = Topology::empty(scope);
    topology.synced = true;
    for (key, value) in keys {
        if let Err(e) = apply_key(&mut topology, key, value) {
            tracing::warn!(cluster = scope, key = %key, error = %e, "ignoring unreadable Patroni key");
        }
    }
    topology.sync_standbys = sync_standbys(keys, topology.leader.as_deref());
    topology
}

/// The synchronous standbys the `sync` key names for `leader`, while the `config` key has
/// `synchronous_mode` on (Patroni's own `/synchronous` check: `is_synchronous_mode()` and
/// `sync.matches(name)`). A key written for another leader names nobody.
fn sync_standbys(keys: &BTreeMap<String, Vec<u8>>, leader: Option<&str>) -> BTreeSet<String> {
    #[derive(Deserialize)]
    struct Sync {
        leader: Option<String>,
        sync_standby: Option<String>,
    }
    #[derive(Deserialize)]
    struct DcsConfig {
        synchronous_mode: Option<serde_json::Value>,
    }
    let mode_on = keys
        .get("config")
        .and_then(|v| json::<DcsConfig>(v).ok())
        .and_then(|c| c.synchronous_mode)
        .is_some_and(|m| truthy(&m) || m == "quorum");
    let sync = keys.get("sync").and_then(|v| json::<Sync>(v).ok());
    match sync {
        Some(Sync {
            leader: Some(of),
            sync_standby: Some(names),
        }) if mode_on && Some(of.as_str()) == leader => names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn apply_key(t: &mut Topology, key: &str, value: &[u8]) -> Result<(), String> {
    match key {
        "leader" => {
            let name = std::str::from_utf8(value)
                .map_err(|e| e.to_string())?
                .trim();
            t.leader = (!name.is_empty()).then(|| name.to_owned());
        }
        "failover" => t.failover = parse_failover(value)?,
        "status" => t.leader_optime = json::<Status>(value)?.optime,
        // Patroni before 2.0 kept the leader's position in its own key.
        "optime/leader" => {
            let text = std::str::from_utf8(value).map_err(|e| e.to_string())?;
            t.leader_optime = Some(text.trim().parse().map_err(|_| "not a number")?);
        }
        _ => {
            if let Some(name) = key.strip_prefix("members/") {
                let member = parse_member(name, value)?;
                t.members.insert(name.to_owned(), member.into());
            }
            // config, sync, initialize, history, ...: nothing routing depends on.
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Status {
    optime: Option<u64>,
}

/// The member JSON; unknown fields are ignored so newer Patroni versions keep working.
#[derive(Deserialize)]
struct MemberJson {
    conn_url: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
    xlog_location: Option<u64>,
    /// Patroni 4.x reports replay and receive positions of replicas separately.
    replay_lsn: Option<u64>,
    receive_lsn: Option<u64>,
    timeline: Option<u64>,
    api_url: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct FailoverJson {
    #[serde(alias = "master")]
    leader: Option<String>,
    member: Option<String>,
    scheduled_at: Option<String>,
}

fn json<'a, T: Deserialize<'a>>(value: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| e.to_string())
}

pub fn parse_member(name: &str, value: &[u8]) -> Result<Member, String> {
    let m: MemberJson = json(value)?;
    let addr = conn_url_addr(&m.conn_url)
        .ok_or_else(|| format!("conn_url {:?} has no host:port", m.conn_url))?;
    Ok(Member {
        name: name.to_owned(),
        addr,
        role: Role::from_patroni(&m.role),
        state: m.state,
        wal_position: m.replay_lsn.or(m.xlog_location).or(m.receive_lsn),
        noloadbalance: m.tags.get("noloadbalance").is_some_and(truthy),
        tags: m
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), tag_text(v)))
            .collect(),
        timeline: m.timeline,
        api_url: m.api_url,
    })
}

/// A member as an entry of Patroni's `GET /cluster` answer shows it (`name`, `role`, `state`,
/// `host`, `port`, `api_url`, `timeline`, `tags`). Its role there is the DCS's view (`leader`,
/// `sync_standby`, `replica`); whether it is a running primary is asked of its own Patroni.
pub fn member_from_cluster_entry(entry: &serde_json::Value) -> Option<Member> {
    let name = entry["name"].as_str()?;
    let host = entry["host"].as_str()?;
    let port = entry["port"].as_u64()?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let role = match entry["role"].as_str()? {
        "leader" | "master" | "primary" => Role::Primary,
        "standby_leader" => Role::StandbyLeader,
        "replica" | "sync_standby" | "quorum_standby" => Role::Replica,
        _ => Role::Other,
    };
    let tags = entry["tags"].as_object();
    Some(Member {
        name: name.to_owned(),
        addr: format!("{host}:{port}"),
        role,
        state: entry["state"].as_str().unwrap_or("unknown").to_owned(),
        wal_position: None,
        noloadbalance: tags
            .and_then(|t| t.get("noloadbalance"))
            .is_some_and(truthy),
        tags: tags
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), tag_text(v)))
            .collect(),
        timeline: entry["timeline"].as_u64(),
        api_url: entry["api_url"].as_str().map(str::to_owned),
    })
}

fn parse_failover(value: &[u8]) -> Result<Option<Failover>, String> {
    // Patroni writes an empty value when it clears the key without deleting it.
    if value.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let f: FailoverJson = json(value)?;
    let named = |s: Option<String>| s.filter(|s| !s.is_empty());
    let (from, to) = (named(f.leader), named(f.member));
    // Patroni clears the key by writing `{}` once a switchover is done.
    if from.is_none() && to.is_none() {
        return Ok(None);
    }
    Ok(Some(Failover {
        from,
        to,
        scheduled_at: f.scheduled_at,
    }))
}

/// A tag's value as Patroni's `?tag_key=value` compares it: strings as they are, anything
/// else as lower-case text.
fn tag_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string().to_lowercase(),
    }
}

/// Patroni tags are YAML values: `true`, "true", "on", "yes" and 1 all mean yes.
fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_u64().is_some_and(|n| n != 0),
        serde_json::Value::String(s) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1")
        }
        _ => false,
    }
}

/// "postgres://127.0.0.1:5432/postgres" -> "127.0.0.1:5432"; IPv6 hosts keep their brackets.
/// None unless the address can be read only one way: an unbracketed host with a ':' (an IPv6
/// address, or several hosts), junk after a bracket, a port that is not 1..=65535 in digits.
fn conn_url_addr(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            if h.is_empty() || h.contains('[') {
                return None;
            }
            let port = match after {
                "" => "5432",
                _ => after.strip_prefix(':')?,
            };
            (&host_port[..h.len() + 2], port)
        }
        None => {
            let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
            if host.contains([':', '[', ']']) {
                return None;
            }
            (host, port)
        }
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATRONI_30_LEADER: &str = r#"{"conn_url":"postgres://127.0.0.1:15410/postgres","api_url":"http://127.0.0.1:15420/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":67108864,"timeline":1}"#;
    const PATRONI_30_REPLICA: &str = r#"{"conn_url":"postgres://127.0.0.1:15411/postgres","api_url":"http://127.0.0.1:15421/patroni","state":"running","role":"replica","version":"3.0.2","xlog_location":67100000,"timeline":1,"tags":{"nofailover":false}}"#;
    const PATRONI_4_REPLICA: &str = r#"{"conn_url":"postgres://10.0.0.3:5432/postgres","api_url":"http://10.0.0.3:8008/patroni","state":"streaming","role":"replica","version":"4.0.4","xlog_location":67108000,"replication_state":"streaming","replay_lsn":67000000,"receive_lsn":67108000,"timeline":3,"tags":{"noloadbalance":"true","clonefrom":true},"new_field":{"x":1}}"#;
    const PATRONI_4_PRIMARY: &str = r#"{"conn_url":"postgres://[::1]:6432/postgres","state":"running","role":"primary","version":"4.0.4","xlog_location":67108864,"timeline":3}"#;

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn patroni_30_members() {
        let leader = parse_member("pg0", PATRONI_30_LEADER.as_bytes()).unwrap();
        assert_eq!(leader.role, Role::Primary);
        assert_eq!(leader.addr, "127.0.0.1:15410");
        assert_eq!(leader.wal_position, Some(67108864));
        assert_eq!(
            leader.api_url.as_deref(),
            Some("http://127.0.0.1:15420/patroni")
        );
        let replica = parse_member("pg1", PATRONI_30_REPLICA.as_bytes()).unwrap();
        assert_eq!(replica.role, Role::Replica);
        assert_eq!(replica.state, "running");
        assert!(!replica.noloadbalance);
    }

    #[test]
    fn patroni_4_members_prefer_replay_position() {
        let replica = parse_member("pg2", PATRONI_4_REPLICA.as_bytes()).unwrap();
        assert_eq!(replica.state, "streaming");
        assert_eq!(replica.wal_position, Some(67_000_000));
        assert!(replica.noloadbalance, "string \"true\" tag");
        assert_eq!(replica.tags["clonefrom"], "true");
        assert_eq!(replica.tags["noloadbalance"], "true");
        assert_eq!(replica.timeline, Some(3));
        let primary = parse_member("pg0", PATRONI_4_PRIMARY.as_bytes()).unwrap();
        assert_eq!(primary.role, Role::Primary);
        assert_eq!(primary.addr, "[::1]:6432");
    }

    #[test]
    fn a_whole_cluster() {
        let t = topology_from_keys(
            "demo",
            &keys(&[
                ("leader", "pg0"),
                ("members/pg0", PATRONI_30_LEADER),
                ("members/pg1", PATRONI_30_REPLICA),
                ("members/pg2", "{not json"),
                ("status", r#"{"optime":67200000,"slots":{"pg1":1}}"#),
                ("config", r#"{"ttl":10,"loop_wait":2}"#),
                ("sync", r#"{"leader":"pg0","sync_standby":null}"#),
                ("initialize", "7312345678901234567"),
            ]),
        );
        assert!(t.synced);
        assert_eq!(t.leader.as_deref(), Some("pg0"));
        assert_eq!(t.members.len(), 2, "the unreadable member is skipped");
        assert_eq!(t.leader_optime, Some(67_200_000));
        assert_eq!(t.lag(&t.members["pg1"]), Some(100_000));
        assert_eq!(t.writable_leader().unwrap().name, "pg0");
    }

    /// Found by fuzz/fuzz_targets/patroni_json.rs: a tag holding a number too long for a u64
    /// read back one unit in the last place off once re-serialised (serde_json's fast float
    /// parsing); `float_roundtrip` reads floats exactly.
    #[test]
    fn a_huge_numeric_tag_reads_back_the_same() {
        let json = r#"{"conn_url":"postgres://h:1/db","tags":{"n":67108033303333333333333333333333333333333333333333333333333333300}}"#;
        let m = parse_member("pg0", json.as_bytes()).unwrap();
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let again = parse_member("pg0", &serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(m.tags, again.tags);
    }

    #[test]
    fn sync_standbys_under_synchronous_mode() {
        let base = [
            ("leader", "pg0"),
            ("members/pg0", PATRONI_30_LEADER),
            ("members/pg1", PATRONI_30_REPLICA),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            topology_from_keys("demo", &keys(&all)).sync_standbys
        };
        let on = ("config", r#"{"synchronous_mode":true}"#);
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            with(&[on, ("sync", r#"{"leader":"pg0","sync_standby":"pg1"}"#)]),
            names(&["pg1"])
        );
        assert_eq!(
            with(&[on, ("sync", r#"{"leader":"pg0","sync_standby":"pg1,pg2"}"#)]),
            names(&["pg1", "pg2"])
        );
        // Written for another leader, or synchronous_mode off: nobody.
        assert!(with(&[on, ("sync", r#"{"leader":"pg2","sync_standby":"pg1"}"#)]).is_empty());
        assert!(with(&[("sync", r#"{"leader":"pg0","sync_standby":"pg1"}"#)]).is_empty());
        assert!(with(&[on, ("sync", r#"{"leader":"pg0","sync_standby":null}"#)]).is_empty());
    }

    #[test]
    fn failover_key_forms() {
        let pending = keys(&[("failover", r#"{"leader":"pg0","member":"pg1"}"#)]);
        let f = topology_from_keys("demo", &pending).failover.unwrap();
        assert_eq!(f.from.as_deref(), Some("pg0"));
        assert_eq!(f.to.as_deref(), Some("pg1"));
        assert!(f.is_imminent());
        let old = keys(&[(
            "failover",
            r#"{"master":"pg0","scheduled_at":"2030-01-01T00:00:00+00:00"}"#,
        )]);
        let f = topology_from_keys("demo", &old).failover.unwrap();
        assert_eq!(f.from.as_deref(), Some("pg0"));
        assert!(!f.is_imminent());
        for cleared in ["", "{}", r#"{"leader":"","member":null}"#] {
            let t = topology_from_keys("demo", &keys(&[("failover", cleared)]));
            assert!(t.failover.is_none(), "{cleared:?}");
        }
    }

    #[test]
    fn conn_urls() {
        assert_eq!(conn_url_addr("postgres://h:1/db").as_deref(), Some("h:1"));
        assert_eq!(
            conn_url_addr("postgresql://u:p@h:7/db?x=1").as_deref(),
            Some("h:7")
        );
        assert_eq!(conn_url_addr("postgres://h/db").as_deref(), Some("h:5432"));
        assert_eq!(
            conn_url_addr("postgres://[::1]/db").as_deref(),
            Some("[::1]:5432")
        );
        assert_eq!(
            conn_url_addr("postgres://[::1]:6/db").as_deref(),
            Some("[::1]:6")
        );
        assert_eq!(conn_url_addr("http://h:1/"), None);
        assert_eq!(conn_url_addr("postgres://:5/db"), None);
    }

    /// Found by fuzz/fuzz_targets/patroni_json.rs: addresses that read two ways or not at all
    /// were accepted (port 0; "h:1:2" became host "h:1" port 2, so "fe80::1" became host
    /// "fe80:" port 1). Found while fixing it: "[::1]x" became "[::1]:5432".
    #[test]
    fn conn_urls_that_read_two_ways_are_refused() {
        for url in [
            "postgres://fe80::1/db",
            "postgres://fe80::1:5432/db",
            "postgres://h1:5432,h2:5433/db",
            "postgres://[::1]x/db",
            "postgres://[::1]:/db",
            "postgres://[]:5432/db",
            "postgres://[[::1]]:5432/db",
            "postgres://h]:5432/db",
            "postgres://h:+5432/db",
            "postgres://h:0/db",
            "postgres://h:/db",
        ] {
            assert_eq!(conn_url_addr(url), None, "{url}");
        }
        assert_eq!(
            conn_url_addr("postgres://[fe80::1%eth0]:5432/db").as_deref(),
            Some("[fe80::1%eth0]:5432")
        );
        assert_eq!(
            conn_url_addr("postgres://h:05432/db").as_deref(),
            Some("h:5432")
        );
    }
}
