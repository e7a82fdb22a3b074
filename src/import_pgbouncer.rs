//! `pgrouter import-pgbouncer pgbouncer.ini [userlist.txt]`: a pgrouter config from a
//! pgbouncer one, so a migration starts from the user's own settings. Each pgbouncer setting
//! is carried over to the pgrouter key of the same meaning, or named with the reason it is
//! not; the result is validated as `check-config` would before it is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::Config;

/// What the import made: the TOML, and the settings it did not carry over, each with why.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub not_carried: Vec<String>,
}

/// pgbouncer.ini's sections: name -> (key -> value), keys lower case, in file order.
type Ini = BTreeMap<String, Vec<(String, String)>>;

fn parse_ini(text: &str) -> Result<Ini, String> {
    let mut ini = Ini::new();
    let mut section = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_ascii_lowercase();
            ini.entry(section.clone()).or_default();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: not `key = value`: {raw:?}", n + 1));
        };
        if section.is_empty() {
            return Err(format!("line {}: a setting before any [section]", n + 1));
        }
        let key = key.trim();
        let key = if section == "pgbouncer" {
            key.to_ascii_lowercase()
        } else {
            key.to_owned()
        };
        ini.entry(section.clone())
            .or_default()
            .push((key, value.trim().to_owned()));
    }
    Ok(ini)
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(s: &str) -> String {
    let items: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(quoted)
        .collect();
    format!("[{}]", items.join(", "))
}

/// pgbouncer's seconds (a number, maybe with a unit) as pgrouter's duration text.
fn seconds(v: &str) -> Option<String> {
    let v = v.trim();
    if let Ok(n) = v.parse::<f64>() {
        return Some(format!("\"{n}s\""));
    }
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic())?);
    let n: f64 = num.trim().parse().ok()?;
    let unit = match unit.trim() {
        "ms" => "ms",
        "s" => "s",
        "min" => "m",
        "h" => "h",
        _ => return None,
    };
    Some(format!("\"{n}{unit}\""))
}

