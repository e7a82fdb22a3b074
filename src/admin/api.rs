//! What the admin endpoint answers besides its checks (`checks.rs`): status, pause and
//! resume, reload. Each returns an HTTP status and a JSON body; `http.rs` does the wire.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::{pause, Admin, Endpoint};
use crate::route::Port;

/// The first cluster's status, with `clusters` holding every cluster's when there are several.
pub fn status_all(endpoint: &Endpoint) -> (StatusCode, Value) {
    let (status, mut body) = self::status(&endpoint.first);
    let others = endpoint.others();
    if !others.is_empty() {
        let mut clusters = vec![body.clone()];
        clusters.extend(others.iter().map(|o| self::status(o).1));
        body["clusters"] = Value::Array(clusters);
    }
    (status, body)
}

/// The topology as this router sees it: members with their lag, each listener's read set
/// (who serves, who does not and why, since when), the clients and the pools.
pub fn status(admin: &Admin) -> (StatusCode, Value) {
    let shared = &admin.shared;
    let topology = shared.topology.borrow().clone();
    let config = shared.config();
    let lags = shared
        .lags
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let metrics = &shared.metrics;
    let now = tokio::time::Instant::now();
    let seconds = |since| now.duration_since(since).as_secs_f64();
    let members: Vec<Value> = topology
        .members
        .values()
        .map(|m| {
            let lag = lags.get(&m.name);
            let leader = topology.holds_leader_key(&m.name);
            let reads = topology.reads.get(Port::REPLICAS.index(), &m.name);
            json!({
                "name": m.name,
                "addr": m.addr,
                "role": if leader { "leader" } else { m.role.as_str() },
                "state": m.state,
                "timeline": m.timeline,
                "tags": m.tags,
                "sync_standby": topology.sync_standbys.contains(&m.name),
                "lag_bytes": match lag {
                    Some(s) => s.bytes,
                    None if leader => Some(0),
                    None => topology.lag(m),
                },
                "replay_delay_seconds": lag.and_then(|s| s.delay).map(|d| d.as_secs_f64()),
                "lag_source": lag.map(|s| s.source.label()),
                "replay_paused": lag.and_then(|s| s.paused),
                "eligible_for_reads": reads.is_some_and(|s| s.serving),
                "why_not": reads.and_then(|s| s.why.as_ref()).map(ToString::to_string),
                "out_for_seconds": reads.filter(|s| !s.serving).map(|s| seconds(s.since)),
            })
        })
        .collect();
    let listeners: Vec<Value> = shared
        .ports()
        .iter()
        .zip(config.client_listeners())
        .map(|(port, (_, addr))| {
            let rules = config.rules(port.index());
            let members: Vec<Value> = topology
                .reads
                .port(port.index())
                .map(|(name, s)| {
                    let tags = topology.members.get(name).map(|m| &m.tags);
                    json!({
                        "name": name,
                        "serving": s.serving,
                        "as_leader": s.as_leader,
                        "since_seconds": seconds(s.since),
                        "why": s.why.as_ref().map(ToString::to_string),
                        "sessions": shared.router.sessions(*port, name),
                        "weight": tags.map(|t| config.weight(name, t)),
                    })
                })
                .collect();
            json!({
                "name": port.label(),
                "addr": addr,
                "role": rules.role.label(),
                "balance": rules.balance.label(),
                "pool_mode": rules.pool_mode.label(),
                "max_replica_lag_bytes": rules.max_lag,
                "max_replica_delay_seconds": rules.max_delay.as_secs_f64(),
                "members": members,
            })
        })
        .collect();
    let clients: serde_json::Map<String, Value> = shared
        .ports()
        .iter()
        .map(|port| {
            let count = |state| {
                metrics
                    .client_connections
                    .with_label_values(&[port.label(), state])
                    .get()
            };
            let v = json!({"held": count("held"), "active": count("active"), "idle": count("idle"), "paused": shared.is_paused(*port)});
            (port.label().to_owned(), v)
        })
        .collect();
    let pools = shared.pools.all();
    let pools = json!({
        "count": pools.len(),
        "servers": pools.iter().map(|p| p.open_count()).sum::<usize>(),
        "idle": pools.iter().map(|p| p.idle_count()).sum::<usize>(),
        "waiting": pools.iter().map(|p| p.waiting()).sum::<usize>(),
    });
    let body = json!({
        "cluster": topology.scope,
        "dcs": {"connected": metrics.dcs_connected.get() == 1, "synced": topology.synced, "problem": admin.shared.dcs_health.problem()},
        "leader": topology.leader,
        "writable_leader": topology.writable_leader().map(|m| m.name.clone()),
        "switchover_pending": topology.failover.as_ref().map(|f| json!({"from": f.from, "to": f.to, "scheduled_at": f.scheduled_at})),
        "members": members,
        "listeners": listeners,
        "listen": {"primary": config.listen.primary, "replicas": config.listen.replicas, "admin": config.listen.admin},
        "clients": clients,
        "pools": pools,
        "sessions": admin.session_count(),
    });
    (StatusCode::OK, body)
}

/// `?port=<listener>`, or every listener when absent.
fn ports(admin: &Admin, query: Option<&str>) -> Result<Vec<Port>, (StatusCode, Value)> {
    let all = admin.shared.ports();
    match query {
        None => Ok(all.to_vec()),
        Some(name) => all
            .iter()
            .find(|p| p.label() == name)
            .map(|p| vec![*p])
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|p| p.label()).collect();
                (
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("unknown port {name:?}: use one of {names:?}")}),
                )
            }),
    }
}

/// Holds new clients and new transactions on the ports, then waits (up to drain_timeout) for
/// the transactions in flight to finish, as pgbouncer's PAUSE does (`pause.rs`). 200 once none
/// is active; 504 if some still are (the ports stay paused either way).
pub async fn pause(admin: &Admin, query: Option<&str>) -> (StatusCode, Value) {
    let ports = match ports(admin, query) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let paused = pause::pause(&admin.shared, &ports).await;
    let body = json!({"paused": paused.labels(), "active": paused.active, "waited_seconds": paused.waited.as_secs_f64()});
    let status = if paused.active == 0 {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    (status, body)
}

pub fn resume(admin: &Admin, query: Option<&str>) -> (StatusCode, Value) {
    let ports = match ports(admin, query) {
        Ok(p) => p,
        Err(e) => return e,
    };
    pause::resume(&admin.shared, &ports);
    let labels: Vec<&str> = ports.iter().map(|p| p.label()).collect();
    (StatusCode::OK, json!({"resumed": labels}))
}

/// Asks the app to reload, as SIGHUP does, and waits for the outcome (the app logs a refusal).
pub async fn reload(admin: &Admin) -> (StatusCode, Value) {
    match admin.shared.request_reload().await {
        Ok(()) => (StatusCode::OK, json!({"reloaded": true})),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json!({"reloaded": false, "error": e}),
        ),
    }
}
