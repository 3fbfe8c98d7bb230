//! Helpers shared by the integration tests: contexts, encoders, event builders and a RESP reader.
//! Everything goes through the crate's public API.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use flate2::write::GzEncoder;
use flate2::Compression;
use trackgate_native::{
    decode_data, decode_request, Context, Decoded, EventError, EventErrorKind, Options,
    RequestError, TokenSet,
};

/// The receive time of most tests, exactly representable, with a fraction so `received` shows it.
pub const NOW: f64 = 1_700_000_000.5;
/// `NOW` as the normalised JSON writes it.
pub const NOW_TEXT: &str = "1700000000.5";
/// A caller address for `ip=1` (documentation range).
pub const PEER: &str = "203.0.113.7";

/// How to call the decoder: the rules, the clock, the caller, the known tokens.
#[derive(Debug, Clone)]
pub struct Setup {
    pub options: Options,
    pub now: f64,
    pub peer_ip: Option<String>,
    pub tokens: Option<TokenSet>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            options: Options::default(),
            now: NOW,
            peer_ip: Some(PEER.to_owned()),
            tokens: None,
        }
    }
}

impl Setup {
    pub fn with(options: Options) -> Self {
        Self {
            options,
            ..Self::default()
        }
    }

    pub fn at(now: f64) -> Self {
        Self {
            now,
            ..Self::default()
        }
    }

    pub fn ctx(&self) -> Context<'_> {
        Context {
            options: &self.options,
            now: self.now,
            peer_ip: self.peer_ip.as_deref(),
            tokens: self.tokens.as_ref(),
        }
    }

    /// `decode_data`, with the invariants every result must keep checked.
    pub fn data(&self, data: impl AsRef<[u8]>) -> Result<Decoded, RequestError> {
        decode_data(data.as_ref(), &self.ctx()).inspect(check_invariants)
    }

    /// `decode_request`, with the invariants every result must keep checked.
    pub fn request(
        &self,
        query: impl AsRef<[u8]>,
        body: impl AsRef<[u8]>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Result<Decoded, RequestError> {
        decode_request(
            query.as_ref(),
            body.as_ref(),
            content_type,
            content_encoding,
            &self.ctx(),
        )
        .inspect(check_invariants)
    }

    /// The normalised JSON of the single valid event `data` holds; panics with the errors otherwise.
    pub fn accept(&self, data: impl AsRef<[u8]>) -> String {
        let decoded = self.data(data).expect("the payload should decode");
        only_event(&decoded)
    }

    /// The single event error `data` gives; panics when the event is accepted.
    pub fn reject(&self, data: impl AsRef<[u8]>) -> EventError {
        let decoded = self.data(data).expect("the payload should decode");
        assert_eq!(decoded.total, 1, "one event expected");
        assert_eq!(
            decoded.accepted(),
            0,
            "the event should be rejected, got {:?}",
            events(&decoded)
        );
        assert_eq!(decoded.errors.len(), 1);
        decoded.errors[0].clone()
    }

    /// Asserts that `data` is rejected with `kind` on `field`.
    #[track_caller]
    pub fn assert_rejected(&self, data: impl AsRef<[u8]>, kind: EventErrorKind, field: &str) {
        let data = data.as_ref();
        let error = self.reject(data);
        assert_eq!(
            (error.kind, error.field.as_str()),
            (kind, field),
            "payload {}: {}",
            String::from_utf8_lossy(data),
            error.message
        );
        assert_eq!(error.index, 0);
        assert!(!error.message.is_empty());
    }

    /// The whole-request error `data` gives; panics when it decodes.
    pub fn data_error(&self, data: impl AsRef<[u8]>) -> RequestError {
        match self.data(data) {
            Ok(decoded) => panic!(
                "expected a request error, got {} events and errors {:?}",
                decoded.accepted(),
                decoded.errors
            ),
            Err(e) => e,
        }
    }
}

