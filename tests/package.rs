//! The Debian package (`scripts/package.sh`): built from this test's binary, installed with
//! `dpkg -i`, its binary run (--version, check-config, and routing the lab as the
//! `pgrouter` user, read back with `pgrouter status`), then removed (`dpkg -r`: the conffile
//! stays) and purged (`dpkg -P`: nothing left, the user gone). Needs root and changes the
//! machine's package set, so it is ignored by a plain `cargo test`; scripts/test.sh runs it
//! (`cargo test --test package -- --ignored`). Ports 20312-20314, the lab on 20320-20342.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn user_exists() -> bool {
    run("getent", &["passwd", "pgrouter"]).status.success()
}

/// The installed binary routes a real lab (etcd and three Patroni members) under the
/// service's user: `pgrouter status` names the leader, and a client through its primary port
/// reaches it.
fn serves(dir: &Path) {
    let lab = pgrouter_lab::Lab::start(pgrouter_lab::LabSpec::new(dir.join("lab"), 20320))
        .expect("the lab (etcd, Patroni, PostgreSQL)");
    let leader = lab.leader().expect("a leader in the lab");
    let config = "/etc/pgrouter/package-test.toml";
    std::fs::write(
        config,
        format!(
            "[cluster]\nscope = \"{}\"\netcd = [{}]\n\
             [listen]\nprimary = \"127.0.0.1:20312\"\nreplicas = \"127.0.0.1:20313\"\nadmin = \"127.0.0.1:20314\"\n",
            lab.spec().scope,
            lab.etcd_toml_list()
        ),
    )
    .unwrap();
    ok("chown", &["root:pgrouter", config]);
    ok("chmod", &["0640", config]);
    // As the service's user, started directly (no runuser in between) so the kill below ends it.
    use std::os::unix::process::CommandExt;
    let id = |flag: &str| ok("id", &[flag, "pgrouter"]).trim().parse::<u32>().unwrap();
    let mut router = Command::new("/usr/bin/pgrouter")
        .args(["--config", config])
        .uid(id("-u"))
        .gid(id("-g"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let out = run(
            "/usr/bin/pgrouter",
            &["status", "--admin", "127.0.0.1:20314"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if (out.status.success() && text.contains(&format!("leader: {leader}")))
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let through = pgrouter_lab::run_psql("127.0.0.1", 20312, "select pg_is_in_recovery()");
    let _ = router.kill();
    let _ = router.wait();
    drop(lab);
    std::fs::remove_file(config).unwrap();
    assert!(seen.contains(&format!("leader: {leader}")), "{seen}");
    assert!(seen.contains("etcd connected: true"), "{seen}");
    assert_eq!(through.expect("psql through the installed router"), "f");
}

#[test]
#[ignore = "needs root; installs and purges the package (scripts/test.sh runs it)"]
fn the_package_installs_runs_and_goes_away_cleanly() {
    assert!(
        !run("dpkg", &["-s", "pgrouter"]).status.success(),
        "a pgrouter package is installed already: this test would replace it"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    // Who built it, as dch and debmake are told (the checkout's git identity otherwise).
    let built = Command::new(format!("{root}/scripts/package.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_pgrouter")])
        .env("DEBFULLNAME", "Package Test")
        .env("DEBEMAIL", "package-test@example.org")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = format!("{root}/{}", String::from_utf8_lossy(&built.stdout).trim());
    let arch = ok("dpkg", &["--print-architecture"]);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(&format!("pgrouter_{version}_{}.deb", arch.trim())),
        "{deb}"
    );

    let maintainer = ok("dpkg-deb", &["-f", &deb, "Maintainer"]);
    assert_eq!(maintainer.trim(), "Package Test <package-test@example.org>");

    ok("dpkg", &["-i", &deb]);
    let said = ok("/usr/bin/pgrouter", &["--version"]);
    assert_eq!(said.trim(), format!("pgrouter {version}"));
    let checked = ok(
        "/usr/bin/pgrouter",
        &["check-config", "--config", "/etc/pgrouter/pgrouter.toml"],
    );
    assert!(checked.contains(": ok"), "{checked}");
    assert!(user_exists(), "postinst made no pgrouter user");
    let owner = ok("stat", &["-c", "%U:%G %a", "/etc/pgrouter/pgrouter.toml"]);
    assert_eq!(owner.trim(), "root:pgrouter 640");
    let conffiles = ok("dpkg-query", &["-W", "-f", "${Conffiles}", "pgrouter"]);
    assert!(
        conffiles.contains("/etc/pgrouter/pgrouter.toml"),
        "{conffiles}"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/pgrouter.service").unwrap();
    assert!(
        unit.contains("Type=notify") && unit.contains("ExecStart=/usr/bin/pgrouter "),
        "{unit}"
    );
    let page = ok("sh", &["-c", "zcat /usr/share/man/man1/pgrouter.1.gz"]);
    assert!(
        page.starts_with(".TH PGROUTER 1") && page.contains("check\\-config"),
        "{page}"
    );
    let completion = ok(
        "bash",
        &["-c", "source /usr/share/bash-completion/completions/pgrouter; COMP_WORDS=(pgrouter check-c); COMP_CWORD=1; _pgrouter; echo ${COMPREPLY[*]}"],
    );
    assert_eq!(completion.trim(), "check-config");

    let dir = std::env::temp_dir().join(format!("pgrouter-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    serves(&dir);

    // Removed: the binary goes, the edited conffile stays.
    let mut edited = std::fs::read_to_string("/etc/pgrouter/pgrouter.toml").unwrap();
    edited.push_str("# edited by the package test\n");
    std::fs::write("/etc/pgrouter/pgrouter.toml", &edited).unwrap();
    ok("dpkg", &["-r", "pgrouter"]);
    assert!(!Path::new("/usr/bin/pgrouter").exists());
    assert!(!Path::new("/lib/systemd/system/pgrouter.service").exists());
    assert_eq!(
        std::fs::read_to_string("/etc/pgrouter/pgrouter.toml").unwrap(),
        edited
    );

    // Purged: the conffile, the directory and the user go.
    ok("dpkg", &["-P", "pgrouter"]);
    assert!(
        !Path::new("/etc/pgrouter").exists(),
        "/etc/pgrouter left behind"
    );
    assert!(!user_exists(), "the pgrouter user left behind");
    assert!(!run("dpkg", &["-s", "pgrouter"]).status.success());
}
