//! Protocol-level prepared statements under transaction pooling.
//!
//! A client names its statements as it likes ("pdo_stmt_00000001", "_pg3_0", ...), and any
//! server connection may run its next Bind. pgrouter keeps each client's statements by name and
//! prepares them on servers under a name derived from their text and parameter types
//! (`pgr_<hash>`), so identical statements of different clients share one server-side
//! statement, and a Bind on a connection that lacks it is preceded by a Parse pgrouter sends
//! itself (and whose ParseComplete it swallows).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::fnv::FnvMap;
use crate::protocol::wire::Reader;

pub struct Statement {
    /// Hash of the query text and parameter types: the same statement on every connection.
    pub id: u64,
    /// The name on the server: "pgr_" and the id in hex.
    pub server_name: String,
    /// The Parse body after the statement name: query, NUL, parameter type count and oids.
    pub definition: Bytes,
    /// What running it does to the session (DISCARD ALL, LISTEN, ...), applied at each Bind.
    pub effects: SqlEffects,
    /// When the client's Parse of it came.
    pub parsed: std::time::Instant,
}

impl Statement {
    /// The id in a server name (`pgr_` and 16 hex digits).
    pub fn id_of_server_name(name: &[u8]) -> Option<u64> {
        let hex = name.strip_prefix(b"pgr_").filter(|h| h.len() == 16)?;
        u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }

    pub fn new(definition: Bytes) -> Statement {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        definition.hash(&mut h);
        let id = h.finish();
        let effects = sql_effects(definition_query(&definition));
        Statement {
            id,
            server_name: format!("pgr_{id:016x}"),
            definition,
            effects,
            parsed: std::time::Instant::now(),
        }
    }
}

/// One client's named statements.
#[derive(Default)]
pub struct ClientStatements {
    by_name: FnvMap<Bytes, Arc<Statement>>,
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

    /// Forgets every name of the statement `id` (its Parse failed: PostgreSQL never defined
    /// it); one of them, if it had any.
    pub fn remove_id(&mut self, id: u64) -> Option<Bytes> {
        let name = self.name_of(id);
        self.by_name.retain(|_, s| s.id != id);
        name
    }

    /// A name the client gave the statement `id`.
    pub fn name_of(&self, id: u64) -> Option<Bytes> {
        self.by_name
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(name, _)| name.clone())
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

/// What a client's SQL means for pooling, statement by statement. The text is split into
/// statements and tokens the way PostgreSQL's lexer would (comments, string literals and
/// quoted identifiers kept whole), closely enough for the few commands looked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SqlEffects {
    /// LISTEN: the client keeps its server connection until UNLISTEN * or disconnect.
    pub listen: bool,
    pub unlisten_all: bool,
    /// DEALLOCATE ALL or DISCARD ALL: every statement on the server connection is gone.
    pub drops_all_statements: bool,
    /// `DEALLOCATE [PREPARE] name` of one statement, when it is the whole query: the name as
    /// PostgreSQL reads it (unquoted names folded to lower case, quoted ones kept as written).
    pub deallocate: Option<String>,
    /// Each `PREPARE name AS ...` or `PREPARE name (types) AS ...` (not PREPARE TRANSACTION):
    /// the name as PostgreSQL reads it, and the statement's text. pgrouter carries these to
    /// the client's next transactions.
    pub sql_prepares: Vec<(String, String)>,
    /// `DECLARE name ... WITH HOLD`: the cursors that outlive their transaction (the client
    /// keeps its server connection while one is open).
    pub holds_cursors: Vec<String>,
    /// `CLOSE name`.
    pub closes_cursors: Vec<String>,
    /// `CLOSE ALL`, `DISCARD ALL`.
    pub closes_all_cursors: bool,
    /// SQL-level state that outlives the transaction on the server connection and that
    /// pgrouter does not carry to the client's next one: a `PREPARE` or `DECLARE ... WITH
    /// HOLD` of another form. Left on a shared connection, another client could run it by
    /// name (wrong rows, no error).
    pub session_state: bool,
    /// `SET [SESSION] name {TO | =} value` (not LOCAL): the settings' names, lower case.
    pub sets: Vec<String>,
    /// `RESET name` or `SET name TO DEFAULT`: back to the session's startup value.
    pub resets: Vec<String>,
    /// `RESET ALL` or `DISCARD ALL`: every setting back to its startup value.
    pub resets_all: bool,
}

