//! Redis's replies (RESP2) as they arrive on the batcher's connection.
//!
//! A batch's transaction answers `+OK` to MULTI and `+QUEUED` to each of its commands, one per event,
//! before EXEC's array. The batcher only needs EXEC's array (and any error among the others), so the
//! others are passed over here without a Python object or a Python loop iteration each; the replies it
//! does need are walked as [`Item`]s by whoever builds them.

use std::fmt;

/// Nesting deeper than this is not something Redis sends in answer to the batcher's commands.
pub const MAX_DEPTH: usize = 32;

/// Redis's own limit on a string (`proto-max-bulk-len`'s default).
pub const MAX_BULK: i64 = 512 * 1024 * 1024;

/// One element of a reply, read at a position: a scalar, or the header of an array whose elements follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    Status(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Bulk(&'a [u8]),
    /// `$-1` or `*-1`.
    Nil,
    Array(usize),
}

/// Bytes that are not RESP2: the connection cannot be trusted past them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis sent a reply that is not RESP2: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

#[cold]
fn protocol_error(what: &str, line: &[u8]) -> ProtocolError {
    let shown = &line[..line.len().min(40)];
    ProtocolError(format!("{what} ({:?})", String::from_utf8_lossy(shown)))
}

/// The line at `pos` without its CRLF, and the position after it; None until all of it has arrived.
fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let end = memchr::memchr(b'\n', rest)?;
    let text = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    Some((text, pos + end + 1))
}

fn integer(digits: &[u8], line: &[u8]) -> Result<i64, ProtocolError> {
    let (negative, digits) = match digits {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(protocol_error("not an integer", line));
    }
    let value = digits.iter().fold(0i64, |n, d| {
        n.wrapping_mul(10).wrapping_add(i64::from(d - b'0'))
    });
    if value < 0 {
        return Err(protocol_error("integer out of range", line));
    }
    Ok(if negative { -value } else { value })
}

/// The item at `pos` and the position after it (after a bulk string's data; after an array's header
/// only). `Ok(None)` when it has not all arrived.
pub fn item(buf: &[u8], pos: usize) -> Result<Option<(Item<'_>, usize)>, ProtocolError> {
    let Some((text, after)) = line(buf, pos) else {
        return Ok(None);
    };
    let Some((&kind, rest)) = text.split_first() else {
        return Err(protocol_error("an empty line", text));
    };
    let found = match kind {
        b'+' => Item::Status(rest),
        b'-' => Item::Error(rest),
        b':' => Item::Integer(integer(rest, text)?),
        b'$' => match integer(rest, text)? {
            -1 => Item::Nil,
            len if (0..=MAX_BULK).contains(&len) => {
                let len = len as usize;
                let end = after + len;
                match buf.get(after..end + 2) {
                    None => return Ok(None),
                    Some(data) if data.ends_with(b"\r\n") => {
                        return Ok(Some((Item::Bulk(&data[..len]), end + 2)))
                    }
                    Some(_) => return Err(protocol_error("a bulk string without its CRLF", text)),
                }
            }
            _ => return Err(protocol_error("a length out of range", text)),
        },
        b'*' => match integer(rest, text)? {
            -1 => Item::Nil,
            len if len >= 0 => Item::Array(len as usize),
            _ => return Err(protocol_error("a negative length", text)),
        },
        _ => return Err(protocol_error("an unknown type", text)),
    };
    Ok(Some((found, after)))
}

/// Where a whole reply ends, and the text of the last error reply in it (itself, or in its arrays).
pub type Whole<'a> = (usize, Option<&'a [u8]>);