/// Imports `ini` (pgbouncer.ini's text) for the Patroni cluster `scope` watched through
/// `etcd`; `userlist` is the auth_file to name when the ini's is not to be used.
pub fn import(
    ini: &str,
    userlist: Option<&str>,
    scope: &str,
    etcd: &[String],
) -> Result<Imported, String> {
    let ini = parse_ini(ini)?;
    if let Some(path) = userlist {
        crate::servers::credentials::Credentials::read_file(std::path::Path::new(path))?;
    }
    let mut not_carried = Vec::new();
    let mut skip = |key: &str, why: &str| not_carried.push(format!("{key}: {why}"));
    let settings: BTreeMap<String, String> = ini
        .get("pgbouncer")
        .ok_or("no [pgbouncer] section")?
        .iter()
        .cloned()
        .collect();
    let get = |k: &str| settings.get(k).map(String::as_str);
    let mut listen = Vec::new();
    let mut pool = Vec::new();
    let mut auth = Vec::new();
    let mut tls = Vec::new();
    let mut upstream = Vec::new();
    let mut tcp = Vec::new();
    let addr = match get("listen_addr").unwrap_or("127.0.0.1") {
        "*" | "" => "0.0.0.0",
        a => a.split(',').next().unwrap_or(a).trim(),
    };
    let port: u16 = get("listen_port")
        .unwrap_or("6432")
        .parse()
        .map_err(|_| "listen_port: not a port number")?;
    listen.push(format!(
        "primary = \"{addr}:{port}\"   # pgbouncer's listen_addr:listen_port: writes, the leader"
    ));
    listen.push(format!(
        "replicas = \"{addr}:{}\"   # new: reads over the replicas",
        port.checked_add(1)
            .ok_or("listen_port: no room for the replicas port after it")?
    ));
    let admin_port = port.checked_add(2).unwrap_or(8080);
    listen.push(format!(
        "admin = \"127.0.0.1:{admin_port}\"   # new: /metrics, /health, /status"
    ));
    for (key, value) in &settings {
        let v = value.as_str();
        match key.as_str() {
            "listen_addr" | "listen_port" => {}
            "pool_mode" => match v {
                "session" | "transaction" => {
                    listen.push(format!("primary_pool_mode = \"{v}\""));
                    listen.push(format!("replicas_pool_mode = \"{v}\""));
                }
                "statement" => {
                    listen.push("primary_pool_mode = \"transaction\"".to_owned());
                    listen.push("replicas_pool_mode = \"transaction\"".to_owned());
                    skip(key, "statement pooling is not supported: transaction pooling instead (multi-statement transactions now work)");
                }
                _ => skip(key, "unknown pool mode"),
            },
            "max_client_conn" => listen.push(format!("max_client_conn = {v}")),
            "default_pool_size" => pool.push(format!("pool_size = {v}")),
            "min_pool_size" | "reserve_pool_size" | "max_db_connections"
            | "max_user_connections" => pool.push(format!("{key} = {v}")),
            "reserve_pool_timeout" => match seconds(v) {
                Some(d) => pool.push(format!("{key} = {d}")),
                None => skip(key, "not a duration"),
            },
            "query_wait_timeout" | "server_idle_timeout" | "server_lifetime"
            | "server_check_delay" | "stats_period" => match seconds(v) {
                Some(d) if !d.starts_with("\"0s") => pool.push(format!("{key} = {d}")),
                Some(_) => skip(key, "0 (no limit) has no pgrouter equivalent: pgrouter's default stands"),
                None => skip(key, "not a duration"),
            },
            "client_idle_timeout" | "idle_transaction_timeout" => match seconds(v) {
                Some(d) => pool.push(format!("{key} = {d}")),
                None => skip(key, "not a duration"),
            },
            "log_connections" | "log_disconnections" | "application_name_add_host" => {
                let on = matches!(v, "1" | "on" | "true" | "yes");
                pool.push(format!("{key} = {on}"));
            }
            "server_reset_query" => pool.push(format!("server_reset_query = {}", quoted(v))),
            "ignore_startup_parameters" | "track_extra_parameters" => {
                pool.push(format!("{key} = {}", list(v)))
            }
            "auth_file" => {
                let file = userlist.unwrap_or(v);
                auth.push(format!("auth_file = {}", quoted(file)));
            }
            "auth_user" | "auth_query" => auth.push(format!("{key} = {}", quoted(v))),
            "admin_users" | "stats_users" => auth.push(format!("{key} = {}", list(v))),
            "auth_type" => match v {
                "scram-sha-256" | "md5" | "plain" | "trust" => {
                    if v == "trust" {
                        skip(key, "trust is not offered: pgrouter authenticates pooled clients with the auth_file's secrets");
                    }
                }
                other => skip(key, &format!("{other} is not offered: pgrouter authenticates with the auth_file's secrets (SCRAM, md5 or plain)")),
            },
            "client_tls_sslmode" => match v {
                "disable" => tls.push("mode = \"disable\"".to_owned()),
                "allow" | "prefer" => tls.push("mode = \"allow\"".to_owned()),
                "require" | "verify-ca" | "verify-full" => tls.push("mode = \"require\"".to_owned()),
                _ => skip(key, "unknown sslmode"),
            },
            "client_tls_cert_file" => tls.push(format!("cert = {}", quoted(v))),
            "client_tls_key_file" => tls.push(format!("key = {}", quoted(v))),
            "client_tls_ca_file" => tls.push(format!("client_ca = {}", quoted(v))),
            "server_tls_sslmode" => match v {
                "disable" | "prefer" | "require" | "verify-ca" | "verify-full" => {
                    upstream.push(format!("sslmode = \"{v}\""))
                }
                "allow" => upstream.push("sslmode = \"prefer\"".to_owned()),
                _ => skip(key, "unknown sslmode"),
            },
            "server_tls_ca_file" => upstream.push(format!("root_ca = {}", quoted(v))),
            "tcp_keepalive" => tcp.push(format!("keepalive = {}", v == "1" || v == "on" || v == "true")),
            "tcp_keepidle" | "tcp_keepintvl" => match seconds(v) {
                Some(d) if !d.starts_with("\"0s") => {
                    let k = if key == "tcp_keepidle" { "keepalive_idle" } else { "keepalive_interval" };
                    tcp.push(format!("{k} = {d}"));
                }
                _ => skip(key, "0 keeps the system's setting, as pgrouter's default does"),
            },
            "tcp_keepcnt" if v != "0" => tcp.push(format!("keepalive_count = {v}")),
            "tcp_user_timeout" => tcp.push(format!("user_timeout = \"{v}ms\"")),
            "logfile" | "syslog" | "syslog_ident" | "syslog_facility" => {
                skip(key, "pgrouter logs to stderr (journald under systemd)")
            }
            "pidfile" | "user" => skip(key, "pgrouter runs in the foreground under systemd as its unit's user"),
            "unix_socket_dir" | "unix_socket_mode" | "unix_socket_group" => {
                skip(key, "pgrouter listens on TCP only")
            }
            "server_reset_query_always" => skip(key, "in transaction mode pgrouter tracks what each transaction leaves on its connection instead"),
            _ => skip(key, "no pgrouter equivalent yet"),
        }
    }
    let mut entries_toml = String::new();
    for (section, entries) in &ini {
        let kind = match section.as_str() {
            "pgbouncer" => continue,
            "databases" => "databases",
            "users" => "users",
            other => {
                for (name, _) in entries {
                    skip(
                        &format!("[{other}] {name}"),
                        "not a pgbouncer section pgrouter knows",
                    );
                }
                continue;
            }
        };
        for (name, value) in entries {
            let at = format!("[{kind}] {name}");
            if name == "*" {
                skip(&at, "pgrouter serves every database by the name the client gives; the members come from Patroni's keys in etcd");
                continue;
            }
            let lines = entry(kind, name, value, &mut |k, why| {
                skip(&format!("{at} {k}"), why)
            })
            .map_err(|e| format!("{at}: {e}"))?;
            if !lines.is_empty() {
                let _ = writeln!(entries_toml, "\n[{kind}.{}]", quoted(name));
                for l in lines {
                    let _ = writeln!(entries_toml, "{l}");
                }
            }
        }
    }
    let etcd: Vec<String> = etcd.iter().map(|e| quoted(e)).collect();
    let mut toml = String::new();
    let _ = writeln!(
        toml,
        "# Imported from pgbouncer.ini by `pgrouter import-pgbouncer`."
    );
    if !not_carried.is_empty() {
        let _ = writeln!(toml, "# Not carried over:");
        for n in &not_carried {
            let _ = writeln!(toml, "#   {n}");
        }
    }
    let _ = writeln!(
        toml,
        "\n[cluster]\nscope = {}\netcd = [{}]",
        quoted(scope),
        etcd.join(", ")
    );
    for (name, lines) in [
        ("listen", &listen),
        ("pool", &pool),
        ("auth", &auth),
        ("tls", &tls),
        ("upstream_tls", &upstream),
        ("tcp", &tcp),
    ] {
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(toml, "\n[{name}]");
        for l in lines {
            let _ = writeln!(toml, "{l}");
        }
    }
    toml.push_str(&entries_toml);
    Config::from_toml(&toml)
        .map_err(|e| format!("the imported config does not check: {e}\n{toml}"))?;
    Ok(Imported { toml, not_carried })
}

