//! The ZooKeeper lab's DCS: one standalone ZooKeeper (Debian's `zookeeper` package) on the
//! lab's first port, for Patroni's `zookeeper:` section (with `python3-kazoo`).

use crate::poll::wait_for;
use crate::procs;
use crate::spec::LabSpec;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Debian's ZooKeeper classes and its configuration directory (logging).
const CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar";

/// Starts ZooKeeper in `<dir>/zookeeper` and waits until it answers `ruok` with `imok`.
pub(crate) fn start(spec: &LabSpec, timeout: Duration) -> Result<Child> {
    let dir = spec.dir.join("zookeeper");
    std::fs::create_dir_all(dir.join("data"))?;
    let port = spec.zookeeper_port();
    let cfg = dir.join("zoo.cfg");
    std::fs::write(
        &cfg,
        format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=ruok\nmaxSessionTimeout=30000\n",
            dir.join("data").display()
        ),
    )?;
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("zookeeper.log"))?;
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(CLASSPATH)
        .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(&cfg)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn ZooKeeper (java; Debian's zookeeper package)")?;
    procs::record_pid(&spec.dir, "zookeeper", child.id())?;
    let answered = wait_for(timeout, Duration::from_millis(200), || {
        if let Some(status) = child.try_wait()? {
            bail!("ZooKeeper exited with {status}");
        }
        Ok(ruok(port).then_some(()))
    });
    if let Err(e) = answered {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(format!("ZooKeeper on 127.0.0.1:{port} did not answer ruok")));
    }
    Ok(child)
}

fn ruok(port: u16) -> bool {
    let asked = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"ruok")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    };
    asked().is_ok_and(|a| a == "imok")
}
