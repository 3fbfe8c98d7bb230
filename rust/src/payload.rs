//! From the bytes of a `data` value or a body to events: gzip (capped while inflating), base64 in its
//! variants, and JSON holding one event or an array of them.

use std::borrow::Cow;
use std::io::Read;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use flate2::read::MultiGzDecoder;

use crate::errors::{EventError, EventErrorKind, RequestError};
use crate::event::{decode_event, Normalised, Scratch, Sink};
use crate::json::{without_lone_surrogates, Scanner, StrToken, UNPAIRED_SURROGATE};
use crate::resp::Batches;
use crate::{Context, Options};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Old clients send base64 without padding and with whatever trailing bits their encoder left.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

fn first_non_space(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
}

/// True when the payload is JSON text (an object or an array) rather than base64.
pub fn looks_like_json(bytes: &[u8]) -> bool {
    matches!(first_non_space(bytes), Some(b'{' | b'['))
}

/// Inflates gzip data, failing as soon as the output passes `max` bytes: a gzip bomb costs at most
/// `max` bytes of memory.
pub fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>, RequestError> {
    let mut out = Vec::with_capacity((data.len() * 4).min(max));
    MultiGzDecoder::new(data)
        .take((max as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| RequestError::invalid_gzip(&e))?;
    if out.len() > max {
        return Err(RequestError::DecompressedTooLarge { max });
    }
    Ok(out)
}

/// The JSON text a `data` value holds: itself when it is JSON, else its base64 decoding. Gzip bytes,
/// raw or inside the base64, are inflated when `may_inflate` (one layer per request: each layer would
/// multiply what a small request can cost).
pub fn data_to_json(
    data: &[u8],
    max: usize,
    may_inflate: bool,
) -> Result<Cow<'_, [u8]>, RequestError> {
    if first_non_space(data).is_none() {
        return Err(RequestError::Empty);
    }
    if is_gzip(data) {
        if !may_inflate {
            return Err(RequestError::nested_gzip());
        }
        let inflated = gunzip(data, max)?;
        return match data_to_json(&inflated, max, false)? {
            Cow::Borrowed(_) => Ok(Cow::Owned(inflated)),
            Cow::Owned(json) => Ok(Cow::Owned(json)),
        };
    }
    if looks_like_json(data) {
        return Ok(Cow::Borrowed(data));
    }
    let decoded = decode_base64(data)?;
    if is_gzip(&decoded) {
        if !may_inflate {
            return Err(RequestError::nested_gzip());
        }
        let inflated = gunzip(&decoded, max)?;
        if is_gzip(&inflated) {
            return Err(RequestError::nested_gzip());
        }
        return Ok(Cow::Owned(inflated));
    }
    Ok(Cow::Owned(decoded))
}

