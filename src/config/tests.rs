//! The configuration's parsing and validation, through `Config::from_toml`.

use super::*;

const MINIMAL: &str = "[cluster]\nscope = \"demo\"\netcd = [\"127.0.0.1:2379\"]\n";

fn err(text: &str) -> String {
    Config::from_toml(text).unwrap_err().to_string()
}

#[test]
fn the_example_config_parses() {
    let text = include_str!("../../config/pgrouter.toml");
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.cluster.scope, "demo");
    assert_eq!(config.key_prefix(), "/service/demo/");
    assert_eq!(config.routing.max_replica_lag, ByteSize(16 * 1024 * 1024));
    assert_eq!(config.routing.hold_timeout.0, Duration::from_secs(10));
}

#[test]
fn defaults_fill_what_is_left_out() {
    let config = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(config.cluster.namespace, "/service");
    assert_eq!(config.listen, ListenConfig::default());
    assert_eq!(config.routing, RoutingConfig::default());
}

#[test]
fn tcp_keepalive_defaults_and_bounds() {
    let config = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(config.tcp, TcpConfig::default());
    assert!(config.tcp.keepalive);
    assert_eq!(config.tcp.keepalive_idle.0, Duration::from_secs(60));
    let config = Config::from_toml(&format!(
        "{MINIMAL}[tcp]\nkeepalive_idle = \"2s\"\nkeepalive_interval = \"1s\"\nkeepalive_count = 3\nuser_timeout = \"30s\"\n"
    ))
    .unwrap();
    assert_eq!(config.tcp.keepalive_count, 3);
    assert_eq!(config.tcp.user_timeout.0, Duration::from_secs(30));
    let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_idle = \"500ms\"\n"));
    assert!(
        e.starts_with("tcp.keepalive_idle: must be whole seconds"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_interval = \"1.5s\"\n"));
    assert!(
        e.starts_with("tcp.keepalive_interval: must be whole"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_idle = \"10h\"\n"));
    assert!(e.starts_with("tcp.keepalive_idle: "), "{e}");
    let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_count = 0\n"));
    assert!(e.starts_with("tcp.keepalive_count: must be from 1"), "{e}");
    let e = err(&format!("{MINIMAL}[tcp]\nkeepalive_count = 128\n"));
    assert!(e.starts_with("tcp.keepalive_count: "), "{e}");
    let e = err(&format!("{MINIMAL}[tcp]\nuser_timeout = \"100000h\"\n"));
    assert!(e.starts_with("tcp.user_timeout: "), "{e}");
    let e = err(&format!("{MINIMAL}[tcp]\nkeepalives = true\n"));
    assert!(e.starts_with("tcp.keepalives: unknown field"), "{e}");
}

#[test]
fn worker_count() {
    let explicit = RuntimeConfig { worker_threads: 3 };
    assert_eq!(explicit.workers(), 3);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(RuntimeConfig::default().workers(), cores);
    assert_eq!(Config::from_toml(MINIMAL).unwrap().runtime.workers(), cores);
}

#[test]
fn unknown_keys_are_named() {
    let e = err(&format!("{MINIMAL}[routing]\nhold_timout = \"1s\"\n"));
    assert!(e.starts_with("routing.hold_timout: unknown field"), "{e}");
}

#[test]
fn bad_units_are_named() {
    let e = err(&format!(
        "{MINIMAL}[routing]\nhold_timeout = \"10 parsecs\"\n"
    ));
    assert!(e.starts_with("routing.hold_timeout: "), "{e}");
    let e = err(&format!("{MINIMAL}[routing]\nmax_replica_lag = \"16XB\"\n"));
    assert!(e.starts_with("routing.max_replica_lag: "), "{e}");
}

