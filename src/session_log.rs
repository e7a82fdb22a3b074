//! The per-connection log line (`log.connections`): one info line when a client session
//! ends, as HAProxy's session log or pgbouncer's `log_disconnections`, with every field a
//! tracing field so a JSON log (`--log-format json`) has them as keys. Never a password, a
//! secret or a cancel key: only what a `pg_stat_activity` reader could see.

use std::time::Duration;

/// The log target of the line, to filter it (`log.level = "info,pgrouter::connections=off"`).
pub const TARGET: &str = "pgrouter::connections";

/// One client session as it ended.
#[derive(Debug, Clone, Copy)]
pub struct SessionEnd<'a> {
    pub cluster: &'a str,
    /// The client's address and port.
    pub client: &'a str,
    /// The listener it connected to (`primary`, `replicas`, or an extra listener's name).
    pub listener: &'a str,
    pub user: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
    /// The member it was relayed to; for a pooled client, the last one its transactions used
    /// (empty when it ran none).
    pub member: &'a str,
    pub duration: Duration,
    /// Bytes from the client and to it (a pooled client's counted as each of its
    /// transactions ends); None where they are not counted.
    pub bytes: Option<(u64, u64)>,
    /// How it ended: `client_closed`, `server_gone`, `leader_lost`, `drained`, `killed`, ...
    pub end: &'a str,
    /// The SQLSTATE pgrouter (or the member) sent the client as it ended, else empty (and
    /// left out of the line).
    pub sqlstate: &'a str,
}

impl SessionEnd<'_> {
    /// Logs the line at info, under `TARGET`.
    pub fn log(&self) {
        let seconds = (self.duration.as_secs_f64() * 1000.0).round() / 1000.0;
        let (bytes_in, bytes_out) = match self.bytes {
            Some((i, o)) => (Some(i), Some(o)),
            None => (None, None),
        };
        let sqlstate = (!self.sqlstate.is_empty()).then_some(self.sqlstate);
        tracing::info!(
            target: TARGET,
            cluster = self.cluster,
            client = self.client,
            listener = self.listener,
            user = self.user,
            database = self.database,
            application_name = self.application_name,
            member = self.member,
            seconds,
            bytes_in,
            bytes_out,
            end = self.end,
            sqlstate,
            "client session ended"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// A writer the JSON lines land in.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged_json(end: &SessionEnd) -> serde_json::Value {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || end.log());
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn the_line_is_one_json_object_with_every_field() {
        let end = SessionEnd {
            cluster: "main",
            client: "10.0.0.7:51234",
            listener: "primary",
            user: "app",
            database: "shop",
            application_name: "web \"1\"",
            member: "pg1",
            duration: Duration::from_millis(2_345),
            bytes: Some((120, 4096)),
            end: "client_closed",
            sqlstate: "",
        };
        let line = logged_json(&end);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], TARGET);
        let f = &line["fields"];
        assert_eq!(f["message"], "client session ended");
        for (key, value) in [
            ("cluster", "main"),
            ("client", "10.0.0.7:51234"),
            ("listener", "primary"),
            ("user", "app"),
            ("database", "shop"),
            ("application_name", "web \"1\""),
            ("member", "pg1"),
            ("end", "client_closed"),
        ] {
            assert_eq!(f[key], value, "{key} in {line}");
        }
        assert_eq!(f["seconds"], 2.345);
        assert_eq!(f["bytes_in"], 120);
        assert_eq!(f["bytes_out"], 4096);
        assert!(
            f.get("sqlstate").is_none(),
            "nothing told, no sqlstate: {line}"
        );

        // Pooled: no byte counts, rather than zeros that would read as none sent.
        let pooled = logged_json(&SessionEnd {
            bytes: None,
            end: "closed_by_pgrouter",
            sqlstate: "57P01",
            ..end
        });
        let f = &pooled["fields"];
        assert!(
            f.get("bytes_in").is_none() && f.get("bytes_out").is_none(),
            "{pooled}"
        );
        assert_eq!(f["sqlstate"], "57P01");
    }
}
