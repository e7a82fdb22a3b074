//! Issue 29, the checks HAProxy and keepalived make: a real HAProxy with `option httpchk` in
//! front of two routers (bare `option httpchk`, which sends OPTIONS /; Patroni's template form
//! `OPTIONS /master`; `http-check send meth GET uri /primary`; and `OPTIONS /replica?lag=16MB`
//! on the read ports) marks them up, sends clients through both to the right members, and
//! marks a paused or killed router down; and the keepalived `track_script` command shipped in
//! config/ha-vip, run as it is against a router with an HTTPS admin endpoint and a token, exits
//! 0 while the router can route writes and non-zero when it is paused, given a wrong token or
//! gone.
//!
//! Every port here is in 20500-20549 (routers, admin endpoints, HAProxy); balancers_tls.rs,
//! HAProxy's `check-ssl` on an HTTPS admin endpoint, has 20550-20599 and these helpers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgrouter_lab::Lab;

use crate::support::{connect, eventually, http, is, server_port, Router, RouterOptions};

/// Routers on 20510 and 20520 (replicas +1, admin +2).
const ROUTERS: [u16; 2] = [20510, 20520];
/// HAProxy's frontends: bare httpchk, Patroni's OPTIONS form, the GET form, reads.
const BARE: u16 = 20530;
const PATRONI: u16 = 20531;
const GET_FORM: u16 = 20532;
const READS: u16 = 20533;
/// The router behind keepalived's check, with its HTTPS admin endpoint.
const KEEPALIVED: u16 = 20540;
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);
/// What every HAProxy backend here checks, and how often: a router down after two failed
/// checks, up after one good one.
pub(crate) const CHECKS: &str = "    http-check expect status 200\n    default-server inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions\n";

pub(crate) fn router(lab: &Lab, port: u16, listen_extra: &str) -> Result<Router> {
    Router::start(
        lab,
        port,
        RouterOptions {
            listen_extra,
            routing: "hold_timeout = \"3s\"\ndrain_timeout = \"5s\"\n",
            admin: Some(port + 2),
            ..RouterOptions::default()
        },
    )
}

pub async fn haproxy_in_front_of_two_routers(lab: &Lab) -> Result<()> {
    let routers = [router(lab, ROUTERS[0], "")?, router(lab, ROUTERS[1], "")?];
    for r in &routers {
        eventually("the router routes writes", PATIENCE, || async {
            Ok(http("GET", r.admin, "/primary", None)?.0 == 200)
        })
        .await?;
    }
    methods_and_aliases(routers[0].admin)?;
    let dir = lab.spec().dir.join("haproxy-checks");
    std::fs::create_dir_all(&dir)?;
    let _haproxy = Haproxy::start(&dir)?;
    let socket = dir.join("haproxy.sock");
    eventually("HAProxy marks every router up", PATIENCE, || async {
        is(down(&socket)?, vec![])
    })
    .await?;
    println!("  HAProxy: every server UP in the four backends");

    let leader_port = lab.pg_port(&lab.leader()?);
    let mut clients = Vec::new();
    for frontend in [BARE, PATRONI, GET_FORM] {
        for _ in 0..2 {
            let (client, conn) = connect(frontend, "pgrouter-test-haproxy").await?;
            let port = server_port(&client).await?;
            ensure!(
                port == leader_port,
                "through HAProxy :{frontend} a client reached :{port}, not the leader :{leader_port}"
            );
            clients.push((client, conn));
        }
    }
    // HAProxy's round robin sent clients through both routers.
    for r in &routers {
        let (_, body) = http("GET", r.admin, "/status", None)?;
        let status: serde_json::Value = serde_json::from_str(&body)?;
        let sessions = status["sessions"].as_u64().unwrap_or(0);
        ensure!(
            sessions >= 1,
            "router :{} has no session from HAProxy: {}",
            r.primary,
            status["clients"]
        );
    }
    drop(clients);
    let (reader, _conn) = connect(READS, "pgrouter-test-haproxy-reads").await?;
    let in_recovery: bool = reader
        .query_one("select pg_is_in_recovery()", &[])
        .await?
        .get(0);
    ensure!(
        in_recovery,
        "a client of HAProxy's read backend reached the primary"
    );
    println!("  clients through HAProxy reached the leader :{leader_port} via both routers, reads a replica");

    // A paused router fails /primary: the checked backends take it out, the bare one (OPTIONS /,
    // which asks only whether the router answers) keeps it.
    let (status, body) = http("POST", routers[0].admin, "/pause?port=primary", None)?;
    ensure!(status == 200, "pause: {status} {body}");
    let first = format!("r{}", ROUTERS[0]);
    let want = vec![format!("get_form/{first}"), format!("patroni/{first}")];
    eventually("HAProxy marks the paused router down", PATIENCE, || async {
        is(down(&socket)?, want.clone())
    })
    .await?;
    for _ in 0..4 {
        let (client, _conn) = tokio::time::timeout(
            Duration::from_secs(2),
            connect(PATRONI, "pgrouter-test-haproxy-paused"),
        )
        .await
        .context("a client through HAProxy waited: it reached the paused router")??;
        ensure!(server_port(&client).await? == leader_port);
    }
    let (status, body) = http("POST", routers[0].admin, "/resume", None)?;
    ensure!(status == 200, "resume: {status} {body}");
    eventually("HAProxy marks the resumed router up", PATIENCE, || async {
        is(down(&socket)?, vec![])
    })
    .await?;
    println!("  a paused router: down in the /master and GET /primary backends, up in the bare one; up again after resume");

    let [_first, mut second] = routers;
    second.kill_9()?;
    let gone = format!("r{}", ROUTERS[1]);
    let want: Vec<String> = ["bare", "get_form", "patroni", "reads"]
        .iter()
        .map(|b| format!("{b}/{gone}"))
        .collect();
    eventually(
        "HAProxy marks the killed router down everywhere",
        PATIENCE,
        || async { is(down(&socket)?, want.clone()) },
    )
    .await?;
    println!("  a killed router: down in every backend");
    Ok(())
}

