//! A pooled client's startup parameters, taken as PostgreSQL takes them: the reported ones
//! pgrouter tracks (`servers::tracked`), any other setting (a parameter of its own name, or
//! `-c name=value` in `options`) carried to every server connection the client uses, and
//! what pgrouter cannot honour refused by name, unless `pool.ignore_startup_parameters`
//! lists it. Silently dropping a setting (a `search_path`, a `statement_timeout`) would run the
//! client's queries under settings it never asked for.

use crate::protocol::error::{sqlstate, PgError};
use crate::servers::tracked::{Vars, TRACKED};

/// What a client's startup asks of every server connection it uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartupSettings {
    /// Tracked parameters (reported by the server), by their canonical spelling.
    pub vars: Vars,
    /// Other settings, names in lower case, in the order given (a later one wins).
    pub extra: Vec<(String, String)>,
}

/// Parameters that are not settings: the protocol's own.
const NOT_SETTINGS: [&str; 3] = ["user", "database", "replication"];

/// Reads `params` (the StartupMessage's, less none) into settings, or the FATAL PostgreSQL's
/// own refusal would be, naming pgrouter.
pub fn read(params: &[(String, String)], ignore: &[String]) -> Result<StartupSettings, PgError> {
    let ignored = |name: &str| ignore.iter().any(|i| i.eq_ignore_ascii_case(name));
    let mut settings = StartupSettings::default();
    for (name, value) in params {
        let lower = name.to_ascii_lowercase();
        if NOT_SETTINGS.contains(&lower.as_str()) || lower.starts_with("_pq_.") || ignored(name) {
            continue;
        }
        if lower == "options" {
            for (k, v) in options(value)? {
                if !ignored(&k) {
                    settings.set(&k, v)?;
                }
            }
            continue;
        }
        settings.set(name, value.clone())?;
    }
    // Kept for the session's life: no room for parameters that never come.
    settings.vars.shrink_to_fit();
    settings.extra.shrink_to_fit();
    Ok(settings)
}

impl StartupSettings {
    /// The value of tracked parameter `name` (spelled as in `TRACKED`), if the client gave one.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, name: &str, value: String) -> Result<(), PgError> {
        if let Some(k) = TRACKED.iter().find(|t| t.eq_ignore_ascii_case(name)) {
            self.vars.retain(|(n, _)| n != k);
            self.vars.push((k, value));
            return Ok(());
        }
        let name = name.to_ascii_lowercase();
        if !valid_name(&name) {
            return Err(PgError::fatal(
                sqlstate::UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"{name}\""),
            ));
        }
        self.extra.retain(|(n, _)| *n != name);
        self.extra.push((name, value));
        Ok(())
    }
}

/// A name pgrouter can pass on as it is: letters, digits, '_' and a '.' for custom settings.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// The settings in an `options` value: words split at white space, a backslash keeping the
/// next character (PostgreSQL's `pg_split_opts`), then `-c name=value`, `-cname=value` or
/// `--name=value` (a '-' in the name read as '_'). Any other switch is refused: pgrouter
/// cannot hand it to each server connection.
pub fn options(value: &str) -> Result<Vec<(String, String)>, PgError> {
    let words = split_words(value);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        let setting = if let Some(rest) = word.strip_prefix("--") {
            Some(rest.to_owned())
        } else if word == "-c" {
            i += 1;
            Some(words.get(i).cloned().ok_or_else(|| bad(word))?)
        } else {
            word.strip_prefix("-c").map(str::to_owned)
        };
        let Some(setting) = setting else {
            return Err(bad(word));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(PgError::fatal(
                sqlstate::SYNTAX_ERROR,
                format!("-c {setting} requires a value"),
            ));
        };
        out.push((name.replace('-', "_"), value.to_owned()));
        i += 1;
    }
    Ok(out)
}

fn bad(word: &str) -> PgError {
    PgError::fatal(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "pgrouter: startup option \"{word}\" is not supported through a pooled listener: \
             only -c name=value and --name=value are (or list \"options\" in \
             pool.ignore_startup_parameters)"
        ),
    )
}

fn split_words(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_as_postgres_splits_them() {
        let got = options(r"-c search_path=app,public  --statement-timeout=5s -cwork_mem=64MB -c application_name=my\ app").unwrap();
        let want = [
            ("search_path", "app,public"),
            ("statement_timeout", "5s"),
            ("work_mem", "64MB"),
            ("application_name", "my app"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        assert!(options("").unwrap().is_empty());
        let e = options("-e").unwrap_err();
        assert_eq!(e.code, sqlstate::FEATURE_NOT_SUPPORTED);
        assert!(e.message.contains("startup option \"-e\""), "{}", e.message);
        assert!(options("-c").is_err());
        assert!(options("-c search_path")
            .unwrap_err()
            .message
            .contains("requires a value"));
    }

    #[test]
    fn tracked_parameters_and_other_settings() {
        let s = read(
            &params(&[
                ("user", "app"),
                ("database", "app"),
                ("datestyle", "German"),
                ("options", "-c TimeZone=UTC -c search_path=app"),
                ("extra_float_digits", "3"),
                ("_pq_.command_protocol", "1"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.vars,
            [
                ("DateStyle", "German".to_owned()),
                ("TimeZone", "UTC".to_owned())
            ]
        );
        assert_eq!(
            s.extra,
            [
                ("search_path".to_owned(), "app".to_owned()),
                ("extra_float_digits".to_owned(), "3".to_owned())
            ]
        );
        // Listed in ignore_startup_parameters: dropped as the operator asked.
        let s = read(
            &params(&[("extra_float_digits", "3"), ("options", "-e")]),
            &["extra_float_digits".to_owned(), "options".to_owned()],
        )
        .unwrap();
        assert_eq!(s, StartupSettings::default());
        let e = read(&params(&[("bad name", "1")]), &[]).unwrap_err();
        assert_eq!(e.code, sqlstate::UNDEFINED_OBJECT);
        assert!(read(&params(&[("options", "-e")]), &[]).is_err());
    }
}
