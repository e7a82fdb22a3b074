//! Deployment artifacts, checked without a lab or a container engine:
//! - every example config (config/ha-vip, config/app-hosts, config/webapp-pooling, docker/*.toml)
//!   passes `pgrouter check-config`, and the example auth files parse as pgrouter reads them;
//! - docker/compose.yml passes `docker-compose config` (Debian package `docker-compose`; the test
//!   fails, not skips, when it is missing), its bind mounts exist and its secrets agree;
//! - docker/prometheus.yml passes `promtool check config`;
//! - the Grafana dashboard queries only metrics pgrouter exports (names read from
//!   src/metrics.rs), its queries parse as PromQL (`promtool check rules`), and it has the
//!   panels an operator looks at first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};

use pgrouter::config::Config;
use pgrouter::testing::auth::Secret;
use serde_json::Value;

const METRICS_RS: &str = include_str!("../src/metrics/mod.rs");
const ROUTER_METRICS_RS: &str = include_str!("../src/metrics/router.rs");
const PROCESS_METRICS_RS: &str = include_str!("../src/metrics/process.rs");
const DASHBOARD: &str = include_str!("../docker/grafana/dashboards/pgrouter.json");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn output_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgrouter-deploy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `*.toml` files directly in `dir` (relative to the repository), sorted.
fn tomls_in(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

const EXAMPLE_DIRS: [&str; 4] = [
    "config/ha-vip",
    "config/app-hosts",
    "config/webapp-pooling",
    "docker",
];

#[test]
fn every_example_config_passes_check_config() {
    let mut checked = 0;
    for dir in EXAMPLE_DIRS {
        let files = tomls_in(dir);
        assert!(!files.is_empty(), "no *.toml example in {dir}");
        for file in files {
            // The files they name are the production host's.
            let out = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
                .args(["check-config", "--no-files", "--config"])
                .arg(&file)
                .output()
                .unwrap();
            let text = output_text(&out);
            assert!(
                out.status.success() && text.contains(": ok"),
                "{}: {text}",
                file.display()
            );
            checked += 1;
        }
    }
    // The compose file mounts these; they must be among the files checked above.
    for mounted in ["pgrouter1.toml", "pgrouter2.toml"] {
        assert!(
            read("docker/compose.yml")
                .contains(&format!("./{mounted}:/etc/pgrouter/pgrouter.toml")),
            "compose.yml does not mount docker/{mounted}"
        );
    }
    assert!(checked >= 6, "only {checked} configs checked");
}

/// check-config reads the files a config names (auth_file, certificates) and names the key of
/// one it cannot read; `--no-files` checks the values only, for a config checked away from its
/// host.
#[test]
fn check_config_reads_the_files_a_config_names_unless_told_not_to() {
    let dir = scratch_dir("names");
    let path = dir.join("pooled.toml");
    std::fs::write(
        &path,
        "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:2379\"]\n\
         [listen]\nprimary_pool_mode = \"transaction\"\n\
         [auth]\nauth_file = \"/nonexistent/userlist.txt\"\n\
         [tls]\nmode = \"require\"\ncert = \"/nonexistent/server.crt\"\nkey = \"/nonexistent/server.key\"\n",
    )
    .unwrap();
    let check = |flags: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pgrouter"))
            .arg("check-config")
            .args(flags)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check(&[]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("auth.auth_file: cannot read /nonexistent/userlist.txt"),
        "{text}"
    );
    let out = check(&["--no-files"]);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// The example auth files parse the way the router reads them, each secret of the kind its
/// comment says, and the example passwords in the comments match the SCRAM secrets.
#[test]
fn example_auth_files_parse() {
    let users =
        pgrouter::testing::auth::userlist::parse(&read("config/webapp-pooling/userlist.txt"))
            .unwrap_or_else(|e| panic!("config/webapp-pooling/userlist.txt: {e}"));
    for (user, password) in [
        ("app", "example-app-password"),
        ("app_ro", "example-ro-password"),
    ] {
        match &users[user] {
            Secret::Scram(s) => {
                let made = pgrouter::testing::auth::ScramSecret::from_password(
                    password,
                    &s.salt,
                    s.iterations,
                );
                assert!(made == *s, "{user}: the secret is not that of {password:?}");
            }
            other => panic!("{user}: expected a SCRAM secret, got {other:?}"),
        }
    }
    match &users["pgrouter_auth"] {
        Secret::Md5(hash) => assert_eq!(
            *hash,
            pgrouter::testing::auth::md5::md5_secret("pgrouter_auth", "example-auth-password"),
            "pgrouter_auth's md5 secret is not that of example-auth-password"
        ),
        other => panic!("pgrouter_auth: expected an md5 secret, got {other:?}"),
    }
    let pooled = Config::load(&root().join("config/webapp-pooling/pgrouter.toml")).unwrap();
    for admin in &pooled.auth.admin_users {
        assert!(
            users.contains_key(admin),
            "admin user {admin} not in userlist.txt"
        );
    }

    let users = pgrouter::testing::auth::userlist::parse(&read("docker/userlist.txt"))
        .unwrap_or_else(|e| panic!("docker/userlist.txt: {e}"));
    let compose_router = Config::load(&root().join("docker/pgrouter2.toml")).unwrap();
    for admin in &compose_router.auth.admin_users {
        assert!(
            users.contains_key(admin),
            "admin user {admin} not in docker/userlist.txt"
        );
    }
    for user in ["app", "app_ro", "postgres"] {
        assert!(
            users.contains_key(user),
            "{user} not in docker/userlist.txt"
        );
    }
}

/// `docker-compose` (Debian's package), else `docker compose` (the CLI plugin).
fn compose_command() -> Command {
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok()
    {
        return Command::new("docker-compose");
    }
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|o| o.status.success()) {
        let mut c = Command::new("docker");
        c.arg("compose");
        return c;
    }
    panic!(
        "neither docker-compose nor `docker compose` is installed: \
         apt-get install docker-compose (scripts/setup.sh installs it)"
    );
}

#[test]
fn the_compose_file_is_valid() {
    let compose = root().join("docker/compose.yml");
    let out = compose_command()
        .arg("-f")
        .arg(&compose)
        .args(["config", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        output_text(&out)
    );

    let text = read("docker/compose.yml");
    // Bind-mounted files and directories exist (compose itself checks them only at `up`).
    let mut mounts = 0;
    for line in text.lines().map(str::trim) {
        if let Some(source) = line.strip_prefix("- ./") {
            let source = source.split(':').next().unwrap();
            assert!(
                root().join("docker").join(source).exists(),
                "compose.yml mounts ./{source}, which is missing from docker/"
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 5, "only {mounts} bind mounts found");
    for dockerfile in ["docker/Dockerfile", "docker/patroni.Dockerfile"] {
        assert!(root().join(dockerfile).exists(), "{dockerfile} missing");
    }
    for service in [
        "etcd1:",
        "etcd2:",
        "etcd3:",
        "pg0:",
        "pg1:",
        "pg2:",
        "pgrouter1:",
        "pgrouter2:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            text.contains(&format!("\n  {service}\n")),
            "compose.yml has no service {service}"
        );
    }

    // One admin token everywhere: the routers' configs, their health checks, Prometheus.
    let prometheus = read("docker/prometheus.yml");
    for config in ["docker/pgrouter1.toml", "docker/pgrouter2.toml"] {
        let config = Config::load(&root().join(config)).unwrap();
        let token = config.listen.admin_token.expect("an admin token");
        assert!(
            prometheus.contains(&format!("credentials: {token}")),
            "prometheus.yml does not send {token}"
        );
        assert!(
            text.contains(&format!("PGROUTER_ADMIN_TOKEN: {token}")),
            "compose.yml health checks do not send {token}"
        );
        assert_eq!(config.cluster.scope, "demo");
    }
    for target in ["pgrouter1:8080", "pgrouter2:8080"] {
        assert!(
            prometheus.contains(target),
            "prometheus.yml does not scrape {target}"
        );
    }
    let patroni = read("docker/patroni.yml");
    assert!(patroni.contains("scope: demo") && patroni.contains("namespace: /service"));
    assert!(patroni.contains("hosts: etcd1:2379,etcd2:2379,etcd3:2379"));
}

#[test]
fn the_images_run_unprivileged_with_a_health_check() {
    let dockerfile = read("docker/Dockerfile");
    for needed in [
        "FROM rust:1-bookworm AS build",
        "protobuf-compiler",
        "FROM debian:bookworm-slim",
        "USER pgrouter",
        "EXPOSE 5000 5001 8080",
        "HEALTHCHECK",
        "/health",
        "/etc/pgrouter/pgrouter.toml",
    ] {
        assert!(
            dockerfile.contains(needed),
            "docker/Dockerfile lacks {needed:?}"
        );
    }
    let node = read("docker/patroni.Dockerfile");
    for needed in ["postgresql-15", "patroni", "etcd-server", "USER postgres"] {
        assert!(
            node.contains(needed),
            "docker/patroni.Dockerfile lacks {needed:?}"
        );
    }
}

#[test]
fn prometheus_config_is_valid() {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(root().join("docker/prometheus.yml"))
        .output()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", output_text(&out));
}

/// The keepalived examples check the local router's /primary on the admin port the config uses,
/// over HTTPS (tests/cluster/balancers.rs runs the command against a router).
#[test]
fn keepalived_tracks_the_routers_primary_endpoint() {
    let config = Config::load(&root().join("config/ha-vip/pgrouter.toml")).unwrap();
    assert!(
        config.listen.admin_tls,
        "the ha-vip admin endpoint is off loopback: HTTPS"
    );
    let url = format!("https://localhost:{}/primary", config.listen.admin.port());
    for file in [
        "config/ha-vip/keepalived-db1.conf",
        "config/ha-vip/keepalived-db2.conf",
    ] {
        let text = read(file);
        assert!(
            text.contains("/usr/bin/curl -fsS") && text.contains(&url),
            "{file} does not curl {url}"
        );
        assert!(text.contains("track_script"), "{file} has no track_script");
    }
}

// ---- Metric names pgrouter exports, read from src/metrics/ ----

struct Exported {
    /// Every metric name, `pgrouter_` included.
    names: BTreeSet<String>,
    /// The histograms among them (which also export `_bucket`, `_sum` and `_count`).
    histograms: BTreeSet<String>,
}

/// The string literal right after each `call` in `text` (skipping whitespace), if the call's
/// first argument is one.
fn literals_after<'a>(text: &'a str, call: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices(call) {
        let rest = text[at + call.len()..].trim_start();
        if let Some(rest) = rest.strip_prefix('"') {
            if let Some(end) = rest.find('"') {
                found.push(&rest[..end]);
            }
        }
    }
    found
}

fn exported_metrics() -> Exported {
    let mut names = BTreeSet::new();
    // gauges("x", ...), counters("x", ...) and opts("x", ...) prefix their name with pgrouter_.
    for call in ["gauges(", "counters(", "opts("] {
        for name in literals_after(METRICS_RS, call) {
            names.insert(format!("pgrouter_{name}"));
        }
    }
    let mut histograms = BTreeSet::new();
    // histogram("x", ...) too.
    for name in literals_after(METRICS_RS, "histogram(") {
        let name = format!("pgrouter_{name}");
        names.insert(name.clone());
        histograms.insert(name);
    }
    // The process-wide series: gauge("x", ...) prefixed, Opts::new("x", ...) and int("x", ...)
    // named in full.
    for name in literals_after(ROUTER_METRICS_RS, "gauge(") {
        names.insert(format!("pgrouter_{name}"));
    }
    for text in [ROUTER_METRICS_RS, PROCESS_METRICS_RS] {
        for call in ["Opts::new(", " int("] {
            names.extend(literals_after(text, call).into_iter().map(str::to_owned));
        }
    }
    // The extraction follows src/metrics/'s patterns: if they change, fail here, loudly.
    for known in [
        "pgrouter_client_connections",
        "pgrouter_server_connections",
        "pgrouter_transactions_total",
        "pgrouter_client_errors_total",
        "pgrouter_leader_changes_total",
        "pgrouter_dcs_connected",
        "pgrouter_member_leader",
        "pgrouter_build_info",
        "pgrouter_config_last_reload_successful",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(names.contains(known), "{known} not found in src/metrics/");
    }
    for known in [
        "pgrouter_hold_seconds",
        "pgrouter_route_switch_seconds",
        "pgrouter_transaction_seconds",
    ] {
        assert!(histograms.contains(known), "histogram {known} not found");
    }
    // And every metric the registry shows at run time is among them.
    let registry = prometheus::Registry::new();
    let _router = pgrouter::testing::RouterMetrics::register(&registry, 100);
    let cluster = pgrouter::testing::Metrics::in_registry(&registry, Some("main"));
    for line in cluster.encode().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(
                names.contains(name),
                "{name} is exported but was not found in the source"
            );
        }
    }
    Exported { names, histograms }
}