/// GET, HEAD and OPTIONS on the checks, Patroni's aliases, the status page and the methods a
/// check may not use, on one router's admin endpoint.
fn methods_and_aliases(admin: u16) -> Result<()> {
    for path in [
        "/primary",
        "/master",
        "/leader",
        "/read-write",
        "/read-only",
        "/replica",
        "/replica?lag=16MB",
        "/health",
        "/readiness",
        "/liveness",
        "/",
    ] {
        let (status, body) = http("GET", admin, path, None)?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        ensure!(!body.is_empty(), "GET {path}: no body");
        for method in ["HEAD", "OPTIONS"] {
            let (status, body) = http(method, admin, path, None)?;
            ensure!(
                status == 200 && body.is_empty(),
                "{method} {path}: {status} {body:?}"
            );
        }
    }
    let (status, body) = http("GET", admin, "/replica?lag=0&tag_zone=nowhere", None)?;
    ensure!(
        status == 503,
        "a replica filter nothing passes: {status} {body}"
    );
    let (status, _) = http("OPTIONS", admin, "/replica?lag=0&tag_zone=nowhere", None)?;
    ensure!(status == 503, "OPTIONS gives GET's status: {status}");
    let (status, body) = http("GET", admin, "/replica?lag=soon", None)?;
    ensure!(status == 400 && body.contains("lag"), "{status} {body}");
    let (_, page) = http("GET", admin, "/", None)?;
    ensure!(
        page.contains("<h2>Cluster demo</h2>") && page.contains("Leader: <b>"),
        "the status page: {page}"
    );
    let (status, _) = http("PUT", admin, "/primary", None)?;
    ensure!(status == 405, "PUT /primary: {status}");
    let (status, _) = http("OPTIONS", admin, "/reload", None)?;
    ensure!(status == 204, "OPTIONS /reload: {status}");
    // HEAD's headers are GET's: the length of the body it leaves out.
    let head = raw_head(admin, "HEAD /primary HTTP/1.0\r\n\r\n")?;
    ensure!(
        head.to_ascii_lowercase().contains("content-length: ")
            && !head.contains("content-length: 0"),
        "HEAD /primary: {head}"
    );
    println!("  GET, HEAD and OPTIONS answer the checks and Patroni's aliases; the page at / shows the cluster");
    Ok(())
}

