//! The authentication messages of the PostgreSQL wire protocol.
//!
//! Backend: Authentication* ('R'), built by pgrouter for its clients and decoded from
//! servers. Frontend: SASLInitialResponse, SASLResponse and PasswordMessage (all 'p'), built
//! for servers and decoded from clients. Every message is a tag byte, an i32 length that
//! counts itself, and the body. Decoders take the body only (after the 5-byte header).
//!
//! Messages are framed by [`crate::protocol::wire::message`]. Encoders panic if SASL data
//! exceeds `i32::MAX` bytes, which no authentication message does.

use bytes::{BufMut, BytesMut};

use crate::protocol::wire::{self, put_cstr};

const AUTH: u8 = b'R';
const PASSWORD: u8 = b'p';

const OK: i32 = 0;
const CLEARTEXT: i32 = 3;
const MD5: i32 = 5;
const SASL: i32 = 10;
const SASL_CONTINUE: i32 = 11;
const SASL_FINAL: i32 = 12;

/// A message body that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthMessageError {
    #[error("authentication message is truncated")]
    Truncated,
    #[error("string in authentication message has no terminating NUL")]
    Unterminated,
    #[error("string in authentication message is not UTF-8")]
    NotUtf8,
    #[error("SASL data length {0} does not match the {1} bytes that follow")]
    BadLength(i32, usize),
    #[error("{0} unexpected bytes at the end of authentication message")]
    Trailing(usize),
}

/// AuthenticationOk.
pub fn auth_ok() -> BytesMut {
    auth(OK, &[])
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext() -> BytesMut {
    auth(CLEARTEXT, &[])
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(salt: [u8; 4]) -> BytesMut {
    auth(MD5, &salt)
}

/// AuthenticationSASL listing `mechanisms`.
pub fn auth_sasl(mechanisms: &[&str]) -> BytesMut {
    let len = mechanisms.iter().map(|m| m.len() + 1).sum::<usize>() + 1;
    build(AUTH, 4 + len, |msg| {
        msg.put_i32(SASL);
        for mechanism in mechanisms {
            put_cstr(msg, mechanism.as_bytes());
        }
        msg.put_u8(0);
    })
}

/// AuthenticationSASLContinue carrying server-first-message.
pub fn auth_sasl_continue(data: &[u8]) -> BytesMut {
    auth(SASL_CONTINUE, data)
}

/// AuthenticationSASLFinal carrying server-final-message.
pub fn auth_sasl_final(data: &[u8]) -> BytesMut {
    auth(SASL_FINAL, data)
}

/// SASLInitialResponse: the chosen mechanism and client-first-message.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> BytesMut {
    build(PASSWORD, mechanism.len() + 1 + 4 + data.len(), |msg| {
        put_cstr(msg, mechanism.as_bytes());
        msg.put_i32(len_i32(data.len()));
        msg.put_slice(data);
    })
}

/// SASLResponse carrying client-final-message.
pub fn sasl_response(data: &[u8]) -> BytesMut {
    build(PASSWORD, data.len(), |msg| msg.put_slice(data))
}

/// PasswordMessage: a cleartext password or an md5 response.
pub fn password_message(password: &str) -> BytesMut {
    build(PASSWORD, password.len() + 1, |msg| {
        put_cstr(msg, password.as_bytes())
    })
}

/// Reads a SASLInitialResponse body: the mechanism and the initial data (empty when the
/// client sent length -1, meaning no initial response).
pub fn decode_sasl_initial(body: &[u8]) -> Result<(String, Vec<u8>), AuthMessageError> {
    let (mechanism, rest) = take_cstr(body)?;
    let (len, data) = take_i32(rest)?;
    if len == -1 && data.is_empty() {
        return Ok((mechanism.to_owned(), Vec::new()));
    }
    if usize::try_from(len).ok() != Some(data.len()) {
        return Err(AuthMessageError::BadLength(len, data.len()));
    }
    Ok((mechanism.to_owned(), data.to_vec()))
}

/// An Authentication* message from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    /// The mechanisms the server offers, in its order of preference.
    Sasl(Vec<String>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, GSSAPI, SSPI and anything newer: not supported by pgrouter.
    Other(i32),
}

impl<'a> AuthRequest<'a> {
    /// Decodes the body of an 'R' message.
    pub fn decode(body: &'a [u8]) -> Result<AuthRequest<'a>, AuthMessageError> {
        let (code, rest) = take_i32(body)?;
        match code {
            OK => no_more(rest).map(|()| AuthRequest::Ok),
            CLEARTEXT => no_more(rest).map(|()| AuthRequest::Cleartext),
            MD5 => {
                let salt: [u8; 4] = rest
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(AuthMessageError::Truncated)?;
                no_more(&rest[4..]).map(|()| AuthRequest::Md5(salt))
            }
            SASL => {
                let mut mechanisms = Vec::new();
                let mut rest = rest;
                loop {
                    let (name, after) = take_cstr(rest)?;
                    rest = after;
                    if name.is_empty() {
                        break;
                    }
                    mechanisms.push(name.to_owned());
                }
                no_more(rest).map(|()| AuthRequest::Sasl(mechanisms))
            }
            SASL_CONTINUE => Ok(AuthRequest::SaslContinue(rest)),
            SASL_FINAL => Ok(AuthRequest::SaslFinal(rest)),
            other => Ok(AuthRequest::Other(other)),
        }
    }
}

fn auth(code: i32, data: &[u8]) -> BytesMut {
    build(AUTH, 4 + data.len(), |msg| {
        msg.put_i32(code);
        msg.put_slice(data);
    })
}

/// The message `tag` whose `body_len`-byte body `body` writes, in a buffer of its size.
fn build(tag: u8, body_len: usize, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut msg = BytesMut::with_capacity(5 + body_len);
    wire::message(&mut msg, tag, body);
    msg
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).expect("authentication message longer than i32::MAX")
}

fn take_cstr(body: &[u8]) -> Result<(&str, &[u8]), AuthMessageError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(AuthMessageError::Unterminated)?;
    let s = std::str::from_utf8(&body[..nul]).map_err(|_| AuthMessageError::NotUtf8)?;
    Ok((s, &body[nul + 1..]))
}

