//! `pgrouter status`: fetch a router's /status (over HTTPS with `--cacert` when the admin
//! endpoint has `listen.admin_tls`) and print it as a patronictl-like table.
//!
//! - `several`: several routers side by side, whether they agree, JSON, `--watch`.

pub mod several;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Fetches `<admin>/status` and prints the cluster, members and clients. `admin` is
/// `http://host:port`, `https://host:port` (the certificate checked against `ca`, for the
/// host named) or `host:port`.
pub fn print_status(admin: &str, token: Option<&str>, ca: Option<&Path>) -> Result<(), String> {
    print!("{}", render_all(&fetch(admin, token, ca)?));
    Ok(())
}

/// `<admin>/status`, parsed.
pub fn fetch(admin: &str, token: Option<&str>, ca: Option<&Path>) -> Result<Value, String> {
    let body = get(admin, "/status", token, ca)?;
    serde_json::from_str(&body).map_err(|e| format!("{admin}/status is not JSON: {e}"))
}

/// Every cluster the router serves, one table after another (`clusters` when several).
pub fn render_all(status: &Value) -> String {
    match status["clusters"].as_array() {
        Some(clusters) => clusters.iter().map(render).collect::<Vec<_>>().join("\n"),
        None => render(status),
    }
}

fn get(admin: &str, path: &str, token: Option<&str>, ca: Option<&Path>) -> Result<String, String> {
    let (https, authority) = match admin.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, admin.strip_prefix("http://").unwrap_or(admin)),
    };
    let authority = authority.trim_end_matches('/');
    let stream =
        TcpStream::connect(authority).map_err(|e| format!("cannot reach {authority}: {e}"))?;
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n{auth}\r\n");
    let response = if https {
        let ca = ca.ok_or("https needs --cacert: the CA that signed the admin certificate")?;
        exchange(tls_stream(authority, ca, stream)?, &request)?
    } else {
        exchange(stream, &request)?
    };
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("{authority}{path} answered {status}: {body}"));
    }
    Ok(body.to_owned())
}

/// Sends `request` and reads the answer to the end of the connection.
fn exchange(mut stream: impl Read + Write, request: &str) -> Result<String, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A TLS peer that closed without close_notify after a whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(format!("reading the answer: {e}")),
    }
    String::from_utf8(response).map_err(|e| format!("the answer is not UTF-8: {e}"))
}

/// TLS over `tcp` to `authority` ("host:port"), its certificate checked against `ca` for host.
fn tls_stream(
    authority: &str,
    ca: &Path,
    tcp: TcpStream,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let roots = crate::tls::read_roots("--cacert", ca).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("TLS with {authority}: {e}"))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The table: one line per member, then clients per port.
