//! The client's SQL-level prepared statements (`PREPARE name AS ...`) in transaction mode.
//! PostgreSQL keeps them for the session; a pooled client's next transaction may run on
//! another server connection. pgrouter keeps each one's PREPARE and, before a simple Query
//! that names one the connection lacks, prepares it there again; the connection is given back
//! without them, so they follow their client and never answer another.

use bytes::Bytes;

/// The most statements kept per client; one more is not carried (its connection is closed
/// at release instead).
const KEPT: usize = 100;
/// The longest PREPARE kept.
const LONGEST: usize = 64 * 1024;

#[derive(Default)]
pub struct SqlPrepared {
    /// By name as PostgreSQL reads it, the client's whole PREPARE query.
    carried: Vec<(String, Bytes)>,
    /// Prepared on the server connection held now (by the client, or again by pgrouter).
    here: Vec<String>,
    /// Prepared again here by pgrouter, and that failed (its table is gone, say).
    missing: Vec<String>,
}

impl SqlPrepared {
    /// Keeps a PREPARE the client ran here; false when it cannot be carried (too many, too
    /// long). A second one of a name is not kept: PostgreSQL refuses it with 42P05.
    pub fn keep(&mut self, name: &str, sql: &[u8]) -> bool {
        if self.carries(name) {
            return true;
        }
        if sql.len() > LONGEST || self.carried.len() >= KEPT {
            return false;
        }
        self.carried
            .push((name.to_owned(), Bytes::copy_from_slice(sql)));
        self.here.push(name.to_owned());
        true
    }

    /// Whether the client has any.
    pub fn any(&self) -> bool {
        !self.carried.is_empty()
    }

    pub fn carries(&self, name: &str) -> bool {
        self.carried.iter().any(|(n, _)| n == name)
    }

    /// Forgets statement `name` (DEALLOCATE); whether the connection held now has it to drop.
    pub fn drop(&mut self, name: &str) -> bool {
        self.carried.retain(|(n, _)| n != name);
        let here = self.here.iter().any(|n| n == name) && !self.missing.iter().any(|n| n == name);
        self.here.retain(|n| n != name);
        self.missing.retain(|n| n != name);
        here
    }

    /// DEALLOCATE ALL, DISCARD ALL.
    pub fn clear(&mut self) {
        self.carried.clear();
    }

    /// The carried statements `sql` names that the connection held now lacks: to prepare
    /// there first (by name, their PREPARE); counted as here from now on.
    pub fn needed_by(&mut self, sql: &[u8]) -> Vec<(String, Bytes)> {
        if self.carried.is_empty() {
            return Vec::new();
        }
        let text = String::from_utf8_lossy(sql).to_lowercase();
        let mut needed = Vec::new();
        for (name, prepare) in &self.carried {
            let lacking = !self.here.contains(name) || self.missing.contains(name);
            if lacking && names(&text, &name.to_lowercase()) {
                needed.push((name.clone(), prepare.clone()));
            }
        }
        for (name, _) in &needed {
            self.missing.retain(|n| n != name);
            if !self.here.contains(name) {
                self.here.push(name.clone());
            }
        }
        needed
    }

    /// pgrouter's PREPARE of `name` failed here.
    pub fn failed(&mut self, name: String) {
        self.missing.push(name);
    }

    /// The DEALLOCATEs that give the connection held now back without the client's
    /// statements; the next connection starts without them.
    pub fn take_cleanup(&mut self) -> Vec<String> {
        let missing = std::mem::take(&mut self.missing);
        std::mem::take(&mut self.here)
            .into_iter()
            .filter(|name| !missing.contains(name) && self.carries(name))
            .map(|name| format!("DEALLOCATE \"{}\"", name.replace('"', "\"\"")))
            .collect()
    }

    /// The connection is gone (closed): nothing of the client's is on the next one.
    pub fn forget_connection(&mut self) {
        self.here.clear();
        self.missing.clear();
    }
}

/// Whether lower-case `text` has `name` where a word starts and ends.
fn names(text: &str, name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_prepared_again_where_it_is_named_and_lacking() {
        let mut s = SqlPrepared::default();
        assert!(s.keep("add", b"PREPARE add AS SELECT 1"));
        assert!(s.needed_by(b"EXECUTE add").is_empty(), "prepared here");
        assert_eq!(s.take_cleanup(), vec!["DEALLOCATE \"add\"".to_owned()]);
        assert!(s.needed_by(b"select 1").is_empty(), "not named");
        assert!(s.needed_by(b"EXECUTE adder").is_empty(), "another name");
        let needed = s.needed_by(b"EXECUTE ADD(1)");
        assert_eq!(needed.len(), 1);
        assert!(s.needed_by(b"EXECUTE add").is_empty(), "here now");
        s.failed("add".to_owned());
        assert!(!s.drop("add"), "nothing to drop: its PREPARE failed here");
        assert!(s.take_cleanup().is_empty());
        assert!(!s.carries("add"));
    }
}