#[test]
fn peers_name_this_router_in_one_list() {
    let peered = Config::from_toml(&format!(
        "{MINIMAL}[peers]\nid = 2\nrouters = [\"10.0.0.1:5000\", \"router2.internal:5000\"]\n"
    ))
    .unwrap();
    assert_eq!(peered.peers.id, 2);
    assert_eq!(
        Config::from_toml(MINIMAL).unwrap().peers,
        PeersConfig::default()
    );
    let cases = [
        ("id = 1\n", "peers.routers: must list every router"),
        (
            "routers = [\"10.0.0.1:5000\"]\n",
            "peers.id: must name this router",
        ),
        (
            "id = 3\nrouters = [\"10.0.0.1:5000\", \"10.0.0.2:5000\"]\n",
            "peers.id: 3 is past the 2 routers",
        ),
        (
            "id = 1\nrouters = [\"10.0.0.1\"]\n",
            "peers.routers: \"10.0.0.1\" is not host:port",
        ),
        (
            "id = 1\nrouters = [\"http://10.0.0.1:5000\"]\n",
            "peers.routers: \"http://10.0.0.1:5000\" is not host:port",
        ),
        ("id = -1\n", "peers.id: invalid value"),
    ];
    for (peers, want) in cases {
        let e = err(&format!("{MINIMAL}[peers]\n{peers}"));
        assert!(e.starts_with(want), "{peers:?}: {e}");
    }
    let many: Vec<String> = (0..256)
        .map(|i| format!("\"10.0.{}.{}:5000\"", i / 250, i % 250))
        .collect();
    let e = err(&format!(
        "{MINIMAL}[peers]\nid = 1\nrouters = [{}]\n",
        many.join(",")
    ));
    assert!(e.starts_with("peers.routers: at most 255"), "{e}");
}

#[test]
fn bad_values_are_refused_with_key_and_reason() {
    let e = err(&format!(
        "{MINIMAL}[routing]\nreplica_fallback = \"maybe\"\n"
    ));
    assert!(
        e.starts_with("routing.replica_fallback: unknown variant"),
        "{e}"
    );
    let e = err("[cluster]\nscope = \"demo\"\netcd = []\n");
    assert_eq!(
        e,
        "cluster.etcd: needs at least one endpoint (or cluster.source = \"patroni\" with cluster.patroni)"
    );
    let e = err(&format!(
        "{MINIMAL}[listen]\nprimary_pool_mode = \"transaction\"\n"
    ));
    assert!(
        e.starts_with("listen.primary_pool_mode: pooled modes authenticate"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[listen]\nreplicas_pool_mode = \"statement\"\n"
    ));
    assert!(
        e.starts_with("listen.replicas_pool_mode: unknown variant"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[pool]\npool_size = 2\nmin_pool_size = 3\n"
    ));
    assert!(e.starts_with("pool.min_pool_size: must not exceed"), "{e}");
    let e = err(&format!("{MINIMAL}[pool]\nmessage_memory = \"64kB\"\n"));
    assert_eq!(e, "pool.message_memory: must be at least 1MB");
    let e = err(&format!(
        "{MINIMAL}[auth]\nauth_file = \"/x\"\nauth_user = \"a\"\nauth_query = \"select 1\"\n"
    ));
    assert!(e.starts_with("auth.auth_query: must take"), "{e}");
    let e = err(&format!("{MINIMAL}[tls]\nmode = \"require\"\n"));
    assert!(e.starts_with("tls.cert: required"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[upstream_tls]\nsslmode = \"verify-full\"\n"
    ));
    assert!(e.starts_with("upstream_tls.root_ca: required"), "{e}");
    let e = err(&format!("{MINIMAL}[upstream_tls]\nsslmode = \"verify\"\n"));
    assert!(
        e.starts_with("upstream_tls.sslmode: unknown variant"),
        "{e}"
    );
    let e = err("[cluster]\nscope = \"demo\"\netcd = [\"nohost\"]\n");
    assert!(e.starts_with("cluster.etcd: \"nohost\""), "{e}");
    let e = err(&format!(
        "{MINIMAL}[listen]\nprimary = \"127.0.0.1:6000\"\nreplicas = \"127.0.0.1:6000\"\n"
    ));
    assert!(e.starts_with("listen.replicas: must differ"), "{e}");
    let e = err(&format!("{MINIMAL}[listen]\nprimary = \"localhost\"\n"));
    assert!(e.starts_with("listen.primary: "), "{e}");
    let e = err(&format!("{MINIMAL}[listen]\nadmin = \"0.0.0.0:8080\"\n"));
    assert!(
        e.starts_with("listen.admin_token: required when listen.admin"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[listen]\nadmin = \"127.0.0.1:5000\"\n"));
    assert!(e.starts_with("listen.admin: must differ"), "{e}");
    let e = err(&format!("{MINIMAL}[log]\nlevel = \"info,=[\"\n"));
    assert!(e.starts_with("log.level: "), "{e}");
    let e = err(&format!(
        "{MINIMAL}[routing]\nhold_timeout = \"1s\"\nhold_timeout = \"2s\"\n"
    ));
    assert!(e.starts_with("line 6: duplicate key"), "{e}");
    let e = err("[cluster]\nscope = \"demo\"\n");
    assert!(
        e.starts_with("cluster.etcd: needs at least one endpoint"),
        "{e}"
    );
}