pub fn render(s: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = format!(
        "Cluster: {} (leader: {}, writes to: {}, etcd connected: {})\n",
        text(&s["cluster"]),
        text(&s["leader"]),
        text(&s["writable_leader"]),
        text(&s["dcs"]["connected"]),
    );
    if let Some(problem) = s["dcs"]["problem"].as_str() {
        out.push_str(&format!("DCS problem: {problem}\n"));
    }
    let header = [
        "Member", "Address", "Role", "State", "TL", "Lag", "Delay", "Reads",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for m in s["members"].as_array().into_iter().flatten() {
        let reads = match (&m["eligible_for_reads"], m["out_for_seconds"].as_f64()) {
            (Value::Bool(true), _) => "yes".to_owned(),
            (_, Some(out)) => format!("no for {out:.0}s: {}", text(&m["why_not"])),
            _ => format!("no: {}", text(&m["why_not"])),
        };
        let mut lag = match m["lag_bytes"].as_u64() {
            Some(b) => crate::topology::bytes_text(b),
            None => "-".to_owned(),
        };
        if m["lag_source"] == "etcd" {
            lag += " (etcd)";
        }
        if m["replay_paused"] == Value::Bool(true) {
            lag += " paused";
        }
        let delay = match m["replay_delay_seconds"].as_f64() {
            Some(d) => format!("{d:.1}s"),
            None => "-".to_owned(),
        };
        rows.push(vec![
            text(&m["name"]),
            text(&m["addr"]),
            text(&m["role"]),
            text(&m["state"]),
            text(&m["timeline"]),
            lag,
            delay,
            reads,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let line = |row: &[String]| {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let rule = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    out += &rule;
    out += &line(&rows[0]);
    out += &rule;
    for row in &rows[1..] {
        out += &line(row);
    }
    out += &rule;
    for l in s["listeners"].as_array().into_iter().flatten() {
        let name = text(&l["name"]);
        let c = &s["clients"][name.as_str()];
        out += &format!(
            "{name:<8} {} ({}, {}): clients held {}, active {}, idle {}{}",
            text(&l["addr"]),
            text(&l["role"]),
            text(&l["balance"]),
            text(&c["held"]),
            text(&c["active"]),
            text(&c["idle"]),
            if c["paused"] == Value::Bool(true) {
                " (paused)"
            } else {
                ""
            },
        );
        let serving: Vec<String> = l["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["serving"] == Value::Bool(true))
            .map(|m| format!("{} ({} sessions)", text(&m["name"]), text(&m["sessions"])))
            .collect();
        if l["role"] != "primary" {
            out += &format!("; serving: {}", serving.join(", "));
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_members_and_clients() {
        let status = json!({
            "cluster": "demo", "leader": "pg0", "writable_leader": "pg0", "dcs": {"connected": true},
            "members": [
                {"name": "pg0", "addr": "127.0.0.1:15410", "role": "leader", "state": "running", "timeline": 1, "lag_bytes": 0, "eligible_for_reads": false, "why_not": "holds the leader key"},
                {"name": "pg1", "addr": "127.0.0.1:15411", "role": "replica", "state": "running", "timeline": 1, "lag_bytes": 0, "replay_delay_seconds": 0.0, "eligible_for_reads": true, "why_not": null},
                {"name": "pg2", "addr": "127.0.0.1:15412", "role": "replica", "state": "running", "timeline": 1, "lag_bytes": 3145728, "replay_delay_seconds": 7.25, "replay_paused": true, "eligible_for_reads": false, "why_not": "replay delay 7.2s (max_replica_delay 2.0s), replay paused", "out_for_seconds": 4.2}
            ],
            "listeners": [
                {"name": "primary", "addr": "127.0.0.1:5000", "role": "primary", "balance": "roundrobin", "members": []},
                {"name": "replicas", "addr": "127.0.0.1:5001", "role": "replica", "balance": "leastconn", "members": [
                    {"name": "pg1", "serving": true, "sessions": 3},
                    {"name": "pg2", "serving": false, "sessions": 0}
                ]}
            ],
            "clients": {"primary": {"held": 0, "active": 2, "idle": 5, "paused": false}, "replicas": {"held": 0, "active": 0, "idle": 1, "paused": true}}
        });
        let text = render(&status);
        assert!(
            text.starts_with("Cluster: demo (leader: pg0, writes to: pg0, etcd connected: true)\n"),
            "{text}"
        );
        assert!(!text.contains("DCS problem"), "{text}");
        let troubled = json!({"cluster": "demo", "dcs": {"connected": false, "problem": "TLS with etcd failed (cluster.etcd_ca, etcd_cert, etcd_key): bad"}});
        assert!(render(&troubled).contains("\nDCS problem: TLS with etcd failed (cluster.etcd_ca"));
        let two = json!({"cluster": "demo", "clusters": [status.clone(), troubled]});
        let both = render_all(&two);
        assert_eq!(both.matches("Cluster: demo (").count(), 2, "{both}");
        assert!(both.contains("DCS problem"), "{both}");
        assert!(text.contains("| pg0    | 127.0.0.1:15410 | leader  | running | 1  | 0 B           | -     | no: holds the leader key "), "{text}");
        assert!(text.contains("| pg1    | 127.0.0.1:15411 | replica | running | 1  | 0 B           | 0.0s  | yes "), "{text}");
        assert!(text.contains("| pg2    | 127.0.0.1:15412 | replica | running | 1  | 3.0 MB paused | 7.2s  | no for 4s: replay delay 7.2s (max_replica_delay 2.0s), replay paused |"), "{text}");
        assert!(
            text.contains(
                "primary  127.0.0.1:5000 (primary, roundrobin): clients held 0, active 2, idle 5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("replicas 127.0.0.1:5001 (replica, leastconn): clients held 0, active 0, idle 1 (paused); serving: pg1 (3 sessions)\n"),
            "{text}"
        );
        assert!(text.contains("idle 1 (paused)"), "{text}");
    }
}
