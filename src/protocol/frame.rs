//! Message framing: the 5-byte header (a tag, then a length field that counts itself) every
//! message after the startup packet has, and the one error for a length that cannot frame a
//! message or is past a limit. Everything that splits a stream into messages reads headers
//! with [`header`] or [`header_within`]: the relay's [`Scanner`] here, and the whole-message
//! readers of [`super::wire`] and `super::reader`.
//!
//! The relay forwards bytes as they come; the scanner only follows along so the session knows
//! where messages end and can look inside the few it cares about (ReadyForQuery, BackendKeyData,
//! ErrorResponse).
//! It never allocates: a captured body lives in a small fixed array.

use super::limits::CAPTURE_MAX;

/// A length field below 4 cannot frame a message (the stream is corrupt), and one above the
/// reader's limit is refused before any of its body passes. `len` is the length field as
/// sent (it counts itself, not the tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("message '{}' has unacceptable length {len}", char::from(*tag))]
pub struct BadLength {
    pub tag: u8,
    pub len: u32,
}

/// The tag and total length (tag byte included) of the message at the start of `buf`, once
/// its 5-byte header is there; a length field below 4 is an error.
#[inline]
pub fn header(buf: &[u8]) -> Result<Option<(u8, usize)>, BadLength> {
    header_within(buf, u32::MAX)
}

