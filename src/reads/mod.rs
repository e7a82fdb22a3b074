//! Who serves each listener's reads. The etcd watcher's view goes through here before any
//! session sees it: [`follow`] adds each listener's read set (`standing`), judged from Patroni's
//! roles, tags and synchronous standbys at once, and from lag measured every
//! `routing.lag_check_interval` through the members' REST APIs (`probe`) with hysteresis.
//! The published view changes only when the view from etcd or a member's standing does, not
//! at every lag check.

pub mod probe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::route::Port;
use crate::shared::Shared;
use crate::topology::standing::{bytes_text, Change, Judge, LagSample};
use crate::topology::Topology;
use probe::Probe;

/// Publishes `raw` (the view from etcd) on `tx` with the read sets, until `raw` is closed.
pub async fn follow(
    mut raw: watch::Receiver<Arc<Topology>>,
    tx: watch::Sender<Arc<Topology>>,
    shared: Arc<Shared>,
) {
    let (measured_tx, mut measured) = mpsc::channel(2);
    let checker = tokio::spawn(check_lag(raw.clone(), shared.clone(), measured_tx));
    let mut config = shared.config_changes();
    let ports = shared.ports().len();
    let mut judge = Judge::default();
    let mut samples = None;
    loop {
        let view = raw.borrow_and_update().clone();
        let settings = shared.config();
        let now = Instant::now();
        let changes = match samples.take() {
            Some(s) => judge.measured(s, &view, &settings, ports, now),
            None => judge.judge(&view, &settings, ports, now),
        };
        report(&shared, &view, &judge, &changes);
        let mut published = (*view).clone();
        published.reads = judge.sets().clone();
        tx.send_if_modified(|current| {
            let changed = **current != published;
            if changed {
                *current = Arc::new(published);
            }
            changed
        });
        tokio::select! {
            changed = raw.changed() => if changed.is_err() { break },
            changed = config.changed() => if changed.is_err() { break },
            s = measured.recv() => samples = s,
        }
    }
    checker.abort();
}

/// Measures lag every `routing.lag_check_interval` and sends what it measured.
async fn check_lag(
    raw: watch::Receiver<Arc<Topology>>,
    shared: Arc<Shared>,
    out: mpsc::Sender<BTreeMap<String, LagSample>>,
) {
    let mut probe = Probe::default();
    let rest = shared.rest();
    loop {
        let interval = shared.config().routing.lag_check_interval.0;
        let started = Instant::now();
        let view = raw.borrow().clone();
        // A slow answer may take the whole interval, and never less than a second.
        let timeout = interval.max(Duration::from_secs(1));
        if let Some(samples) = probe.check(&view, &rest, timeout).await {
            if out.send(samples).await.is_err() {
                return;
            }
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

/// Logs and metrics of a judgement: lag per member, standing per listener, and each change.
fn report(shared: &Shared, view: &Topology, judge: &Judge, changes: &[Change]) {
    let metrics = &shared.metrics;
    let ports = shared.ports();
    for c in changes {
        let port = ports[c.port].label();
        if c.serving {
            metrics
                .read_set_changes
                .with_label_values(&[port, &c.member, "in"])
                .inc();
            tracing::info!(
                cluster = %view.scope, listener = port, member = %c.member,
                out_for_seconds = c.after.as_secs_f64(),
                "replica {} serves {port} again{}", c.member, lag_words(judge, &c.member)
            );
        } else {
            metrics
                .read_set_changes
                .with_label_values(&[port, &c.member, "out"])
                .inc();
            let why = c.why.as_ref().map_or_else(String::new, ToString::to_string);
            tracing::info!(
                cluster = %view.scope, listener = port, member = %c.member,
                served_for_seconds = c.after.as_secs_f64(),
                "replica {} leaves {port}: {why}", c.member
            );
        }
    }
    let (sets, latest) = (judge.sets(), judge.latest());
    for m in view.members.values() {
        let name = m.name.as_str();
        let sample = latest.get(name);
        let lag = match sample.and_then(|s| s.bytes) {
            Some(bytes) => Some(bytes),
            None if view.holds_leader_key(name) => Some(0),
            None => view.lag(m),
        };
        let lag = lag.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
        metrics.member_lag_bytes.with_label_values(&[name]).set(lag);
        let delay = sample.and_then(|s| s.delay).unwrap_or_default();
        metrics
            .member_replay_delay_seconds
            .with_label_values(&[name])
            .set(delay.as_secs_f64());
        let serving = |port: &Port| sets.get(port.index(), name).is_some_and(|s| s.serving);
        metrics
            .member_eligible
            .with_label_values(&[name])
            .set(i64::from(serving(&Port::REPLICAS)));
        for port in ports.iter().filter(|p| **p != Port::PRIMARY) {
            metrics
                .member_serving
                .with_label_values(&[port.label(), name])
                .set(i64::from(serving(port)));
        }
    }
    *shared.lags.lock().unwrap_or_else(|p| p.into_inner()) = latest.clone();
}

/// ", replay 1.2 kB behind, delay 0.0s" from the last check, or nothing.
fn lag_words(judge: &Judge, member: &str) -> String {
    let Some(s) = judge.latest().get(member) else {
        return String::new();
    };
    let bytes = s.bytes.map_or("unknown".to_owned(), bytes_text);
    match s.delay {
        Some(d) => format!(" (replay {bytes} behind, delay {:.1}s)", d.as_secs_f64()),
        None => format!(" (replay {bytes} behind)"),
    }
}
