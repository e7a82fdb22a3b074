//! Patroni's REST API, asked what a member's PostgreSQL is doing right now.
//!
//! Has this member's PostgreSQL left recovery? Patroni's member key in etcd says `master` only
//! on the HA cycle after promotion, which was seen here to lag the leader key by 0.5 s to over
//! 20 s. `GET /patroni` reports the role from `pg_is_in_recovery()` at the moment of asking, so
//! pgrouter asks it while the leader key's holder is still promoting. (`GET /primary` alone
//! would not do: it answers 200 as soon as Patroni holds the lock, before PostgreSQL is writable.)
//!
//! Is this member still the primary while etcd cannot be read? `GET /primary` answers 200 only
//! while Patroni believes it holds the leader lock (or stays primary in failsafe mode) and runs
//! as primary; the body must also say a running primary, so both the lock and PostgreSQL agree.
//!
//! How far has each member got while etcd cannot be read? Every answer's body carries the WAL
//! position of the moment: the primary's `xlog.location`, a replica's `xlog.replayed_location`.

use std::time::Duration;

use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::topology::Role;

/// Responses larger than this are not Patroni's status and are not read further.
const MAX_RESPONSE: u64 = 64 * 1024;

/// What a member's Patroni said about its PostgreSQL at the moment of asking.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The answer was 200: for `/primary`, Patroni holds the leader lock as far as it knows.
    pub ok: bool,
    pub role: Role,
    /// PostgreSQL's state as Patroni reports it: running, streaming, starting, stopped, ...
    pub state: String,
    /// The primary's current WAL position, a replica's replay position.
    pub wal_position: Option<u64>,
    /// A replica's `pg_is_wal_replay_paused()`.
    pub replay_paused: Option<bool>,
}

impl Report {
    /// A 200 answer reporting a running primary.
    pub fn is_running_primary(&self) -> bool {
        self.ok && self.role == Role::Primary && self.state == "running"
    }
}

#[derive(Deserialize)]
struct Status {
    role: Option<String>,
    state: Option<String>,
    xlog: Option<Xlog>,
}

#[derive(Deserialize)]
struct Xlog {
    location: Option<u64>,
    replayed_location: Option<u64>,
    paused: Option<bool>,
}

/// Asks members' Patroni REST APIs: plain HTTP, or HTTPS when `cluster.rest_ca` is set (with a
/// client certificate for `restapi.verify_client` when `cluster.rest_cert` is).
#[derive(Clone, Default)]
pub struct RestClient {
    tls: Option<tokio_rustls::TlsConnector>,
}

impl RestClient {
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> RestClient {
        RestClient {
            tls: tls.map(tokio_rustls::TlsConnector::from),
        }
    }

    /// True when the member's REST API reports a running, writable PostgreSQL within
    /// `timeout`. Any failure (no api_url, refused, slow, unreadable) is false: the member key
    /// decides.
    pub async fn is_writable(&self, api_url: &str, timeout: Duration) -> bool {
        self.ask(api_url, "/patroni", timeout)
            .await
            .is_some_and(|r| r.is_running_primary())
    }

    /// Asks `GET path` of the Patroni whose `api_url` is given; `None` when it does not answer
    /// with a status within `timeout` (no api_url, https without `cluster.rest_ca`, refused,
    /// a failed TLS handshake, slow, unreadable: logged at debug).
    pub async fn ask(&self, api_url: &str, path: &str, timeout: Duration) -> Option<Report> {
        match self.fetch(api_url, path, timeout).await {
            Ok(response) => parse(&response),
            Err(e) => {
                tracing::debug!(%api_url, %path, error = %e, "Patroni REST API did not answer");
                None
            }
        }
    }

    /// `GET path`'s JSON body, when the answer is 200.
    pub async fn get_json(
        &self,
        api_url: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let response = self.fetch(api_url, path, timeout).await?;
        if response.get(8..12) != Some(b" 200") {
            let line = response.split(|b| *b == b'\r').next().unwrap_or_default();
            return Err(format!("answered {}", String::from_utf8_lossy(line)));
        }
        let at = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("a response without a body")?;
        serde_json::from_slice(&response[at + 4..]).map_err(|e| format!("not JSON: {e}"))
    }

