//! Patroni's REST API, asked two questions.
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

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Responses larger than this are not Patroni's status and are not read further.
const MAX_RESPONSE: u64 = 64 * 1024;

#[derive(Deserialize)]
struct Status {
    role: Option<String>,
    state: Option<String>,
}

/// True when the member's REST API reports a running, writable PostgreSQL within `timeout`.
/// Any failure (no api_url, https, refused, slow, unreadable) is false: the member key decides.
pub async fn is_writable(api_url: &str, timeout: Duration) -> bool {
    reports_running_primary(api_url, "/patroni", timeout).await
}

/// True when Patroni on `api_url` answers `GET /primary` with 200 and a running primary within
/// `timeout`: it still holds the leader lock as far as it knows. Any failure is false.
pub async fn confirms_primary(api_url: &str, timeout: Duration) -> bool {
    reports_running_primary(api_url, "/primary", timeout).await
}

async fn reports_running_primary(api_url: &str, path: &str, timeout: Duration) -> bool {
    let Some(authority) = http_authority(api_url) else {
        return false;
    };
    let ask = async {
        let mut stream = TcpStream::connect(authority).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut response).await?;
        std::io::Result::Ok(response)
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(response)) => reports_writable(&response),
        _ => false,
    }
}

/// "http://127.0.0.1:8008/patroni" -> "127.0.0.1:8008".
fn http_authority(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    authority.contains(':').then_some(authority)
}

fn reports_writable(response: &[u8]) -> bool {
    let ok = response.starts_with(b"HTTP/1.") && response.get(8..12) == Some(b" 200");
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| &response[at + 4..]);
    let status = body.and_then(|b| serde_json::from_slice::<Status>(b).ok());
    ok && status.is_some_and(|s| {
        matches!(s.role.as_deref(), Some("master" | "primary"))
            && s.state.as_deref() == Some("running")
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
            http_authority("http://127.0.0.1:8008/patroni"),
            Some("127.0.0.1:8008")
        );
        assert_eq!(
            http_authority("http://[::1]:8008/patroni"),
            Some("[::1]:8008")
        );
        assert_eq!(http_authority("https://h:8008/patroni"), None);
        assert_eq!(http_authority("http://h/patroni"), None);
        assert!(reports_writable(PROMOTED.as_bytes()));
        assert!(!reports_writable(PROMOTING.as_bytes()));
        assert!(!reports_writable(b"HTTP/1.0 503 Service Unavailable\r\n\r\n{\"state\": \"stopped\", \"role\": \"master\"}"));
        assert!(!reports_writable(b"HTTP/1.0 200 OK\r\n\r\nnot json"));
        assert!(!reports_writable(b"HTTP/1.0 200"));
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
        assert!(is_writable(&url, Duration::from_secs(5)).await);
        assert!(!is_writable(&url, Duration::from_secs(5)).await);
        assert!(confirms_primary(&url, Duration::from_secs(5)).await);
        server.await.unwrap();
    }
}
