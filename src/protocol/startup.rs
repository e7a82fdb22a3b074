//! The first packet a client sends: SSLRequest, GSSENCRequest, CancelRequest or StartupMessage.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::limits::MAX_STARTUP_LEN;

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

#[derive(Debug, PartialEq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(Startup),
}

/// The (process id, secret) a server hands out in BackendKeyData and a cancel quotes back.
/// Protocol 3.2 allows secrets of 4 to 256 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: Bytes,
}

#[derive(Debug, PartialEq)]
pub struct Startup {
    /// The whole packet, length included, to forward unchanged.
    pub raw: Bytes,
    pub version: (u16, u16),
    pub params: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("startup packet length {0} is outside 8..=10000")]
    BadLength(u32),
    #[error("unsupported frontend protocol {0}.{1}: pgrouter speaks 3.x")]
    UnsupportedVersion(u16, u16),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Reads one length-prefixed startup packet. `Ok(None)` on a clean EOF before any byte.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Result<Bytes, StartupError>>> {
    // Every packet has at least 8 bytes (length and code), so asking for 8 at once never takes
    // a byte of what follows, and an SSLRequest comes in one read.
    let mut head = [0u8; 8];
    let mut got = r.read(&mut head).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < 4 {
        r.read_exact(&mut head[got..4]).await?;
        got = 4;
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if !(8..=MAX_STARTUP_LEN as u32).contains(&len) {
        return Ok(Some(Err(StartupError::BadLength(len))));
    }
    let mut packet = vec![0u8; len as usize];
    packet[..got].copy_from_slice(&head[..got]);
    r.read_exact(&mut packet[got..]).await?;
    Ok(Some(Ok(Bytes::from(packet))))
}

/// Decodes a whole packet as read by `read_packet`. Anything else is refused, never a panic:
/// fewer than 8 bytes, or a length field that is not the packet's length.
pub fn decode(packet: Bytes) -> Result<FirstPacket, StartupError> {
    let Some(&[l0, l1, l2, l3, c0, c1, c2, c3]) = packet.get(..8) else {
        return Err(StartupError::Malformed("packet shorter than 8 bytes"));
    };
    if u32::from_be_bytes([l0, l1, l2, l3]) as usize != packet.len() {
        return Err(StartupError::Malformed(
            "length field is not the packet's length",
        ));
    }
    let code = u32::from_be_bytes([c0, c1, c2, c3]);
    match code {
        SSL_REQUEST if packet.len() == 8 => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST if packet.len() == 8 => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST => decode_cancel(&packet),
        SSL_REQUEST | GSSENC_REQUEST => Err(StartupError::Malformed("request with a body")),
        _ => decode_startup(packet, code),
    }
}

fn decode_cancel(packet: &Bytes) -> Result<FirstPacket, StartupError> {
    if !(16..=12 + 256).contains(&packet.len()) {
        return Err(StartupError::Malformed("cancel request of the wrong size"));
    }
    Ok(FirstPacket::Cancel(CancelKey {
        pid: i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        secret: packet.slice(12..),
    }))
}

fn decode_startup(packet: Bytes, code: u32) -> Result<FirstPacket, StartupError> {
    let version = ((code >> 16) as u16, code as u16);
    if version.0 != 3 {
        return Err(StartupError::UnsupportedVersion(version.0, version.1));
    }
    let mut rest = &packet[8..];
    let mut params = Vec::new();
    // Names seen, hashed: a packet can hold thousands of parameters.
    let mut seen = std::collections::HashSet::new();
    loop {
        let (key, after) =
            cstr(rest).ok_or(StartupError::Malformed("parameters not terminated"))?;
        if key.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed("data after the terminator"));
            }
            break;
        }
        // PostgreSQL lets the last of two values win; pgrouter would read the first. No
        // client sends a name twice: refuse rather than disagree with the server. Setting
        // names are case-insensitive to PostgreSQL (`DateStyle`, `datestyle`), so here too.
        if !seen.insert(key.to_ascii_lowercase()) {
            return Err(StartupError::Malformed("parameter given twice"));
        }
        let (value, after) =
            cstr(after).ok_or(StartupError::Malformed("parameters not terminated"))?;
        let utf8 = |b| std::str::from_utf8(b).map(str::to_owned);
        let key = utf8(key).map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value =
            utf8(value).map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        params.push((key, value));
        rest = after;
    }
    if !params.iter().any(|(k, _)| k == "user") {
        return Err(StartupError::Malformed("no user given"));
    }
    Ok(FirstPacket::Startup(Startup {
        raw: packet,
        version,
        params,
    }))
}

/// Splits at the first NUL: (string, rest after the NUL).
fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|b| *b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

