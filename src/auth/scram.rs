//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both ways.
//!
//! PostgreSQL's dialect: the user name in client-first-message is ignored (clients send
//! `n=,`; the startup packet names the user), there is no authorization identity, and the
//! GS2 header is `n,,` or `y,,`. pgrouter never offers SCRAM-SHA-256-PLUS, so a client that
//! asks for channel binding (`p=…`) is refused.
//!
//! [`ServerExchange`] checks a client against a [`ScramSecret`] and recovers the client's
//! ClientKey; [`ClientExchange`] logs in to PostgreSQL with a password or with [`ScramKeys`].

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::RngCore;

use super::crypto::{ct_eq, hmac_sha256, sha256, xor};
use super::secret::{ScramKeys, ScramSecret};

/// SASL mechanism name, as listed in AuthenticationSASL.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Highest iteration count [`ClientExchange`] accepts from a server: PBKDF2 cost is linear
/// in it and a hostile server could otherwise pin a CPU for minutes.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Random bytes in a nonce before base64 (PostgreSQL uses 18 too).
const NONCE_LEN: usize = 18;

/// Why an exchange failed. Messages never contain keys, proofs or passwords.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    #[error("SCRAM channel binding in client-final-message does not match client-first-message")]
    ChannelBindingMismatch,
    #[error("SCRAM nonce does not match")]
    NonceMismatch,
    #[error("password authentication failed")]
    WrongPassword,
    #[error(
        "the stored SCRAM secret does not match the server's: salt or iteration count differ \
         (the password was changed on the server, or the userlist is stale)"
    )]
    SecretMismatch,
    #[error("server asks for {0} SCRAM iterations, more than the limit of {MAX_ITERATIONS}")]
    TooManyIterations(u32),
    #[error("server reported SCRAM error: {0}")]
    ServerError(String),
    #[error("SCRAM server signature does not match: the server does not hold this secret")]
    ServerSignatureMismatch,
    #[error("SCRAM exchange step called out of order")]
    OutOfOrder,
}

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

    fn start_with_nonce(
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
    /// client's ClientKey, which with the secret forms [`ScramKeys`] (see
    /// [`ScramKeys::recovered`]) for logging in to PostgreSQL as this client.
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

    fn with_nonce(
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

fn random_nonce() -> String {
    let mut raw = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut raw);
    BASE64.encode(raw)
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, ScramError> {
    std::str::from_utf8(bytes).map_err(|_| ScramError::Malformed(what))
}

/// The value of attribute `name` (`name=value`), or `Malformed(missing)`.
fn attr<'a>(part: &'a str, name: char, missing: &'static str) -> Result<&'a str, ScramError> {
    part.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('='))
        .ok_or(ScramError::Malformed(missing))
}

fn is_attr(part: &str) -> bool {
    let bytes = part.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'='
}

/// Printable ASCII except ',' (RFC 5802).
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn parse_iterations(text: &str) -> Result<u32, ScramError> {
    const BAD: ScramError = ScramError::Malformed("iteration count is not a positive integer");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    match text.parse::<u32>() {
        Ok(0) => Err(BAD),
        Ok(n) if n <= MAX_ITERATIONS => Ok(n),
        Ok(n) => Err(ScramError::TooManyIterations(n)),
        Err(_) => Err(ScramError::TooManyIterations(u32::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_salt() -> Vec<u8> {
        BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap()
    }

    fn secret(password: &str) -> ScramSecret {
        ScramSecret::from_password(password, b"0123456789abcdef", 4096)
    }

    /// Runs a whole exchange; returns the ClientKey the server recovered.
    fn exchange(
        secret: &ScramSecret,
        credential: ClientCredential,
    ) -> Result<[u8; 32], ScramError> {
        let (mut client, client_first) = ClientExchange::start(credential);
        let (server, server_first) = ServerExchange::start(secret, &client_first)?;
        let client_final = client.respond(&server_first)?;
        let (server_final, client_key) = server.finish(&client_final)?;
        client.verify(&server_final)?;
        Ok(client_key)
    }

    #[test]
    fn rfc7677_client() {
        let credential = ClientCredential::Password("pencil".into());
        let (mut client, first) =
            ClientExchange::with_nonce(credential, "user", "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(first, RFC_CLIENT_FIRST.as_bytes());
        let last = client.respond(RFC_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(std::str::from_utf8(&last).unwrap(), RFC_CLIENT_FINAL);
        client.verify(RFC_SERVER_FINAL.as_bytes()).unwrap();
        let keys = client.derived_keys().unwrap();
        assert_eq!(keys.salt, rfc_salt());
        assert_eq!(keys.iterations, 4096);
    }

    #[test]
    fn rfc7677_server() {
        let secret = ScramSecret::from_password("pencil", &rfc_salt(), 4096);
        let (server, first) = ServerExchange::start_with_nonce(
            &secret,
            RFC_CLIENT_FIRST.as_bytes(),
            RFC_SERVER_NONCE,
        )
        .unwrap();
        assert_eq!(std::str::from_utf8(&first).unwrap(), RFC_SERVER_FIRST);
        let (last, client_key) = server.finish(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(last, RFC_SERVER_FINAL.as_bytes());
        let keys = ScramKeys::from_password("pencil", &rfc_salt(), 4096);
        assert_eq!(client_key, keys.client_key);
    }

    #[test]
    fn round_trip_with_password_then_recovered_keys() {
        let secret = secret("s3cret");
        let password = ClientCredential::Password("s3cret".into());
        let client_key = exchange(&secret, password).unwrap();

        // pgrouter now logs in to PostgreSQL, which holds the same secret, as this client.
        let keys = ScramKeys::recovered(&secret, client_key);
        assert_eq!(
            exchange(&secret, ClientCredential::Keys(keys)),
            Ok(client_key)
        );
    }

    #[test]
    fn derived_keys_can_be_reused() {
        let secret = secret("s3cret");
        let (mut client, client_first) =
            ClientExchange::start(ClientCredential::Password("s3cret".into()));
        assert!(client.derived_keys().is_none());
        let (_, server_first) = ServerExchange::start(&secret, &client_first).unwrap();
        client.respond(&server_first).unwrap();
        let keys = client.derived_keys().unwrap();
        assert_eq!(keys.secret(), secret);
        assert!(exchange(&secret, ClientCredential::Keys(keys)).is_ok());
    }

    #[test]
    fn keys_for_another_secret_are_refused() {
        let keys = ScramKeys::from_password("s3cret", b"0123456789abcdef", 4096);
        let other_salt = ScramSecret::from_password("s3cret", b"fedcba9876543210", 4096);
        let other_count = ScramSecret::from_password("s3cret", b"0123456789abcdef", 4097);
        for secret in [other_salt, other_count] {
            let result = exchange(&secret, ClientCredential::Keys(keys.clone()));
            assert_eq!(result, Err(ScramError::SecretMismatch));
        }
    }

    #[test]
    fn wrong_password() {
        let result = exchange(
            &secret("s3cret"),
            ClientCredential::Password("guess".into()),
        );
        assert_eq!(result, Err(ScramError::WrongPassword));
        let mut keys = ScramKeys::from_password("s3cret", b"0123456789abcdef", 4096);
        keys.client_key[0] ^= 1;
        let result = exchange(&secret("s3cret"), ClientCredential::Keys(keys));
        assert_eq!(result, Err(ScramError::WrongPassword));
    }

    /// client-final-message for a fresh exchange, edited by `edit`, as the server judges it.
    fn finish_edited(edit: impl Fn(&str) -> String) -> Result<(Vec<u8>, [u8; 32]), ScramError> {
        let secret = secret("s3cret");
        let (mut client, client_first) =
            ClientExchange::start(ClientCredential::Password("s3cret".into()));
        let (server, server_first) = ServerExchange::start(&secret, &client_first).unwrap();
        let client_final = client.respond(&server_first).unwrap();
        let edited = edit(std::str::from_utf8(&client_final).unwrap());
        server.finish(edited.as_bytes())
    }

    #[test]
    fn tampered_client_final_is_refused() {
        assert!(finish_edited(str::to_owned).is_ok());
        let nonce = finish_edited(|m| m.replacen(",r=", ",r=x", 1));
        assert_eq!(nonce.unwrap_err(), ScramError::NonceMismatch);
        let binding = finish_edited(|m| m.replacen("c=biws", "c=eSws", 1));
        assert_eq!(binding.unwrap_err(), ScramError::ChannelBindingMismatch);
        let no_proof = finish_edited(|m| m.split(",p=").next().unwrap().to_owned());
        assert!(matches!(no_proof, Err(ScramError::Malformed(_))));
        let short_proof = finish_edited(|m| format!("{},p=AAAA", m.split(",p=").next().unwrap()));
        assert!(matches!(short_proof, Err(ScramError::Malformed(_))));
        let extension = finish_edited(|m| m.replacen(",p=", ",x=1,p=", 1));
        assert_eq!(extension.unwrap_err(), ScramError::WrongPassword);
    }

    #[test]
    fn channel_binding_flag_y_is_echoed() {
        let secret = secret("s3cret");
        let (server, _) = ServerExchange::start_with_nonce(&secret, b"y,,n=,r=abc", "def").unwrap();
        let err = server.finish(b"c=biws,r=abcdef,p=AAAA").unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingMismatch);
        let (server, _) = ServerExchange::start_with_nonce(&secret, b"y,,n=,r=abc", "def").unwrap();
        let proof = BASE64.encode([0u8; 32]);
        let err = server
            .finish(format!("c=eSws,r=abcdef,p={proof}").as_bytes())
            .unwrap_err();
        assert_eq!(err, ScramError::WrongPassword);
    }

    #[test]
    fn bad_client_first_is_refused() {
        let secret = secret("s3cret");
        let unsupported: [&[u8]; 3] = [
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=bob,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
        ];
        for message in unsupported {
            let err = ServerExchange::start(&secret, message).unwrap_err();
            assert!(matches!(err, ScramError::Unsupported(_)), "{err:?}");
        }
        let malformed: [&[u8]; 6] = [
            b"x,,n=,r=abc",
            b"n,,n=,r=",
            b"n,,n=,r=a b",
            b"n,,r=abc",
            b"n,",
            b"n,,n=,r=\xff",
        ];
        for message in malformed {
            let err = ServerExchange::start(&secret, message).unwrap_err();
            assert!(matches!(err, ScramError::Malformed(_)), "{err:?}");
        }
        // The user name is ignored, extensions after the nonce are allowed.
        assert!(ServerExchange::start(&secret, b"n,,n=bob,r=abc,x=1").is_ok());
    }

    fn respond_to(server_first: &str) -> Result<Vec<u8>, ScramError> {
        let credential = ClientCredential::Password("pw".into());
        let (mut client, _) = ClientExchange::with_nonce(credential, "", "abc".into());
        client.respond(server_first.as_bytes())
    }

    #[test]
    fn bad_server_first_is_refused() {
        assert!(respond_to("r=abcdef,s=AAAA,i=1").is_ok());
        let cases = [
            ("r=abc,s=AAAA,i=1", ScramError::NonceMismatch),
            ("r=xbcdef,s=AAAA,i=1", ScramError::NonceMismatch),
            ("r=ab,s=AAAA,i=1", ScramError::NonceMismatch),
            (
                "r=abcdef,s=AAAA,i=1000001",
                ScramError::TooManyIterations(1_000_001),
            ),
            (
                "r=abcdef,s=AAAA,i=99999999999",
                ScramError::TooManyIterations(u32::MAX),
            ),
            (
                "m=x,r=abcdef,s=AAAA,i=1",
                ScramError::Unsupported("mandatory extension"),
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(respond_to(message).unwrap_err(), expected, "{message}");
        }
        for message in [
            "r=abcdef,s=,i=1",
            "r=abcdef,s=!!,i=1",
            "r=abcdef,s=AAAA,i=0",
            "r=abcdef,s=AAAA,i=-1",
            "r=abcdef,s=AAAA",
            "r=abcdef,i=1,s=AAAA",
            "s=AAAA,r=abcdef,i=1",
        ] {
            assert!(
                matches!(respond_to(message), Err(ScramError::Malformed(_))),
                "{message}"
            );
        }
    }

    #[test]
    fn bad_server_final_is_refused() {
        let secret = secret("s3cret");
        let (mut client, client_first) =
            ClientExchange::start(ClientCredential::Password("s3cret".into()));
        assert_eq!(client.verify(b"v=AAAA"), Err(ScramError::OutOfOrder));
        let (server, server_first) = ServerExchange::start(&secret, &client_first).unwrap();
        let client_final = client.respond(&server_first).unwrap();
        assert_eq!(client.respond(&server_first), Err(ScramError::OutOfOrder));
        let (server_final, _) = server.finish(&client_final).unwrap();

        let err = client.verify(b"e=invalid-proof").unwrap_err();
        assert_eq!(err, ScramError::ServerError("invalid-proof".into()));
        assert_eq!(
            err.to_string(),
            "server reported SCRAM error: invalid-proof"
        );
        let forged = format!("v={}", BASE64.encode([0u8; 32]));
        assert_eq!(
            client.verify(forged.as_bytes()),
            Err(ScramError::ServerSignatureMismatch)
        );
        assert!(matches!(
            client.verify(b"x=1"),
            Err(ScramError::Malformed(_))
        ));
        assert!(matches!(
            client.verify(b"v=!"),
            Err(ScramError::Malformed(_))
        ));
        client.verify(&server_final).unwrap();
    }

    #[test]
    fn client_first_names_no_user() {
        let (_, first) = ClientExchange::start(ClientCredential::Password("pw".into()));
        let first = String::from_utf8(first).unwrap();
        let nonce = first.strip_prefix("n,,n=,r=").unwrap();
        assert_eq!(nonce.len(), 24);
        assert!(valid_nonce(nonce));
        let (_, escaped) = ClientExchange::with_nonce(
            ClientCredential::Password("pw".into()),
            "a=b,c",
            "n".into(),
        );
        assert_eq!(escaped, b"n,,n=a=3Db=2Cc,r=n");
    }

    #[test]
    fn debug_redacts() {
        let password = ClientCredential::Password("hunter2".into());
        assert_eq!(format!("{password:?}"), "Password(..)");
        let keys = ClientCredential::Keys(ScramKeys::from_password("hunter2", b"salt", 1));
        assert_eq!(format!("{keys:?}"), "Keys(ScramKeys { iterations: 1, .. })");
    }
}