impl Exported {
    /// The exported metric a queried series name belongs to.
    fn base_of(&self, series: &str) -> Option<String> {
        if self.names.contains(series) {
            return Some(series.to_owned());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = series.strip_suffix(suffix)?;
            self.histograms.contains(base).then(|| base.to_owned())
        })
    }
}

// ---- A small PromQL scanner: the metric names an expression selects ----

/// Aggregations, functions used without parentheses right after them, and keywords: not metrics.
const PROMQL_WORDS: [&str; 25] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];
/// Followed by a parenthesised list of labels, not of expressions.
const LABEL_LIST_WORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Metric names in a PromQL expression: identifiers that are neither functions (followed by
/// `(`), keywords, label names (inside `{}` or a `by (...)` list), strings, numbers or ranges.
fn promql_metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_until = |from: usize, close: char| -> usize {
        let mut j = from;
        let mut quote: Option<char> = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(_), '\\') => j += 1,
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(chars[j]),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_until(i + 1, '}'),
            '[' => i = skip_until(i + 1, ']'),
            '"' | '\'' | '`' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != c {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                i = j + 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '.' || chars[i] == '_')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_WORDS.contains(&lower.as_str()) && call {
                    i = skip_until(next + 1, ')');
                } else if !call && !PROMQL_WORDS.contains(&lower.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_promql_scanner_finds_metrics_only() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (le, port) (rate(pgrouter_hold_seconds_bucket{instance=~"$instance", port!="x{y}"}[$__rate_interval]))) / on (instance) group_left (member) max without (job) (up offset 5m) > bool 1e3"#,
    );
    assert_eq!(names, ["pgrouter_hold_seconds_bucket", "up"]);
}

