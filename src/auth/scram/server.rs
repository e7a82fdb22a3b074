//! pgrouter as the SCRAM server: a client logging in to pgrouter proves its password against
//! a stored secret, and the ClientKey recovered from its proof lets pgrouter log in for it.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::{attr, is_attr, random_nonce, utf8, valid_nonce, ScramError};
use crate::auth::crypto::{ct_eq, hmac_sha256, sha256, xor};
use crate::auth::secret::ScramSecret;

/// pgrouter's side of an exchange with a client that logs in to pgrouter.
///
/// For unknown users, run the exchange against a made-up secret and fail it at the end,
/// as PostgreSQL does, so clients cannot probe which users exist.
pub struct ServerExchange {
    stored_key: [u8; 32],
    server_key: [u8; 32],
    /// `n,,` or `y,,`, which `c=` must echo.
    gs2_header: String,
    /// Client nonce followed by ours.
    nonce: String,
    /// client-first-message-bare "," server-first-message ",".
    auth_prefix: String,
}

impl ServerExchange {
    /// Reads client-first-message and returns server-first-message.
    pub fn start(
        secret: &ScramSecret,
        client_first: &[u8],
    ) -> Result<(ServerExchange, Vec<u8>), ScramError> {
        ServerExchange::start_with_nonce(secret, client_first, &random_nonce())
    }

    pub(super) fn start_with_nonce(
        secret: &ScramSecret,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<(ServerExchange, Vec<u8>), ScramError> {
        let text = utf8(client_first, "client-first-message is not UTF-8")?;
        let mut gs2 = text.splitn(3, ',');
        match gs2.next() {
            Some("n" | "y") => {}
            Some(flag) if flag.starts_with("p=") => {
                return Err(ScramError::Unsupported(
                    "channel binding (SCRAM-SHA-256-PLUS)",
                ))
            }
            _ => return Err(ScramError::Malformed("bad GS2 channel binding flag")),
        }
        let authzid = gs2.next().ok_or(ScramError::Malformed(
            "client-first-message has no GS2 header",
        ))?;
        if !authzid.is_empty() {
            return Err(ScramError::Unsupported("authorization identity"));
        }
        let bare = gs2.next().ok_or(ScramError::Malformed(
            "client-first-message has no GS2 header",
        ))?;
        let gs2_header = &text[..text.len() - bare.len()];

        let mut attrs = bare.split(',');
        let user = attrs.next().unwrap_or_default();
        if user.starts_with("m=") {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        attr(user, 'n', "client-first-message has no user name attribute")?;
        let client_nonce = attr(
            attrs.next().unwrap_or_default(),
            'r',
            "client-first-message has no nonce",
        )?;
        if !valid_nonce(client_nonce) {
            return Err(ScramError::Malformed(
                "invalid nonce in client-first-message",
            ));
        }

        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&secret.salt),
            secret.iterations
        );
        let exchange = ServerExchange {
            stored_key: secret.stored_key,
            server_key: secret.server_key,
            gs2_header: gs2_header.to_owned(),
            nonce,
            auth_prefix: format!("{bare},{server_first},"),
        };
        Ok((exchange, server_first.into_bytes()))
    }

    /// Checks client-final-message. On success returns server-final-message (`v=…`) and the
    /// client's ClientKey, which with the secret forms [`ScramKeys`](crate::auth::ScramKeys)
    /// (see [`ScramKeys::recovered`](crate::auth::ScramKeys::recovered)) for logging in to
    /// PostgreSQL as this client.
    pub fn finish(self, client_final: &[u8]) -> Result<(Vec<u8>, [u8; 32]), ScramError> {
        let text = utf8(client_final, "client-final-message is not UTF-8")?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final-message has no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attr(
            attrs.next().unwrap_or_default(),
            'c',
            "client-final-message has no channel binding",
        )?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let nonce = attr(
            attrs.next().unwrap_or_default(),
            'r',
            "client-final-message has no nonce",
        )?;
        if nonce != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        if attrs.any(|ext| !is_attr(ext)) {
            return Err(ScramError::Malformed(
                "bad attribute in client-final-message",
            ));
        }
        let proof: [u8; 32] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed(
                "client proof is not 32 bytes of base64",
            ))?;

        let auth_message = [self.auth_prefix.as_bytes(), without_proof.as_bytes()];
        let client_signature = hmac_sha256(&self.stored_key, &auth_message);
        let client_key = xor(&proof, &client_signature);
        if !ct_eq(&sha256(&client_key), &self.stored_key) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac_sha256(&self.server_key, &auth_message);
        let server_final = format!("v={}", BASE64.encode(server_signature));
        Ok((server_final.into_bytes(), client_key))
    }
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange").finish_non_exhaustive()
    }
}
