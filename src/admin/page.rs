//! The status page at `/`: what `/status` says, as one HTML page readable at a glance (as
//! HAProxy's stats page is): per cluster the leader, the members with role, state, lag and
//! whether they serve reads, the listeners with their clients, and the pools. Built from the
//! `/status` JSON alone, so it shows nothing the API does not.

use std::fmt::Write as _;

use serde_json::Value;

/// The page for `status` (the `/status` body: one cluster, or several under `clusters`);
/// `refresh` seconds > 0 makes the browser reload it.
pub fn render(status: &Value, refresh: u32) -> String {
    let clusters: Vec<&Value> = match status["clusters"].as_array() {
        Some(all) => all.iter().collect(),
        None => vec![status],
    };
    let title = clusters
        .iter()
        .map(|c| text(&c["cluster"]))
        .collect::<Vec<_>>()
        .join(", ");
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n");
    if refresh > 0 {
        let _ = writeln!(page, "<meta http-equiv=\"refresh\" content=\"{refresh}\">");
    }
    let _ = writeln!(page, "<title>pgrouter: {}</title>", escape(&title));
    page.push_str(STYLE);
    page.push_str("</head><body>\n");
    let _ = writeln!(
        page,
        "<h1>pgrouter {}</h1>\n<p class=\"small\">Sessions: {} &middot; <a href=\"/status\">/status</a> (JSON) &middot; <a href=\"/metrics\">/metrics</a> &middot; <a href=\"/?refresh=5\">refresh every 5 s</a></p>",
        env!("CARGO_PKG_VERSION"),
        text(&status["sessions"]),
    );
    for cluster in clusters {
        render_cluster(&mut page, cluster);
    }
    page.push_str("</body></html>\n");
    page
}

const STYLE: &str = "<style>\n\
body{font-family:sans-serif;font-size:13px;margin:1em}\n\
h1{font-size:18px}h2{font-size:15px;margin:1.2em 0 .3em}\n\
table{border-collapse:collapse;margin-bottom:.6em}\n\
th,td{border:1px solid #999;padding:2px 8px;text-align:left}\n\
th{background:#20406a;color:#fff}\n\
tr.up td{background:#c0ffc0}tr.leader td{background:#80e080}\n\
tr.out td{background:#ffd070}tr.down td{background:#ff9090}\n\
.small{color:#555}.bad{color:#b00000;font-weight:bold}\n\
</style>\n";

fn render_cluster(page: &mut String, c: &Value) {
    let dcs = &c["dcs"];
    let leader = match c["leader"].as_str() {
        Some(l) => escape(l),
        None => "<span class=\"bad\">none</span>".to_owned(),
    };
    let _ = writeln!(
        page,
        "<h2>Cluster {}</h2>\n<p>Leader: <b>{leader}</b> &middot; writes to: {} &middot; DCS connected: {}{}</p>",
        escape(&text(&c["cluster"])),
        escape(&text(&c["writable_leader"])),
        yes_no(&dcs["connected"]),
        match dcs["problem"].as_str() {
            Some(p) => format!(" &middot; <span class=\"bad\">{}</span>", escape(p)),
            None => String::new(),
        },
    );
    if let Some(s) = c["switchover_pending"].as_object() {
        let _ = writeln!(
            page,
            "<p class=\"bad\">Switchover pending: from {} to {}</p>",
            escape(&text(&s["from"])),
            escape(&text(&s["to"]))
        );
    }
    members(page, c);
    listeners(page, c);
    let p = &c["pools"];
    let _ = writeln!(
        page,
        "<p>Pools: {} &middot; server connections: {} ({} idle) &middot; clients waiting for one: {}</p>",
        text(&p["count"]),
        text(&p["servers"]),
        text(&p["idle"]),
        text(&p["waiting"]),
    );
}

fn members(page: &mut String, c: &Value) {
    page.push_str("<table><tr><th>Member</th><th>Address</th><th>Role</th><th>State</th><th>TL</th><th>Lag</th><th>Delay</th><th>Reads</th></tr>\n");
    for m in c["members"].as_array().into_iter().flatten() {
        let serving = m["eligible_for_reads"] == Value::Bool(true);
        let class = match (m["role"].as_str(), m["state"].as_str()) {
            (Some("leader"), _) => "leader",
            (_, Some("running" | "streaming")) if serving => "up",
            (_, Some("running" | "streaming")) => "out",
            _ => "down",
        };
        let lag = match m["lag_bytes"].as_u64() {
            Some(b) => crate::topology::bytes_text(b),
            None => "-".to_owned(),
        };
        let delay = match m["replay_delay_seconds"].as_f64() {
            Some(d) => format!("{d:.1} s"),
            None => "-".to_owned(),
        };
        let reads = match (serving, m["out_for_seconds"].as_f64()) {
            (true, _) => "yes".to_owned(),
            (false, Some(out)) => format!("no for {out:.0} s: {}", text(&m["why_not"])),
            (false, None) => format!("no: {}", text(&m["why_not"])),
        };
        let _ = writeln!(
            page,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&text(&m["name"])),
            escape(&text(&m["addr"])),
            escape(&text(&m["role"])),
            escape(&text(&m["state"])),
            escape(&text(&m["timeline"])),
            escape(&lag),
            escape(&delay),
            escape(&reads),
        );
    }
    page.push_str("</table>\n");
}