pub fn sql_effects(sql: &[u8]) -> SqlEffects {
    let mut e = SqlEffects::default();
    // Most statements mention none of the commands: no allocation for them.
    if !worth_reading(sql) {
        return e;
    }
    let text = String::from_utf8_lossy(sql);
    let (statements, spans) = split_sql(&text);
    let word = |t: &Token, w: &str| matches!(t, Token::Word(x) if x == w);
    for (st, span) in statements.iter().zip(&spans) {
        match st.as_slice() {
            [listen, _, ..] if word(listen, "listen") => e.listen = true,
            [prepare, name, next, ..]
                if word(prepare, "prepare")
                    && !word(name, "transaction")
                    && (word(next, "as") || matches!(next, Token::Symbol('('))) =>
            {
                let name = match name {
                    Token::Word(w) => Some(w.clone()),
                    Token::Quoted(q) if !q.is_empty() => Some(q.clone()),
                    _ => None,
                };
                match name {
                    Some(name) => {
                        let text: String = text.chars().skip(span.start).take(span.len()).collect();
                        e.sql_prepares.push((name, text.trim_end().to_owned()));
                    }
                    None => e.session_state = true,
                }
            }
            [prepare, next, ..] if word(prepare, "prepare") && !word(next, "transaction") => {
                e.session_state = true
            }
            [declare, name, rest @ ..]
                if word(declare, "declare")
                    && rest
                        .windows(2)
                        .any(|w| word(&w[0], "with") && word(&w[1], "hold")) =>
            {
                match name {
                    Token::Word(w) => e.holds_cursors.push(w.clone()),
                    Token::Quoted(q) if !q.is_empty() => e.holds_cursors.push(q.clone()),
                    _ => e.session_state = true,
                }
            }
            [close, all] if word(close, "close") && word(all, "all") => e.closes_all_cursors = true,
            [close, Token::Word(name)] if word(close, "close") => {
                e.closes_cursors.push(name.clone())
            }
            [close, Token::Quoted(name)] if word(close, "close") => {
                e.closes_cursors.push(name.clone())
            }
            [unlisten, Token::Symbol('*')] if word(unlisten, "unlisten") => e.unlisten_all = true,
            [command, all]
                if (word(command, "deallocate") || word(command, "discard"))
                    && word(all, "all") =>
            {
                e.drops_all_statements = true;
                e.closes_all_cursors |= word(command, "discard");
                e.resets_all |= word(command, "discard");
            }
            [deallocate, prepare, all]
                if word(deallocate, "deallocate")
                    && word(prepare, "prepare")
                    && word(all, "all") =>
            {
                e.drops_all_statements = true
            }
            [reset, all] if word(reset, "reset") && word(all, "all") => e.resets_all = true,
            [reset, rest @ ..] if word(reset, "reset") => e.resets.extend(setting_name(rest)),
            [set, rest @ ..] if word(set, "set") => {
                let rest = match rest {
                    [session, rest @ ..] if word(session, "session") => rest,
                    rest => rest,
                };
                let Some(name) = setting_name(rest) else {
                    continue;
                };
                // SET name TO DEFAULT is RESET name.
                let value = &rest[name.matches('.').count() * 2 + 1..];
                match value {
                    [to, default]
                        if (word(to, "to") || matches!(to, Token::Symbol('=')))
                            && word(default, "default") =>
                    {
                        e.resets.push(name)
                    }
                    [to, ..] if word(to, "to") || matches!(to, Token::Symbol('=')) => {
                        e.sets.push(name)
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        if e.resets_all {
            e.resets.clear();
        }
    }
    if let [only] = statements.as_slice() {
        let name = match only.as_slice() {
            [deallocate, name] if word(deallocate, "deallocate") => Some(name),
            [deallocate, prepare, name]
                if word(deallocate, "deallocate") && word(prepare, "prepare") =>
            {
                Some(name)
            }
            _ => None,
        };
        e.deallocate = match name {
            Some(Token::Word(w)) if w != "all" => Some(w.clone()),
            Some(Token::Quoted(q)) if !q.is_empty() => Some(q.clone()),
            _ => None,
        };
    }
    e
}

/// The setting a SET or RESET names: a word, or words joined by '.' (a custom setting), lower
/// case; None for what is not a setting's name (LOCAL, TRANSACTION, ROLE, TIME ZONE, ...: those
/// are transaction-scoped or not settings pgrouter carries).
fn setting_name(tokens: &[Token]) -> Option<String> {
    const NOT_NAMES: [&str; 7] = [
        "local",
        "transaction",
        "constraints",
        "role",
        "session",
        "time",
        "characteristics",
    ];
    let mut name = match tokens.first()? {
        Token::Word(w) if !NOT_NAMES.contains(&w.as_str()) => w.clone(),
        _ => return None,
    };
    let mut rest = &tokens[1..];
    while let [Token::Symbol('.'), Token::Word(w), more @ ..] = rest {
        name.push('.');
        name.push_str(w);
        rest = more;
    }
    Some(name)
}

/// A token of SQL text as far as `sql_effects` cares.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted identifier, ASCII letters folded to lower case.
    Word(String),
    /// A quoted identifier, `""` undoubled.
    Quoted(String),
    /// A string literal or dollar-quoted string.
    Literal,
    /// Any other character.
    Symbol(char),
}

fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

/// Splits SQL at the semicolons outside comments, literals and quoted identifiers; the
/// statements' tokens, empty statements left out, and where each lies in `text` (in chars,
/// from its first token to its end).
fn split_sql(text: &str) -> (Vec<Vec<Token>>, Vec<std::ops::Range<usize>>) {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut statements = Vec::new();
    let mut spans = Vec::new();
    let mut current = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(c) = at(i) {
        if current.is_empty() && !c.is_whitespace() && c != ';' {
            start = i;
        }
        match c {
            ';' => {
                if !current.is_empty() {
                    statements.push(std::mem::take(&mut current));
                    spans.push(start..i);
                }
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '-' if at(i + 1) == Some('-') => {
                while at(i).is_some_and(|c| c != '\n') {
                    i += 1;
                }
            }
            '/' if at(i + 1) == Some('*') => i = block_comment_end(&chars, i),
            '"' => {
                let (name, end) = quoted_identifier(&chars, i);
                current.push(Token::Quoted(name));
                i = end;
            }
            '\'' => {
                // E'...' strings take backslash escapes; the E was read as a word.
                let escapes = matches!(current.last(), Some(Token::Word(w)) if w == "e")
                    && matches!(i.checked_sub(1).and_then(at), Some('e' | 'E'));
                if escapes {
                    current.pop();
                }
                current.push(Token::Literal);
                i = literal_end(&chars, i, escapes);
            }
            '$' => match dollar_quote_end(&chars, i) {
                Some(end) => {
                    current.push(Token::Literal);
                    i = end;
                }
                None => {
                    current.push(Token::Symbol('$'));
                    i += 1;
                }
            },
            c if word_char(c) => {
                let mut w = String::new();
                while let Some(c) = at(i).filter(|c| word_char(*c)) {
                    w.push(c.to_ascii_lowercase());
                    i += 1;
                }
                current.push(Token::Word(w));
            }
            c => {
                current.push(Token::Symbol(c));
                i += 1;
            }
        }
    }
    if !current.is_empty() {
        statements.push(current);
        spans.push(start..chars.len());
    }
    (statements, spans)
}

/// Where the block comment starting at `i` ends (they nest in PostgreSQL).
fn block_comment_end(chars: &[char], mut i: usize) -> usize {
    let at = |i: usize| chars.get(i).copied();
    let mut depth = 0;
    while let Some(c) = at(i) {
        if c == '/' && at(i + 1) == Some('*') {
            depth += 1;
            i += 2;
        } else if c == '*' && at(i + 1) == Some('/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// The quoted identifier starting at `i` (`""` undoubled), and where it ends.
fn quoted_identifier(chars: &[char], mut i: usize) -> (String, usize) {
    let at = |i: usize| chars.get(i).copied();
    let mut name = String::new();
    i += 1;
    while let Some(c) = at(i) {
        i += 1;
        if c == '"' {
            if at(i) != Some('"') {
                break;
            }
            i += 1;
        }
        name.push(c);
    }
    (name, i)
}

/// Where the string literal starting at `i` ends; `escapes` for an E'...' string.
fn literal_end(chars: &[char], mut i: usize, escapes: bool) -> usize {
    let at = |i: usize| chars.get(i).copied();
    i += 1;
    while let Some(c) = at(i) {
        i += 1;
        if escapes && c == '\\' {
            i += 1;
        } else if c == '\'' {
            if at(i) != Some('\'') {
                break;
            }
            i += 1;
        }
    }
    i
}

/// Where the dollar-quoted string starting at `i` ends, if a `$tag$` starts there (the tag
/// empty or an identifier not starting with a digit).
fn dollar_quote_end(chars: &[char], i: usize) -> Option<usize> {
    let at = |i: usize| chars.get(i).copied();
    let mut j = i + 1;
    while at(j).is_some_and(|c| c.is_alphanumeric() || c == '_' || !c.is_ascii()) {
        j += 1;
    }
    let tag_ok = at(i + 1).is_none_or(|c| !c.is_ascii_digit());
    if at(j) != Some('$') || !tag_ok {
        return None;
    }
    let delimiter = &chars[i..=j];
    let close = (j + 1..chars.len())
        .find(|&k| chars[k..].starts_with(delimiter))
        .map_or(chars.len(), |k| k + delimiter.len());
    Some(close)
}

/// The commands whose effects `sql_effects` looks for, lowercase.
const WORDS: [&[u8]; 7] = [
    b"listen",
    b"unlisten",
    b"deallocate",
    b"discard",
    b"prepare",
    b"declare",
    b"close",
];

/// Bytes that can be part of a word, as `split_sql` reads words.
const WORD: u8 = 1;
/// Bytes that start one of `WORDS`, in either case (and are word bytes too).
const INITIAL: u8 = 2;

const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80 {
            t[c] = WORD;
        }
        c += 1;
    }
    let mut i = 0;
    while i < WORDS.len() {
        t[WORDS[i][0] as usize] |= INITIAL;
        t[WORDS[i][0].to_ascii_uppercase() as usize] |= INITIAL;
        i += 1;
    }
    t
};

/// Whether `text` may have an effect `sql_effects` looks for: for one statement, its first
/// word one of `WORDS`, SET or RESET; else one of `WORDS` where a word starts, or a statement
/// beginning with SET or RESET (after white space, at the start or after a ';'; UPDATE's SET
/// is passed over), ASCII case-insensitively. This runs on every statement a pooled client
/// sends, so each loop does little per byte.
fn worth_reading(text: &[u8]) -> bool {
    let starts =
        |rest: &[u8], w: &[u8]| rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w);
    let setting = |statement: &[u8]| {
        let s = statement.trim_ascii_start();
        [&b"set"[..], b"reset"]
            .iter()
            .any(|w| starts(s, w) && s.get(w.len()).is_some_and(u8::is_ascii_whitespace))
    };
    // Most texts are one statement, and only its start can be a command looked for.
    if let Some(statement) = lone_statement(text) {
        return WORDS.iter().any(|w| starts(statement, w)) || setting(statement);
    }
    if setting(text) {
        return true;
    }
    let class = |i: usize| CLASSES[usize::from(text[i])];
    let (n, mut i) = (text.len(), 0);
    while i < n {
        // Between words: a ';' ends a statement.
        while i < n && class(i) == 0 {
            if text[i] == b';' && setting(&text[i + 1..]) {
                return true;
            }
            i += 1;
        }
        // A word starts at i: only its first byte is looked at, the rest skipped.
        if i < n && class(i) & INITIAL != 0 {
            let rest = &text[i..];
            if WORDS.iter().any(|w| starts(rest, w)) {
                return true;
            }
        }
        while i < n && class(i) != 0 {
            i += 1;
        }
    }
    false
}

/// `text` from its first letter when it is one statement that begins with a letter (not a
/// comment, a quote, a parenthesis) and has no ';' but one at its end: a ';' in a literal or
/// comment sends the text the long way, which reads those.
fn lone_statement(text: &[u8]) -> Option<&[u8]> {
    let body = text.trim_ascii();
    let body = body.strip_suffix(b";").unwrap_or(body);
    if !body.first().is_some_and(u8::is_ascii_alphabetic) || body.contains(&b';') {
        return None;
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_resets_of_session_settings() {
        let e = sql_effects(
            b"SET search_path TO app, public; set SESSION statement_timeout = '5s'; \
              SET LOCAL work_mem = '1MB'; SET myapp.tenant = 7; RESET timezone; SET datestyle TO DEFAULT",
        );
        assert_eq!(e.sets, ["search_path", "statement_timeout", "myapp.tenant"]);
        assert_eq!(e.resets, ["timezone", "datestyle"]);
        assert!(!e.resets_all);
        assert!(sql_effects(b"reset all").resets_all);
        let discard = sql_effects(b"DISCARD ALL");
        assert!(discard.resets_all && discard.drops_all_statements);
        for other in [
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET ROLE app",
            "SET TIME ZONE 'UTC'",
            "update t set x = 1",
            "select 'set search_path to x'",
        ] {
            let e = sql_effects(other.as_bytes());
            assert!(e.sets.is_empty() && e.resets.is_empty(), "{other}: {e:?}");
        }
        assert!(!worth_reading(b"UPDATE t SET a = 1"));
        assert!(worth_reading(b"begin; set search_path = a"));
        assert!(worth_reading(b"  ;\n RESET\tx"));
        assert!(!worth_reading(
            b"select reclose, xlisten from t where asset = 1"
        ));
        assert!(worth_reading(b"select 1;\nLISTEN jobs"));
        assert!(worth_reading(b"select x from t; close c"));
        assert!(!worth_reading(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 7;"
        ));
    }

    #[test]
    fn a_statement_knows_what_running_it_does() {
        let def = |sql: &str| Bytes::from([sql.as_bytes(), b"\0\0\0"].concat());
        assert!(
            Statement::new(def("DISCARD ALL"))
                .effects
                .drops_all_statements
        );
        assert!(Statement::new(def("listen jobs")).effects.listen);
        assert_eq!(
            Statement::new(def("select 1")).effects,
            SqlEffects::default()
        );
    }

    #[test]
    fn the_prefilter_finds_the_commands_only_where_words_start() {
        assert!(worth_reading(b"LISTEN jobs"));
        assert!(worth_reading(b"select 1;Discard all"));
        assert!(worth_reading(b"/* x */deallocate p"));
        assert!(!worth_reading(b"select abalance from t where aid = 1"));
        assert!(!worth_reading(
            b"select xlisten, _discard, $deallocate, \xc3\xa9listen"
        ));
        assert!(sql_effects(b"select 1;\nlisten jobs").listen);
        // One statement: its first word decides.
        assert!(worth_reading(b" Set search_path = x ;"));
        assert!(worth_reading(b"RESET ALL"));
        assert!(worth_reading(b"close c;"));
        assert!(!worth_reading(b"select 1 from prepare_things;"));
        assert!(!worth_reading(b"settle"));
        // SET and RESET need ASCII white space after them, as the long way reads them.
        assert!(!worth_reading(b"RESET\x0bx"));
        // Not one statement, or not a word first: the long way.
        assert!(worth_reading(b"select 1 /* ; */ ; listen x"));
        assert!(worth_reading(b"/* hi */ LISTEN x"));
        assert_eq!(lone_statement(b"(select 1)"), None);
        assert_eq!(lone_statement(b"select ';'"), None);
        assert_eq!(
            lone_statement(b"\tUPDATE t set a = 1;\n"),
            Some(&b"UPDATE t set a = 1"[..])
        );
    }

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

    fn deallocated(sql: &str) -> Option<String> {
        sql_effects(sql.as_bytes()).deallocate
    }

    #[test]
    fn each_prepare_is_carried_with_its_own_text() {
        for (sql, name, text) in [
            (
                "PREPARE pgr_np_1_add (int, int) AS SELECT $1 + $2",
                "pgr_np_1_add",
                "PREPARE pgr_np_1_add (int, int) AS SELECT $1 + $2",
            ),
            (
                "prepare \"Q\" as select ';';",
                "Q",
                "prepare \"Q\" as select ';'",
            ),
            ("PREPARE q AS select 1", "q", "PREPARE q AS select 1"),
        ] {
            let e = sql_effects(sql.as_bytes());
            assert_eq!(
                e.sql_prepares,
                vec![(name.to_owned(), text.to_owned())],
                "{sql}"
            );
            assert!(!e.session_state, "{sql}");
        }
        let e = sql_effects(
            b"create table t (id int); prepare a as select 1;  prepare b as select id from t",
        );
        assert_eq!(
            e.sql_prepares,
            vec![
                ("a".to_owned(), "prepare a as select 1".to_owned()),
                ("b".to_owned(), "prepare b as select id from t".to_owned())
            ]
        );
    }

    #[test]
    fn holdable_cursors_are_followed_and_odd_forms_leave_session_state() {
        let e = sql_effects(
            b"DECLARE \"_django_curs_1\" NO SCROLL CURSOR WITH HOLD FOR SELECT 1; close \"_django_curs_1\"",
        );
        assert_eq!(e.holds_cursors, vec!["_django_curs_1".to_owned()]);
        assert_eq!(e.closes_cursors, vec!["_django_curs_1".to_owned()]);
        assert!(sql_effects(b"CLOSE ALL").closes_all_cursors);
        assert!(sql_effects(b"discard all").closes_all_cursors);
        assert!(!sql_effects(b"deallocate all").closes_all_cursors);
        for sql in [
            "PREPARE x FROM y",
            "DECLARE 'x' CURSOR WITH HOLD FOR SELECT 1",
        ] {
            assert!(sql_effects(sql.as_bytes()).session_state, "{sql}");
        }
        for sql in [
            "PREPARE TRANSACTION 'tx1'",
            "DECLARE c CURSOR FOR SELECT 1",
            "select 'prepare x as select 1'",
            "EXECUTE x(1)",
        ] {
            assert!(!sql_effects(sql.as_bytes()).session_state, "{sql}");
        }
    }

    /// Found by fuzz/fuzz_targets/pooled_rewrite.rs: the name was the text after the last
    /// space of the query, so a tab or newline, a second ';' or a comment after it made a
    /// wrong name ("DEALLOCATE\tx" -> "DEALLOCATE\tx", "DEALLOCATE x; ;" -> "x;").
    #[test]
    fn deallocate_names_whatever_the_spacing() {
        for sql in [
            "DEALLOCATE\tpdo_stmt_1",
            "DEALLOCATE\n  pdo_stmt_1",
            "deallocate pdo_stmt_1; ;",
            " DEALLOCATE PREPARE\r\npdo_stmt_1 ; ",
            "DEALLOCATE pdo_stmt_1 -- done",
            "/* pgrouter */ DEALLOCATE /* x; y */ pdo_stmt_1",
        ] {
            assert_eq!(deallocated(sql).as_deref(), Some("pdo_stmt_1"), "{sql:?}");
        }
        assert_eq!(deallocated("DEALLOCATE a; DEALLOCATE b"), None);
        assert_eq!(deallocated("DEALLOCATE"), None);
        assert_eq!(deallocated("DEALLOCATE a b"), None);
    }

    /// Found by fuzz/fuzz_targets/pooled_rewrite.rs: PostgreSQL folds unquoted names to
    /// lower case and keeps quoted ones as written, spaces, semicolons and `""` included.
    #[test]
    fn deallocate_names_are_read_as_postgresql_reads_them() {
        assert_eq!(deallocated("DEALLOCATE Stmt1").as_deref(), Some("stmt1"));
        assert_eq!(
            deallocated("DEALLOCATE \"Stmt1\"").as_deref(),
            Some("Stmt1")
        );
        assert_eq!(deallocated("DEALLOCATE \"a b\"").as_deref(), Some("a b"));
        assert_eq!(
            deallocated("DEALLOCATE \"a;\"\"b\"").as_deref(),
            Some("a;\"b")
        );
        assert_eq!(deallocated("DEALLOCATE \"ALL\"").as_deref(), Some("ALL"));
        assert_eq!(
            deallocated("DEALLOCATE PREPARE").as_deref(),
            Some("prepare")
        );
        assert_eq!(deallocated("DEALLOCATE \"\""), None);
        assert!(sql_effects(b"DEALLOCATE PREPARE ALL").drops_all_statements);
        assert!(!sql_effects(b"DEALLOCATE \"all\"").drops_all_statements);
    }

    #[test]
    fn literals_and_comments_hide_commands() {
        for sql in [
            "select 'a; listen x'",
            "select E'\\'; listen x'",
            "select $$; listen x$$",
            "select $f$ ; discard all $f$",
            "select 1 -- ; listen x",
            "select /* /* ; */ listen x; */ 1",
            "select \"listen x\"",
        ] {
            assert_eq!(
                sql_effects(sql.as_bytes()),
                SqlEffects::default(),
                "{sql:?}"
            );
        }
        assert!(sql_effects(b"select $1; LISTEN\tx").listen);
        assert!(sql_effects(b"UNLISTEN\n*").unlisten_all);
        assert!(sql_effects(b"select 'x';DISCARD  ALL").drops_all_statements);
    }
}