/// What an admin endpoint sends back to `request`, whole.
fn raw_head(port: u16, request: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// An HAProxy process, killed when dropped.
pub(crate) struct Haproxy(std::process::Child);

impl Haproxy {
    /// HAProxy on the frontends above, its checks on the routers' admin ports.
    fn start(dir: &Path) -> Result<Haproxy> {
        let servers = |port_of: fn(u16) -> u16| -> String {
            ROUTERS
                .iter()
                .map(|r| {
                    format!(
                        "    server r{r} 127.0.0.1:{} check port {}\n",
                        port_of(*r),
                        r + 2
                    )
                })
                .collect()
        };
        let primaries = servers(|r| r);
        let replicas = servers(|r| r + 1);
        let listens = format!(
            "listen bare\n    bind 127.0.0.1:{BARE}\n    option httpchk\n{CHECKS}{primaries}\
             listen patroni\n    bind 127.0.0.1:{PATRONI}\n    option httpchk OPTIONS /master\n{CHECKS}{primaries}\
             listen get_form\n    bind 127.0.0.1:{GET_FORM}\n    option httpchk\n    http-check send meth GET uri /primary\n{CHECKS}{primaries}\
             listen reads\n    bind 127.0.0.1:{READS}\n    option httpchk OPTIONS /replica?lag=16MB\n{CHECKS}{replicas}",
        );
        Haproxy::run(dir, &listens, BARE)
    }

    /// HAProxy with these `listen` sections, its stats socket at `dir/haproxy.sock`, its log in
    /// `dir`; returns once it has bound `port`.
    pub(crate) fn run(dir: &Path, listens: &str, port: u16) -> Result<Haproxy> {
        let config = format!(
            "global\n    maxconn 200\n    stats socket {sock} mode 600 level admin\n\
             defaults\n    mode tcp\n    timeout client 60s\n    timeout connect 4s\n    timeout server 60s\n    timeout check 2s\n\
             {listens}",
            sock = dir.join("haproxy.sock").display(),
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()?;
        ensure!(
            check.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
            .spawn()
            .context("starting haproxy (apt-get install haproxy)")?;
        let haproxy = Haproxy(child);
        pgrouter_lab::pgbouncer::wait_port(port)?;
        Ok(haproxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The servers HAProxy has not marked up, as `backend/server`, sorted.
pub(crate) fn down(socket: &Path) -> Result<Vec<String>> {
    let mut down: Vec<String> = servers(socket)?
        .into_iter()
        .filter(|(_, row)| !row["status"].starts_with("UP"))
        .map(|(name, _)| name)
        .collect();
    down.sort();
    Ok(down)
}

/// HAProxy's last check of `server` (`backend/server`): its status, code and description, as
/// `L7STS 503 Service Unavailable` or `L6RSP SSL handshake failure`.
pub(crate) fn last_check(socket: &Path, server: &str) -> Result<String> {
    let servers = servers(socket)?;
    let row = servers
        .get(server)
        .with_context(|| format!("HAProxy has no server {server}"))?;
    let fields = [&row["check_status"], &row["check_code"], &row["last_chk"]];
    let fields: Vec<&str> = fields
        .iter()
        .map(|f| f.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    Ok(fields.join(" "))
}

/// Each server's line of `show stat` on HAProxy's stats socket, by `backend/server`, its
/// fields by column name.
fn servers(socket: &Path) -> Result<HashMap<String, HashMap<String, String>>> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("HAProxy's stats socket {}", socket.display()))?;
    s.write_all(b"show stat\n")?;
    let mut csv = String::new();
    s.read_to_string(&mut csv)?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty show stat")?
        .trim_start_matches("# ")
        .split(',')
        .collect();
    for column in [
        "pxname",
        "svname",
        "status",
        "check_status",
        "check_code",
        "last_chk",
    ] {
        ensure!(
            header.contains(&column),
            "show stat has no {column}: {header:?}"
        );
    }
    Ok(lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(h, f)| (h.to_string(), f.to_owned()))
                .collect::<HashMap<_, _>>()
        })
        .filter(|row| row.len() == header.len())
        .filter(|row| row["svname"] != "FRONTEND" && row["svname"] != "BACKEND")
        .map(|row| (format!("{}/{}", row["pxname"], row["svname"]), row))
        .collect())
}

/// A CA and a certificate for localhost and 127.0.0.1 signed by it, in `dir`: (ca, cert, key).
pub(crate) fn admin_certificate(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgrouter admin test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "db1.example");
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let paths = (
        dir.join("admin-ca.crt"),
        dir.join("admin.crt"),
        dir.join("admin.key"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}

/// config/ha-vip's keepalived `script` (db1's; db2's is the same), its files and port made
/// this test's; an error if the shipped command no longer has the parts replaced.
fn shipped_track_script(header: &Path, ca: &Path, admin: u16) -> Result<Vec<String>> {
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ha-vip/keepalived-db1.conf"),
    )?;
    let script = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("script \""))
        .and_then(|s| s.strip_suffix('"'))
        .context("no script \"...\" in keepalived-db1.conf")?;
    let mut command = script.to_owned();
    for (shipped, here) in [
        (
            "/etc/keepalived/pgrouter-admin.header",
            header.display().to_string(),
        ),
        ("/etc/pgrouter/admin-ca.crt", ca.display().to_string()),
        ("localhost:8080/", format!("localhost:{admin}/")),
    ] {
        ensure!(
            command.contains(shipped),
            "the shipped script has no {shipped}: {script}"
        );
        command = command.replace(shipped, &here);
    }
    // keepalived runs the script without a shell, split on white space.
    Ok(command.split_whitespace().map(str::to_owned).collect())
}

/// The track_script's exit code now.
fn track(argv: &[String]) -> Result<Option<i32>> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv[0]))?;
    Ok(out.status.code())
}

