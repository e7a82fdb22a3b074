//! PostgreSQL's md5 password scheme.
//!
//! The stored secret is md5(password || username); on the wire a client answers
//! AuthenticationMD5Password(salt) with `"md5"` + hex(md5(hex(secret) || salt)), so whoever
//! holds the secret can both check and produce responses.

use md5::{Digest, Md5};

use super::crypto::{ct_eq, hex};

/// md5(password || user), what PostgreSQL stores as `"md5"` + hex.
pub fn md5_secret(user: &str, password: &str) -> [u8; 16] {
    let mut hasher = Md5::new();
    hasher.update(password.as_bytes());
    hasher.update(user.as_bytes());
    hasher.finalize().into()
}

/// `"md5"` + hex(md5(hex(secret) || salt)): a client's answer to AuthenticationMD5Password,
/// and what pgrouter sends to a server that asks for md5.
pub fn md5_response(secret: &[u8; 16], salt: [u8; 4]) -> String {
    let mut hasher = Md5::new();
    hasher.update(hex(secret).as_bytes());
    hasher.update(salt);
    format!("md5{}", hex(&hasher.finalize()))
}

/// Whether a client's PasswordMessage body (`response`, with or without its trailing NUL)
/// answers `salt` for `secret`. Compares in constant time.
pub fn verify_md5(secret: &[u8; 16], salt: [u8; 4], response: &[u8]) -> bool {
    let response = response.strip_suffix(b"\0").unwrap_or(response);
    ct_eq(md5_response(secret, salt).as_bytes(), response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto::unhex;

    // Python: hashlib.md5(b"secretalice").hexdigest(), then
    // "md5" + hashlib.md5(secret_hex.encode() + bytes([1, 2, 3, 4])).hexdigest().
    const SECRET_HEX: &str = "4a0a68b43b6cd5cf266fa02f196e2371";
    const RESPONSE: &str = "md598a0412b9c31436fc53776e863350083";
    const SALT: [u8; 4] = [1, 2, 3, 4];

    #[test]
    fn known_vector() {
        let secret = md5_secret("alice", "secret");
        assert_eq!(Some(secret), unhex::<16>(SECRET_HEX));
        assert_eq!(md5_response(&secret, SALT), RESPONSE);
    }

    #[test]
    fn verify_accepts_only_the_right_response() {
        let secret = md5_secret("alice", "secret");
        assert!(verify_md5(&secret, SALT, RESPONSE.as_bytes()));
        assert!(verify_md5(
            &secret,
            SALT,
            b"md598a0412b9c31436fc53776e863350083\0"
        ));
        assert!(!verify_md5(&secret, [1, 2, 3, 5], RESPONSE.as_bytes()));
        assert!(!verify_md5(
            &md5_secret("alice", "Secret"),
            SALT,
            RESPONSE.as_bytes()
        ));
        assert!(!verify_md5(
            &secret,
            SALT,
            b"md598a0412b9c31436fc53776e86335008"
        ));
        assert!(!verify_md5(
            &secret,
            SALT,
            b"md598a0412b9c31436fc53776e863350083\0\0"
        ));
        assert!(!verify_md5(&secret, SALT, b""));
    }
}