/// [`header`] refusing a length field above `max_len` as well.
#[inline]
pub fn header_within(buf: &[u8], max_len: u32) -> Result<Option<(u8, usize)>, BadLength> {
    let Some(&[tag, l0, l1, l2, l3]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if !(4..=max_len).contains(&len) {
        return Err(BadLength { tag, len });
    }
    Ok(Some((tag, len as usize + 1)))
}

pub struct Scanner {
    header: [u8; 5],
    header_len: usize,
    tag: u8,
    /// Body bytes of the current message not seen yet.
    left: usize,
    capture: bool,
    body: [u8; CAPTURE_MAX],
    body_len: usize,
    capture_tags: &'static [u8],
    max_len: u32,
}

impl Scanner {
    /// A scanner that hands over the bodies of messages whose tag is in `capture_tags`.
    pub fn new(capture_tags: &'static [u8]) -> Scanner {
        Scanner {
            header: [0; 5],
            header_len: 0,
            tag: 0,
            left: 0,
            capture: false,
            body: [0; CAPTURE_MAX],
            body_len: 0,
            capture_tags,
            max_len: u32::MAX,
        }
    }

    /// The same scanner refusing length fields above `max_len`.
    pub fn with_max_len(self, max_len: u32) -> Scanner {
        Scanner { max_len, ..self }
    }

    /// True when everything fed so far ends exactly at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0
    }

    /// Follows `data`, calling `visit(tag, body)` as each message completes. `body` is the
    /// message body for captured tags and empty for the rest.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut visit: impl FnMut(u8, &[u8]),
    ) -> Result<(), BadLength> {
        loop {
            if self.header_len < 5 {
                if data.is_empty() {
                    return Ok(());
                }
                let take = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len < 5 {
                    return Ok(());
                }
                self.start_body()?;
            }
            let take = self.left.min(data.len());
            if self.capture {
                self.body[self.body_len..self.body_len + take].copy_from_slice(&data[..take]);
                self.body_len += take;
            }
            self.left -= take;
            data = &data[take..];
            if self.left > 0 {
                return Ok(());
            }
            let body: &[u8] = if self.capture {
                &self.body[..self.body_len]
            } else {
                &[]
            };
            visit(self.tag, body);
            self.header_len = 0;
        }
    }

    /// Bytes seen so far of the message in progress when its tag is `tag` and it can be
    /// captured whole (or its header is not complete yet); `None` at a boundary or otherwise.
    pub fn partial(&self, tag: u8) -> Option<usize> {
        if self.header_len == 0 || self.header[0] != tag {
            return None;
        }
        if self.header_len < 5 {
            return Some(self.header_len);
        }
        self.capture.then_some(5 + self.body_len)
    }

    /// Bytes seen so far of the message in progress, whatever its tag; 0 at a boundary.
    pub fn in_progress(&self) -> usize {
        if self.header_len < 5 {
            return self.header_len;
        }
        let len = u32::from_be_bytes([
            self.header[1],
            self.header[2],
            self.header[3],
            self.header[4],
        ]);
        let body = (len as usize).saturating_sub(4);
        5 + body - self.left
    }

    /// The body of the last whole message, if its tag is captured; empty otherwise. Read at a
    /// boundary, it belongs to the message `feed` visited last.
    pub fn last_captured(&self) -> &[u8] {
        if self.capture && self.left == 0 {
            &self.body[..self.body_len]
        } else {
            &[]
        }
    }

    #[inline]
    fn start_body(&mut self) -> Result<(), BadLength> {
        let Some((tag, total)) = header_within(&self.header, self.max_len)? else {
            unreachable!("the 5 header bytes are all there")
        };
        self.tag = tag;
        self.left = total - 5;
        self.capture = self.left <= CAPTURE_MAX && self.capture_tags.contains(&tag);
        self.body_len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn stream() -> Vec<u8> {
        [
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'D', &[7u8; 300]),
            msg(b'C', b"SELECT 1\0"),
            msg(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]),
            msg(b'Z', b"I"),
        ]
        .concat()
    }

    fn scan_in_chunks(data: &[u8], chunk: usize) -> Vec<(u8, Vec<u8>)> {
        let mut s = Scanner::new(b"ZK");
        let mut seen = Vec::new();
        for part in data.chunks(chunk) {
            s.feed(part, |tag, body| seen.push((tag, body.to_vec())))
                .unwrap();
        }
        assert!(s.at_boundary());
        seen
    }

    #[test]
    fn every_split_gives_the_same_messages() {
        let data = stream();
        let whole = scan_in_chunks(&data, data.len());
        let tags: Vec<u8> = whole.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, b"12DCKZ");
        assert_eq!(whole[4].1, [0, 0, 0, 42, 1, 2, 3, 4]);
        assert_eq!(whole[5].1, b"I");
        assert!(whole[2].1.is_empty(), "DataRow is not captured");
        for chunk in 1..data.len() {
            assert_eq!(scan_in_chunks(&data, chunk), whole, "chunk size {chunk}");
        }
    }

    #[test]
    fn boundary_is_known_mid_stream() {
        let data = stream();
        let mut s = Scanner::new(b"Z");
        s.feed(&data[..3], |_, _| {}).unwrap();
        assert!(!s.at_boundary(), "inside a header");
        s.feed(&data[3..7], |_, _| {}).unwrap();
        assert!(!s.at_boundary(), "inside a body");
        s.feed(&data[7..10], |_, _| {}).unwrap();
        assert!(s.at_boundary(), "after '1' and '2'");
    }

    #[test]
    fn impossible_lengths_are_errors() {
        let mut s = Scanner::new(b"");
        let err = s.feed(&[b'Q', 0, 0, 0, 3], |_, _| {}).unwrap_err();
        assert_eq!(err, BadLength { tag: b'Q', len: 3 });
    }

    #[test]
    fn oversized_captures_are_skipped_not_copied() {
        let big = msg(b'K', &[9u8; CAPTURE_MAX + 1]);
        let mut s = Scanner::new(b"K");
        let mut bodies = Vec::new();
        s.feed(&big, |_, body| bodies.push(body.len())).unwrap();
        assert_eq!(bodies, [0]);
        assert!(s.last_captured().is_empty());
    }

    #[test]
    fn the_last_whole_captured_body_stays_readable() {
        let mut s = Scanner::new(b"E");
        s.feed(&msg(b'E', b"SFATAL\0\0"), |_, _| {}).unwrap();
        assert_eq!(s.last_captured(), b"SFATAL\0\0");
        s.feed(&msg(b'Z', b"I"), |_, _| {}).unwrap();
        assert!(s.last_captured().is_empty(), "Z is not captured");
        let e = msg(b'E', b"SERROR\0\0");
        s.feed(&e[..7], |_, _| {}).unwrap();
        assert!(s.last_captured().is_empty(), "not whole yet");
        s.feed(&e[7..], |_, _| {}).unwrap();
        assert_eq!(s.last_captured(), b"SERROR\0\0");
    }
}
