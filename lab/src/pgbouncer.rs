//! Debian's pgbouncer in transaction mode in front of one PostgreSQL port, for the benches and
//! the driver tests to compare pgrouter with.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What a pgbouncer is started with.
pub struct Settings<'a> {
    /// Its directory (created): config, userlist, log and pid file.
    pub dir: &'a Path,
    pub port: u16,
    /// The PostgreSQL (or HAProxy) port it connects to.
    pub upstream: u16,
    /// `postgres`'s SCRAM secret, from pg_authid.
    pub scram_secret: &'a str,
    pub pool_size: usize,
    pub max_client_conn: usize,
}

/// Starts pgbouncer as `s` says and waits until it listens. It ignores pgjdbc's
/// extra_float_digits startup parameter, as its documentation advises for JDBC clients. It refuses to run as root, so it
/// runs with `-u postgres` and its directory is handed to that user. The caller owns (and
/// kills) the child.
pub fn spawn(s: &Settings<'_>) -> Result<Child> {
    let dir = s.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, format!("\"postgres\" \"{}\"\n", s.scram_secret))?;
    let config = dir.join("pgbouncer.ini");
    std::fs::write(
        &config,
        format!(
            "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\n\
             default_pool_size = {}\nmax_client_conn = {}\nlogfile = {}\npidfile = {}\n\
             ignore_startup_parameters = extra_float_digits\nadmin_users = postgres\n",
            s.upstream,
            s.port,
            userlist.display(),
            s.pool_size,
            s.max_client_conn,
            dir.join("pgbouncer.log").display(),
            dir.join("pgbouncer.pid").display(),
        ),
    )?;
    let (uid, gid) = postgres_ids()?;
    for path in [dir, &userlist, &config] {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown postgres {}", path.display()))?;
    }
    let stderr = dir.join("pgbouncer.stderr");
    let mut child = Command::new("pgbouncer")
        .args(["-u", "postgres"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&stderr)
                .with_context(|| format!("creating {}", stderr.display()))?,
        )
        .spawn()
        .context("starting pgbouncer (apt-get install pgbouncer)")?;
    if let Err(e) = wait_port(s.port) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(format!("pgbouncer: see {}", dir.display())));
    }
    Ok(child)
}

/// Waits up to 10 s until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16) -> Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {port}")
}

/// uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_ids() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("no postgres user in /etc/passwd")?;
    let f: Vec<&str> = line.split(':').collect();
    let id = |i: usize| f.get(i).and_then(|s| s.parse().ok());
    id(2).zip(id(3)).context("bad postgres line in /etc/passwd")
}