pub async fn keepalived_track_script(lab: &Lab) -> Result<()> {
    let dir = lab.spec().dir.join("keepalived-check");
    let (ca, cert, key) = admin_certificate(&dir)?;
    let token = "keepalived-test-token-0123456789";
    let listen = format!(
        "admin_token = \"{token}\"\nadmin_tls = true\nadmin_cert = {cert:?}\nadmin_key = {key:?}\n"
    );
    let mut r = router(lab, KEEPALIVED, &listen)?;
    let header = dir.join("pgrouter-admin.header");
    std::fs::write(&header, format!("Authorization: Bearer {token}\n"))?;
    let argv = shipped_track_script(&header, &ca, r.admin)?;
    println!("  track_script: {}", argv.join(" "));
    eventually("the track_script passes", PATIENCE, || async {
        is(track(&argv)?, Some(0))
    })
    .await?;
    // The token does not go over plain HTTP: the endpoint speaks TLS only.
    ensure!(
        http("GET", r.admin, "/primary", Some(token)).is_err(),
        "the HTTPS admin endpoint answered plain HTTP"
    );
    let printed = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .args([
            "status",
            "--admin",
            &format!("https://localhost:{}", r.admin),
        ])
        .arg("--token")
        .arg(token)
        .arg("--cacert")
        .arg(&ca)
        .output()?;
    let text = String::from_utf8_lossy(&printed.stdout);
    ensure!(
        printed.status.success() && text.starts_with("Cluster: demo"),
        "pgrouter status over HTTPS: {text}{}",
        String::from_utf8_lossy(&printed.stderr)
    );

    // Down: paused (503), a wrong token (401), gone (no connection); up again after resume.
    ensure!(
        post_https(&ca, token, r.admin, "/pause?port=primary")?,
        "pause failed"
    );
    let paused = track(&argv)?;
    ensure!(
        paused == Some(22),
        "paused: the track_script exited {paused:?}, not 22 (HTTP 503)"
    );
    ensure!(post_https(&ca, token, r.admin, "/resume")?, "resume failed");
    ensure!(track(&argv)? == Some(0), "resumed: the track_script fails");
    std::fs::write(
        &header,
        "Authorization: Bearer not-the-token-not-the-token\n",
    )?;
    let refused = track(&argv)?;
    ensure!(
        refused == Some(22),
        "a wrong token: exited {refused:?}, not 22 (HTTP 401)"
    );
    std::fs::write(&header, format!("Authorization: Bearer {token}\n"))?;
    ensure!(track(&argv)? == Some(0), "the right token again: fails");
    r.kill_9()?;
    let gone = track(&argv)?;
    ensure!(
        gone == Some(7),
        "router gone: exited {gone:?}, not 7 (cannot connect)"
    );
    println!(
        "  track_script: 0 while routing; 22 paused; 22 with a wrong token; 7 with the router gone"
    );
    Ok(())
}

/// POSTs `path` to the HTTPS admin endpoint on `port` (curl, checking its certificate against
/// `ca`, with the token): whether it answered 2xx.
pub(crate) fn post_https(ca: &Path, token: &str, port: u16, path: &str) -> Result<bool> {
    let out = Command::new("curl")
        .args([
            "-fsS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-X",
            "POST",
            "--cacert",
        ])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://localhost:{port}{path}"))
        .output()?;
    Ok(out.status.success())
}
