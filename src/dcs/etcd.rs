//! Keeps a `Topology` fresh from etcd v3: read the cluster's prefix, publish, watch from the
//! next revision; on any error back off with jitter and read the whole prefix again. While etcd
//! is lost, the members' own Patroni keep the view ([`outage`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use rand::Rng;
use tokio::sync::watch;

use super::access::EtcdAccess;
use super::patroni::topology_from_keys;
use super::rest::RestClient;
use super::{outage, DcsHealth};
use crate::metrics::Metrics;
use crate::topology::{Member, Topology};

/// How often a promoting leader's REST API is asked whether it is done.
const PROMOTION_POLL: Duration = Duration::from_millis(100);
/// How often an empty prefix (no Patroni keys) is warned about again.
const EMPTY_WARNING: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd watch canceled ({0})")]
    WatchCanceled(String),
    #[error("etcd watch stream ended")]
    WatchEnded,
}

/// Where to find one Patroni cluster in etcd, and how to reach it and its members.
#[derive(Clone)]
pub struct EtcdSource {
    pub endpoints: Vec<String>,
    /// "/service/demo/"
    pub prefix: String,
    pub scope: String,
    pub access: EtcdAccess,
    pub rest: RestClient,
    /// Where what keeps the view from being read is told.
    pub health: Arc<DcsHealth>,
    /// The router's etcd clients, shared with its other clusters.
    pub connections: Arc<EtcdConnections>,
}

/// The etcd clients of every cluster one router serves: one per endpoint and access (TLS
/// files, user), so clusters in one etcd share its connection, gRPC carrying their reads and
/// watches side by side.
#[derive(Default)]
pub struct EtcdConnections {
    clients: tokio::sync::Mutex<std::collections::HashMap<(String, String), Client>>,
}