/// The settings of a `[databases]` or `[users]` line (`key=value ...`, values maybe quoted)
/// as lines of its pgrouter entry; what has no place there goes to `skip`.
fn entry(
    kind: &str,
    name: &str,
    line: &str,
    skip: &mut dyn FnMut(&str, &str),
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for (k, v) in conninfo(line)? {
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{k}={v}: not a whole number"))
        };
        match (kind, k.as_str()) {
            ("databases", "host") => {
                skip("host, port", "the members come from Patroni's keys in etcd")
            }
            ("databases", "port") => {}
            ("databases", "dbname") if v != name => lines.push(format!("dbname = {}", quoted(&v))),
            ("databases", "dbname") => {}
            ("databases", "user") => lines.push(format!("user = {}", quoted(&v))),
            ("databases", "password") => skip(
                &k,
                "the forced user logs in with its secret from auth.auth_file: put it there",
            ),
            ("databases", "reserve_pool") => lines.push(format!("reserve_pool = {}", number(&v)?)),
            ("databases", "max_db_connections")
            | ("users", "max_user_connections")
            | (_, "pool_size") => lines.push(format!("{k} = {}", number(&v)?)),
            (_, "pool_mode") => match v.as_str() {
                "session" | "transaction" => lines.push(format!("pool_mode = \"{v}\"")),
                "statement" => {
                    lines.push("pool_mode = \"transaction\"".to_owned());
                    skip(
                        &k,
                        "statement pooling is not supported: transaction pooling instead",
                    );
                }
                _ => skip(&k, "unknown pool mode"),
            },
            _ => skip(&k, "not carried: pgrouter has no per-entry equivalent yet"),
        }
    }
    Ok(lines)
}

