//! pgrouter as the SCRAM client: logging in to PostgreSQL with a password or with keys
//! recovered from a client's proof.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::{attr, parse_iterations, random_nonce, utf8, valid_nonce, ScramError};
use crate::auth::crypto::{ct_eq, hmac_sha256, xor};
use crate::auth::secret::ScramKeys;

/// What pgrouter proves to PostgreSQL with.
#[derive(Clone)]
pub enum ClientCredential {
    Password(String),
    Keys(ScramKeys),
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCredential::Password(_) => f.write_str("Password(..)"),
            ClientCredential::Keys(keys) => f.debug_tuple("Keys").field(keys).finish(),
        }
    }
}

/// pgrouter's side of an exchange with a PostgreSQL server it logs in to.
pub struct ClientExchange {
    credential: ClientCredential,
    client_nonce: String,
    client_first_bare: String,
    responded: Option<Responded>,
}

struct Responded {
    keys: ScramKeys,
    server_signature: [u8; 32],
}

impl ClientExchange {
    /// Starts an exchange; the bytes are client-first-message (`n,,n=,r=<nonce>`), the data
    /// of SASLInitialResponse.
    pub fn start(credential: ClientCredential) -> (ClientExchange, Vec<u8>) {
        ClientExchange::with_nonce(credential, "", random_nonce())
    }

    pub(super) fn with_nonce(
        credential: ClientCredential,
        user: &str,
        nonce: String,
    ) -> (ClientExchange, Vec<u8>) {
        let user = user.replace('=', "=3D").replace(',', "=2C");
        let client_first_bare = format!("n={user},r={nonce}");
        let client_first = format!("n,,{client_first_bare}").into_bytes();
        let exchange = ClientExchange {
            credential,
            client_nonce: nonce,
            client_first_bare,
            responded: None,
        };
        (exchange, client_first)
    }

    /// Reads server-first-message and returns client-final-message.
    ///
    /// With [`ClientCredential::Password`] this runs PBKDF2 with the server's iteration count
    /// (milliseconds to seconds of CPU): call it off the I/O threads (e.g. `spawn_blocking`)
    /// and cache [`ClientExchange::derived_keys`] to pass as [`ClientCredential::Keys`] next
    /// time. With `Keys`, the server's salt and iteration count must be the keys' own.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        if self.responded.is_some() {
            return Err(ScramError::OutOfOrder);
        }
        let text = utf8(server_first, "server-first-message is not UTF-8")?;
        let mut attrs = text.split(',');
        let first = attrs.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        let nonce = attr(first, 'r', "server-first-message has no nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if !valid_nonce(nonce) {
            return Err(ScramError::Malformed(
                "invalid nonce in server-first-message",
            ));
        }
        let salt = attr(
            attrs.next().unwrap_or_default(),
            's',
            "server-first-message has no salt",
        )?;
        let salt = BASE64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(ScramError::Malformed("salt is not base64"))?;
        let iterations = attr(
            attrs.next().unwrap_or_default(),
            'i',
            "server-first-message has no iteration count",
        )?;
        let iterations = parse_iterations(iterations)?;

        let keys = match &self.credential {
            ClientCredential::Password(password) => {
                ScramKeys::from_password(password, &salt, iterations)
            }
            ClientCredential::Keys(keys) => {
                if keys.salt != salt || keys.iterations != iterations {
                    return Err(ScramError::SecretMismatch);
                }
                keys.clone()
            }
        };

        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            server_first,
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac_sha256(&keys.stored_key(), &auth_message);
        let proof = xor(&keys.client_key, &client_signature);
        let server_signature = hmac_sha256(&keys.server_key, &auth_message);
        self.responded = Some(Responded {
            keys,
            server_signature,
        });
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks server-final-message: the server must prove it holds the secret.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let responded = self.responded.as_ref().ok_or(ScramError::OutOfOrder)?;
        let text = utf8(server_final, "server-final-message is not UTF-8")?;
        let first = text.split(',').next().unwrap_or_default();
        if let Some(error) = first.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_owned()));
        }
        let signature = attr(first, 'v', "server-final-message has no verifier")?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| ScramError::Malformed("server signature is not base64"))?;
        if !ct_eq(&signature, &responded.server_signature) {
            return Err(ScramError::ServerSignatureMismatch);
        }
        Ok(())
    }

    /// The keys used by [`ClientExchange::respond`], for caching; `None` before it ran.
    pub fn derived_keys(&self) -> Option<ScramKeys> {
        self.responded.as_ref().map(|r| r.keys.clone())
    }
}

impl fmt::Debug for ClientExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientExchange").finish_non_exhaustive()
    }
}
