//! Readiness for systemd: the router tells `$NOTIFY_SOCKET` READY=1 only once its listeners are
//! bound and the cluster's view has been read from etcd, and STOPPING=1 when it drains. Runs a
//! bare etcd (Debian's etcd-server, as the lab does) and the pgrouter binary on ports 20300-20304.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ETCD: u16 = 20300;
const ETCD_PEER: u16 = 20301;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn etcd(dir: &std::path::Path) -> Killed {
    let client = format!("http://127.0.0.1:{ETCD}");
    let peer = format!("http://127.0.0.1:{ETCD_PEER}");
    let child = Command::new("etcd")
        .args(["--name", "notify-test", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("notify-test={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian package etcd-server)");
    Killed(child)
}

/// The next datagram within `wait`, as text; None when none came.
fn next(socket: &UnixDatagram, wait: Duration) -> Option<String> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn ready_once_the_cluster_is_read_and_stopping_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("pgrouter-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pgrouter.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nscope = \"notify\"\netcd = [\"127.0.0.1:{ETCD}\"]\n\
             [listen]\nprimary = \"127.0.0.1:20302\"\nreplicas = \"127.0.0.1:20303\"\nadmin = \"127.0.0.1:20304\"\n\
             [routing]\ndrain_timeout = \"1s\"\n"
        ),
    )
    .unwrap();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let router = Command::new(env!("CARGO_BIN_EXE_pgrouter"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let router = Killed(router);
    // Listening, but etcd is not there yet: not ready.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::net::TcpStream::connect("127.0.0.1:20302").is_ok(),
        "not listening"
    );
    assert_eq!(
        next(&socket, Duration::from_secs(2)),
        None,
        "ready without etcd"
    );

    let _etcd = etcd(&dir);
    let ready = next(&socket, Duration::from_secs(30)).expect("READY=1 once etcd answers");
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");

    let pid = router.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopping = next(&socket, Duration::from_secs(10)).expect("STOPPING=1 on SIGTERM");
    assert_eq!(stopping, "STOPPING=1");
}