impl EtcdConnections {
    /// The client for `endpoint`, connected now if there is none.
    async fn client(&self, endpoint: &str, access: &EtcdAccess) -> Result<Client, DcsError> {
        let key = (endpoint.to_owned(), access.id().to_owned());
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Client::connect([endpoint], Some(access.options())).await?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Drops the client for `endpoint` after a failure: the next read connects afresh (a
    /// cluster still holding it keeps it until its own read fails).
    async fn forget(&self, endpoint: &str, access: &EtcdAccess) {
        let key = (endpoint.to_owned(), access.id().to_owned());
        self.clients.lock().await.remove(&key);
    }
}

impl EtcdSource {
    /// What went wrong reading etcd, in an operator's words: TLS, credentials, permission or
    /// reachability, with the keys to look at.
    fn explain(&self, err: &DcsError) -> String {
        let DcsError::Etcd(e) = err else {
            return err.to_string();
        };
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        let lower = chain.to_ascii_lowercase();
        let user = self.access.user();
        if lower.contains("permission denied") {
            format!(
                "etcd user \"{}\" may not read {} (grant its role read on that prefix): {chain}",
                user.unwrap_or(""),
                self.prefix
            )
        } else if lower.contains("authentication failed") || lower.contains("invalid auth token") {
            format!(
                "etcd refused cluster.etcd_username \"{}\" and its password: {chain}",
                user.unwrap_or("")
            )
        } else if lower.contains("user name is empty") || lower.contains("user name not found") {
            format!("etcd requires authentication: set cluster.etcd_username and cluster.etcd_password: {chain}")
        } else if ["certificate", "tls", "handshake", "ssl", "alert"]
            .iter()
            .any(|w| lower.contains(w))
        {
            format!("TLS with etcd failed (cluster.etcd_ca, etcd_cert, etcd_key): {chain}")
        } else if self.access.tls()
            && [
                "connection closed",
                "canceled",
                "broken pipe",
                "connection reset",
            ]
            .iter()
            .any(|w| lower.contains(w))
        {
            // TLS 1.3: a server that refuses the client's certificate says so after the
            // handshake, and the alert may be lost in the close (seen as a closed stream, a
            // canceled request, a broken pipe or a reset). A stopped etcd refuses the connect
            // instead.
            format!("TLS with etcd failed: etcd closed the connection after the handshake, as it does when it refuses the client certificate (cluster.etcd_cert, etcd_key): {chain}")
        } else {
            format!("cannot read etcd at {}: {chain}", self.endpoints.join(", "))
        }
    }

    /// Tells `health` whether the prefix holds Patroni's keys; warns when it holds none.
    fn check_keys(&self, keys: &BTreeMap<String, Vec<u8>>) {
        if !keys.is_empty() {
            self.health.set(None);
            return;
        }
        let problem = format!(
            "no Patroni keys under {} in etcd: check cluster.scope and cluster.namespace against Patroni's scope and namespace; a Patroni with an `etcd:` section (etcd's v2 API) writes where pgrouter, which reads v3 as Patroni's `etcd3:` does, cannot see",
            self.prefix
        );
        tracing::warn!(cluster = %self.scope, "{problem}");
        self.health.set(Some(problem));
    }
}

/// Runs until the receiver side is gone.
///
/// While etcd cannot be read, the leader of the last view keeps its writes only as long as its
/// own Patroni confirms, every [`outage::CHECK`], that it is still the primary (Patroni demotes
/// it after `retry_timeout` without etcd, unless failsafe mode keeps it). The first failed
/// confirmation takes the leader out of the view: new writes are held, then refused with 57P03,
/// and sessions on it are closed. Replicas serve reads while their own Patroni reports them
/// within `max_replica_lag`. A full read of the keys, once etcd answers again, replaces the view.
pub async fn watch_cluster(
    source: EtcdSource,
    tx: watch::Sender<Arc<Topology>>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut first = true;
    // The endpoint the last good read went through: tried first next time.
    let mut preferred = 0;
    while !tx.is_closed() {
        let after_loss = !first;
        let lost_leader = after_loss.then(|| tx.borrow().leader.clone()).flatten();
        first = false;
        let synced = tokio::select! {
            synced = reconnect(&source, &mut backoff, &mut preferred) => synced,
            never = outage::guard(&source.scope, &source.rest, &tx, lost_leader) => match never {},
        };
        let Err(err) = watch_from(&source, &tx, &metrics, &mut backoff, synced, after_loss).await;
        metrics.dcs_connected.set(0);
        source
            .connections
            .forget(&source.endpoints[preferred], &source.access)
            .await;
        let error = source.explain(&err);
        source.health.set(Some(error.clone()));
        tracing::warn!(
            cluster = %source.scope,
            %error,
            "lost the etcd view; keeping the last leader while its Patroni confirms it, and reconnecting"
        );
    }
}

/// The cluster's keys as read at one revision, with the client that read them.
struct Synced {
    client: Client,
    keys: BTreeMap<String, Vec<u8>>,
    revision: i64,
}

/// Connects and reads the whole prefix, backing off between failed attempts; returns only
/// once a read succeeded. Each attempt tries the endpoints one at a time, `preferred` first,
/// and the client it returns talks to the endpoint that answered only: a client balancing
/// over every endpoint kept sending the watch to a member that was down, and each failure
/// looked like losing etcd although the other members kept the quorum.
async fn reconnect(source: &EtcdSource, backoff: &mut Backoff, preferred: &mut usize) -> Synced {
    let mut delay = Duration::ZERO;
    loop {
        tokio::time::sleep(delay).await;
        match read_cluster_anywhere(source, preferred).await {
            Ok(synced) => return synced,
            Err(err) => {
                delay = backoff.next_delay();
                let error = source.explain(&err);
                source.health.set(Some(error.clone()));
                tracing::warn!(
                    cluster = %source.scope,
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot read the cluster from etcd"
                );
            }
        }
    }
}

/// [`read_cluster`] through each endpoint in turn from `preferred`, which becomes the one that
/// answered; the last endpoint's error when none did.
async fn read_cluster_anywhere(
    source: &EtcdSource,
    preferred: &mut usize,
) -> Result<Synced, DcsError> {
    let count = source.endpoints.len();
    let mut last = None;
    for i in (0..count).map(|k| (*preferred + k) % count) {
        let endpoint = &source.endpoints[i];
        match read_cluster(source, endpoint).await {
            Ok(synced) => {
                *preferred = i;
                return Ok(synced);
            }
            Err(e) => {
                source.connections.forget(endpoint, &source.access).await;
                last = Some(e);
            }
        }
    }
    // Validation refuses a config without an endpoint, so one was tried.
    Err(last.expect("cluster.etcd has at least one endpoint"))
}

async fn read_cluster(source: &EtcdSource, endpoint: &str) -> Result<Synced, DcsError> {
    let mut client = source.connections.client(endpoint, &source.access).await?;
    let resp = client
        .get(
            source.prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let keys = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((relative_key(&source.prefix, kv.key())?, kv.value().to_vec())))
        .collect();
    Ok(Synced {
        client,
        keys,
        revision,
    })
}

/// Publishes a full read, then follows the watch from the next revision. Returns only on failure.
/// After etcd was lost, the leader the read names takes writes only once its REST API confirms.
async fn watch_from(
    source: &EtcdSource,
    tx: &watch::Sender<Arc<Topology>>,
    metrics: &Metrics,
    backoff: &mut Backoff,
    synced: Synced,
    after_loss: bool,
) -> Result<Infallible, DcsError> {
    let Synced {
        mut client,
        mut keys,
        revision,
    } = synced;
    let mut promotion = Promotion {
        confirmed: None,
        unverified: after_loss
            .then(|| topology_from_keys(&source.scope, &keys).leader)
            .flatten(),
    };
    metrics.dcs_event_seen();
    publish(source, tx, &keys, &mut promotion);
    tracing::info!(cluster = %source.scope, revision, keys = keys.len(), "read cluster state from etcd");
    source.check_keys(&keys);
    let mut warned_empty = tokio::time::Instant::now();

    let mut stream = client
        .watch(
            source.prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    backoff.reset();
    metrics.dcs_connected.set(1);
    loop {
        let promoting = tx.borrow().promoting_leader().cloned();
        let recheck = warned_empty + EMPTY_WARNING;
        tokio::select! {
            resp = stream.message() => {
                let was_empty = keys.is_empty();
                apply_events(&source.prefix, resp?.ok_or(DcsError::WatchEnded)?, &mut keys)?;
                metrics.dcs_event_seen();
                if was_empty != keys.is_empty() {
                    source.check_keys(&keys);
                    warned_empty = tokio::time::Instant::now();
                }
            }
            () = tokio::time::sleep_until(recheck), if keys.is_empty() => {
                source.check_keys(&keys);
                warned_empty = tokio::time::Instant::now();
            }
            name = confirm_promotion(&source.rest, promoting) => {
                tracing::info!(cluster = %source.scope, member = %name, "new leader confirmed writable by its Patroni REST API");
                promotion.confirmed = Some(name);
            }
        }
        let received = std::time::Instant::now();
        if publish(source, tx, &keys, &mut promotion) {
            metrics
                .route_switch_seconds
                .observe(received.elapsed().as_secs_f64());
        }
    }
}

/// Applies one watch response to the key map; a canceled watch (compaction) is an error.
fn apply_events(
    prefix: &str,
    resp: etcd_client::WatchResponse,
    keys: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), DcsError> {
    if resp.canceled() {
        let reason = match resp.compact_revision() {
            0 => resp.cancel_reason().to_owned(),
            rev => format!("compacted at revision {rev}"),
        };
        return Err(DcsError::WatchCanceled(reason));
    }
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let Some(key) = relative_key(prefix, kv.key()) else {
            continue;
        };
        match event.event_type() {
            EventType::Put => keys.insert(key, kv.value().to_vec()),
            EventType::Delete => keys.remove(&key),
        };
    }
    Ok(())
}

/// Resolves with the member's name once its REST API reports it writable; never without one.
async fn confirm_promotion(rest: &RestClient, promoting: Option<Member>) -> String {
    let Some(Member {
        name,
        api_url: Some(api_url),
        ..
    }) = promoting
    else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PROMOTION_POLL).await;
        if rest.is_writable(&api_url, PROMOTION_POLL * 5).await {
            return name;
        }
    }
}

