//! A tiny HTTP/1.0 client over `std::net::TcpStream`, enough for etcd's and Patroni's JSON
//! endpoints; HTTPS with the secured lab's client certificate goes through `curl`.

use crate::tls::TlsFiles;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connect timeout for every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A response: status code and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub body: String,
}

/// Where a request goes: `addr` over plain HTTP, or over HTTPS with the lab's certificates;
/// `token` is an etcd auth token sent as `Authorization`.
pub(crate) struct Target<'a> {
    pub addr: &'a str,
    pub tls: Option<&'a TlsFiles>,
    pub token: Option<&'a str>,
}

/// `GET <target><path>`; `timeout` bounds each read and write.
pub(crate) fn get(to: &Target, path: &str, timeout: Duration) -> Result<Response> {
    request(to, "GET", path, None, timeout)
}

/// `POST <target><path>` with a JSON body.
pub(crate) fn post_json(
    to: &Target,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Response> {
    request(to, "POST", path, Some(body), timeout)
}

/// `PATCH <target><path>` with a JSON body.
pub(crate) fn patch_json(
    to: &Target,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Response> {
    request(to, "PATCH", path, Some(body), timeout)
}

fn request(
    to: &Target,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response> {
    if let Some(tls) = to.tls {
        return curl(to, tls, method, path, body, timeout);
    }
    let addr = to.addr;
    let what = || format!("{method} http://{addr}{path}");
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr:?}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT)
        .with_context(|| format!("{}: connect", what()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = to.token {
        req.push_str(&format!("Authorization: {token}\r\n"));
    }
    if let Some(body) = body {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else {
        req.push_str("\r\n");
    }
    stream
        .write_all(req.as_bytes())
        .with_context(|| format!("{}: send", what()))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("{}: read", what()))?;
    parse(&raw).with_context(what)
}

/// The request through `curl` over HTTPS, presenting the lab's client certificate.
fn curl(
    to: &Target,
    tls: &TlsFiles,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response> {
    let url = format!("https://{}{path}", to.addr);
    let (cert, key) = tls.cert("lab");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-S", "-i", "--http1.1", "-X", method, "--max-time"])
        .arg(timeout.as_secs().max(1).to_string())
        .arg("--cacert")
        .arg(tls.ca())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    if let Some(token) = to.token {
        cmd.args(["-H", &format!("Authorization: {token}")]);
    }
    let out = cmd
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run curl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "{method} {url}: curl: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&out.stdout).with_context(|| format!("{method} {url}"))
}

fn parse(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("truncated HTTP response ({} bytes)", raw.len());
    };
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_response() {
        let r = parse(b"HTTP/1.0 503 Service Unavailable\r\nA: b\r\n\r\n{\"x\":1}").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{\"x\":1}");
        assert!(parse(b"HTTP/1.0 200 OK\r\n").is_err());
    }
}
