//! `pgrouter status` over several routers: their views side by side, whether they agree on
//! each cluster's leader, as text or JSON, once or every few seconds (`--watch`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// How `pgrouter status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Tables, as patronictl prints them.
    Text,
    /// The routers' /status documents: one router's as it is, several in `{"routers": [...],
    /// "agree": ...}`; with `--watch`, one compact document per line.
    Json,
}

/// One router's /status, or why it could not be had.
pub type Answer = (String, Result<Value, String>);

/// Asks every router in `admins` for its /status.
pub fn fetch_all(admins: &[String], token: Option<&str>, ca: Option<&Path>) -> Vec<Answer> {
    admins
        .iter()
        .map(|admin| (admin.clone(), super::fetch(admin, token, ca)))
        .collect()
}

/// Each cluster's status in a router's document (one, or `clusters` when several).
fn clusters(status: &Value) -> Vec<&Value> {
    match status["clusters"].as_array() {
        Some(all) => all.iter().collect(),
        None => vec![status],
    }
}

/// A router's admin URL and the leader it names for a cluster ("none" when it sees none),
/// or why it did not answer.
type Seen<'a> = (&'a str, Result<String, &'a str>);

/// Per cluster, what each router says of its leader.
fn leaders(answers: &[Answer]) -> BTreeMap<String, Vec<Seen<'_>>> {
    let mut by_cluster = BTreeMap::new();
    let mut names = Vec::new();
    for (_, answer) in answers {
        for c in answer.iter().flat_map(clusters) {
            let name = c["cluster"].as_str().unwrap_or("?").to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in names {
        let seen = answers
            .iter()
            .map(|(admin, answer)| {
                let leader = match answer {
                    Err(e) => Err(e.as_str()),
                    Ok(status) => Ok(clusters(status)
                        .into_iter()
                        .find(|c| c["cluster"].as_str() == Some(name.as_str()))
                        .and_then(|c| c["leader"].as_str())
                        .unwrap_or("none")
                        .to_owned()),
                };
                (admin.as_str(), leader)
            })
            .collect();
        by_cluster.insert(name, seen);
    }
    by_cluster
}

/// One line per cluster: whether every router names the same leader (an unreachable router
/// is a disagreement: its view is unknown).
pub fn agreement(answers: &[Answer]) -> Vec<(String, bool, String)> {
    leaders(answers)
        .into_iter()
        .map(|(cluster, seen)| {
            let first = seen.first().and_then(|(_, l)| l.clone().ok());
            let agree =
                first.is_some() && seen.iter().all(|(_, l)| l.as_ref().ok() == first.as_ref());
            let line = if agree {
                format!(
                    "Routers agree: the leader of {cluster} is {} on all {}",
                    first.unwrap_or_default(),
                    seen.len()
                )
            } else {
                let views: Vec<String> = seen
                    .iter()
                    .map(|(admin, l)| match l {
                        Ok(leader) => format!("{admin} says {leader}"),
                        Err(_) => format!("{admin} did not answer"),
                    })
                    .collect();
                format!(
                    "Routers DISAGREE on the leader of {cluster}: {}",
                    views.join(", ")
                )
            };
            (cluster, agree, line)
        })
        .collect()
}

/// The report of one round: text tables, or JSON (`compact` for `--watch`).
pub fn report(answers: &[Answer], format: Format, compact: bool) -> String {
    match format {
        Format::Json => {
            let doc = match answers {
                [(_, Ok(status))] => status.clone(),
                _ => json!({
                    "routers": answers.iter().map(|(admin, a)| match a {
                        Ok(status) => json!({"admin": admin, "status": status}),
                        Err(e) => json!({"admin": admin, "error": e}),
                    }).collect::<Vec<_>>(),
                    "agree": agreement(answers).into_iter()
                        .map(|(cluster, agree, _)| (cluster, Value::Bool(agree)))
                        .collect::<serde_json::Map<_, _>>(),
                }),
            };
            let mut text = match compact {
                true => doc.to_string(),
                false => serde_json::to_string_pretty(&doc).expect("a JSON value"),
            };
            text.push('\n');
            text
        }
        Format::Text if answers.len() == 1 => match &answers[0].1 {
            Ok(status) => super::render_all(status),
            Err(e) => format!("{e}\n"),
        },
        Format::Text => {
            let mut out = side_by_side(answers);
            for (_, _, line) in agreement(answers) {
                out += &line;
                out.push('\n');
            }
            for (admin, answer) in answers {
                out += &format!("\n== {admin} ==\n");
                match answer {
                    Ok(status) => out += &super::render_all(status),
                    Err(e) => out += &format!("{e}\n"),
                }
            }
            out
        }
    }
}

/// One line per router and cluster: leader, where writes go, etcd, replicas serving reads.
fn side_by_side(answers: &[Answer]) -> String {
    let mut rows =
        vec![["Router", "Cluster", "Leader", "Writes to", "etcd", "Reads"].map(str::to_owned)];
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    for (admin, answer) in answers {
        match answer {
            // Why is under the router's own heading below.
            Err(_) => rows.push([
                admin.clone(),
                "-".into(),
                "unreachable".into(),
                "".into(),
                "".into(),
                "".into(),
            ]),
            Ok(status) => {
                for c in clusters(status) {
                    let reads: Vec<String> = c["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|m| m["eligible_for_reads"] == Value::Bool(true))
                        .map(|m| text(&m["name"]))
                        .collect();
                    let or_dash = |v: &Value| if v.is_null() { "-".to_owned() } else { text(v) };
                    rows.push([
                        admin.clone(),
                        or_dash(&c["cluster"]),
                        or_dash(&c["leader"]),
                        or_dash(&c["writable_leader"]),
                        or_dash(&c["dcs"]["connected"]),
                        reads.join(", "),
                    ]);
                }
            }
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

/// Prints the routers' status once, or every `watch` until interrupted (the screen cleared
/// between rounds on a terminal, a timestamp line above each). Once: an error when a router
/// did not answer.
pub fn run(
    admins: &[String],
    token: Option<&str>,
    ca: Option<&Path>,
    format: Format,
    watch: Option<Duration>,
) -> Result<(), String> {
    use std::io::{IsTerminal, Write};
    loop {
        let answers = fetch_all(admins, token, ca);
        let mut out = String::new();
        if watch.is_some() && format == Format::Text {
            if std::io::stdout().is_terminal() {
                out += "\x1b[H\x1b[2J";
            }
            let now = crate::metrics::unix_now() as u64;
            out += &format!(
                "Every {:.0}s, at {now} (Unix seconds):\n",
                watch.unwrap_or_default().as_secs_f64()
            );
        }
        out += &report(&answers, format, watch.is_some());
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush());
        drop(stdout);
        match watch {
            Some(every) => std::thread::sleep(every),
            None => {
                let failed: Vec<&str> = answers
                    .iter()
                    .filter_map(|(_, a)| a.as_ref().err().map(String::as_str))
                    .collect();
                return match failed.is_empty() {
                    true => Ok(()),
                    false => Err(failed.join("; ")),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(cluster: &str, leader: Option<&str>) -> Value {
        json!({
            "cluster": cluster, "leader": leader, "writable_leader": leader,
            "dcs": {"connected": true},
            "members": [
                {"name": "pg0", "eligible_for_reads": false},
                {"name": "pg1", "eligible_for_reads": true},
                {"name": "pg2", "eligible_for_reads": true}
            ]
        })
    }

    fn answers(views: &[(&str, Result<Value, &str>)]) -> Vec<Answer> {
        views
            .iter()
            .map(|(a, v)| (a.to_string(), v.clone().map_err(str::to_owned)))
            .collect()
    }

    #[test]
    fn routers_agree_only_when_every_one_names_the_same_leader() {
        let same = answers(&[
            ("r1", Ok(router("demo", Some("pg0")))),
            ("r2", Ok(router("demo", Some("pg0")))),
        ]);
        assert_eq!(
            agreement(&same),
            [(
                "demo".to_owned(),
                true,
                "Routers agree: the leader of demo is pg0 on all 2".to_owned()
            )]
        );
        let split = answers(&[
            ("r1", Ok(router("demo", Some("pg0")))),
            ("r2", Ok(router("demo", Some("pg1")))),
        ]);
        assert_eq!(
            agreement(&split)[0].2,
            "Routers DISAGREE on the leader of demo: r1 says pg0, r2 says pg1"
        );
        let none = answers(&[
            ("r1", Ok(router("demo", Some("pg0")))),
            ("r2", Ok(router("demo", None))),
        ]);
        assert!(!agreement(&none)[0].1);
        assert!(agreement(&none)[0].2.ends_with("r2 says none"));
        let gone = answers(&[
            ("r1", Ok(router("demo", Some("pg0")))),
            ("r2", Err("cannot reach r2: refused")),
        ]);
        assert_eq!(
            agreement(&gone)[0].2,
            "Routers DISAGREE on the leader of demo: r1 says pg0, r2 did not answer"
        );
        // Several clusters behind each router: judged one by one.
        let two = |second: &str| json!({"cluster": "a", "clusters": [router("a", Some("pg0")), router("b", Some(second))]});
        let mixed = answers(&[("r1", Ok(two("x1"))), ("r2", Ok(two("x2")))]);
        let verdicts: Vec<(String, bool)> = agreement(&mixed)
            .into_iter()
            .map(|(c, a, _)| (c, a))
            .collect();
        assert_eq!(verdicts, [("a".to_owned(), true), ("b".to_owned(), false)]);
    }

    #[test]
    fn several_routers_print_side_by_side_then_each() {
        let views = answers(&[
            ("http://r1:8080", Ok(router("demo", Some("pg0")))),
            ("http://r2:8080", Err("cannot reach r2:8080: refused")),
        ]);
        let text = report(&views, Format::Text, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Router          Cluster  Leader       Writes to  etcd  Reads"
        );
        assert_eq!(
            lines[1],
            "http://r1:8080  demo     pg0          pg0        true  pg1, pg2"
        );
        assert_eq!(lines[2], "http://r2:8080  -        unreachable");
        assert_eq!(lines[3], "Routers DISAGREE on the leader of demo: http://r1:8080 says pg0, http://r2:8080 did not answer");
        assert!(
            text.contains("\n== http://r1:8080 ==\nCluster: demo (leader: pg0"),
            "{text}"
        );
        assert!(
            text.contains("\n== http://r2:8080 ==\ncannot reach r2:8080: refused\n"),
            "{text}"
        );
    }

    #[test]
    fn json_is_the_status_itself_for_one_router_and_a_summary_for_several() {
        let one = answers(&[("r1", Ok(router("demo", Some("pg0"))))]);
        let doc: Value = serde_json::from_str(&report(&one, Format::Json, false)).unwrap();
        assert_eq!(doc, router("demo", Some("pg0")));
        let compact = report(&one, Format::Json, true);
        assert_eq!(compact.lines().count(), 1, "{compact}");
        let two = answers(&[("r1", Ok(router("demo", Some("pg0")))), ("r2", Err("down"))]);
        let doc: Value = serde_json::from_str(&report(&two, Format::Json, false)).unwrap();
        assert_eq!(doc["routers"][0]["admin"], "r1");
        assert_eq!(doc["routers"][0]["status"]["leader"], "pg0");
        assert_eq!(doc["routers"][1], json!({"admin": "r2", "error": "down"}));
        assert_eq!(doc["agree"], json!({"demo": false}));
    }
}
