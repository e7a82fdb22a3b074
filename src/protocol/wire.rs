//! Whole PostgreSQL messages: split off a buffer (framed by [`super::frame::header_within`]),
//! written by pgrouter itself (framed by [`message`]), rewritten, and read field by field.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{header_within, BadLength};

use super::limits::MAX_WHOLE_MESSAGE;

/// Splits one whole message (header included) off the front of `buf`, if it is all there;
/// one longer than [`MAX_WHOLE_MESSAGE`] is refused from its header.
pub fn take_message(buf: &mut BytesMut) -> Result<Option<Bytes>, BadLength> {
    take_message_within(buf, MAX_WHOLE_MESSAGE)
}

/// [`take_message`] for messages of at most `max` bytes, header included (login and
/// authentication messages are short); a longer one is refused from its header.
pub fn take_message_within(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, BadLength> {
    // `max` counts the tag byte, a length field does not.
    let max_len = u32::try_from(max.saturating_sub(1)).unwrap_or(u32::MAX);
    match header_within(buf, max_len)? {
        Some((_, len)) if buf.len() >= len => Ok(Some(buf.split_to(len).freeze())),
        _ => Ok(None),
    }
}

/// Writes a message with `tag` whose body `body` fills in: the one message encoder (the
/// others build their bodies and frame them here).
pub fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    length_prefixed(out, body);
}

/// Writes a packet of the startup phase (StartupMessage, CancelRequest): a length that counts
/// itself and a body `body` fills in, with no tag.
pub fn packet(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    length_prefixed(out, body);
}

fn length_prefixed(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |b| b.put_u8(status));
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: &[u8]) {
    message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_slice(secret);
    });
}

pub fn query(out: &mut BytesMut, sql: &str) {
    message(out, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

pub fn terminate(out: &mut BytesMut) {
    message(out, b'X', |_| {});
}

/// A Parse of statement `name` from the body of a client's Parse after its name
/// (query, parameter types).
pub fn parse(out: &mut BytesMut, name: &str, rest: &[u8]) {
    message(out, b'P', |b| {
        put_cstr(b, name.as_bytes());
        b.put_slice(rest);
    });
}

/// A Bind of `portal` to statement `name`, with the rest of a client's Bind after its
/// statement name (formats, parameters, result formats).
pub fn bind(out: &mut BytesMut, portal: &[u8], name: &str, rest: &[u8]) {
    message(out, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, name.as_bytes());
        b.put_slice(rest);
    });
}