fn take_i32(body: &[u8]) -> Result<(i32, &[u8]), AuthMessageError> {
    let (head, rest) = body
        .split_first_chunk::<4>()
        .ok_or(AuthMessageError::Truncated)?;
    Ok((i32::from_be_bytes(*head), rest))
}

fn no_more(rest: &[u8]) -> Result<(), AuthMessageError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(AuthMessageError::Trailing(rest.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of a backend message, after checking its header.
    fn body(msg: &[u8], tag: u8) -> &[u8] {
        assert_eq!(msg[0], tag);
        let len = i32::from_be_bytes(msg[1..5].try_into().unwrap());
        assert_eq!(usize::try_from(len).unwrap(), msg.len() - 1);
        &msg[5..]
    }

    #[test]
    fn backend_messages_exact_bytes() {
        assert_eq!(&auth_ok()[..], b"R\0\0\0\x08\0\0\0\x00");
        assert_eq!(&auth_cleartext()[..], b"R\0\0\0\x08\0\0\0\x03");
        assert_eq!(
            &auth_md5([1, 2, 3, 4])[..],
            b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04"
        );
        assert_eq!(
            &auth_sasl(&["SCRAM-SHA-256"])[..],
            b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"
        );
        assert_eq!(&auth_sasl(&[])[..], b"R\0\0\0\x09\0\0\0\x0a\0");
        assert_eq!(&auth_sasl_continue(b"r=x")[..], b"R\0\0\0\x0b\0\0\0\x0br=x");
        assert_eq!(&auth_sasl_final(b"v=y")[..], b"R\0\0\0\x0b\0\0\0\x0cv=y");
    }

    #[test]
    fn frontend_messages_exact_bytes() {
        assert_eq!(
            &sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=a")[..],
            b"p\0\0\0\x1fSCRAM-SHA-256\0\0\0\0\x09n,,n=,r=a"
        );
        assert_eq!(&sasl_response(b"c=biws")[..], b"p\0\0\0\x0ac=biws");
        assert_eq!(&password_message("md5ab")[..], b"p\0\0\0\x0amd5ab\0");
    }

    #[test]
    fn decodes_sasl_initial() {
        let msg = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=a");
        let (mechanism, data) = decode_sasl_initial(body(&msg, b'p')).unwrap();
        assert_eq!(mechanism, "SCRAM-SHA-256");
        assert_eq!(data, b"n,,n=,r=a");
        assert_eq!(
            decode_sasl_initial(b"SCRAM-SHA-256\0\xff\xff\xff\xff"),
            Ok(("SCRAM-SHA-256".into(), Vec::new()))
        );
        assert_eq!(
            decode_sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x00"),
            Ok(("SCRAM-SHA-256".into(), Vec::new()))
        );
        let errors: [(&[u8], AuthMessageError); 6] = [
            (b"SCRAM-SHA-256", AuthMessageError::Unterminated),
            (b"SCRAM-SHA-256\0\0\0", AuthMessageError::Truncated),
            (b"SCRAM\0\0\0\0\x02a", AuthMessageError::BadLength(2, 1)),
            (b"SCRAM\0\0\0\0\x01ab", AuthMessageError::BadLength(1, 2)),
            (
                b"SCRAM\0\xff\xff\xff\xfea",
                AuthMessageError::BadLength(-2, 1),
            ),
            (b"\xff\0\0\0\0\0", AuthMessageError::NotUtf8),
        ];
        for (body, expected) in errors {
            assert_eq!(decode_sasl_initial(body), Err(expected));
        }
    }

    #[test]
    fn decodes_auth_requests() {
        let decode =
            |msg: &BytesMut| AuthRequest::decode(body(msg, b'R')).map(|r| format!("{r:?}"));
        assert_eq!(decode(&auth_ok()).unwrap(), "Ok");
        assert_eq!(decode(&auth_cleartext()).unwrap(), "Cleartext");
        assert_eq!(
            decode(&auth_md5([9, 8, 7, 6])).unwrap(),
            "Md5([9, 8, 7, 6])"
        );
        assert_eq!(
            AuthRequest::decode(body(
                &auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
                b'R'
            )),
            Ok(AuthRequest::Sasl(vec![
                "SCRAM-SHA-256-PLUS".into(),
                "SCRAM-SHA-256".into()
            ]))
        );
        assert_eq!(
            AuthRequest::decode(body(&auth_sasl_continue(b"r=x"), b'R')),
            Ok(AuthRequest::SaslContinue(b"r=x"))
        );
        assert_eq!(
            AuthRequest::decode(body(&auth_sasl_final(b"v=y"), b'R')),
            Ok(AuthRequest::SaslFinal(b"v=y"))
        );
        assert_eq!(
            AuthRequest::decode(b"\0\0\0\x07"),
            Ok(AuthRequest::Other(7))
        );

        let errors: [(&[u8], AuthMessageError); 6] = [
            (b"\0\0\0", AuthMessageError::Truncated),
            (b"\0\0\0\0x", AuthMessageError::Trailing(1)),
            (b"\0\0\0\x05\x01\x02\x03", AuthMessageError::Truncated),
            (
                b"\0\0\0\x05\x01\x02\x03\x04\x05",
                AuthMessageError::Trailing(1),
            ),
            (b"\0\0\0\x0aSCRAM-SHA-256\0", AuthMessageError::Unterminated),
            (
                b"\0\0\0\x0aSCRAM-SHA-256\0\0x",
                AuthMessageError::Trailing(1),
            ),
        ];
        for (body, expected) in errors {
            assert_eq!(AuthRequest::decode(body), Err(expected));
        }
    }
}
