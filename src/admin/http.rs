//! The admin endpoint (hyper 1.x): /metrics, /health, /primary, /replica, /status and
//! POST /pause, /resume, /reload. With `listen.admin_token` set, every request needs it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{api, Admin, Endpoint};

pub async fn serve(listener: TcpListener, admin: Arc<Endpoint>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(admin.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
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
    let port = param(query, "port");
    let scope = param(query, "cluster");
    let Some(admin) = endpoint.cluster(scope) else {
        let body = serde_json::json!({"error": format!("pgrouter serves no cluster {:?}", scope.unwrap_or_default())});
        return Ok(json(StatusCode::NOT_FOUND, body.to_string()));
    };
    let admin = &admin;
    let reply = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            for other in endpoint.others() {
                other.shared.metrics.refresh();
            }
            let mut r = Response::new(Full::new(Bytes::from(
                endpoint.first.shared.metrics.encode(),
            )));
            r.headers_mut().insert(
                CONTENT_TYPE,
                "text/plain; version=0.0.4".parse().expect("static header"),
            );
            r
        }
        (&Method::GET, "/health") if scope.is_none() => reply(api::health_all(&endpoint)),
        (&Method::GET, "/health") => reply(api::health(admin)),
        (&Method::GET, "/primary") => reply(api::can_route(admin, crate::route::Port::PRIMARY)),
        (&Method::GET, "/replica") => reply(api::can_route(admin, crate::route::Port::REPLICAS)),
        (&Method::GET, "/status") if scope.is_none() => reply(api::status_all(&endpoint)),
        (&Method::GET, "/status") => reply(api::status(admin)),
        (&Method::POST, "/pause") => reply(api::pause(admin, port).await),
        (&Method::POST, "/resume") => reply(api::resume(admin, port)),
        (&Method::POST, "/reload") => reply(api::reload(admin).await),
        (
            _,
            "/metrics" | "/health" | "/primary" | "/replica" | "/status" | "/pause" | "/resume"
            | "/reload",
        ) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method not allowed"}"#.into(),
        ),
        (&Method::GET, path) => match path
            .strip_prefix("/listener/")
            .and_then(|name| api::port_named(admin, name))
        {
            Some(port) => reply(api::can_route(admin, port)),
            None => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
        },
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    };
    Ok(reply)
}

/// The value of `name` in a query string (`port=primary&cluster=billing`).
fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
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
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(
            param(Some("port=primary&cluster=billing"), "cluster"),
            Some("billing")
        );
        assert_eq!(param(Some("port=primary"), "port"), Some("primary"));
        assert_eq!(param(Some("portx=1"), "port"), None);
        assert_eq!(param(None, "port"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