/// `key=value key='a value' ...` as pgbouncer reads a `[databases]` line.
fn conninfo(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("{rest:?} is not key=value"))?;
        let after = after.trim_start();
        let (value, tail) = match after.strip_prefix('\'') {
            Some(quoted) => {
                let end = quoted
                    .find('\'')
                    .ok_or_else(|| format!("{key}: unterminated quote"))?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_at(after.find(char::is_whitespace).unwrap_or(after.len())),
        };
        out.push((key.trim().to_ascii_lowercase(), value.to_owned()));
        rest = tail.trim_start();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "\
[databases]
app = host=10.0.0.5 port=5432 dbname=app
legacy = host=10.0.0.5 dbname=app_v1 user=svc_legacy password=x pool_size=5 pool_mode=session max_db_connections=8 reserve_pool=2 connect_query='select 1'
* = host=10.0.0.5

[users]
reporting = pool_mode=session max_user_connections=4

[pgbouncer]
listen_addr = *
listen_port = 6432
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
admin_users = postgres, ops
stats_users = exporter
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 40
min_pool_size = 5
server_idle_timeout = 300
server_lifetime = 3600
query_wait_timeout = 0
ignore_startup_parameters = extra_float_digits, options
logfile = /var/log/postgresql/pgbouncer.log
pidfile = /var/run/postgresql/pgbouncer.pid
client_tls_sslmode = require
client_tls_cert_file = /etc/ssl/pgb.crt
client_tls_key_file = /etc/ssl/pgb.key
server_reset_query = DISCARD ALL
tcp_keepalive = 1
tcp_keepidle = 30
";

    #[test]
    fn a_realistic_ini_round_trips_through_check_config() {
        let imported = import(INI, None, "main", &["10.0.0.7:2379".to_owned()]).unwrap();
        let c = Config::from_toml(&imported.toml).unwrap();
        assert_eq!(c.listen.primary.to_string(), "0.0.0.0:6432");
        assert_eq!(c.listen.replicas.to_string(), "0.0.0.0:6433");
        assert_eq!(c.listen.primary_pool_mode.label(), "transaction");
        assert_eq!(c.listen.max_client_conn, 2000);
        assert_eq!((c.pool.pool_size, c.pool.min_pool_size), (40, 5));
        assert_eq!(c.pool.server_idle_timeout.0.as_secs(), 300);
        assert_eq!(
            c.pool.ignore_startup_parameters,
            ["extra_float_digits", "options"]
        );
        assert_eq!(c.auth.admin_users, ["postgres", "ops"]);
        assert_eq!(c.auth.stats_users, ["exporter"]);
        assert_eq!(c.tcp.keepalive_idle.0.as_secs(), 30);
        let notes = imported.not_carried.join("\n");
        assert_eq!(c.pool.server_reset_query, "DISCARD ALL");
        let legacy = &c.databases["legacy"];
        assert_eq!(
            (legacy.dbname.as_deref(), legacy.user.as_deref()),
            (Some("app_v1"), Some("svc_legacy"))
        );
        assert_eq!(
            (
                legacy.pool_size,
                legacy.max_db_connections,
                legacy.reserve_pool
            ),
            (Some(5), Some(8), Some(2))
        );
        assert_eq!(legacy.pool_mode, Some(crate::config::PoolMode::Session));
        assert!(!c.databases.contains_key("app"), "{}", imported.toml);
        assert_eq!(c.users["reporting"].max_user_connections, Some(4));
        for named in [
            "logfile",
            "pidfile",
            "query_wait_timeout",
            "[databases] app host, port",
            "[databases] legacy password",
            "[databases] legacy connect_query",
            "[databases] *",
        ] {
            assert!(notes.contains(named), "{named} not named:\n{notes}");
        }
        assert!(
            imported
                .toml
                .contains("#   logfile: pgrouter logs to stderr"),
            "{}",
            imported.toml
        );
    }

    #[test]
    fn what_cannot_be_read_is_refused_with_the_line() {
        assert!(
            import("[pgbouncer]\nnot a setting\n", None, "s", &["h:1".into()])
                .unwrap_err()
                .starts_with("line 2")
        );
        assert_eq!(
            import("[databases]\n", None, "s", &["h:1".into()]).unwrap_err(),
            "no [pgbouncer] section"
        );
        let e = import(
            "[pgbouncer]\nlisten_port = huge\n",
            None,
            "s",
            &["h:1".into()],
        )
        .unwrap_err();
        assert!(e.starts_with("listen_port"), "{e}");
    }
}