/// Standard or URL-safe alphabet, padded or not, with line breaks anywhere, and with spaces where a
/// query string built without percent-encoding had a `+` (form decoding turned it into a space).
pub fn decode_base64(data: &[u8]) -> Result<Vec<u8>, RequestError> {
    // The usual payload, standard base64 with its padding, is decoded in one strict pass, which
    // refuses anything else (no padding, line breaks, the URL-safe alphabet, spaces, trailing bits
    // that are not zero); the passes below find and read those, and give the same bytes for
    // what the strict pass accepts.
    if let Ok(decoded) = strict_base64(data).decode_to_vec(data) {
        return Ok(decoded);
    }
    let needs_repair = memchr::memchr3(b' ', b'-', b'_', data).is_some()
        || memchr::memchr3(b'\n', b'\r', b'\t', data).is_some();
    let repaired: Cow<'_, [u8]> = if needs_repair {
        Cow::Owned(
            data.iter()
                .filter(|b| !matches!(b, b'\n' | b'\r' | b'\t'))
                .map(|&b| match b {
                    b' ' | b'-' => b'+',
                    b'_' => b'/',
                    other => other,
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(data)
    };
    // The usual payload, well-formed, is decoded with SIMD; what that decoder refuses (or would
    // read differently: it ignores form feeds) is decoded again, so errors and edge cases are one
    // decoder's.
    if memchr::memchr(0x0C, &repaired).is_none() {
        if let Ok(decoded) = base64_simd::forgiving_decode_to_vec(&repaired) {
            return Ok(decoded);
        }
    }
    BASE64.decode(&*repaired).map_err(|e| {
        RequestError::invalid_base64(match e {
            base64::DecodeError::InvalidByte(offset, byte) => {
                format!(
                    "unexpected character {:?} at offset {offset}",
                    char::from(byte)
                )
            }
            base64::DecodeError::InvalidLength(_) => "its length is not possible for base64".into(),
            base64::DecodeError::InvalidLastSymbol { offset, .. } => {
                format!("invalid last character at offset {offset}")
            }
            base64::DecodeError::InvalidPadding => "invalid padding".into(),
        })
    })
}

/// The strict SIMD decoder for text of this length: padded when the padding fits.
fn strict_base64(data: &[u8]) -> base64_simd::Base64 {
    if data.len() % 4 == 0 {
        base64_simd::STANDARD
    } else {
        base64_simd::STANDARD_NO_PAD
    }
}

/// The gateway's sink: valid events packed for Redis by partition, and the errors.
#[derive(Debug)]
pub struct Events {
    pub total: usize,
    pub errors: Vec<EventError>,
    pub batches: Batches,
    pub(crate) partitions: u32,
}

impl Events {
    /// A sink for the rules' partitions, packing each event's dedup hash when deduplication is on.
    pub fn new(options: &Options) -> Self {
        Self {
            total: 0,
            errors: Vec::new(),
            batches: Batches::new(options.dedup_window > 0),
            partitions: options.partitions,
        }
    }
}

impl Sink for Events {
    fn event(&mut self, event: &Normalised<'_>) {
        self.total += 1;
        self.batches
            .push(&event.valid(), event.json, self.partitions);
    }

    fn error(&mut self, error: EventError) {
        self.total += 1;
        self.errors.push(error);
    }

    fn finish(&mut self) {
        self.batches.finish();
    }
}

/// The events of a JSON payload (one object, or an array of them) into a sink that `new_sink` makes.
pub fn decode_events<S: Sink>(
    json: &[u8],
    ctx: &Context<'_>,
    use_ip: bool,
    mut new_sink: impl FnMut() -> S,
) -> Result<S, RequestError> {
    decode_text(json, |text| {
        scan_events(text, ctx, use_ip, None, false, new_sink())
    })
}

/// Reads a JSON payload with `scan`, after checking it is UTF-8 (or repairing CESU-8, see `from_cesu8`),
/// and again, with its lone-surrogate escapes made U+FFFD, when it has any: two passes for such a
/// payload, none more for any other. Error offsets are into the payload as sent.
pub fn decode_text<T>(
    json: &[u8],
    mut scan: impl FnMut(&[u8]) -> Result<T, RequestError>,
) -> Result<T, RequestError> {
    // The SIMD check is several times faster on the (usual) valid input.
    if simdutf8::basic::from_utf8(json).is_ok() {
        return scan_repairing(json, &mut scan);
    }
    let (text, pairs) = from_cesu8(json)?;
    scan_repairing(&text, &mut scan).map_err(|err| match err {
        // Offsets into the payload as sent: each pair before the error took 2 bytes less in `text`.
        RequestError::InvalidJson { offset, detail } => {
            let before = pairs.partition_point(|&at| at < offset);
            RequestError::InvalidJson {
                offset: offset + 2 * before,
                detail,
            }
        }
        other => other,
    })
}

/// UTF-8 text from text that is UTF-8 but for characters beyond U+FFFF written as two 3-byte
/// surrogates (CESU-8): mixpanel-js's base64 path encodes each UTF-16 unit of the JSON on its own, so
/// every emoji in a browser's batch arrives so. A high surrogate followed by a low one is the character
/// they stand for; any other surrogate (a string cut between the two) is U+FFFD. Any other invalid byte
/// is `invalid_utf8`, at its offset.
#[cold]
fn from_cesu8(bytes: &[u8]) -> Result<(Vec<u8>, Vec<usize>), RequestError> {
    const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
    let surrogate = |at: usize| -> Option<u32> {
        match bytes.get(at..at + 3)? {
            [0xED, b1 @ 0xA0..=0xBF, b2 @ 0x80..=0xBF] => {
                Some(0xD000 | (u32::from(*b1) & 0x3F) << 6 | (u32::from(*b2) & 0x3F))
            }
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(bytes.len());
    // Where, in `out`, each pair's character was written: for error offsets into the payload as sent.
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let valid = match std::str::from_utf8(&bytes[i..]) {
            Ok(_) => bytes.len() - i,
            Err(e) => e.valid_up_to(),
        };
        out.extend_from_slice(&bytes[i..i + valid]);
        i += valid;
        if i == bytes.len() {
            break;
        }
        let Some(unit) = surrogate(i) else {
            return Err(RequestError::InvalidUtf8 { offset: i });
        };
        if let (0xD800..=0xDBFF, Some(low @ 0xDC00..=0xDFFF)) = (unit, surrogate(i + 3)) {
            let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
            let c = char::from_u32(code).expect("a surrogate pair makes a valid scalar value");
            pairs.push(out.len());
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            i += 6;
        } else {
            out.extend_from_slice(REPLACEMENT);
            i += 3;
        }
    }
    Ok((out, pairs))
}

/// `text` read by `scan`, and read again with its lone-surrogate escapes made U+FFFD when it has any.
fn scan_repairing<T>(
    text: &[u8],
    scan: &mut impl FnMut(&[u8]) -> Result<T, RequestError>,
) -> Result<T, RequestError> {
    match scan(text) {
        Err(RequestError::InvalidJson { detail, .. }) if detail == UNPAIRED_SURROGATE => {
            scan(&without_lone_surrogates(text))
        }
        outcome => outcome,
    }
}

/// The events of JSON text into `sink`: one object or an array of them, or with `lines` NDJSON too
/// (`each_item_or_line`); `project` as `decode_event` takes it.
pub(crate) fn scan_events<'j, S: Sink>(
    json: &'j [u8],
    ctx: &Context<'_>,
    use_ip: bool,
    project: Option<StrToken<'_>>,
    lines: bool,
    mut sink: S,
) -> Result<S, RequestError> {
    let mut scanner = Scanner::new(json);
    let mut scratch = Scratch::default();
    let max = ctx.options.max_events;
    let one = |scanner: &mut Scanner<'j>, index: usize| {
        if scanner.peek() == Some(b'{') {
            decode_event(
                scanner,
                index,
                ctx,
                use_ip,
                project,
                &mut scratch,
                &mut sink,
            )?;
        } else {
            let ty = scanner.skip()?;
            sink.error(EventError::new(
                index,
                EventErrorKind::NotAnObject,
                "",
                format!("event {index} must be an object, got {}", ty.name()),
            ));
        }
        Ok(())
    };
    if lines {
        each_item_or_line(&mut scanner, max, one)?;
    } else {
        each_item(&mut scanner, max, one)?;
    }
    sink.finish();
    Ok(sink)
}

/// Walks the items of a JSON payload, one object or an array of at most `max` items, handing each to
/// `one` with its index (`one` reads it, whatever it is); the payload as a whole must be one of these
/// and nothing after it.
pub fn each_item<'j>(
    scanner: &mut Scanner<'j>,
    max: usize,
    mut one: impl FnMut(&mut Scanner<'j>, usize) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    match scanner.peek() {
        Some(b'{') => one(scanner, 0)?,
        Some(b'[') => {
            if scanner.open(b'[', b']') {
                return Err(if scanner.at_end() {
                    RequestError::EmptyBatch
                } else {
                    scanner.error("unexpected data after the events").into()
                });
            }
            for index in 0.. {
                if index == max {
                    return Err(RequestError::TooManyEvents { max });
                }
                one(scanner, index)?;
                if !scanner.next_member(b']')? {
                    break;
                }
            }
        }
        None => return Err(RequestError::Empty),
        Some(_) => {
            let found = scanner.skip()?.name();
            if !scanner.at_end() {
                return Err(scanner.error("unexpected data after the JSON value").into());
            }
            return Err(RequestError::NotEvents { found });
        }
    }
    if !scanner.at_end() {
        return Err(scanner.error("unexpected data after the events").into());
    }
    Ok(())
}

