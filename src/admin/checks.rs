//! The checks load balancers, keepalived and orchestrators ask the admin endpoint: health,
//! liveness, and whether a listener can route now (Patroni's `/primary`, `/replica`,
//! `/read-only` and their aliases, for routers side by side behind HAProxy or a VIP). Each
//! returns an HTTP status and a JSON body; `http.rs` does the wire.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::routes::Filter;
use super::{Admin, Endpoint};
use crate::route::Port;
use crate::topology::{Member, Topology};

/// 200 when the router has a live etcd view and knows a leader, 503 otherwise.
pub fn health(admin: &Admin) -> (StatusCode, Value) {
    let topology = admin.shared.topology.borrow().clone();
    let dcs_connected = admin.shared.metrics.dcs_connected.get() == 1;
    let healthy = dcs_connected && topology.synced && topology.leader.is_some();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let problem = admin.shared.dcs_health.problem();
    let reason = (!healthy).then(|| {
        problem.clone().unwrap_or_else(|| {
            if !dcs_connected || !topology.synced {
                "no view of the cluster yet".to_owned()
            } else {
                "no member holds Patroni's leader key".to_owned()
            }
        })
    });
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "cluster": topology.scope,
        "dcs_connected": dcs_connected,
        "dcs_problem": problem,
        "leader": topology.leader,
        "reason": reason,
    });
    (status, body)
}

/// Every cluster's health: 200 only when each is healthy. With one cluster the body is its
/// own; with several, the first's with `clusters` listing each (`?cluster=` asks one).
pub fn health_all(endpoint: &Endpoint) -> (StatusCode, Value) {
    let (status, mut body) = health(&endpoint.first);
    let others = endpoint.others();
    if others.is_empty() {
        return (status, body);
    }
    let mut all_ok = status == StatusCode::OK;
    let mut clusters = vec![body.clone()];
    for other in &others {
        let (s, b) = health(other);
        all_ok &= s == StatusCode::OK;
        clusters.push(b);
    }
    body["clusters"] = Value::Array(clusters);
    if all_ok {
        (StatusCode::OK, body)
    } else {
        body["status"] = json!("unavailable");
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

/// 200 when a new client on `port` would be routed now (for keepalived or HAProxy checks in
/// front of several routers), 503 with the reason otherwise.
pub fn can_route(admin: &Admin, port: Port) -> (StatusCode, Value) {
    let topology = admin.shared.topology.borrow().clone();
    let config = admin.shared.config();
    let verdict = if admin.shared.is_paused(port) {
        Err("paused".to_owned())
    } else {
        admin.shared.router.available(&config, &topology, port)
    };
    match verdict {
        Ok(member) => (
            StatusCode::OK,
            json!({"port": port.label(), "member": member}),
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"port": port.label(), "error": why}),
        ),
    }
}

/// The listener named `name`, for `GET /listener/<name>`.
pub fn port_named(admin: &Admin, name: &str) -> Option<Port> {
    admin
        .shared
        .ports()
        .iter()
        .copied()
        .find(|p| p.label() == name)
}

/// 200 while the process answers: `/liveness`, for an orchestrator that restarts what hangs.
pub fn liveness() -> (StatusCode, Value) {
    (StatusCode::OK, json!({"status": "alive"}))
}

/// Patroni's `/replica?lag=<bytes>&tag_<key>=<value>`: 200 when some replica serving the
/// replicas listener (the leader by fallback does not count) is within `filter`'s lag and has
/// its tags, naming them; 503 with each replica's reason otherwise.
pub fn replica_within(admin: &Admin, filter: &Filter) -> (StatusCode, Value) {
    let port = Port::REPLICAS;
    if admin.shared.is_paused(port) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"port": port.label(), "error": "paused"}),
        );
    }
    let topology = admin.shared.topology.borrow().clone();
    let lags = admin
        .shared
        .lags
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut passing = Vec::new();
    let mut refused = serde_json::Map::new();
    for (name, standing) in topology.reads.port(port.index()) {
        if !standing.serving || standing.as_leader {
            continue;
        }
        let Some(member) = topology.members.get(name) else {
            continue;
        };
        let lag = match lags.get(name) {
            Some(sample) => sample.bytes,
            None => topology.lag(member),
        };
        match passes(member, lag, filter) {
            Ok(()) => passing.push(json!({"member": name, "lag_bytes": lag})),
            Err(why) => {
                refused.insert(name.to_owned(), json!(why));
            }
        }
    }
    if passing.is_empty() {
        let error = match refused.is_empty() {
            true => no_replica(&topology),
            false => "no replica passes the filter".to_owned(),
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"port": port.label(), "error": error, "refused": refused}),
        );
    }
    (
        StatusCode::OK,
        json!({"port": port.label(), "members": passing, "refused": refused}),
    )
}

/// Whether a replica with replay lag `lag` (None: unknown) passes `filter`, or why not.
fn passes(member: &Member, lag: Option<u64>, filter: &Filter) -> Result<(), String> {
    if let Some(max) = filter.max_lag {
        match lag {
            None => return Err("lag unknown".to_owned()),
            Some(l) if l > max => {
                return Err(format!(
                    "replay {} behind the leader (lag={})",
                    crate::topology::bytes_text(l),
                    crate::topology::bytes_text(max)
                ))
            }
            Some(_) => {}
        }
    }
    for (key, want) in &filter.tags {
        match member.tags.get(key) {
            Some(have) if have == want => {}
            Some(have) => return Err(format!("tag {key} is {have:?}, not {want:?}")),
            None => return Err(format!("no tag {key}")),
        }
    }
    Ok(())
}

