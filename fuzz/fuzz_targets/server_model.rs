//! A PostgreSQL server as far as the answers to a message stream go: prepared statements and
//! portals by name, the extended protocol's skip to Sync after an error, and failures that
//! depend on the SQL alone, so the same client messages fail the same way whether they reach
//! it directly or through pgrouter:
//! - a statement whose text contains `fail` never parses (42601);
//! - after a simple Query containing `drop`, a statement mentioning `t1` neither parses nor
//!   binds (its table is gone: 42P01), as after ActiveRecord's DROP TABLE;
//! - `DEALLOCATE name` of a statement the server lacks fails (26000); `DISCARD ALL` and
//!   `DEALLOCATE ALL` drop every statement.
//!
//! There are no transaction blocks: every Sync and simple Query ends a transaction, and its
//! portals with it. The unnamed statement lasts till the next unnamed Parse or simple Query,
//! as in PostgreSQL (pgrouter carries it to the client's next connection).

use std::collections::HashMap;

use bytes::BytesMut;
use pgrouter::testing::statements::{self, sql_effects};
use pgrouter::testing::wire::{self, Reader};

#[derive(Default)]
pub struct ServerModel {
    /// Statement name -> its query text.
    statements: HashMap<Vec<u8>, Vec<u8>>,
    /// Portal name -> the query of the statement bound to it.
    portals: HashMap<Vec<u8>, Vec<u8>>,
    /// After an error in the extended protocol: everything up to Sync is ignored.
    skipping: bool,
    dropped: bool,
}

impl ServerModel {
    /// Another connection to the same database: no statements or portals of this one, the
    /// same tables (dropped or not).
    pub fn another_connection(&self) -> ServerModel {
        ServerModel {
            dropped: self.dropped,
            ..ServerModel::default()
        }
    }

    /// Appends the answers to client message `m` (whole messages) to `out`.
    pub fn answer(&mut self, m: &[u8], out: &mut BytesMut) {
        if self.skipping && m[0] != b'S' {
            return;
        }
        let body = &m[5..];
        let answered = match m[0] {
            b'P' => self.parse(body),
            b'B' => self.bind(body),
            b'D' => self.describe(body),
            b'E' => self.execute(body),
            b'C' => {
                let mut r = Reader::new(body);
                if let (Some(b'S'), Some(name)) = (r.byte(), r.cstr()) {
                    self.statements.remove(name);
                }
                Ok(b"3".as_slice())
            }
            b'S' => {
                // The transaction ends (no transaction blocks here): so do its portals.
                self.skipping = false;
                self.end_transaction();
                Ok(b"Z".as_slice())
            }
            b'Q' => {
                self.end_transaction();
                self.statements.remove(b"".as_slice());
                let sql = Reader::new(body).cstr().unwrap_or_default().to_vec();
                let run = self.run(&sql);
                if let Err(code) = run {
                    error(out, code);
                }
                Ok(if run.is_ok() {
                    b"CZ".as_slice()
                } else {
                    b"Z".as_slice()
                })
            }
            b'F' => Ok(b"VZ".as_slice()),
            _ => Ok(b"".as_slice()),
        };
        match answered {
            Ok(tags) => tags.iter().for_each(|t| plain(out, *t)),
            Err(code) => {
                error(out, code);
                self.skipping = true;
            }
        }
    }

    /// A transaction ends: its portals go.
    fn end_transaction(&mut self) {
        self.portals.clear();
    }

    fn fails(&self, query: &[u8]) -> Option<&'static str> {
        let has = |w: &[u8]| query.windows(w.len()).any(|x| x == w);
        if has(b"fail") {
            Some("42601")
        } else if self.dropped && has(b"t1") {
            Some("42P01")
        } else {
            None
        }
    }

    fn parse(&mut self, body: &[u8]) -> Result<&'static [u8], &'static str> {
        let body = bytes::Bytes::copy_from_slice(body);
        let (name, definition) = statements::split_parse(&body).ok_or("08P01")?;
        let query = statements::definition_query(&definition).to_vec();
        if let Some(code) = self.fails(&query) {
            return Err(code);
        }
        if !name.is_empty() && self.statements.contains_key(&name[..]) {
            return Err("42P05");
        }
        self.statements.insert(name.to_vec(), query);
        Ok(b"1")
    }

    fn bind(&mut self, body: &[u8]) -> Result<&'static [u8], &'static str> {
        let mut r = Reader::new(body);
        let (portal, name) = (r.cstr().ok_or("08P01")?, r.cstr().ok_or("08P01")?);
        let query = self.statements.get(name).ok_or("26000")?.clone();
        if let Some(code) = self.fails(&query) {
            return Err(code);
        }
        self.portals.insert(portal.to_vec(), query);
        Ok(b"2")
    }

    fn describe(&mut self, body: &[u8]) -> Result<&'static [u8], &'static str> {
        let mut r = Reader::new(body);
        match (r.byte(), r.cstr()) {
            (Some(b'S'), Some(name)) if !self.statements.contains_key(name) => Err("26000"),
            (Some(b'P'), Some(name)) if !self.portals.contains_key(name) => Err("34000"),
            _ => Ok(b"n"),
        }
    }

    fn execute(&mut self, body: &[u8]) -> Result<&'static [u8], &'static str> {
        let portal = Reader::new(body).cstr().ok_or("08P01")?;
        let query = self.portals.get(portal).ok_or("34000")?.clone();
        self.run(&query).map(|()| b"C".as_slice())
    }

    /// Runs `sql`: its failure, or its effects on the statements.
    fn run(&mut self, sql: &[u8]) -> Result<(), &'static str> {
        if let Some(code) = self.fails(sql) {
            return Err(code);
        }
        if sql.windows(4).any(|w| w == b"drop") {
            self.dropped = true;
        }
        let effects = sql_effects(sql);
        if effects.drops_all_statements {
            self.statements.clear();
        }
        if let Some(name) = effects.deallocate {
            self.statements.remove(name.as_bytes()).ok_or("26000")?;
        }
        Ok(())
    }
}

fn plain(out: &mut BytesMut, tag: u8) {
    match tag {
        b'Z' => wire::ready_for_query(out, b'I'),
        b'C' => wire::message(out, b'C', |b| b.extend_from_slice(b"SELECT 1\0")),
        t => wire::message(out, t, |_| {}),
    }
}

fn error(out: &mut BytesMut, code: &str) {
    let fields = [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', code),
        (b'M', "failed"),
    ];
    wire::error_response(out, b'E', &fields);
}
