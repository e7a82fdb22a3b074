//! The admin endpoint (hyper 1.x), over HTTPS with `listen.admin_tls`: the status page at `/`,
//! /metrics, the health checks (GET, HEAD and OPTIONS, with Patroni's aliases: `routes.rs`),
//! /status and POST /pause, /resume, /reload. With `listen.admin_token` set, every request
//! needs it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::routes::{self, param, Asked, Form, Routed};
use super::{api, checks, page, Admin, Endpoint};
use crate::route::Port;

/// A TLS handshake must be over within this, so a silent client does not hold a task.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoint on `listener`; `tls` holds the acceptor in force (None: plain
/// HTTP), replaced on reload, and applies to connections accepted after it changes.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Endpoint>,
    tls: watch::Receiver<Option<TlsAcceptor>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let acceptor = tls.borrow().clone();
        tokio::spawn(async move {
            match acceptor {
                None => connection(stream, admin).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection(tls, admin).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "admin TLS handshake failed"),
                        Err(_) => tracing::debug!("admin TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn connection<S>(stream: S, admin: Arc<Endpoint>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(admin.clone(), req));
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(endpoint: Arc<Endpoint>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    if !authorized(&endpoint.first, &req) {
        let mut reply = json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"missing or wrong bearer token"}"#.into(),
        );
        reply
            .headers_mut()
            .insert("www-authenticate", "Bearer".parse().expect("static header"));
        return Ok(reply);
    }
    let query = req.uri().query();
    let (asked, form) = match routes::route(req.method(), req.uri().path(), query) {
        Routed::Answer(asked, form) => (asked, form),
        Routed::NotAllowed(allow) => {
            let mut r = json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method not allowed"}"#.into(),
            );
            r.headers_mut()
                .insert(ALLOW, allow.parse().expect("static header"));
            return Ok(r);
        }
        Routed::Allows(allow) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r.headers_mut()
                .insert(ALLOW, allow.parse().expect("static header"));
            return Ok(r);
        }
        Routed::NotFound => {
            return Ok(json(
                StatusCode::NOT_FOUND,
                r#"{"error":"not found"}"#.into(),
            ))
        }
        Routed::BadRequest(e) => {
            return Ok(reply((
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": e }),
            )))
        }
    };
    let scope = param(query, "cluster");
    let Some(admin) = endpoint.cluster(scope) else {
        let body = serde_json::json!({"error": format!("pgrouter serves no cluster {:?}", scope.unwrap_or_default())});
        return Ok(json(StatusCode::NOT_FOUND, body.to_string()));
    };
    let answer = answer(&endpoint, &admin, asked, query).await;
    Ok(shaped(answer, form))
}

/// The full answer to what was asked, as GET (or POST) gives it.
async fn answer(
    endpoint: &Endpoint,
    admin: &Admin,
    asked: Asked<'_>,
    query: Option<&str>,
) -> Reply {
    let port = param(query, "port");
    let scoped = param(query, "cluster").is_some();
    match asked {
        Asked::Page => {
            let status = match scoped {
                true => api::status(admin).1,
                false => api::status_all(endpoint).1,
            };
            let refresh = param(query, "refresh")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let mut r = Response::new(Full::new(Bytes::from(page::render(&status, refresh))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                "text/html; charset=utf-8".parse().expect("static header"),
            );
            r
        }
        Asked::Metrics => {
            let mut r = Response::new(Full::new(Bytes::from(
                endpoint.first.shared.metrics.encode(),
            )));
            r.headers_mut().insert(
                CONTENT_TYPE,
                "text/plain; version=0.0.4".parse().expect("static header"),
            );
            r
        }
        Asked::Health if !scoped => reply(checks::health_all(endpoint)),
        Asked::Health => reply(checks::health(admin)),
        Asked::Liveness => reply(checks::liveness()),
        Asked::Primary => reply(checks::can_route(admin, Port::PRIMARY)),
        Asked::ReadOnly => reply(checks::can_route(admin, Port::REPLICAS)),
        Asked::Replica(filter) if filter.is_empty() => {
            reply(checks::can_route(admin, Port::REPLICAS))
        }
        Asked::Replica(filter) => reply(checks::replica_within(admin, &filter)),
        Asked::Listener(name) => match checks::port_named(admin, name) {
            Some(port) => reply(checks::can_route(admin, port)),
            None => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
        },
        Asked::Status if !scoped => reply(api::status_all(endpoint)),
        Asked::Status => reply(api::status(admin)),
        Asked::Pause => reply(api::pause(admin, port).await),
        Asked::Resume => reply(api::resume(admin, port)),
        Asked::Reload => reply(api::reload(admin).await),
    }
}

/// The answer in the form asked: HEAD keeps it whole (hyper sends the headers and
/// Content-Length without the body); OPTIONS keeps the status only, with `Allow`, as Patroni
/// answers it.
fn shaped(mut reply: Reply, form: Form) -> Reply {
    if form == Form::Options {
        let status = reply.status();
        reply = Response::new(Full::new(Bytes::new()));
        *reply.status_mut() = status;
        reply
            .headers_mut()
            .insert(ALLOW, routes::READ_METHODS.parse().expect("static header"));
    }
    reply
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let Some(token) = admin.shared.config().listen.admin_token.clone() else {
        return true;
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    given
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reply((status, body): (StatusCode, serde_json::Value)) -> Reply {
    json(status, body.to_string())
}

fn json(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    r
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[tokio::test]
    async fn options_keeps_the_status_and_drops_the_body() {
        let get = || {
            reply((
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "x"}),
            ))
        };
        let head = shaped(get(), Form::Head);
        assert_eq!(head.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!head
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
        let options = shaped(get(), Form::Options);
        assert_eq!(options.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(options.headers()[ALLOW], "GET, HEAD, OPTIONS");
        assert!(options
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
    }
}
