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