/// As `each_item`, and also newline-delimited JSON (NDJSON): a payload that begins with an object may
/// hold more values after it, one a line (any white space parts them), each an item; at most `max`.
pub fn each_item_or_line<'j>(
    scanner: &mut Scanner<'j>,
    max: usize,
    mut one: impl FnMut(&mut Scanner<'j>, usize) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    if scanner.peek() != Some(b'{') {
        return each_item(scanner, max, one);
    }
    let mut index = 0;
    while !scanner.at_end() {
        if index == max {
            return Err(RequestError::TooManyEvents { max });
        }
        one(scanner, index)?;
        index += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the SIMD decoders (forgiving, and strict) accept, the other accepts too, with the same
    /// bytes: every text of up to six characters over an alphabet with padding and the characters
    /// around it.
    #[test]
    fn simd_base64_agrees_with_the_general_decoder() {
        let alphabet = b"AQgw/+=9_";
        let mut texts = Vec::new();
        let mut longest: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..6 {
            longest = longest
                .iter()
                .flat_map(|t| alphabet.iter().map(move |&c| [t.as_slice(), &[c]].concat()))
                .collect();
            texts.extend(longest.iter().cloned());
        }
        let (mut agreed, mut strictly) = (0, 0);
        for text in &texts {
            if let Ok(fast) = base64_simd::forgiving_decode_to_vec(text) {
                assert_eq!(BASE64.decode(text).ok(), Some(fast), "{text:?}");
                agreed += 1;
            }
            if let Ok(strict) = strict_base64(text).decode_to_vec(text) {
                assert_eq!(BASE64.decode(text).ok(), Some(strict), "{text:?}");
                strictly += 1;
            }
        }
        assert!(agreed > 1000 && strictly > 1000, "{agreed} {strictly}");
    }
}