/// Every panel (rows' nested panels included) with its title and its queries.
fn dashboard_panels(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    fn walk(panels: &Value, out: &mut Vec<(String, Vec<String>)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            let exprs = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    t["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"))
                        .to_owned()
                })
                .collect();
            out.push((title, exprs));
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Collapses whitespace so that `sum by (port)` matches however it is spaced.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let exported = exported_metrics();
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let panels = dashboard_panels(&dashboard);
    assert!(!panels.is_empty());
    let mut unknown = BTreeMap::new();
    let mut queried = BTreeSet::new();
    for (title, exprs) in &panels {
        assert!(!title.is_empty(), "a panel without a title");
        for expr in exprs {
            let names = promql_metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {title:?}: {expr} selects no metric"
            );
            for name in names {
                match exported.base_of(&name) {
                    Some(base) => {
                        queried.insert(base);
                    }
                    None => {
                        unknown.insert(name, title.clone());
                    }
                }
            }
        }
    }
    // Template variables: label_values(metric, label).
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_default();
        if let Some(args) = query.strip_prefix("label_values(") {
            let metric = args.split(',').next().unwrap().trim();
            if exported.base_of(metric).is_none() {
                unknown.insert(metric.to_owned(), format!("variable {}", variable["name"]));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics pgrouter does not export: {unknown:?}"
    );
    assert!(queried.len() >= 10, "only {queried:?} queried");
    // Panels reach the datasource the provisioning defines.
    let datasource = read("docker/grafana/provisioning/datasources/prometheus.yml");
    assert!(datasource.contains("uid: prometheus"));
    assert!(!DASHBOARD.contains("${DS_"), "unresolved datasource input");
}

