//! The client parameters pgrouter carries over to whichever server connection runs a
//! transaction, held by position: comparing what a client wants with what a server has
//! before every transaction is six string comparisons, with no hashing.

use std::collections::HashMap;

/// The parameters, in the order `Tracked` holds them.
pub const TRACKED: [&str; 6] = [
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
];

/// Tracked parameters a client set itself, by name, as the server reported them.
pub type Vars = Vec<(&'static str, String)>;

/// The position of `name` in [`TRACKED`], spelled as the server reports it.
pub fn position(name: &str) -> Option<usize> {
    TRACKED.iter().position(|t| *t == name)
}

/// Whether PostgreSQL reports `value` for `name` exactly as a client sent it, so a client can be
/// told it without asking a server: an application_name of printable ASCII shorter than
/// NAMEDATALEN (PostgreSQL turns other bytes into '?' and truncates longer names). Every other
/// parameter has a spelling of the server's own (`utf8` is reported as `UTF8`, `iso` as
/// `ISO, MDY`).
pub fn reported_as_sent(name: &str, value: &str) -> bool {
    name == "application_name" && value.len() < 64 && value.bytes().all(|b| (32..=126).contains(&b))
}

/// A value for each tracked parameter, where known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracked([Option<String>; TRACKED.len()]);

impl Tracked {
    /// The tracked parameters among a server's ParameterStatus values.
    pub fn from_params(params: &HashMap<String, String>) -> Tracked {
        Tracked(TRACKED.map(|name| params.get(name).cloned()))
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        self.0[i].as_deref()
    }

    /// Records a ParameterStatus (other parameters are ignored); whether a value changed.
    pub fn update(&mut self, name: &str, value: &str) -> bool {
        match position(name) {
            Some(i) if self.0[i].as_deref() != Some(value) => {
                self.0[i] = Some(value.to_owned());
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_short_application_name_is_reported_as_sent() {
        assert!(reported_as_sent("application_name", "pgbench"));
        assert!(reported_as_sent("application_name", ""));
        assert!(reported_as_sent("application_name", &"a".repeat(63)));
        assert!(!reported_as_sent("application_name", &"a".repeat(64)));
        assert!(!reported_as_sent("application_name", "caf\u{e9}"));
        assert!(!reported_as_sent("application_name", "tab\there"));
        assert!(!reported_as_sent("client_encoding", "UTF8"));
        assert!(!reported_as_sent("DateStyle", "ISO, MDY"));
    }

    #[test]
    fn holds_only_the_tracked_parameters_by_position() {
        let params = HashMap::from([
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("server_version".to_owned(), "15.4".to_owned()),
        ]);
        let mut t = Tracked::from_params(&params);
        assert_eq!(t.get(position("TimeZone").unwrap()), Some("UTC"));
        assert_eq!(t.get(position("DateStyle").unwrap()), None);
        t.update("DateStyle", "ISO, MDY");
        t.update("server_version", "16");
        t.update("datestyle", "German");
        assert_eq!(t.get(1), Some("ISO, MDY"));
        assert_eq!(position("server_version"), None);
    }
}
