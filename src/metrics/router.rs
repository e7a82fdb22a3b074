//! The router's own series, one set per process and so without a `cluster` label: build
//! information, `process_*`, the client connection limit, and how the last reload went.

use prometheus::{Gauge, IntGauge, IntGaugeVec, Opts, Registry};

use super::process::ProcessCollector;

/// The process-wide series; cluster series are `Metrics`, in the same registry.
pub struct RouterMetrics {
    /// 1 when the last reload was applied, 0 when it was refused (the running config is
    /// unchanged then). 1 from the start.
    pub reload_success: IntGauge,
    /// When the config in force was loaded: the start, or the last reload applied.
    pub reload_timestamp: Gauge,
    /// `listen.max_client_conn`, shared by every listener and cluster.
    pub max_client_conn: IntGauge,
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl RouterMetrics {
    /// Registers the process-wide series in `registry`: `pgrouter_build_info`, `process_*`,
    /// the limit and the reload gauges (a config loaded now, successfully).
    pub fn register(registry: &Registry, max_client_conn: usize) -> RouterMetrics {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(format!("pgrouter_{name}"), help))
                .expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let build = IntGaugeVec::new(
            Opts::new(
                "pgrouter_build_info",
                "Always 1; the labels name the running build.",
            ),
            &["version", "arch", "os"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build.clone()))
            .expect("unique metric");
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH,
                std::env::consts::OS,
            ])
            .set(1);
        registry
            .register(Box::new(ProcessCollector::new()))
            .expect("unique metric");
        let reload_timestamp = Gauge::with_opts(Opts::new(
            "pgrouter_config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (the start or the last reload applied), in Unix seconds.",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(reload_timestamp.clone()))
            .expect("unique metric");
        let metrics = RouterMetrics {
            reload_success: gauge(
                "config_last_reload_successful",
                "1 when the last reload was applied, 0 when it was refused (the running config is unchanged).",
            ),
            reload_timestamp,
            max_client_conn: gauge(
                "max_client_connections",
                "listen.max_client_conn: client connections allowed across every listener and cluster.",
            ),
        };
        metrics.reloaded(true, max_client_conn);
        metrics
    }

    /// Records a reload's outcome; `max_client_conn` is the limit in force after it.
    pub fn reloaded(&self, applied: bool, max_client_conn: usize) {
        self.reload_success.set(i64::from(applied));
        if applied {
            self.reload_timestamp.set(unix_now());
        }
        self.max_client_conn.set(max_client_conn as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} in {text}"))
    }

    #[test]
    fn build_limits_and_reloads_are_exported_without_a_cluster_label() {
        let registry = Registry::new();
        let before = unix_now();
        let m = RouterMetrics::register(&registry, 500);
        let cluster = super::super::Metrics::in_registry(&registry, Some("main"));
        let text = cluster.encode();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            line(&text, "pgrouter_build_info{").contains(&format!("version=\"{version}\"")),
            "{text}"
        );
        assert!(line(&text, "pgrouter_build_info{").ends_with(" 1"));
        assert_eq!(
            line(&text, "pgrouter_max_client_connections"),
            "pgrouter_max_client_connections 500"
        );
        assert_eq!(
            line(&text, "pgrouter_config_last_reload_successful"),
            "pgrouter_config_last_reload_successful 1"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        let loaded = m.reload_timestamp.get();
        assert!(loaded >= before && loaded <= unix_now());

        // A refused reload: 0, the time of the config in force kept; the limit as it stands.
        m.reloaded(false, 500);
        assert_eq!(m.reload_success.get(), 0);
        assert_eq!(m.reload_timestamp.get(), loaded);
        std::thread::sleep(std::time::Duration::from_millis(5));
        m.reloaded(true, 800);
        assert_eq!(m.reload_success.get(), 1);
        assert!(m.reload_timestamp.get() > loaded);
        assert_eq!(m.max_client_conn.get(), 800);
    }
}