#[test]
fn the_dashboard_has_the_panels_operators_look_at_first() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let panels = dashboard_panels(&dashboard);
    // (what, a metric the panel queries, fragments its query must also contain)
    let wanted: [(&str, &str, &[&str]); 13] = [
        ("leader", "pgrouter_member_leader", &[]),
        ("replicas", "pgrouter_member_eligible", &["by (member)"]),
        (
            "client connections",
            "pgrouter_client_connections",
            &["port", "state"],
        ),
        (
            "server connections",
            "pgrouter_server_connections",
            &["member"],
        ),
        (
            "tps per port",
            "pgrouter_transactions_total",
            &["rate(", "by (port)"],
        ),
        (
            "errors by SQLSTATE",
            "pgrouter_client_errors_total",
            &["by (sqlstate)"],
        ),
        (
            "hold latency",
            "pgrouter_hold_seconds_bucket",
            &["histogram_quantile("],
        ),
        (
            "route-switch latency",
            "pgrouter_route_switch_seconds_bucket",
            &["histogram_quantile("],
        ),
        (
            "pooled transaction latency",
            "pgrouter_transaction_seconds_bucket",
            &["histogram_quantile(", "by (le, port)"],
        ),
        ("pool saturation", "pgrouter_pool_size", &["/"]),
        ("router CPU", "process_cpu_seconds_total", &["rate("]),
        ("router memory", "process_resident_memory_bytes", &[]),
        ("open files", "process_open_fds", &[]),
    ];
    for (what, metric, fragments) in wanted {
        let found = panels.iter().any(|(_, exprs)| {
            exprs.iter().map(|e| squeeze(e)).any(|e| {
                promql_metric_names(&e).iter().any(|n| n == metric)
                    && fragments.iter().all(|f| e.contains(f))
            })
        });
        assert!(
            found,
            "no panel for {what}: a query of {metric} with {fragments:?}"
        );
    }
    // Panel ids are unique and every panel has a place.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_i64().expect("panel id")),
            "duplicate panel id"
        );
        assert!(
            panel["gridPos"]["w"].as_i64().is_some(),
            "panel without gridPos"
        );
    }
}

/// Every dashboard query parses as PromQL: promtool checks them as recording rules, with
/// Grafana's variables replaced by values.
#[test]
fn the_dashboard_queries_parse_as_promql() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for (_, exprs) in dashboard_panels(&dashboard) {
        for expr in exprs {
            let concrete = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*");
            n += 1;
            rules += &format!(
                "      - record: dashboard:query_{n}\n        expr: {}\n",
                Value::String(concrete)
            );
        }
    }
    let path = scratch_dir("promql").join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains(&format!("{n} rules found")),
        "{}",
        output_text(&out)
    );
}