/// Describe or Close ('S' statement / 'P' portal) of `name`.
pub fn describe_or_close(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    message(out, tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// The StartupMessage (protocol 3.0) with these parameters.
pub fn startup(params: &[(&str, &str)]) -> BytesMut {
    let mut out = BytesMut::new();
    packet(&mut out, |b| {
        b.put_u32(196608);
        for (k, v) in params {
            put_cstr(b, k.as_bytes());
            put_cstr(b, v.as_bytes());
        }
        b.put_u8(0);
    });
    out
}

/// An ErrorResponse (or, with tag 'N', a NoticeResponse) with these fields: (field code,
/// value), as [`error_fields`] reads them back.
pub fn error_response(out: &mut BytesMut, tag: u8, fields: &[(u8, &str)]) {
    message(out, tag, |b| {
        for (code, value) in fields {
            b.put_u8(*code);
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

/// A NUL-terminated string.
pub fn put_cstr(b: &mut BytesMut, s: &[u8]) {
    b.put_slice(s);
    b.put_u8(0);
}

/// Reads NUL-terminated strings and fixed fields from a message body.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(body: &'a [u8]) -> Reader<'a> {
        Reader { rest: body }
    }

    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|&b| b == 0)?;
        let s = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Some(s)
    }

    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    pub fn i32(&mut self) -> Option<i32> {
        let bytes = self.rest.get(..4)?;
        self.rest = &self.rest[4..];
        Some(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn u16(&mut self) -> Option<u16> {
        let bytes = self.rest.get(..2)?;
        self.rest = &self.rest[2..];
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.rest.get(..n)?;
        self.rest = &self.rest[n..];
        Some(bytes)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

/// The value of field `code` ('C' SQLSTATE, 'M' message, 'V' severity, ...) among
/// [`error_fields`].
pub fn field(fields: &[(u8, String)], code: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_str())
}

/// The fields of an ErrorResponse or NoticeResponse body: (field code, value).
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut r = Reader::new(body);
    let mut fields = Vec::new();
    while let Some(code) = r.byte() {
        if code == 0 {
            break;
        }
        let Some(value) = r.cstr() else { break };
        fields.push((code, String::from_utf8_lossy(value).into_owned()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, b'I');
        parse(&mut out, "pgr_1", b"select 1\0\0\0");
        let mut buf = out.clone();
        let z = take_message(&mut buf).unwrap().unwrap();
        assert_eq!(&z[..], b"Z\0\0\0\x05I");
        let p = take_message(&mut buf).unwrap().unwrap();
        assert_eq!(&p[..], b"P\0\0\0\x15pgr_1\0select 1\0\0\0");
        assert!(buf.is_empty());
        assert_eq!(take_message(&mut buf).unwrap(), None);
    }

    #[test]
    fn messages_within_a_limit_come_whole_and_longer_ones_are_refused() {
        let mut buf = BytesMut::from(&b"R\0\0\0\x08\0\0\0\0Z\0\0"[..]);
        assert_eq!(
            &take_message_within(&mut buf, 64).unwrap().unwrap()[..],
            b"R\0\0\0\x08\0\0\0\0"
        );
        assert_eq!(take_message_within(&mut buf, 64).unwrap(), None);
        let mut long = BytesMut::from(&b"p\0\x02\0\0"[..]);
        assert_eq!(
            take_message_within(&mut long, 5 + 65_535).unwrap_err(),
            BadLength {
                tag: b'p',
                len: 0x2_0000
            }
        );
        // The limit counts the tag byte: a message of exactly `max` bytes is taken.
        let mut exact = BytesMut::from(&b"p\0\0\0\x07ab\0"[..]);
        assert_eq!(
            take_message_within(&mut exact, 8).unwrap().unwrap().len(),
            8
        );
        let mut over = BytesMut::from(&b"p\0\0\0\x07ab\0"[..]);
        assert_eq!(
            take_message_within(&mut over, 7).unwrap_err(),
            BadLength { tag: b'p', len: 7 }
        );
        let mut bad = BytesMut::from(&b"p\0\0\0\x02"[..]);
        assert!(take_message_within(&mut bad, 5 + 65_535).is_err());
    }

    #[test]
    fn partial_and_bad_messages() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09sel"[..]);
        assert_eq!(take_message(&mut buf).unwrap(), None);
        let mut bad = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert_eq!(
            take_message(&mut bad).unwrap_err(),
            BadLength { tag: b'Q', len: 2 }
        );
    }

    #[test]
    fn startup_and_reader() {
        let s = startup(&[("user", "app"), ("database", "db")]);
        assert_eq!(&s[4..8], &196608u32.to_be_bytes());
        let mut r = Reader::new(&s[8..]);
        assert_eq!(r.cstr(), Some(&b"user"[..]));
        assert_eq!(r.cstr(), Some(&b"app"[..]));
        let fields = error_fields(b"SERROR\0C42P01\0Mno table\0\0");
        assert_eq!(fields[1], (b'C', "42P01".to_owned()));
        assert_eq!(fields[2].1, "no table");
    }

    #[test]
    fn packets_and_error_responses_are_framed() {
        let mut out = BytesMut::from(&b"xy"[..]);
        packet(&mut out, |b| b.put_slice(b"abcd"));
        assert_eq!(&out[..], b"xy\0\0\0\x08abcd");
        let s = startup(&[("user", "u")]);
        assert_eq!(&s[..], b"\0\0\0\x10\0\x03\0\0user\0u\0\0");
        let mut e = BytesMut::new();
        error_response(&mut e, b'E', &[(b'S', "ERROR"), (b'M', "no")]);
        assert_eq!(&e[..], b"E\0\0\0\x10SERROR\0Mno\0\0");
        let body = take_message(&mut e).unwrap().unwrap();
        assert_eq!(error_fields(&body[5..])[1], (b'M', "no".to_owned()));
    }
}