fn listeners(page: &mut String, c: &Value) {
    page.push_str("<table><tr><th>Listener</th><th>Address</th><th>Serves</th><th>Balance</th><th>Pool mode</th><th>Members serving</th><th>Clients held</th><th>active</th><th>idle</th><th>Paused</th></tr>\n");
    for l in c["listeners"].as_array().into_iter().flatten() {
        let name = text(&l["name"]);
        let serving: Vec<String> = l["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["serving"] == Value::Bool(true))
            .map(|m| format!("{} ({})", text(&m["name"]), text(&m["sessions"])))
            .collect();
        let clients = &c["clients"][&name];
        let paused = clients["paused"] == Value::Bool(true);
        let class = match (paused, serving.is_empty()) {
            (true, _) => "out",
            (false, true) => "down",
            (false, false) => "up",
        };
        let _ = writeln!(
            page,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&name),
            escape(&text(&l["addr"])),
            escape(&text(&l["role"])),
            escape(&text(&l["balance"])),
            escape(&text(&l["pool_mode"])),
            escape(&if serving.is_empty() { "none".to_owned() } else { serving.join(", ") }),
            text(&clients["held"]),
            text(&clients["active"]),
            text(&clients["idle"]),
            if paused { "yes" } else { "no" },
        );
    }
    page.push_str("</table>\n");
}

/// A JSON value as a cell: strings bare, null as "-".
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn yes_no(v: &Value) -> &'static str {
    match v {
        Value::Bool(true) => "yes",
        _ => "<span class=\"bad\">no</span>",
    }
}

/// Text safe inside HTML elements and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status() -> Value {
        json!({
            "cluster": "demo",
            "dcs": {"connected": true, "synced": true, "problem": null},
            "leader": "pg0",
            "writable_leader": "pg0",
            "switchover_pending": null,
            "members": [
                {"name": "pg0", "addr": "127.0.0.1:5432", "role": "leader", "state": "running", "timeline": 3, "lag_bytes": 0, "eligible_for_reads": false, "why_not": "the leader"},
                {"name": "pg1", "addr": "127.0.0.1:5433", "role": "replica", "state": "streaming", "timeline": 3, "lag_bytes": 2048, "replay_delay_seconds": 0.5, "eligible_for_reads": true},
                {"name": "<pg2>", "addr": "127.0.0.1:5434", "role": "replica", "state": "streaming", "timeline": 3, "lag_bytes": 40000000, "eligible_for_reads": false, "why_not": "replay 38.1 MB behind", "out_for_seconds": 12.0},
            ],
            "listeners": [
                {"name": "primary", "addr": "127.0.0.1:5000", "role": "primary", "balance": "roundrobin", "pool_mode": "passthrough", "members": [{"name": "pg0", "serving": true, "sessions": 4}]},
                {"name": "replicas", "addr": "127.0.0.1:5001", "role": "replica", "balance": "roundrobin", "pool_mode": "transaction", "members": [{"name": "pg1", "serving": true, "sessions": 2}, {"name": "<pg2>", "serving": false, "sessions": 0}]},
            ],
            "clients": {"primary": {"held": 0, "active": 1, "idle": 3, "paused": false}, "replicas": {"held": 0, "active": 0, "idle": 2, "paused": true}},
            "pools": {"count": 2, "servers": 5, "idle": 3, "waiting": 0},
            "sessions": 6,
        })
    }

    #[test]
    fn the_page_shows_leader_members_listeners_and_pools() {
        let page = render(&status(), 0);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<title>pgrouter: demo</title>"));
        assert!(page.contains("Leader: <b>pg0</b>"));
        assert!(page.contains("<tr class=\"leader\"><td>pg0</td>"));
        assert!(page.contains("<tr class=\"up\"><td>pg1</td>"));
        assert!(page.contains("<td>2.0 kB</td><td>0.5 s</td><td>yes</td>"));
        // Names from the cluster are escaped.
        assert!(page.contains("<tr class=\"out\"><td>&lt;pg2&gt;</td>"));
        assert!(page.contains("no for 12 s: replay 38.1 MB behind"));
        assert!(page.contains("<td>pg0 (4)</td><td>0</td><td>1</td><td>3</td><td>no</td>"));
        assert!(page.contains("<tr class=\"out\"><td>replicas</td>"));
        assert!(page.contains("Pools: 2 &middot; server connections: 5 (3 idle)"));
        assert!(!page.contains("http-equiv=\"refresh\""));
        assert!(render(&status(), 5).contains("content=\"5\""));
    }

    #[test]
    fn no_leader_and_several_clusters() {
        let mut first = status();
        first["leader"] = Value::Null;
        first["dcs"]["problem"] = json!("etcd <unreachable>");
        let mut second = status();
        second["cluster"] = json!("billing");
        let all = json!({"clusters": [first, second], "sessions": 1});
        let page = render(&all, 0);
        assert!(page.contains("<title>pgrouter: demo, billing</title>"));
        assert!(page.contains("Leader: <b><span class=\"bad\">none</span></b>"));
        assert!(page.contains("etcd &lt;unreachable&gt;"));
        assert!(page.contains("<h2>Cluster billing</h2>"));
    }
}