#[test]
fn extra_listeners_with_their_rules() {
    let config = Config::from_toml(&format!(
        "{MINIMAL}[routing]\nmax_replica_delay = \"3s\"\nbalance = \"leastconn\"\nweight_tag = \"weight\"\n[routing.weights]\npg1 = 3\n\
         [listeners.sync]\nlisten = \"127.0.0.1:5003\"\nrole = \"sync\"\nmax_replica_lag = \"1MB\"\nfallback = \"primary\"\n\
         [listeners.zone-b]\nlisten = \"127.0.0.1:5004\"\nrole = \"replica\"\ntags = {{ zone = \"b\", nofailover = false, prio = 2 }}\nbalance = \"roundrobin\"\n"
    ))
    .unwrap();
    let names: Vec<&str> = config.client_listeners().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["primary", "replicas", "sync", "zone-b"]);
    let sync = config.rules(2);
    assert_eq!((sync.name, sync.role), ("sync", Selector::Synchronous));
    assert_eq!(sync.max_lag, 1 << 20);
    assert_eq!(
        sync.max_delay,
        Duration::from_secs(3),
        "routing's by default"
    );
    assert_eq!(sync.balance, Balance::Leastconn);
    assert_eq!(sync.fallback, ReplicaFallback::Primary);
    let zone = config.rules(3);
    assert_eq!(zone.balance, Balance::Roundrobin);
    assert_eq!(
        zone.fallback,
        ReplicaFallback::Reject,
        "extra listeners refuse by default"
    );
    let tags: Vec<(&str, &str)> = zone
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.0.as_str()))
        .collect();
    assert_eq!(
        tags,
        [("nofailover", "false"), ("prio", "2"), ("zone", "b")]
    );
    assert_eq!(config.rules(1).role, Selector::Replica);
    assert_eq!(config.rules(0).role, Selector::Primary);
    let no_tags = Default::default();
    assert_eq!(config.weight("pg1", &no_tags), 3);
    let tagged = [("weight".to_owned(), "5".to_owned())].into();
    assert_eq!(config.weight("pg2", &tagged), 5);
    assert_eq!(config.weight("pg2", &no_tags), 1);
}