/// The whole reply at `pos`; `Ok(None)` when it has not all arrived.
pub fn whole(buf: &[u8], pos: usize) -> Result<Option<Whole<'_>>, ProtocolError> {
    // Elements still to read at each open array level.
    let mut open: Vec<usize> = Vec::new();
    let mut pos = pos;
    let mut error = None;
    loop {
        let Some((found, after)) = item(buf, pos)? else {
            return Ok(None);
        };
        pos = after;
        match found {
            Item::Error(text) => error = Some(text),
            Item::Array(len) if len > 0 => {
                if open.len() == MAX_DEPTH {
                    return Err(ProtocolError(format!(
                        "arrays nested deeper than {MAX_DEPTH}"
                    )));
                }
                open.push(len);
                continue;
            }
            _ => {}
        }
        // One element done: close the arrays it completes.
        loop {
            match open.last_mut() {
                None => return Ok(Some((pos, error))),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

/// The bytes received and not yet read.
#[derive(Debug, Default)]
pub struct ReplyBuffer {
    buf: Vec<u8>,
    pos: usize,
}

impl ReplyBuffer {
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.len() / 2 {
            // Keep the buffer from growing with everything ever received.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Whether bytes are waiting that no reply has been read from yet.
    pub fn has_data(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Pass over up to `n` whole replies: how many were passed over, and the last error among them.
    pub fn skip(&mut self, n: usize) -> Result<(usize, Option<Vec<u8>>), ProtocolError> {
        let mut error = None;
        for passed in 0..n {
            match whole(&self.buf, self.pos)? {
                None => return Ok((passed, error)),
                Some((end, found)) => {
                    if let Some(text) = found {
                        error = Some(text.to_vec());
                    }
                    self.pos = end;
                }
            }
        }
        Ok((n, error))
    }

    /// The next whole reply's bytes, for [`item`] to walk from 0, and marks it read; None until all of
    /// it has arrived.
    pub fn next_reply(&mut self) -> Result<Option<&[u8]>, ProtocolError> {
        match whole(&self.buf, self.pos)? {
            None => Ok(None),
            Some((end, _)) => {
                let start = self.pos;
                self.pos = end;
                Ok(Some(&self.buf[start..end]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSACTION: &[u8] =
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n:1\r\n$15\r\n1732626000000-0\r\n*2\r\n$1\r\na\r\n$-1\r\n";

    #[test]
    fn items() {
        assert_eq!(item(b"+OK\r\n", 0), Ok(Some((Item::Status(b"OK"), 5))));
        assert_eq!(
            item(b"-ERR no\r\n", 0),
            Ok(Some((Item::Error(b"ERR no"), 9)))
        );
        assert_eq!(item(b":-42\r\n", 0), Ok(Some((Item::Integer(-42), 6))));
        assert_eq!(
            item(b"$3\r\na\r\n\r\n", 0),
            Ok(Some((Item::Bulk(b"a\r\n"), 9)))
        );
        assert_eq!(item(b"$0\r\n\r\n", 0), Ok(Some((Item::Bulk(b""), 6))));
        assert_eq!(item(b"$-1\r\n", 0), Ok(Some((Item::Nil, 5))));
        assert_eq!(item(b"*-1\r\n", 0), Ok(Some((Item::Nil, 5))));
        assert_eq!(item(b"*0\r\n", 0), Ok(Some((Item::Array(0), 4))));
        assert_eq!(
            item(b":9223372036854775807\r\n", 0).unwrap().unwrap().0,
            Item::Integer(i64::MAX)
        );
    }

    #[test]
    fn nothing_is_read_before_all_of_it_has_arrived() {
        for cut in 0..TRANSACTION.len() {
            let mut buffer = ReplyBuffer::default();
            buffer.feed(&TRANSACTION[..cut]);
            let (passed, _) = buffer.skip(3).unwrap();
            let first = if passed == 3 {
                buffer.next_reply().unwrap().map(<[u8]>::to_vec)
            } else {
                None
            };
            buffer.feed(&TRANSACTION[cut..]);
            let (rest, error) = buffer.skip(3 - passed).unwrap();
            assert_eq!((passed + rest, error), (3, None), "cut at {cut}");
            let exec = first
                .or_else(|| buffer.next_reply().unwrap().map(<[u8]>::to_vec))
                .unwrap();
            assert_eq!(
                exec,
                b"*3\r\n:1\r\n$15\r\n1732626000000-0\r\n*2\r\n$1\r\na\r\n$-1\r\n"
            );
            assert!(!buffer.has_data());
        }
    }

    #[test]
    fn skipping_keeps_the_last_error() {
        let mut buffer = ReplyBuffer::default();
        buffer.feed(b"+OK\r\n-OOM first\r\n*1\r\n-WRONGTYPE second\r\n+QUEUED\r\n");
        assert_eq!(
            buffer.skip(9).unwrap(),
            (4, Some(b"WRONGTYPE second".to_vec()))
        );
        assert!(!buffer.has_data());
    }

    #[test]
    fn not_resp_is_an_error() {
        for bad in [
            &b"?\r\n"[..],
            b"\r\n",
            b":12a\r\n",
            b":\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$1\r\nab\r\n",
            b"$536870913\r\n",
        ] {
            assert!(whole(bad, 0).is_err(), "{bad:?}");
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(whole(&deep, 0).is_err());
        assert_eq!(whole(&b"*1\r\n".repeat(MAX_DEPTH), 0), Ok(None));
    }

    #[test]
    fn the_buffer_does_not_keep_what_was_read() {
        let mut buffer = ReplyBuffer::default();
        for _ in 0..10_000 {
            buffer.feed(b"+QUEUED\r\n+QU");
            assert_eq!(buffer.skip(1).unwrap(), (1, None));
            buffer.feed(b"EUED\r\n");
            assert_eq!(buffer.skip(1).unwrap(), (1, None));
        }
        assert!(buffer.buf.capacity() < 1024);
    }
}
