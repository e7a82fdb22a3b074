//! Both sides of SCRAM-SHA-256: RFC 7677's example, round trips, and every refusal.

use super::*;
use crate::auth::secret::{ScramKeys, ScramSecret};

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
fn exchange(secret: &ScramSecret, credential: ClientCredential) -> Result<[u8; 32], ScramError> {
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
    let (server, first) =
        ServerExchange::start_with_nonce(&secret, RFC_CLIENT_FIRST.as_bytes(), RFC_SERVER_NONCE)
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
    let (_, escaped) =
        ClientExchange::with_nonce(ClientCredential::Password("pw".into()), "a=b,c", "n".into());
    assert_eq!(escaped, b"n,,n=a=3Db=2Cc,r=n");
}

#[test]
fn debug_redacts() {
    let password = ClientCredential::Password("hunter2".into());
    assert_eq!(format!("{password:?}"), "Password(..)");
    let keys = ClientCredential::Keys(ScramKeys::from_password("hunter2", b"salt", 1));
    assert_eq!(format!("{keys:?}"), "Keys(ScramKeys { iterations: 1, .. })");
}
