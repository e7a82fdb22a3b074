//! What the admin endpoint answers: health, routability per port, status, pause and resume,
//! reload. Each returns an HTTP status and a JSON body; `http.rs` does the wire.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::{pause, Admin};
use crate::route::Port;

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
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "cluster": topology.scope,
        "dcs_connected": dcs_connected,
        "leader": topology.leader,
    });
    (status, body)
}

/// 200 when a new client on `port` would be routed now (for keepalived or HAProxy checks in
/// front of several routers), 503 with the reason otherwise.
pub fn can_route(admin: &Admin, port: Port) -> (StatusCode, Value) {
    let topology = admin.shared.topology.borrow().clone();
    let routing = admin.shared.config().routing.clone();
    let verdict = if admin.shared.is_paused(port) {
        Err("paused".to_owned())
    } else {
        admin.shared.router.available(&routing, &topology, port)
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

/// The topology as this router sees it, its listeners and its clients.
pub fn status(admin: &Admin) -> (StatusCode, Value) {
    let topology = admin.shared.topology.borrow().clone();
    let config = admin.shared.config();
    let max_lag = config.routing.max_replica_lag.0;
    let metrics = &admin.shared.metrics;
    let members: Vec<Value> = topology
        .members
        .values()
        .map(|m| {
            let eligibility = topology.replica_eligibility(m, max_lag);
            json!({
                "name": m.name,
                "addr": m.addr,
                "role": if topology.holds_leader_key(&m.name) { "leader" } else { m.role.as_str() },
                "state": m.state,
                "timeline": m.timeline,
                "lag_bytes": topology.lag(m),
                "eligible_for_reads": eligibility.is_ok(),
                "why_not": eligibility.err().map(|why| why.to_string()),
            })
        })
        .collect();
    let clients = |port: Port| {
        let count = |state| {
            metrics
                .client_connections
                .with_label_values(&[port.label(), state])
                .get()
        };
        json!({"held": count("held"), "active": count("active"), "idle": count("idle"), "paused": admin.shared.is_paused(port)})
    };
    let body = json!({
        "cluster": topology.scope,
        "dcs": {"connected": metrics.dcs_connected.get() == 1, "synced": topology.synced},
        "leader": topology.leader,
        "writable_leader": topology.writable_leader().map(|m| m.name.clone()),
        "switchover_pending": topology.failover.as_ref().map(|f| json!({"from": f.from, "to": f.to, "scheduled_at": f.scheduled_at})),
        "members": members,
        "listen": {"primary": config.listen.primary, "replicas": config.listen.replicas, "admin": config.listen.admin},
        "clients": {"primary": clients(Port::Primary), "replicas": clients(Port::Replicas)},
        "sessions": admin.session_count(),
    });
    (StatusCode::OK, body)
}

/// `?port=primary`, `?port=replicas`, or both when absent.
fn ports(query: Option<&str>) -> Result<Vec<Port>, (StatusCode, Value)> {
    match query {
        None => Ok(Port::ALL.to_vec()),
        Some(name) => Port::ALL
            .into_iter()
            .find(|p| p.label() == name)
            .map(|p| vec![p])
            .ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("unknown port {name:?}: use primary or replicas")}),
                )
            }),
    }
}

/// Holds new clients and new transactions on the ports, then waits (up to drain_timeout) for
/// the transactions in flight to finish, as pgbouncer's PAUSE does (`pause.rs`). 200 once none
/// is active; 504 if some still are (the ports stay paused either way).
pub async fn pause(admin: &Admin, query: Option<&str>) -> (StatusCode, Value) {
    let ports = match ports(query) {
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
    let ports = match ports(query) {
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
