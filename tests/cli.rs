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
