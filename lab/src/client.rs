//! Running SQL through `psql` as the lab superuser.

use crate::config::SUPERUSER;
use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// `psql -X -At -v ON_ERROR_STOP=1 -h <host> -p <port> -U postgres -d postgres -c <sql>` with the
/// lab's superuser password and a 10 s connect timeout; returns stdout trimmed, or an error with
/// psql's stderr.
pub fn run_psql(host: &str, port: u16, sql: &str) -> Result<String> {
    psql_with_timeout(host, port, sql, 10)
}

/// A command for a libpq client (`psql`, `pgbench`) without the caller's `PG*` variables, so
/// that only what the caller sets on it reaches libpq (a `PGSSLMODE` or `PGHOST` from the
/// shell would otherwise change what a test or bench connects to, and how).
pub fn client_command(program: &str) -> Command {
    let mut command = Command::new(program);
    crate::procs::without_libpq_env(&mut command);
    command
}

/// [`run_psql`] with a connect timeout of `connect_timeout` seconds.
pub(crate) fn psql_with_timeout(
    host: &str,
    port: u16,
    sql: &str,
    connect_timeout: u32,
) -> Result<String> {
    let out = client_command("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host])
        .args(["-p", &port.to_string(), "-U", SUPERUSER.0, "-d", "postgres"])
        .args(["-c", sql])
        .env("PGPASSWORD", SUPERUSER.1)
        .env("PGCONNECT_TIMEOUT", connect_timeout.to_string())
        .stdin(Stdio::null())
        .output()
        .context("run psql (is it installed in PATH?)")?;
    if !out.status.success() {
        bail!(
            "psql -h {host} -p {port} -c {sql:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
