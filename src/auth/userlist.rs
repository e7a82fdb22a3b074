//! pgbouncer's `auth_file`: one `"username" "secret"` pair per line.
//!
//! Fields are double-quoted, and `""` inside quotes is a literal quote. Blank lines and lines
//! whose first non-blank character is `;` are skipped; anything after the second field is
//! ignored. A user listed twice keeps the last secret, as in pgbouncer.

use std::collections::HashMap;

use super::secret::Secret;

/// A line that is not a valid entry. Never includes the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct UserlistError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// Parses an auth_file into user name → secret.
pub fn parse(text: &str) -> Result<HashMap<String, Secret>, UserlistError> {
    let mut users = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let error = |reason: &str| UserlistError {
            line: index + 1,
            reason: reason.to_owned(),
        };
        let (user, rest) = quoted(line).map_err(|e| error(&format!("user name {e}")))?;
        if user.is_empty() {
            return Err(error("empty user name"));
        }
        let (secret, _) = quoted(rest.trim_start()).map_err(|e| error(&format!("secret {e}")))?;
        users.insert(user, Secret::parse(&secret));
    }
    Ok(users)
}

/// Reads one double-quoted field at the start of `text`; returns it and what follows.
fn quoted(text: &str) -> Result<(String, &str), &'static str> {
    let mut rest = text.strip_prefix('"').ok_or("is not in double quotes")?;
    let mut value = String::new();
    loop {
        let end = rest.find('"').ok_or("has no closing quote")?;
        value.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after) => {
                value.push('"');
                rest = after;
            }
            None => return Ok((value, rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAM: &str = "SCRAM-SHA-256$4096:IPfHRZ70txpXT9GFHIFsew==$\
        PIiOHFEttKg8RTSL84wXnQUzjksVRKqIu5FVPZ8dsXc=:Y7XaEV7pr03uY1Jhg5ZJTG+kgI3HwG/EW1+fJQvocmg=";

    #[test]
    fn parses_all_kinds() {
        let text = format!(
            "; pgbouncer users\n\
             \n\
             \"alice\" \"plain pw\"\n\
             \t\"bob\"   \"md54a0a68b43b6cd5cf266fa02f196e2371\" trailing junk\r\n\
             \"carol\" \"{SCRAM}\"\n\
             \x20 ; indented comment\n\
             \"d\"\"q\" \"a\"\"b\"\"\"\n\
             \"alice\" \"second\"\n"
        );
        let users = parse(&text).unwrap();
        assert_eq!(users.len(), 4);
        assert!(matches!(&users["alice"], Secret::Plain(p) if p == "second"));
        assert!(matches!(&users["bob"], Secret::Md5(h) if h[0] == 0x4a));
        assert!(matches!(&users["carol"], Secret::Scram(s) if s.encode() == SCRAM));
        assert!(matches!(&users["d\"q"], Secret::Plain(p) if p == "a\"b\""));
    }

    #[test]
    fn empty_file() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("\n;only comments\n   \n").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines() {
        let cases = [
            (
                "\"a\" \"b\"\nalice \"pw\"",
                2,
                "user name is not in double quotes",
            ),
            ("\"alice \"pw\"", 1, "secret is not in double quotes"),
            ("\"alice\" \"hunter2", 1, "secret has no closing quote"),
            ("\"alice\"", 1, "secret is not in double quotes"),
            ("\"alice", 1, "user name has no closing quote"),
            ("\n\n\"\" \"pw\"", 3, "empty user name"),
        ];
        for (text, line, reason) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(
                err,
                UserlistError {
                    line,
                    reason: reason.into()
                },
                "{text}"
            );
            assert!(!err.to_string().contains("hunter2"));
        }
        let err = parse("\"alice\" \"hunter2").unwrap_err();
        assert_eq!(err.to_string(), "line 1: secret has no closing quote");
    }
}
