//! The client's session settings across server connections, as PostgreSQL keeps them for a
//! session of its own:
//!
//! - settings the server reports (`servers::tracked`) are compared with what each connection
//!   reported and SET where they differ;
//! - others (a startup parameter, `options -c`, and SETs of `pool.track_extra_parameters`
//!   such as `search_path`) are recorded on each connection pgrouter set them on
//!   (`ConnState::extra`), applied with `set_config` where they differ, RESET where another
//!   client's are left;
//! - RESET, RESET ALL and DISCARD ALL go back to the client's startup values, not the
//!   server's defaults: once the transaction is over, pgrouter sets the startup values again;
//! - a SET of a carried setting is read back from the server once its transaction is over
//!   (so a rolled-back SET is not carried, and the value is the server's spelling of it).

use bytes::BytesMut;

use super::{Conversation, Expect};
use crate::pool::session::startup_params::StartupSettings;
use crate::pool::statements::SqlEffects;
use crate::protocol::wire;
use crate::servers::conn_state::ConnState;

/// What a query pgrouter added to the client's is for; its answers are not the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Injected {
    /// The client's settings on a connection: a failure is `Heard::set_failed`.
    Settings,
    /// One of the client's SQL-level statements prepared again (its name).
    Prepare(String),
    /// The client's startup values set again after its RESET: the ParameterStatus messages
    /// go to the client, as its own RESET's would directly.
    Restore,
    /// The carried settings of these names read back after a SET: its DataRow is taken.
    Readback(Vec<String>),
}

/// Settings the client's statements touched in the transaction under way.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Touched {
    sets: Vec<String>,
    resets: Vec<String>,
    reset_all: bool,
}

impl Touched {
    fn any(&self) -> bool {
        self.reset_all || !self.sets.is_empty() || !self.resets.is_empty()
    }
}

/// `'text'` as an escape string literal, whatever `standard_conforming_strings` says.
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The query that sets a carried setting for the session, taking its value as a startup
/// parameter or `options -c` would (a list such as `search_path` as written).
fn set_config(name: &str, value: &str) -> String {
    format!(
        "SELECT pg_catalog.set_config({}, {}, false)",
        literal(name),
        literal(value)
    )
}

impl Conversation {
    /// The client's startup values: what RESET goes back to.
    pub fn startup(&self) -> &StartupSettings {
        &self.startup
    }

    /// Notes the settings a statement touches (from its SQL), to settle once its transaction
    /// is over.
    pub(super) fn note_settings(&mut self, e: &SqlEffects) {
        if e.resets_all {
            self.touched.reset_all = true;
            self.touched.resets.clear();
        }
        for name in &e.resets {
            if !self.touched.resets.contains(name) {
                self.touched.resets.push(name.clone());
            }
        }
        for name in &e.sets {
            let carried =
                self.track.iter().any(|t| t == name) || self.extra.iter().any(|(n, _)| n == name);
            if carried && !self.touched.sets.contains(name) {
                self.touched.sets.push(name.clone());
            }
        }
    }

    /// Whether settings touched by the finished transaction are to be settled before the
    /// connection is given back or the client's next transaction runs.
    pub fn settings_due(&self) -> bool {
        self.touched.any() && self.at_rest()
    }

    /// Queues what settles the touched settings: the startup values set again where the
    /// client reset them, then the carried settings it SET read back.
    pub fn settle_settings(&mut self, conn: &mut ConnState, to_server: &mut BytesMut) {
        let touched = std::mem::take(&mut self.touched);
        let reset = |name: &str| touched.reset_all || touched.resets.iter().any(|r| r == name);
        let mut restore = Vec::new();
        for (name, value) in &self.startup.vars {
            if reset(&name.to_ascii_lowercase()) {
                restore.push(format!("SET {name} = {}", literal(value)));
            }
        }
        // A reset setting is its startup value again where it has one (set below), else the
        // server's default: no longer carried.
        let startup_extra = self.startup.extra.clone();
        let mut names: Vec<String> = self
            .extra
            .iter()
            .chain(&conn.extra)
            .chain(&startup_extra)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names.dedup();
        for name in names.iter().filter(|n| reset(n)) {
            let back = startup_extra.iter().find(|(n, _)| n == name);
            for list in [&mut self.extra, &mut conn.extra] {
                list.retain(|(n, _)| n != name);
                list.extend(back.cloned());
            }
            if let Some((_, value)) = back {
                restore.push(set_config(name, value));
            }
        }
        if !restore.is_empty() {
            wire::query(to_server, &restore.join("; "));
            self.expect.push_back(Expect::InjectedQuery);
            self.injected.push_back(Injected::Restore);
        }
        let read: Vec<String> = touched.sets.iter().filter(|n| !reset(n)).cloned().collect();
        if !read.is_empty() {
            let columns: Vec<String> = read
                .iter()
                .map(|n| format!("pg_catalog.current_setting({}, true)", literal(n)))
                .collect();
            wire::query(to_server, &format!("SELECT {}", columns.join(", ")));
            self.expect.push_back(Expect::InjectedQuery);
            self.injected.push_back(Injected::Readback(read));
        }
    }

    /// The DataRow of a read-back: the carried settings' values as the server has them now,
    /// on this connection (NULL: not a setting the server knows; left alone).
    pub(super) fn read_back(&mut self, names: &[String], row: &[u8], conn: &mut ConnState) {
        let mut r = wire::Reader::new(row);
        let Some(count) = r.u16() else { return };
        for name in names.iter().take(usize::from(count)) {
            let Some(len) = r.i32() else { return };
            if len < 0 {
                continue;
            }
            let Some(value) = r.bytes(len as usize) else {
                return;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            for list in [&mut self.extra, &mut conn.extra] {
                match list.iter_mut().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = value.clone(),
                    None => list.push((name.clone(), value.clone())),
                }
            }
        }
    }

    /// The SETs a connection needs for the client's carried settings, appended to `sets`:
    /// `set_config` where they differ, RESET where another client's are left. The connection
    /// records them as applied.
    pub(super) fn sync_extra(&self, conn: &mut ConnState, sets: &mut Vec<String>) {
        for (name, value) in &self.extra {
            if !conn.extra.iter().any(|(n, v)| n == name && v == value) {
                sets.push(set_config(name, value));
            }
        }
        for (name, _) in &conn.extra {
            if !self.extra.iter().any(|(n, _)| n == name) {
                sets.push(format!("RESET {name}"));
            }
        }
        conn.extra = self.extra.clone();
    }
}