impl Startup {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.param("user").unwrap_or_default()
    }

    /// The database, which PostgreSQL defaults to the user name.
    pub fn database(&self) -> &str {
        self.param("database").unwrap_or_else(|| self.user())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Bytes {
        let mut p = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        Bytes::from(p)
    }

    #[test]
    fn startup_message_with_parameters() {
        let p = packet(
            196608,
            b"user\0alice\0database\0app\0application_name\0psql\0\0",
        );
        let FirstPacket::Startup(s) = decode(p.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(s.version, (3, 0));
        assert_eq!(s.user(), "alice");
        assert_eq!(s.database(), "app");
        assert_eq!(s.param("application_name"), Some("psql"));
        assert_eq!(s.raw, p);
        // Protocol 3.2 (PostgreSQL 18) is forwarded for the server to negotiate.
        let p = packet(3 << 16 | 2, b"user\0bob\0\0");
        let FirstPacket::Startup(s) = decode(p).unwrap() else {
            panic!()
        };
        assert_eq!(s.database(), "bob");
    }

    #[test]
    fn requests() {
        assert_eq!(
            decode(packet(SSL_REQUEST, b"")),
            Ok(FirstPacket::SslRequest)
        );
        assert_eq!(
            decode(packet(GSSENC_REQUEST, b"")),
            Ok(FirstPacket::GssEncRequest)
        );
        let c = decode(packet(CANCEL_REQUEST, &[0, 0, 1, 0, 9, 9, 9, 9])).unwrap();
        assert_eq!(
            c,
            FirstPacket::Cancel(CancelKey {
                pid: 256,
                secret: Bytes::from_static(&[9, 9, 9, 9])
            })
        );
        assert!(decode(packet(CANCEL_REQUEST, &[0, 0, 1, 0, 9])).is_err());
        assert!(decode(packet(SSL_REQUEST, b"x")).is_err());
    }

    #[test]
    fn malformed_startups_are_refused() {
        let bad = |body: &[u8]| decode(packet(196608, body)).unwrap_err();
        assert_eq!(
            bad(b"user\0alice\0"),
            StartupError::Malformed("parameters not terminated")
        );
        assert_eq!(
            bad(b"user\0\0"),
            StartupError::Malformed("parameters not terminated")
        );
        assert_eq!(
            bad(b"database\0x\0\0"),
            StartupError::Malformed("no user given")
        );
        assert_eq!(
            bad(b"user\0\xff\xfe\0\0"),
            StartupError::Malformed("parameter value is not UTF-8")
        );
        assert_eq!(
            bad(b"user\0a\0\0b\0\0"),
            StartupError::Malformed("data after the terminator")
        );
        assert_eq!(
            decode(packet(2 << 16, b"user\0a\0\0")).unwrap_err(),
            StartupError::UnsupportedVersion(2, 0)
        );
        assert_eq!(
            decode(packet(0x1234_5678, b"\0")).unwrap_err(),
            StartupError::UnsupportedVersion(0x1234, 0x5678)
        );
    }

    /// Found by fuzz/fuzz_targets/startup.rs: `decode` indexed bytes 4..8 unchecked.
    #[test]
    fn short_or_misframed_packets_are_refused_not_a_panic() {
        for short in [&b""[..], b"\0\0\0\x04", b"\0\0\0\x07\x04\xd2\x16"] {
            assert_eq!(
                decode(Bytes::copy_from_slice(short)),
                Err(StartupError::Malformed("packet shorter than 8 bytes"))
            );
        }
        let mut p = packet(196608, b"user\0a\0\0").to_vec();
        p.push(0);
        assert_eq!(
            decode(Bytes::from(p)),
            Err(StartupError::Malformed(
                "length field is not the packet's length"
            ))
        );
    }

    /// Found by fuzz/fuzz_targets/startup.rs: with `user` twice pgrouter took the first and
    /// PostgreSQL the last.
    #[test]
    fn a_parameter_given_twice_is_refused() {
        assert_eq!(
            decode(packet(196608, b"user\0a\0user\0b\0\0")),
            Err(StartupError::Malformed("parameter given twice"))
        );
        assert_eq!(
            decode(packet(196608, b"user\0a\0database\0x\0database\0y\0\0")),
            Err(StartupError::Malformed("parameter given twice"))
        );
        // One setting in two spellings: pooled mode would track one, the server apply both.
        assert_eq!(
            decode(packet(
                196608,
                b"user\0a\0DateStyle\0ISO\0datestyle\0German\0\0"
            )),
            Err(StartupError::Malformed("parameter given twice"))
        );
    }

    #[tokio::test]
    async fn read_packet_checks_the_length_first() {
        let mut input: &[u8] = &[0, 0, 0, 4];
        assert_eq!(
            read_packet(&mut input).await.unwrap(),
            Some(Err(StartupError::BadLength(4)))
        );
        let mut input: &[u8] = &[0, 1, 0, 0, 0];
        assert_eq!(
            read_packet(&mut input).await.unwrap(),
            Some(Err(StartupError::BadLength(65536)))
        );
        let mut input: &[u8] = &[];
        assert_eq!(read_packet(&mut input).await.unwrap(), None);
        let mut input: &[u8] = &[0, 0, 0, 8, 4, 210, 22, 47];
        assert_eq!(
            read_packet(&mut input).await.unwrap(),
            Some(Ok(packet(SSL_REQUEST, b"")))
        );
    }

    #[tokio::test]
    async fn read_packet_takes_one_packet_however_the_bytes_come() {
        let ssl = packet(SSL_REQUEST, b"");
        let startup = packet(196608, b"user\0a\0\0");
        let both = [ssl.clone(), startup.clone()].concat();
        // All at once, then in pieces of 1, 3 and 5 bytes (each read returns one piece).
        for piece in [both.len(), 1, 3, 5] {
            let mut input: Box<dyn AsyncRead + Unpin> = Box::new(&[][..]);
            for chunk in both.chunks(piece) {
                input = Box::new(input.chain(chunk));
            }
            let first = read_packet(&mut input).await.unwrap();
            assert_eq!(first, Some(Ok(ssl.clone())), "pieces of {piece}");
            let second = read_packet(&mut input).await.unwrap();
            assert_eq!(second, Some(Ok(startup.clone())), "pieces of {piece}");
            assert_eq!(read_packet(&mut input).await.unwrap(), None);
        }
    }
}
