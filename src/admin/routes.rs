//! Which answer an admin request asks for, from its method, path and query alone (no state),
//! so the methods and Patroni's aliases are tested without a router.
//!
//! Read endpoints answer GET, HEAD (headers only) and OPTIONS (the status only), as Patroni's
//! REST API does: HAProxy's `option httpchk` sends OPTIONS unless told otherwise, and
//! Patroni's HAProxy template checks `OPTIONS /primary`.

use hyper::Method;

use crate::units::ByteSize;

/// What a request asks the admin endpoint for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked<'q> {
    /// `/`: the HTML status page.
    Page,
    Metrics,
    /// `/health`, `/readiness`: a live view of the cluster with a known leader.
    Health,
    /// `/liveness`: the process answers.
    Liveness,
    /// `/primary`, `/master`, `/leader`, `/read-write`: the primary listener can route.
    Primary,
    /// `/read-only`: the replicas listener can route (a replica, or the leader by fallback).
    ReadOnly,
    /// `/replica`: the replicas listener can route; with a filter, some replica serving it
    /// passes the filter.
    Replica(Filter),
    /// `/listener/<name>`: that listener can route.
    Listener(&'q str),
    Status,
    Pause,
    Resume,
    Reload,
}

/// Patroni's `/replica?lag=<max-lag>&tag_<key>=<value>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Bytes of replay lag a replica may have (`lag=1048576`, `lag=16MB`).
    pub max_lag: Option<u64>,
    /// Tags a replica must have with these values (`tag_zone=a`), compared as Patroni does.
    pub tags: Vec<(String, String)>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.max_lag.is_none() && self.tags.is_empty()
    }
}