fn relative_key(prefix: &str, key: &[u8]) -> Option<String> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(prefix)
        .map(str::to_owned)
}

/// What the REST API said about the leader key's holder, kept while it holds the key.
struct Promotion {
    /// Confirmed writable by its REST API.
    confirmed: Option<String>,
    /// Named by the first read after etcd was lost; not trusted until confirmed.
    unverified: Option<String>,
}

/// Sends a new topology only when it differs, so sessions wake only for real changes. What the
/// REST API said is kept only while its member holds the leader key. Returns whether the
/// routing of writes changed (leader key holder or writable leader).
fn publish(
    source: &EtcdSource,
    tx: &watch::Sender<Arc<Topology>>,
    keys: &BTreeMap<String, Vec<u8>>,
    promotion: &mut Promotion,
) -> bool {
    let mut next = topology_from_keys(&source.scope, keys);
    if next.leader != promotion.confirmed {
        promotion.confirmed = None;
    }
    if next.leader != promotion.unverified {
        promotion.unverified = None;
    }
    next.confirmed_primary = promotion.confirmed.clone();
    next.unverified_leader = promotion.unverified.clone();
    let writer = |t: &Topology| {
        (
            t.leader.clone(),
            t.writable_leader().map(|m| m.name.clone()),
        )
    };
    let mut rerouted = false;
    tx.send_if_modified(|current| {
        if **current == next {
            return false;
        }
        rerouted = writer(current) != writer(&next);
        *current = Arc::new(next);
        true
    });
    rerouted
}

/// Exponential backoff with full jitter, so many routers do not reconnect in step.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        rand::thread_rng().gen_range(self.min / 2..=ceiling.max(self.min))
    }

    fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(50)));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert_eq!(b.current, Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn keys_outside_the_prefix_are_ignored() {
        assert_eq!(
            relative_key("/service/demo/", b"/service/demo/members/pg0").as_deref(),
            Some("members/pg0")
        );
        assert_eq!(
            relative_key("/service/demo/", b"/service/demo2/leader"),
            None
        );
    }
}