fn no_replica(topology: &Topology) -> String {
    if !topology.synced {
        "no view of the cluster yet".to_owned()
    } else {
        "no replica serves the replicas listener".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::topology::Role;

    fn replica(tags: &[(&str, &str)]) -> Member {
        Member {
            name: "pg1".to_owned(),
            addr: "127.0.0.1:5432".to_owned(),
            role: Role::Replica,
            state: "streaming".to_owned(),
            wal_position: Some(100),
            noloadbalance: false,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            timeline: Some(1),
            api_url: None,
        }
    }

    /// A router whose view has leader pg0 at WAL 64 MB, pg1 at the same place tagged
    /// zone=a and pg2 32 MB behind, its read sets judged (max_replica_lag 1GB: both serve).
    fn router() -> Admin {
        use crate::topology::tests::member;
        let config = crate::config::Config::from_toml(
            "[cluster]\nscope = \"d\"\netcd = [\"127.0.0.1:1\"]\n[routing]\nmax_replica_lag = \"1GB\"\nreplica_fallback = \"reject\"\n",
        )
        .unwrap();
        let mut t = Topology::empty("d");
        t.synced = true;
        t.leader = Some("pg0".into());
        let mut pg1 = member("pg1", Role::Replica, "streaming", Some(64 << 20));
        pg1.tags.insert("zone".into(), "a".into());
        for m in [
            member("pg0", Role::Primary, "running", Some(64 << 20)),
            pg1,
            member("pg2", Role::Replica, "streaming", Some(32 << 20)),
        ] {
            t.members.insert(m.name.clone(), m.into());
        }
        let mut judge = crate::topology::standing::Judge::default();
        judge.judge(&t, &config, 2, tokio::time::Instant::now());
        t.reads = judge.sets().clone();
        let (_, view) = tokio::sync::watch::channel(std::sync::Arc::new(t));
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let shared = crate::shared::Shared::new(config, view, metrics);
        Admin::new(std::sync::Arc::new(shared), Default::default())
    }

    fn members(body: &Value) -> Vec<&str> {
        body["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["member"].as_str())
            .collect()
    }

    #[tokio::test]
    async fn replica_checks_follow_lag_tags_and_pause() {
        let admin = router();
        let (status, body) = replica_within(
            &admin,
            &Filter {
                max_lag: Some(16 << 20),
                tags: vec![],
            },
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(members(&body), ["pg1"]);
        assert_eq!(
            body["refused"]["pg2"],
            "replay 32.0 MB behind the leader (lag=16.0 MB)"
        );
        let (status, body) = replica_within(
            &admin,
            &Filter {
                max_lag: Some(64 << 20),
                tags: vec![],
            },
        );
        assert_eq!(
            (status, members(&body)),
            (StatusCode::OK, vec!["pg1", "pg2"])
        );
        let zone_b = Filter {
            max_lag: None,
            tags: vec![("zone".into(), "b".into())],
        };
        let (status, body) = replica_within(&admin, &zone_b);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "no replica passes the filter");
        // The last lag check's measurement counts over etcd's positions.
        admin.shared.lags.lock().unwrap().insert(
            "pg1".into(),
            crate::topology::LagSample {
                bytes: Some(20 << 20),
                delay: None,
                source: crate::topology::LagSource::PatroniApi,
                paused: None,
            },
        );
        let (status, _) = replica_within(
            &admin,
            &Filter {
                max_lag: Some(16 << 20),
                tags: vec![],
            },
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(can_route(&admin, Port::REPLICAS).0, StatusCode::OK);
        admin.shared.set_paused(Port::REPLICAS, true);
        let (status, body) = replica_within(
            &admin,
            &Filter {
                max_lag: Some(1 << 30),
                tags: vec![],
            },
        );
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("paused"))
        );
        assert_eq!(
            can_route(&admin, Port::REPLICAS).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(can_route(&admin, Port::PRIMARY).0, StatusCode::OK);
    }

    #[test]
    fn replicas_pass_a_filter_on_lag_and_tags() {
        let filter = Filter {
            max_lag: Some(1 << 20),
            tags: vec![("zone".to_owned(), "a".to_owned())],
        };
        let m = replica(&[("zone", "a")]);
        assert_eq!(passes(&m, Some(1 << 20), &filter), Ok(()));
        assert_eq!(
            passes(&m, Some(2 << 20), &filter),
            Err("replay 2.0 MB behind the leader (lag=1.0 MB)".to_owned())
        );
        assert_eq!(passes(&m, None, &filter), Err("lag unknown".to_owned()));
        assert_eq!(
            passes(&replica(&[("zone", "b")]), Some(0), &filter),
            Err("tag zone is \"b\", not \"a\"".to_owned())
        );
        assert_eq!(
            passes(&replica(&[]), Some(0), &filter),
            Err("no tag zone".to_owned())
        );
        // Without a lag bound, unknown lag is no reason.
        assert_eq!(passes(&m, None, &Filter::default()), Ok(()));
    }
}
