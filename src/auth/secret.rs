//! Credentials as PostgreSQL stores them in `pg_authid.rolpassword` (and pgbouncer in its
//! `auth_file`): a plain password, an md5 hash, or a SCRAM-SHA-256 verifier.
//!
//! Passwords are used as their UTF-8 bytes, without SASLprep. PostgreSQL applies SASLprep
//! but falls back to the raw bytes whenever normalization fails or changes nothing, so the two
//! only disagree for passwords containing non-ASCII characters that SASLprep would rewrite.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;

use super::crypto::{hmac_sha256, salted_password, sha256, unhex};

/// Iteration count used by [`ScramSecret::generate`], PostgreSQL's default.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length used by [`ScramSecret::generate`], PostgreSQL's default.
pub const DEFAULT_SALT_LEN: usize = 16;

/// A stored credential for one user.
#[derive(Clone)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// md5(password || username), which PostgreSQL stores as `"md5"` + 32 hex digits.
    Md5([u8; 16]),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramSecret),
}

impl Secret {
    /// Classifies `text` the way PostgreSQL does: `md5` + 32 hex digits is an md5 hash, a
    /// well-formed `SCRAM-SHA-256$…` string is a SCRAM verifier, anything else is a password.
    pub fn parse(text: &str) -> Secret {
        if let Some(hash) = text.strip_prefix("md5").and_then(unhex::<16>) {
            return Secret::Md5(hash);
        }
        if let Some(scram) = ScramSecret::parse(text) {
            return Secret::Scram(scram);
        }
        Secret::Plain(text.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(..)",
            Secret::Md5(_) => "Secret::Md5(..)",
            Secret::Scram(_) => "Secret::Scram(..)",
        })
    }
}

