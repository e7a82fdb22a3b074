//! The `pgrouter` command line: config checking names the key and the reason.

use std::process::Command;

fn check_config(name: &str, text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("pgrouter-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_example_config_is_valid() {
    let (ok, out) = check_config("example", include_str!("../config/pgrouter.toml"));
    assert!(ok, "{out}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn a_bad_config_is_refused_with_key_and_reason() {
    let (ok, out) = check_config("bad-duration", "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:2379\"]\n[routing]\nhold_timeout = \"soon\"\n");
    assert!(!ok);
    assert!(
        out.contains("routing.hold_timeout: invalid duration \"soon\""),
        "{out}"
    );
    let (ok, out) = check_config("typo", "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:2379\"]\n[listen]\nprimry = \"127.0.0.1:5000\"\n");
    assert!(!ok);
    assert!(
        out.contains("listen.primry: unknown field `primry`"),
        "{out}"
    );
}

#[test]
fn the_config_comes_from_the_environment_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .arg("check-config")
        .env(
            "PGROUTER_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgrouter.toml"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .arg("check-config")
        .env_remove("PGROUTER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn the_systemd_unit_verifies() {
    let dir = std::env::temp_dir().join(format!("pgrouter-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = include_str!("../config/pgrouter.service")
        .replace("/usr/local/bin/pgrouter", env!("CARGO_BIN_EXE_pgrouter"));
    let path = dir.join("pgrouter.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !said.contains("pgrouter.service:"),
        "{said}"
    );
}

#[test]
fn a_pgbouncer_ini_imports_into_a_config_that_checks() {
    let dir = std::env::temp_dir().join(format!("pgrouter-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("imported.toml");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .arg("import-pgbouncer")
        .arg(fixtures.join("pgbouncer.ini"))
        .arg(fixtures.join("userlist.txt"))
        .args([
            "--scope",
            "main",
            "--etcd",
            "10.0.0.7:2379",
            "--etcd",
            "10.0.0.8:2379",
            "-o",
        ])
        .arg(&out_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    for named in [
        "logfile: pgrouter logs to stderr",
        "[databases] nextcloud host, port: the members come from Patroni",
        "[databases] *: pgrouter serves every database",
        "unix_socket_dir: pgrouter listens on TCP only",
    ] {
        assert!(said.contains(named), "{named} not named:\n{said}");
    }
    let imported = std::fs::read_to_string(&out_path).unwrap();
    for carried in [
        "primary = \"0.0.0.0:6432\"",
        "primary_pool_mode = \"transaction\"",
        "pool_size = 25",
        "stats_period = \"30s\"",
        "stats_users = [\"stats\", \"prometheus\"]",
        "ignore_startup_parameters = [\"extra_float_digits\"]",
        "reserve_pool_size = 5",
        "reserve_pool_timeout = \"3s\"",
        "[databases.\"app\"]\npool_size = 50",
        "[users.\"reporting\"]\npool_mode = \"session\"",
    ] {
        assert!(
            imported.contains(carried),
            "{carried} not carried:\n{imported}"
        );
    }
    let (ok, out) = check_config("imported", &imported);
    assert!(ok, "{out}\n{imported}");
}

/// check-config reads every file the config names and reports each one that is wrong by its
/// key (a further cluster's under `clusters.<name>`), not the first only; good files pass, and
/// a key that does not fit its certificate is named too.
#[test]
fn check_config_names_every_wrong_file_by_its_key() {
    let dir = std::env::temp_dir().join(format!("pgrouter-cli-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = file("server.crt", &made.cert.pem());
    let key = file("server.key", &made.key_pair.serialize_pem());
    let wrong_key = file("other.key", &other.key_pair.serialize_pem());
    let garbage = file("garbage.pem", "not a certificate\n");
    let userlist = file(
        "userlist.txt",
        "\"app\" \"md5a3556571e93b0d20722ba62be61e8c2d\"\n",
    );
    let missing = dir.join("missing.pem").display().to_string();
    let config = |auth: &str, tls_key: &str, admin_key: &str, root_ca: &str, etcd_ca: &str| {
        format!(
            "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:2379\"]\n\
             [clusters.other]\nscope = \"other\"\netcd = [\"127.0.0.1:2379\"]\nprimary = \"127.0.0.1:6000\"\nreplicas = \"127.0.0.1:6001\"\netcd_ca = \"{etcd_ca}\"\n\
             [listen]\nadmin_tls = true\nadmin_cert = \"{cert}\"\nadmin_key = \"{admin_key}\"\n\
             [auth]\nauth_file = \"{auth}\"\n\
             [tls]\nmode = \"allow\"\ncert = \"{cert}\"\nkey = \"{tls_key}\"\n\
             [upstream_tls]\nsslmode = \"verify-ca\"\nroot_ca = \"{root_ca}\"\n"
        )
    };
    let (ok, out) = check_config("files-good", &config(&userlist, &key, &key, &cert, &cert));
    assert!(ok, "{out}");

    let (ok, out) = check_config(
        "files-bad",
        &config(&missing, &garbage, &missing, &garbage, &garbage),
    );
    assert!(!ok, "{out}");
    for (key, path) in [
        ("auth.auth_file", &missing),
        ("tls.key", &garbage),
        ("listen.admin_key", &missing),
        ("upstream_tls.root_ca", &garbage),
        ("clusters.other.etcd_ca", &garbage),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("{key} not named in {out}"));
        assert!(line.contains(path.as_str()), "{key}: {line}");
    }
    assert_eq!(out.lines().count(), 5, "one line per wrong file: {out}");

    // Each file reads, but the key is another certificate's.
    let (ok, out) = check_config(
        "files-mismatch",
        &config(&userlist, &wrong_key, &key, &cert, &cert),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("tls.key: does not fit tls.cert"), "{out}");
}

/// A router's admin endpoint that answers every request with `status` as /status.
fn fake_admin(status: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            let answer = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{status}",
                status.len()
            );
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    format!("http://{addr}")
}

/// `pgrouter status` over two routers: side by side with the verdict on the leader, as text
/// and as JSON, and a router that does not answer makes the exit status 1.
#[test]
fn status_compares_several_routers() {
    let status = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
            .arg("status")
            .args(args)
            .env_remove("PGROUTER_CONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let r1 = fake_admin(
        r#"{"cluster":"demo","leader":"pg0","writable_leader":"pg0","dcs":{"connected":true},"members":[]}"#,
    );
    let r2 = fake_admin(
        r#"{"cluster":"demo","leader":"pg0","writable_leader":"pg0","dcs":{"connected":true},"members":[]}"#,
    );
    let r3 = fake_admin(
        r#"{"cluster":"demo","leader":"pg1","writable_leader":null,"dcs":{"connected":false},"members":[]}"#,
    );
    let (code, text, err) = status(&["--admin", &r1, "--admin", &r2]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(
        text.contains("Routers agree: the leader of demo is pg0 on all 2\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("\n== {r2} ==\nCluster: demo (leader: pg0")),
        "{text}"
    );
    let (code, text, _) = status(&["--admin", &r1, "--admin", &r3, "--format", "json"]);
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["agree"]["demo"], false, "{text}");
    assert_eq!(doc["routers"][1]["status"]["leader"], "pg1", "{text}");
    // A port nothing listens on (bound, then closed).
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, text, err) = status(&["--admin", &r1, "--admin", &gone.to_string()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "Routers DISAGREE on the leader of demo: {r1} says pg0, {gone} did not answer"
        )),
        "{text}"
    );
    assert!(err.contains("cannot reach"), "{err}");
}