    /// The raw answer to `GET path`, within `timeout`.
    async fn fetch(&self, api_url: &str, path: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        let (https, authority) = endpoint(api_url).ok_or("not http(s)://host:port")?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        let ask = async {
            let tcp = TcpStream::connect(authority).await?;
            if !https {
                return exchange(tcp, &request).await;
            }
            let Some(tls) = &self.tls else {
                return Err(std::io::Error::other("https without cluster.rest_ca"));
            };
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(std::io::Error::other)?;
            exchange(tls.connect(name, tcp).await?, &request).await
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Whether `api_url` is one pgrouter can ask: http with a port, or https with a CA.
    pub fn can_ask(&self, api_url: &str) -> bool {
        endpoint(api_url).is_some_and(|(https, _)| !https || self.tls.is_some())
    }
}

/// Sends `request` and reads the answer to its end. An HTTP/1.0 server may close a TLS stream
/// without close_notify once it answered: what came before counts.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> std::io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    match (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
    {
        Ok(_) => Ok(response),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

/// "http://127.0.0.1:8008/patroni" -> (false, "127.0.0.1:8008"); https gives true.
fn endpoint(url: &str) -> Option<(bool, &str)> {
    let (https, rest) = match url.strip_prefix("http://") {
        Some(rest) => (false, rest),
        None => (true, url.strip_prefix("https://")?),
    };
    let authority = rest.split('/').next()?;
    authority.contains(':').then_some((https, authority))
}

fn parse(response: &[u8]) -> Option<Report> {
    if !response.starts_with(b"HTTP/1.") {
        return None;
    }
    let ok = response.get(8..12) == Some(b" 200");
    let at = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status: Status = serde_json::from_slice(&response[at + 4..]).ok()?;
    let role = Role::from_patroni(status.role.as_deref()?);
    let (wal_position, replay_paused) = match (status.xlog, role) {
        (None, _) => (None, None),
        (Some(x), Role::Primary) => (x.location, None),
        (Some(x), _) => (x.replayed_location, x.paused),
    };
    Some(Report {
        ok,
        role,
        state: status.state?,
        wal_position,
        replay_paused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMOTED: &str = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"state\": \"running\", \"role\": \"master\", \"timeline\": 2}";
    const PROMOTING: &str =
        "HTTP/1.0 200 OK\r\n\r\n{\"state\": \"running\", \"role\": \"replica\"}";

    #[test]
    fn urls_and_responses() {
        assert_eq!(
            endpoint("http://127.0.0.1:8008/patroni"),
            Some((false, "127.0.0.1:8008"))
        );
        assert_eq!(
            endpoint("http://[::1]:8008/patroni"),
            Some((false, "[::1]:8008"))
        );
        assert_eq!(endpoint("https://h:8008/patroni"), Some((true, "h:8008")));
        assert_eq!(endpoint("http://h/patroni"), None);
        assert_eq!(endpoint("ftp://h:1/"), None);
        let plain = RestClient::default();
        assert!(plain.can_ask("http://h:8008/patroni") && !plain.can_ask("https://h:8008/patroni"));
        let running_primary = |r: &[u8]| parse(r).is_some_and(|r| r.is_running_primary());
        assert!(running_primary(PROMOTED.as_bytes()));
        assert!(!running_primary(PROMOTING.as_bytes()));
        assert!(!running_primary(b"HTTP/1.0 503 Service Unavailable\r\n\r\n{\"state\": \"running\", \"role\": \"master\"}"));
        assert!(!running_primary(
            b"HTTP/1.0 200 OK\r\n\r\n{\"state\": \"stopped\", \"role\": \"master\"}"
        ));
        assert_eq!(parse(b"HTTP/1.0 200 OK\r\n\r\nnot json"), None);
        assert_eq!(parse(b"HTTP/1.0 200"), None);
        assert_eq!(
            parse(b"SSH-2.0\r\n\r\n{\"state\": \"running\", \"role\": \"master\"}"),
            None
        );
    }

    /// Patroni 3.0.2's own bodies (trimmed): the primary's position is `xlog.location`, a
    /// replica's is where it has replayed to, not what it has received.
    #[test]
    fn positions_from_patronis_bodies() {
        let primary = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"state\": \"running\", \"role\": \"master\", \"server_version\": 150018, \"xlog\": {\"location\": 67108960}, \"timeline\": 1, \"replication\": [{\"usename\": \"replicator\", \"state\": \"streaming\"}]}";
        let replica = b"HTTP/1.0 200 OK\r\n\r\n{\"state\": \"running\", \"role\": \"replica\", \"xlog\": {\"received_location\": 67108960, \"replayed_location\": 50331648, \"replayed_timestamp\": null, \"paused\": true}, \"timeline\": 1}";
        let no_primary = b"HTTP/1.0 503 Service Unavailable\r\n\r\n{\"state\": \"running\", \"role\": \"replica\", \"xlog\": {\"received_location\": 1, \"replayed_location\": 1}}";
        assert_eq!(
            parse(primary),
            Some(Report {
                ok: true,
                role: Role::Primary,
                state: "running".into(),
                wal_position: Some(67108960),
                replay_paused: None,
            })
        );
        assert_eq!(parse(replica).and_then(|r| r.wal_position), Some(50331648));
        assert_eq!(parse(replica).and_then(|r| r.replay_paused), Some(true));
        assert_eq!(parse(replica).map(|r| r.role), Some(Role::Replica));
        let answered = parse(no_primary).unwrap();
        assert!(!answered.ok && !answered.is_running_primary());
        assert_eq!(answered.wal_position, Some(1));
    }

    #[tokio::test]
    async fn asks_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/patroni", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            for (path, answer) in [
                ("/patroni", PROMOTED),
                ("/patroni", PROMOTING),
                ("/primary", PROMOTED),
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 64];
                let n = s.read(&mut request).await.unwrap();
                let line = format!("GET {path} HTTP/1.0\r\n");
                assert!(request[..n].starts_with(line.as_bytes()));
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let rest = RestClient::default();
        assert!(rest.is_writable(&url, Duration::from_secs(5)).await);
        assert!(!rest.is_writable(&url, Duration::from_secs(5)).await);
        let confirmed = rest.ask(&url, "/primary", Duration::from_secs(5)).await;
        assert!(confirmed.is_some_and(|r| r.is_running_primary()));
        server.await.unwrap();
    }
}