/// The invariants of every successful decode.
pub fn check_invariants(decoded: &Decoded) {
    assert_eq!(decoded.accepted() + decoded.errors.len(), decoded.total);
    assert!(decoded.total >= 1);
    assert!(decoded.errors.windows(2).all(|w| w[0].index < w[1].index));
    assert!(decoded.errors.iter().all(|e| e.index < decoded.total));
    let packed: usize = decoded.batches.batches.iter().map(|b| b.count).sum();
    assert_eq!(packed, decoded.accepted());
    for json in decoded.events() {
        std::str::from_utf8(json).expect("normalised JSON is UTF-8");
    }
}

/// The normalised JSON of every valid event, in request order.
pub fn events(decoded: &Decoded) -> Vec<String> {
    decoded
        .events()
        .map(|e| String::from_utf8(e.to_vec()).unwrap())
        .collect()
}

pub fn only_event(decoded: &Decoded) -> String {
    assert!(
        decoded.errors.is_empty(),
        "unexpected errors: {:?}",
        decoded.errors
    );
    let mut all = events(decoded);
    assert_eq!(all.len(), 1, "one event expected");
    all.remove(0)
}

/// A valid event with token `tok`, no time (so the receive time), and `extra` members appended to its
/// properties (`"a":1,"b":2`, or empty).
pub fn event(extra: &str) -> String {
    named_event("e", extra)
}

pub fn named_event(name: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"event":"{name}","properties":{{"token":"tok"{sep}{extra}}}}}"#)
}

/// The normalised JSON `event(extra)` gives at `NOW` when nothing in `extra` is normalised.
pub fn normalised(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(
        r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","properties":{{"token":"tok"{sep}{extra},"time":{NOW_TEXT}}}}}"#
    )
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    STANDARD.encode(bytes)
}

pub fn b64_nopad(bytes: impl AsRef<[u8]>) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

pub fn b64_url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE.encode(bytes)
}

pub fn b64_url_nopad(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn gzip(bytes: impl AsRef<[u8]>) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes.as_ref()).unwrap();
    encoder.finish().unwrap()
}

/// `bytes` wrapped in `layers` gzip members, each stored (not compressed), so a layer adds ~25 bytes.
pub fn nested_gzip(bytes: &[u8], layers: usize) -> Vec<u8> {
    let mut data = bytes.to_vec();
    for _ in 0..layers {
        let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() + 32), Compression::none());
        encoder.write_all(&data).unwrap();
        data = encoder.finish().unwrap();
    }
    data
}

/// Percent-encodes everything but unreserved characters, as a form encoder does.
pub fn percent(bytes: impl AsRef<[u8]>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for &b in bytes.as_ref() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}

/// Inserts `sep` after every `every` characters.
pub fn wrap(text: &str, every: usize, sep: &str) -> String {
    let chunks: Vec<&str> = text
        .as_bytes()
        .chunks(every)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    chunks.join(sep)
}

/// Reads RESP bulk strings (`$<len>\r\n<bytes>\r\n`) until the end; panics on anything else.
/// The commands in `packed`: RESP arrays of bulk strings.
pub fn parse_commands(mut packed: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !packed.is_empty() {
        assert_eq!(packed[0], b'*', "a command starts with '*'");
        let end = packed
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("an array header ends with CRLF");
        let n: usize = std::str::from_utf8(&packed[1..end])
            .unwrap()
            .parse()
            .expect("an array length is a decimal number");
        packed = &packed[end + 2..];
        let mut args = Vec::new();
        for _ in 0..n {
            let (arg, rest) = first_bulk(packed);
            args.push(arg);
            packed = rest;
        }
        out.push(args);
    }
    out
}

pub fn parse_bulks(mut packed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !packed.is_empty() {
        let (arg, rest) = first_bulk(packed);
        out.push(arg);
        packed = rest;
    }
    out
}

fn first_bulk(packed: &[u8]) -> (Vec<u8>, &[u8]) {
    assert_eq!(packed[0], b'$', "a bulk string starts with '$'");
    let end = packed
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a bulk header ends with CRLF");
    let len: usize = std::str::from_utf8(&packed[1..end])
        .unwrap()
        .parse()
        .expect("a bulk length is a decimal number");
    let body = &packed[end + 2..];
    assert!(body.len() >= len + 2, "bulk string truncated");
    assert_eq!(&body[len..len + 2], b"\r\n", "a bulk string ends with CRLF");
    (body[..len].to_vec(), &body[len + 2..])
}