/// How much of the answer goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// GET and POST: status, headers and body.
    Full,
    /// HEAD: the GET's status and headers; hyper leaves the body out.
    Head,
    /// OPTIONS: the GET's status with no body, and `Allow`.
    Options,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed<'q> {
    Answer(Asked<'q>, Form),
    /// 405 with this `Allow`.
    NotAllowed(&'static str),
    /// OPTIONS on an endpoint that takes POST: 204 with this `Allow`.
    Allows(&'static str),
    NotFound,
    BadRequest(String),
}

/// `Allow` of the read endpoints.
pub const READ_METHODS: &str = "GET, HEAD, OPTIONS";
/// `Allow` of pause, resume and reload.
pub const POST_METHODS: &str = "POST, OPTIONS";

/// Decides what `method path?query` asks for.
pub fn route<'q>(method: &Method, path: &'q str, query: Option<&'q str>) -> Routed<'q> {
    let post = match path {
        "/pause" => Some(Asked::Pause),
        "/resume" => Some(Asked::Resume),
        "/reload" => Some(Asked::Reload),
        _ => None,
    };
    if let Some(asked) = post {
        return match *method {
            Method::POST => Routed::Answer(asked, Form::Full),
            Method::OPTIONS => Routed::Allows(POST_METHODS),
            _ => Routed::NotAllowed(POST_METHODS),
        };
    }
    let asked = match path {
        "/" => Asked::Page,
        "/metrics" => Asked::Metrics,
        "/health" | "/readiness" => Asked::Health,
        "/liveness" => Asked::Liveness,
        "/primary" | "/master" | "/leader" | "/read-write" => Asked::Primary,
        "/read-only" => Asked::ReadOnly,
        "/replica" => match filter(query) {
            Ok(f) => Asked::Replica(f),
            Err(e) => return Routed::BadRequest(e),
        },
        "/status" => Asked::Status,
        path => match path.strip_prefix("/listener/") {
            Some(name) if !name.is_empty() && !name.contains('/') => Asked::Listener(name),
            _ => return Routed::NotFound,
        },
    };
    match *method {
        Method::GET => Routed::Answer(asked, Form::Full),
        Method::HEAD => Routed::Answer(asked, Form::Head),
        Method::OPTIONS => Routed::Answer(asked, Form::Options),
        _ => Routed::NotAllowed(READ_METHODS),
    }
}

/// The value of `name` in a query string (`port=primary&cluster=billing`).
pub fn param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `/replica`'s filter from its query; `cluster` is not a filter.
fn filter(query: Option<&str>) -> Result<Filter, String> {
    let mut f = Filter::default();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "lag" {
            let lag = value.parse::<ByteSize>().map_err(|e| format!("lag: {e}"))?;
            f.max_lag = Some(lag.0);
        } else if let Some(tag) = key.strip_prefix("tag_").filter(|t| !t.is_empty()) {
            f.tags.push((tag.to_owned(), value.to_owned()));
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &'static str, query: Option<&'static str>) -> Routed<'static> {
        route(&Method::GET, path, query)
    }

    #[test]
    fn patroni_aliases_name_the_same_checks() {
        for path in ["/primary", "/master", "/leader", "/read-write"] {
            assert_eq!(
                get(path, None),
                Routed::Answer(Asked::Primary, Form::Full),
                "{path}"
            );
        }
        for path in ["/health", "/readiness"] {
            assert_eq!(get(path, None), Routed::Answer(Asked::Health, Form::Full));
        }
        assert_eq!(
            get("/read-only", None),
            Routed::Answer(Asked::ReadOnly, Form::Full)
        );
        assert_eq!(
            get("/liveness", None),
            Routed::Answer(Asked::Liveness, Form::Full)
        );
        assert_eq!(get("/", None), Routed::Answer(Asked::Page, Form::Full));
        assert_eq!(
            get("/listener/sync", None),
            Routed::Answer(Asked::Listener("sync"), Form::Full)
        );
        for path in [
            "/listener/",
            "/listener/a/b",
            "/nope",
            "/primary/",
            "/Primary",
        ] {
            assert_eq!(get(path, None), Routed::NotFound, "{path}");
        }
    }

    #[test]
    fn read_endpoints_answer_get_head_and_options() {
        for path in [
            "/", "/metrics", "/health", "/primary", "/master", "/replica", "/status",
        ] {
            assert!(
                matches!(
                    route(&Method::HEAD, path, None),
                    Routed::Answer(_, Form::Head)
                ),
                "HEAD {path}"
            );
            assert!(
                matches!(
                    route(&Method::OPTIONS, path, None),
                    Routed::Answer(_, Form::Options)
                ),
                "OPTIONS {path}"
            );
            for method in [Method::POST, Method::PUT, Method::DELETE] {
                assert_eq!(
                    route(&method, path, None),
                    Routed::NotAllowed(READ_METHODS),
                    "{method} {path}"
                );
            }
        }
    }

    #[test]
    fn pause_resume_and_reload_take_post_only() {
        assert_eq!(
            route(&Method::POST, "/reload", None),
            Routed::Answer(Asked::Reload, Form::Full)
        );
        assert_eq!(
            route(&Method::POST, "/pause", Some("port=primary")),
            Routed::Answer(Asked::Pause, Form::Full)
        );
        assert_eq!(
            route(&Method::GET, "/resume", None),
            Routed::NotAllowed(POST_METHODS)
        );
        assert_eq!(
            route(&Method::HEAD, "/pause", None),
            Routed::NotAllowed(POST_METHODS)
        );
        assert_eq!(
            route(&Method::OPTIONS, "/pause", None),
            Routed::Allows(POST_METHODS)
        );
    }

    #[test]
    fn replica_filters_as_patroni_takes_them() {
        assert_eq!(
            get("/replica", None),
            Routed::Answer(Asked::Replica(Filter::default()), Form::Full)
        );
        let Routed::Answer(Asked::Replica(f), _) =
            get("/replica", Some("lag=16MB&tag_zone=a&cluster=demo"))
        else {
            panic!("not a replica check");
        };
        assert_eq!(f.max_lag, Some(16 << 20));
        assert_eq!(f.tags, vec![("zone".to_owned(), "a".to_owned())]);
        let Routed::Answer(Asked::Replica(f), _) = get("/replica", Some("lag=1048576")) else {
            panic!("not a replica check");
        };
        assert_eq!(f.max_lag, Some(1 << 20));
        assert!(!f.is_empty());
        assert!(matches!(
            get("/replica", Some("lag=soon")),
            Routed::BadRequest(e) if e.starts_with("lag: invalid size")
        ));
        let Routed::Answer(Asked::Replica(f), _) = get("/replica", Some("cluster=demo")) else {
            panic!("not a replica check");
        };
        assert!(f.is_empty());
    }

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
}