#[test]
fn bad_listeners_are_refused_with_their_key() {
    let listener = |body: &str| err(&format!("{MINIMAL}[listeners.extra]\n{body}"));
    let e = listener("listen = \"127.0.0.1:5001\"\nrole = \"replica\"\n");
    assert_eq!(
        e,
        "listeners.extra.listen: 127.0.0.1:5001 is already listen.replicas"
    );
    let e = listener("listen = \"127.0.0.1:6000\"\nrole = \"standby\"\n");
    assert!(
        e.starts_with("listeners.extra.role: unknown variant `standby`"),
        "{e}"
    );
    let e = listener("listen = \"127.0.0.1:6000\"\nrole = \"replica\"\nlag = \"1MB\"\n");
    assert!(
        e.starts_with("listeners.extra.lag: unknown field `lag`"),
        "{e}"
    );
    let e = listener("listen = \"127.0.0.1:6000\"\nrole = \"primary\"\ntags = { zone = \"a\" }\n");
    assert!(
        e.starts_with("listeners.extra.tags: a primary listener"),
        "{e}"
    );
    let e =
        listener("listen = \"127.0.0.1:6000\"\nrole = \"replica\"\npool_mode = \"transaction\"\n");
    assert!(
        e.starts_with("listeners.extra.pool_mode: pooled modes authenticate"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[listeners.replicas]\nlisten = \"127.0.0.1:6000\"\nrole = \"replica\"\n"
    ));
    assert_eq!(
        e,
        "listeners.replicas: \"replicas\" is the name of a built-in listener"
    );
    let e = err(&format!(
        "{MINIMAL}[listeners.Big]\nlisten = \"127.0.0.1:6000\"\nrole = \"replica\"\n"
    ));
    assert!(e.starts_with("listeners.Big: a listener's name is"), "{e}");
    let e = err(&format!(
        "{MINIMAL}[routing]\nlag_check_interval = \"10ms\"\n"
    ));
    assert_eq!(e, "routing.lag_check_interval: must be at least 50ms");
    let e = err(&format!("{MINIMAL}[routing]\nbalance = \"random\"\n"));
    assert!(
        e.starts_with("routing.balance: unknown variant `random`"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[routing.weights]\npg1 = -1\n"));
    assert!(e.starts_with("routing.weights.pg1: "), "{e}");
}

#[test]
fn etcd_tls_and_credentials_are_checked_by_key() {
    let cluster = |extra: &str| {
        format!("[cluster]\nscope = \"demo\"\netcd = [\"https://10.0.0.1:2379\"]\n{extra}")
    };
    let e = err(&cluster(""));
    assert!(
        e.starts_with("cluster.etcd_ca: https://10.0.0.1:2379 is https"),
        "{e}"
    );
    let plain =
        "[cluster]\nscope = \"demo\"\netcd = [\"http://10.0.0.1:2379\"]\netcd_ca = \"/ca.pem\"\n";
    let e = err(plain);
    assert!(
        e.starts_with("cluster.etcd: http://10.0.0.1:2379 is plain http"),
        "{e}"
    );
    let e = err(&cluster("etcd_ca = \"/ca.pem\"\netcd_cert = \"/c.pem\"\n"));
    assert!(
        e.starts_with("cluster.etcd_key: cluster.etcd_cert and cluster.etcd_key go together"),
        "{e}"
    );
    let e = err(&cluster("etcd_ca = \"/ca.pem\"\nrest_key = \"/k.pem\"\n"));
    assert!(e.starts_with("cluster.rest_cert: "), "{e}");
    let e = err(&cluster(
        "etcd_ca = \"/ca.pem\"\netcd_username = \"pgrouter\"\n",
    ));
    assert!(
        e.starts_with("cluster.etcd_password: cluster.etcd_username needs"),
        "{e}"
    );
    let e = err(&cluster("etcd_ca = \"/ca.pem\"\netcd_password = \"x\"\n"));
    assert!(e.starts_with("cluster.etcd_username: "), "{e}");
    let bare = "[cluster]\nscope = \"demo\"\netcd = [\"10.0.0.1:2379\"]\netcd_ca = \"/ca.pem\"\netcd_cert = \"/c.pem\"\netcd_key = \"/k.pem\"\netcd_username = \"u\"\netcd_password = \"p\"\n";
    let config = Config::from_toml(bare).unwrap();
    assert_eq!(config.cluster.etcd_username.as_deref(), Some("u"));
}

#[test]
fn further_clusters_need_their_own_ports_and_scope() {
    let two = |extra: &str| {
        format!("{MINIMAL}[clusters.billing]\nscope = \"billing\"\netcd = [\"127.0.0.1:2379\"]\n{extra}")
    };
    let e = err(&two(""));
    assert!(
        e.starts_with("clusters.billing.primary: a further cluster needs"),
        "{e}"
    );
    let e = err(&two(
        "primary = \"127.0.0.1:5000\"\nreplicas = \"127.0.0.1:6001\"\n",
    ));
    assert!(
        e.starts_with("clusters.billing.primary: 127.0.0.1:5000 is already listen.primary"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[clusters.b]\nscope = \"demo\"\netcd = [\"h:1\"]\nprimary = \"127.0.0.1:6000\"\nreplicas = \"127.0.0.1:6001\"\n"));
    assert!(
        e.starts_with("clusters.b.scope: cluster \"demo\" is already served"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}[clusters.b]\nscope = \"b\"\netcd = [\"https://h:1\"]\nprimary = \"127.0.0.1:6000\"\nreplicas = \"127.0.0.1:6001\"\n"));
    assert!(
        e.starts_with("clusters.b.etcd_ca: https://h:1 is https: set clusters.b.etcd_ca"),
        "{e}"
    );
    let e = err("[cluster]\nscope = \"demo\"\netcd = [\"h:1\"]\nprimary = \"127.0.0.1:6000\"\n");
    assert!(
        e.starts_with("cluster.primary: the first cluster's ports are listen.primary"),
        "{e}"
    );
    let config = Config::from_toml(&two(
        "primary = \"127.0.0.1:6000\"\nreplicas = \"127.0.0.1:6001\"\n",
    ))
    .unwrap();
    let billing = config.for_cluster("billing").unwrap();
    assert_eq!(billing.cluster.scope, "billing");
    assert_eq!(billing.key_prefix(), "/service/billing/");
    assert_eq!(billing.listen.primary.to_string(), "127.0.0.1:6000");
    assert!(billing.clusters.is_empty() && billing.cluster.primary.is_none());
    assert_eq!(billing.listen.admin, config.listen.admin);
}

#[test]
fn admin_tls_takes_its_own_certificate_or_the_tls_one() {
    let e = err(&format!("{MINIMAL}[listen]\nadmin_tls = true\n"));
    assert!(
        e.starts_with("listen.admin_tls: needs listen.admin_cert and listen.admin_key"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[listen]\nadmin_tls = true\nadmin_cert = \"/a.crt\"\n"
    ));
    assert!(
        e.starts_with("listen.admin_key: required with listen.admin_cert"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}[listen]\nadmin_cert = \"/a.crt\"\nadmin_key = \"/a.key\"\n"
    ));
    assert!(
        e.starts_with("listen.admin_cert: set listen.admin_tls"),
        "{e}"
    );
    let own = Config::from_toml(&format!(
        "{MINIMAL}[listen]\nadmin_tls = true\nadmin_cert = \"/a.crt\"\nadmin_key = \"/a.key\"\n[tls]\ncert = \"/t.crt\"\nkey = \"/t.key\"\n"
    ))
    .unwrap();
    let [(cert_key, cert), (key_key, _)] = own.admin_tls_files().unwrap();
    assert_eq!(
        (cert_key, key_key),
        ("listen.admin_cert", "listen.admin_key")
    );
    assert_eq!(cert, std::path::Path::new("/a.crt"));
    // [tls]'s certificate serves the admin endpoint even while tls.mode is "disable".
    let borrowed = Config::from_toml(&format!(
        "{MINIMAL}[listen]\nadmin_tls = true\n[tls]\ncert = \"/t.crt\"\nkey = \"/t.key\"\n"
    ))
    .unwrap();
    let [(cert_key, cert), _] = borrowed.admin_tls_files().unwrap();
    assert_eq!(
        (cert_key, cert),
        ("tls.cert", std::path::Path::new("/t.crt"))
    );
    assert!(Config::from_toml(MINIMAL)
        .unwrap()
        .admin_tls_files()
        .is_none());
}