/// A SCRAM-SHA-256 verifier: enough to check a client's proof, not enough to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 fields).
    pub fn parse(text: &str) -> Option<ScramSecret> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        if !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let iterations: u32 = iterations.parse().ok()?;
        let salt = BASE64.decode(salt).ok()?;
        if iterations == 0 || salt.is_empty() {
            return None;
        }
        Some(ScramSecret {
            iterations,
            salt,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }

    /// The verifier in PostgreSQL's format, as [`ScramSecret::parse`] reads it.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }

    /// The verifier for `password` (its bytes as is, no SASLprep). Runs PBKDF2 with
    /// `iterations` rounds: slow on purpose, keep it off I/O threads.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        ScramKeys::from_password(password, salt, iterations).secret()
    }

    /// A verifier for `password` with a random 16-byte salt and 4096 iterations.
    pub fn generate(password: &str) -> ScramSecret {
        let mut salt = [0u8; DEFAULT_SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        ScramSecret::from_password(password, &salt, DEFAULT_ITERATIONS)
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// What it takes to log in to PostgreSQL with SCRAM-SHA-256 without the password: the
/// ClientKey (from the password, or recovered from a client's proof) with the ServerKey,
/// salt and iteration count of the verifier the server holds.
#[derive(Clone)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl ScramKeys {
    /// Derives the keys from `password` (PBKDF2, slow on purpose).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = salted_password(password.as_bytes(), salt, iterations);
        ScramKeys {
            client_key: hmac_sha256(&salted, &[b"Client Key"]),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
            salt: salt.to_vec(),
            iterations,
        }
    }

    /// Keys from a ClientKey recovered by [`super::ServerExchange::finish`] and the verifier
    /// the client was checked against.
    pub fn recovered(secret: &ScramSecret, client_key: [u8; 32]) -> ScramKeys {
        ScramKeys {
            client_key,
            server_key: secret.server_key,
            salt: secret.salt.clone(),
            iterations: secret.iterations,
        }
    }

    /// SHA-256 of the ClientKey, as a verifier stores it.
    pub fn stored_key(&self) -> [u8; 32] {
        sha256(&self.client_key)
    }

    /// The verifier matching these keys.
    pub fn secret(&self) -> ScramSecret {
        ScramSecret {
            iterations: self.iterations,
            salt: self.salt.clone(),
            stored_key: self.stored_key(),
            server_key: self.server_key,
        }
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    BASE64.decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by PostgreSQL 15.18: `SET password_encryption = 'scram-sha-256';
    /// CREATE ROLE x PASSWORD 'postgres'; SELECT rolpassword FROM pg_authid`.
    const PG15_POSTGRES: &str = "SCRAM-SHA-256$4096:IPfHRZ70txpXT9GFHIFsew==$\
        PIiOHFEttKg8RTSL84wXnQUzjksVRKqIu5FVPZ8dsXc=:Y7XaEV7pr03uY1Jhg5ZJTG+kgI3HwG/EW1+fJQvocmg=";

    #[test]
    fn reproduces_postgresql_15_secret() {
        let pg = ScramSecret::parse(PG15_POSTGRES).expect("valid secret");
        assert_eq!(pg.iterations, 4096);
        assert_eq!(pg.salt.len(), 16);
        let ours = ScramSecret::from_password("postgres", &pg.salt, pg.iterations);
        assert_eq!(ours.stored_key, pg.stored_key);
        assert_eq!(ours.server_key, pg.server_key);
        assert_eq!(ours.encode(), PG15_POSTGRES);
        let wrong = ScramSecret::from_password("postgres ", &pg.salt, pg.iterations);
        assert_ne!(wrong.stored_key, pg.stored_key);
    }

    #[test]
    fn parse_classifies() {
        let md5 = Secret::parse("md54A0A68b43b6cd5cf266fa02f196e2371");
        assert!(matches!(md5, Secret::Md5(h) if h[0] == 0x4a && h[15] == 0x71));
        assert!(matches!(Secret::parse(PG15_POSTGRES), Secret::Scram(_)));
        for plain in [
            "",
            "hunter2",
            "md5",
            "md54a0a68b43b6cd5cf266fa02f196e237",
            "md54a0a68b43b6cd5cf266fa02f196e23711",
            "md54a0a68b43b6cd5cf266fa02f196e237z",
            "SCRAM-SHA-256$4096:IPfHRZ70txpXT9GFHIFsew==$PIiO:Y7Xa",
            "SCRAM-SHA-256$0:IPfHRZ70txpXT9GFHIFsew==$PIiOHFEttKg8RTSL84wXnQUzjksVRKqIu5FVPZ8dsXc=:Y7XaEV7pr03uY1Jhg5ZJTG+kgI3HwG/EW1+fJQvocmg=",
            "SCRAM-SHA-256$+4096:IPfHRZ70txpXT9GFHIFsew==$PIiOHFEttKg8RTSL84wXnQUzjksVRKqIu5FVPZ8dsXc=:Y7XaEV7pr03uY1Jhg5ZJTG+kgI3HwG/EW1+fJQvocmg=",
        ] {
            assert!(matches!(Secret::parse(plain), Secret::Plain(p) if p == plain), "{plain}");
        }
    }

    #[test]
    fn generate_round_trips() {
        let secret = ScramSecret::generate("pw");
        assert_eq!(secret.iterations, DEFAULT_ITERATIONS);
        assert_eq!(secret.salt.len(), DEFAULT_SALT_LEN);
        assert_eq!(ScramSecret::parse(&secret.encode()), Some(secret.clone()));
        let again = ScramSecret::from_password("pw", &secret.salt, secret.iterations);
        assert_eq!(again, secret);
        assert_ne!(ScramSecret::generate("pw").salt, secret.salt);
    }

    #[test]
    fn debug_redacts() {
        let secret = ScramSecret::parse(PG15_POSTGRES).unwrap();
        let keys = ScramKeys::recovered(&secret, [7; 32]);
        assert_eq!(
            format!("{secret:?}"),
            "ScramSecret { iterations: 4096, .. }"
        );
        assert_eq!(format!("{keys:?}"), "ScramKeys { iterations: 4096, .. }");
        assert_eq!(format!("{:?}", Secret::Scram(secret)), "Secret::Scram(..)");
        assert_eq!(
            format!("{:?}", Secret::parse("hunter2")),
            "Secret::Plain(..)"
        );
        assert_eq!(
            format!("{:?}", Secret::parse("md54a0a68b43b6cd5cf266fa02f196e2371")),
            "Secret::Md5(..)"
        );
    }
}
