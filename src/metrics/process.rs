//! The `process_*` series Prometheus clients export on Linux (CPU seconds, resident memory, open
//! file descriptors, start time), read from `/proc/self` at scrape time. The prometheus crate's
//! own collector needs the `procfs` crate; these few numbers are read here instead.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

/// Linux's fixed user-space clock tick (USER_HZ): `/proc` times are in these.
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self/stat` says, in base units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub threads: i64,
    /// Seconds after boot the process started.
    pub started_after_boot: f64,
    pub virtual_bytes: i64,
}

/// Parses `/proc/<pid>/stat`; the command name, in parentheses, may hold spaces and ')'.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Fields after the name, numbered from 3 (state) as in proc(5).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND,
        threads: field(20)? as i64,
        started_after_boot: field(22)? as f64 / TICKS_PER_SECOND,
        virtual_bytes: field(23)? as i64,
    })
}

/// The resident set in bytes, from `/proc/<pid>/status` (`VmRSS:  1234 kB`).
pub fn parse_rss(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The boot time in Unix seconds, from `/proc/stat` (`btime 1700000000`).
pub fn parse_boot_time(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files, from `/proc/<pid>/limits`; None when unlimited.
pub fn parse_max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `process_*` series, filled from `/proc/self` whenever the registry is gathered.
pub struct ProcessCollector {
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        let int =
            |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help)).expect("valid");
        let c = ProcessCollector {
            cpu: Counter::with_opts(Opts::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            ))
            .expect("valid"),
            resident: int(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_memory: int(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: int("process_open_fds", "Number of open file descriptors."),
            max_fds: int(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            threads: int("process_threads", "Number of OS threads in the process."),
            start_time: Gauge::with_opts(Opts::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            ))
            .expect("valid"),
            descs: Vec::new(),
        };
        let descs = c.parts().iter().flat_map(|m| m.desc()).cloned().collect();
        ProcessCollector { descs, ..c }
    }

    fn parts(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu,
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ]
    }

    /// Reads `/proc/self` into the series; what cannot be read keeps its last value.
    fn update(&self) {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        if let Some(stat) = read("/proc/self/stat").as_deref().and_then(parse_stat) {
            // A counter only goes up: add what was spent since the last scrape.
            let spent = stat.cpu_seconds - self.cpu.get();
            if spent > 0.0 {
                self.cpu.inc_by(spent);
            }
            self.threads.set(stat.threads);
            self.virtual_memory.set(stat.virtual_bytes);
            if let Some(boot) = read("/proc/stat").as_deref().and_then(parse_boot_time) {
                self.start_time.set(boot + stat.started_after_boot);
            }
        }
        if let Some(rss) = read("/proc/self/status").as_deref().and_then(parse_rss) {
            self.resident.set(rss);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // Less the descriptor read_dir holds open itself.
            self.open_fds.set(fds.count() as i64 - 1);
        }
        if let Some(max) = read("/proc/self/limits").as_deref().and_then(parse_max_fds) {
            self.max_fds.set(max);
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.update();
        self.parts().iter().flat_map(|m| m.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed_into_base_units() {
        // A command name with a space and a ')' in it, as proc(5) allows.
        let stat = "4242 (pg router) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2000 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                cpu_seconds: 3.0,
                threads: 7,
                started_after_boot: 123.45,
                virtual_bytes: 104857600,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(
            parse_rss("Name:\tpgrouter\nVmRSS:\t   2048 kB\nThreads: 7\n"),
            Some(2 * 1024 * 1024)
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let c = ProcessCollector::new();
        let registry = prometheus::Registry::new();
        registry.register(Box::new(c)).unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        // Some CPU time to count: 30 ms busy, three clock ticks.
        let busy = std::time::Instant::now();
        while busy.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(busy.elapsed());
        }
        let families = registry.gather();
        drop(file);
        let value = |name: &str| {
            let f = families.iter().find(|f| f.name() == name).expect(name);
            let m = &f.get_metric()[0];
            match name {
                "process_cpu_seconds_total" => m.get_counter().get_value(),
                _ => m.get_gauge().get_value(),
            }
        };
        assert!(value("process_resident_memory_bytes") > 1024.0 * 1024.0);
        // stdin, stdout, stderr and the file held open above, at least.
        assert!(value("process_open_fds") >= 4.0);
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.01);
    }
}
