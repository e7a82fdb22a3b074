//! Protocol-level prepared statements under transaction pooling.
//!
//! A client names its statements as it likes ("pdo_stmt_00000001", "_pg3_0", ...), and any
//! server connection may run its next Bind. pgrouter keeps each client's statements by name and
//! prepares them on servers under a name derived from their text and parameter types
//! ("pgr_<hash>"), so identical statements of different clients share one server-side
//! statement, and a Bind on a connection that lacks it is preceded by a Parse pgrouter sends
//! itself (and whose ParseComplete it swallows).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use super::wire::Reader;

pub struct Statement {
    /// Hash of the query text and parameter types: the same statement on every connection.
    pub id: u64,
    /// The name on the server: "pgr_" and the id in hex.
    pub server_name: String,
    /// The Parse body after the statement name: query, NUL, parameter type count and oids.
    pub definition: Bytes,
}

impl Statement {
    pub fn new(definition: Bytes) -> Statement {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        definition.hash(&mut h);
        let id = h.finish();
        Statement {
            id,
            server_name: format!("pgr_{id:016x}"),
            definition,
        }
    }
}

/// One client's named statements.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Bytes, Arc<Statement>>,
}

impl ClientStatements {
    pub fn define(&mut self, name: Bytes, definition: Bytes) -> Arc<Statement> {
        let s = Arc::new(Statement::new(definition));
        self.by_name.insert(name, s.clone());
        s
    }

    pub fn get(&self, name: &[u8]) -> Option<Arc<Statement>> {
        self.by_name.get(name).cloned()
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.by_name.remove(name)
    }

    pub fn clear(&mut self) {
        self.by_name.clear()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// A Parse body split into the statement name and the rest.
pub fn split_parse(body: &Bytes) -> Option<(Bytes, Bytes)> {
    let mut r = Reader::new(body);
    let name = r.cstr()?;
    let name_len = name.len();
    Some((body.slice(..name_len), body.slice(name_len + 1..)))
}

/// The query text of a Parse definition.
pub fn definition_query(definition: &[u8]) -> &[u8] {
    Reader::new(definition).cstr().unwrap_or_default()
}

/// What a client's SQL means for pooling, statement by statement (a rough split on ';' is
/// enough for the commands looked for, which clients send alone).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SqlEffects {
    /// LISTEN: the client keeps its server connection until UNLISTEN * or disconnect.
    pub listen: bool,
    pub unlisten_all: bool,
    /// DEALLOCATE ALL or DISCARD ALL: every statement on the server connection is gone.
    pub drops_all_statements: bool,
    /// `DEALLOCATE [PREPARE] name` of one statement, when it is the whole query.
    pub deallocate: Option<String>,
}

pub fn sql_effects(sql: &[u8]) -> SqlEffects {
    let mut e = SqlEffects::default();
    // Most statements mention none of the commands: no allocation for them.
    let words: [&[u8]; 3] = [b"listen", b"deallocate", b"discard"];
    if !words.iter().any(|w| mentions(sql, w)) {
        return e;
    }
    let text = String::from_utf8_lossy(sql);
    let parts: Vec<String> = text
        .split(';')
        .map(|s| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_lowercase()
        })
        .filter(|s| !s.is_empty())
        .collect();
    for p in &parts {
        if p.starts_with("listen ") {
            e.listen = true;
        } else if p == "unlisten *" {
            e.unlisten_all = true;
        } else if p == "deallocate all" || p == "deallocate prepare all" || p == "discard all" {
            e.drops_all_statements = true;
        }
    }
    if let [only] = parts.as_slice() {
        let name = only
            .strip_prefix("deallocate prepare ")
            .or_else(|| only.strip_prefix("deallocate "));
        if let Some(name) = name.filter(|n| *n != "all" && !n.contains(' ')) {
            // The name as the client wrote it (case kept, quotes removed).
            let original = text.trim().trim_end_matches(';').trim();
            let raw = original.rsplit(' ').next().unwrap_or(name);
            e.deallocate = Some(raw.trim_matches('"').to_owned());
        }
    }
    e
}

/// ASCII case-insensitive substring test.
fn mentions(text: &[u8], word: &[u8]) -> bool {
    text.windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_definition_same_server_name() {
        let a = Statement::new(Bytes::from_static(b"select $1\0\0\x01\0\0\0\x17"));
        let b = Statement::new(Bytes::from_static(b"select $1\0\0\x01\0\0\0\x17"));
        let c = Statement::new(Bytes::from_static(b"select $1\0\0\0"));
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert!(a.server_name.starts_with("pgr_") && a.server_name.len() == 20);
    }

    #[test]
    fn parse_is_split_at_the_name() {
        let body = Bytes::from_static(b"pdo_stmt_1\0select 1\0\0\0");
        let (name, def) = split_parse(&body).unwrap();
        assert_eq!(&name[..], b"pdo_stmt_1");
        assert_eq!(&def[..], b"select 1\0\0\0");
        assert_eq!(definition_query(&def), b"select 1");
    }

    #[test]
    fn sql_that_matters_to_pooling() {
        assert!(sql_effects(b"LISTEN jobs").listen);
        assert!(sql_effects(b"select 1; listen  x;").listen);
        let reset =
            sql_effects(b"SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;");
        assert!(reset.unlisten_all && !reset.listen && reset.deallocate.is_none());
        assert!(sql_effects(b"DEALLOCATE ALL").drops_all_statements);
        assert!(sql_effects(b"discard all").drops_all_statements);
        assert_eq!(
            sql_effects(b"DEALLOCATE pdo_stmt_0000000a")
                .deallocate
                .as_deref(),
            Some("pdo_stmt_0000000a")
        );
        assert_eq!(
            sql_effects(b"DEALLOCATE PREPARE \"_pg3_2\";")
                .deallocate
                .as_deref(),
            Some("_pg3_2")
        );
        assert_eq!(sql_effects(b"select 'deallocate x'"), SqlEffects::default());
    }
}
