//! A validating JSON scanner that copies values out minified.
//!
//! Why not serde_json: the decoder must keep every property value exactly as sent (number text
//! included, where serde would round big integers through f64), report limits per event without giving
//! up on the rest of a batch, and copy values straight into the output buffer. Scanning once and copying
//! token slices does all three. The input is valid UTF-8 (checked once up front), so strings are only
//! scanned for quotes, escapes and control characters.

use std::borrow::Cow;

use crate::errors::{EventErrorKind, RequestError};

/// Where the JSON broke and how. Kept to two words so the scanner's results stay in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub detail: &'static str,
}

impl From<SyntaxError> for RequestError {
    #[cold]
    fn from(e: SyntaxError) -> Self {
        RequestError::invalid_json(e.offset, e.detail)
    }
}

/// The syntax error of a `\u` escape of a lone surrogate, which the payload reader repairs (see
/// `without_lone_surrogates`).
pub const UNPAIRED_SURROGATE: &str = "unpaired surrogate in a \\u escape";

/// The deepest `max_depth` allowed. Values are copied recursively only down to `max_depth`; anything
/// deeper is validated by a loop with its own stack, so no input can exhaust the thread's stack.
pub const MAX_DEPTH_LIMIT: usize = 64;

/// The JSON type of a value, for messages like "must be a string, got number".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl JsonType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Object => "an object",
            Self::Array => "an array",
            Self::String => "a string",
            Self::Number => "a number",
            Self::Bool => "a boolean",
            Self::Null => "null",
        }
    }
}

/// The container limits checked inside property values, and the first one broken.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub max_depth: usize,
    pub max_array_len: usize,
    pub max_keys: usize,
    /// The first limit broken, in document order, with the number that broke it.
    pub violation: Option<(EventErrorKind, usize)>,
}

impl Shape {
    pub fn new(max_depth: usize, max_array_len: usize, max_keys: usize) -> Self {
        Self {
            max_depth,
            max_array_len,
            max_keys,
            violation: None,
        }
    }

    #[inline]
    fn note(&mut self, kind: EventErrorKind, value: usize) {
        if self.violation.is_none() {
            self.violation = Some((kind, value));
        }
    }
}

/// Whether a number token (already checked against the grammar) stays within a double's ±1.8e308, as
/// every reader needs: `1e400` reads as infinity or fails, depending on the reader (orjson refuses it,
/// and an integer beyond it too). A token of 308 bytes or fewer without an exponent is below 1e308.
#[inline]
pub fn fits_double(n: &[u8]) -> bool {
    if n.len() <= 308 && !n.iter().any(|&b| b | 0x20 == b'e') {
        return true;
    }
    fits_double_slow(n)
}

#[cold]
fn fits_double_slow(n: &[u8]) -> bool {
    std::str::from_utf8(n)
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// `text` with every `\u` escape of a lone surrogate replaced by `\ufffd`, the same six bytes, so that
/// offsets hold. Such escapes come from clients that cut a string between the two halves of a pair
/// (JavaScript's and Java's strings count UTF-16 units); refusing them would refuse a whole batch for
/// one character. Escapes are found as the scanner reads them (a `\\` is one escape, so `\\ud800`
/// is text); a backslash outside a string is left for the scanner to refuse.
#[cold]
pub fn without_lone_surrogates(text: &[u8]) -> Vec<u8> {
    let unit = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(text.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let mut out = text.to_vec();
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            i += 1;
            continue;
        }
        if text.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        match unit(i + 2) {
            Some(0xD800..=0xDBFF)
                if text.get(i + 6..i + 8) == Some(b"\\u")
                    && unit(i + 8).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) =>
            {
                i += 12;
            }
            Some(0xD800..=0xDFFF) => {
                out[i..i + 6].copy_from_slice(b"\\ufffd");
                i += 6;
            }
            _ => i += 2,
        }
    }
    out
}

/// A string token as it stands in the input, quotes included.
#[derive(Debug, Clone, Copy)]
pub struct StrToken<'a> {
    pub raw: &'a [u8],
    /// How many escapes it holds. A whole word rather than a bool: a bool shares its word with
    /// padding, and copying the token reads that word whole, which must then wait for the one-byte
    /// write of the flag to land (a failed store-to-load forward, on every token).
    pub escapes: usize,
}

impl<'a> StrToken<'a> {
    /// The bytes between the quotes, unescaped: for keys, which are compared but rarely shown.
    // Inlined: a token without escapes, the usual, then costs a slice; unescaping stays out of line.
    #[inline]
    pub fn bytes(&self) -> Cow<'a, [u8]> {
        let inner = &self.raw[1..self.raw.len() - 1];
        if self.escapes > 0 {
            Cow::Owned(unescaped_bytes(inner))
        } else {
            Cow::Borrowed(inner)
        }
    }

    /// The text between the quotes, unescaped. Borrowed unless the token had escapes.
    pub fn text(&self) -> Cow<'a, str> {
        let inner = &self.raw[1..self.raw.len() - 1];
        if self.escapes > 0 {
            Cow::Owned(unescape(inner))
        } else {
            // The whole payload was checked as UTF-8 and quotes/backslashes are ASCII, so this holds.
            Cow::Borrowed(std::str::from_utf8(inner).expect("payload was validated as UTF-8"))
        }
    }
}

/// A text's first and last eight bytes, read as two words (overlapping when it is shorter than 16
/// bytes, fewer bytes when shorter than 8): with its length, all of a text of up to 16 bytes, and a
/// fingerprint of any, read without a loop.
#[inline]
pub fn ends(text: &[u8]) -> (u64, u64) {
    let n = text.len();
    if n >= 8 {
        let word = |at: usize| u64::from_le_bytes(text[at..at + 8].try_into().expect("8 bytes"));
        (word(0), word(n - 8))
    } else if n >= 4 {
        let word =
            |at: usize| u64::from(u32::from_le_bytes(text[at..at + 4].try_into().expect("4")));
        (word(0), word(n - 4))
    } else if n > 0 {
        let byte = |at: usize| u64::from(text[at]);
        (byte(0) | byte(n / 2) << 8, byte(n - 1))
    } else {
        (0, 0)
    }
}

/// Skips string bytes that need no attention, eight at a time: returns the index of the first byte
/// that may be a quote, a backslash or a control character (or of the last, shorter, chunk).
#[inline(always)]
fn skip_plain(buf: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The classic "has a zero byte" test; it can report a byte that is not special (never the
    // reverse), and the byte loop after it sorts that out.
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    while let Some(chunk) = buf.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let special = has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// Byte classes for string scanning: 0 plain, 1 quote, 2 backslash, 3 control character.
static STRING_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = 3;
        i += 1;
    }
    table[b'"' as usize] = 1;
    table[b'\\' as usize] = 2;
    table
};

#[derive(Debug)]
pub struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Where it is in the text: the byte offset of what it reads next.
    pub fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn skip_ws(&mut self) {
        while let Some(&b) = self.buf.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.pos += 1;
        }
    }

    /// The next byte after white space, without consuming it.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.buf.get(self.pos).copied()
    }

    #[inline]
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    #[cold]
    pub fn error(&self, detail: &'static str) -> SyntaxError {
        SyntaxError {
            offset: self.pos,
            detail,
        }
    }

    #[inline]
    pub fn expect(&mut self, byte: u8, detail: &'static str) -> Result<(), SyntaxError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(detail))
        }
    }

    /// After a member or element: true if another follows (a comma was eaten), false at `close`.
    #[inline]
    pub fn next_member(&mut self, close: u8) -> Result<bool, SyntaxError> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b) if b == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(self.error(if close == b'}' {
                "expected ',' or '}' after an object member"
            } else {
                "expected ',' or ']' after an array element"
            })),
        }
    }

    /// Consumes `open` and reports whether the container is empty (its `close` was consumed too).
    #[inline]
    pub fn open(&mut self, open: u8, close: u8) -> bool {
        debug_assert_eq!(self.buf.get(self.pos), Some(&open));
        self.pos += 1;
        if self.peek() == Some(close) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// An object key and its colon.
    // Inlined into the loops that read tokens, where a token stays in registers: out of line, every
    // call would return it through memory, as it is wider than two registers.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn key(&mut self) -> Result<StrToken<'a>, SyntaxError> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string key"));
        }
        let key = self.string()?;
        self.expect(b':', "expected ':' after an object key")?;
        Ok(key)
    }

    /// A string token, starting at its opening quote.
    // Inlined into the loops that read tokens, where a token stays in registers: out of line, every
    // call would return it through memory, as it is wider than two registers.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn string(&mut self) -> Result<StrToken<'a>, SyntaxError> {
        let start = self.pos;
        debug_assert_eq!(self.buf.get(start), Some(&b'"'));
        let end = skip_plain(self.buf, start + 1);
        // Most strings hold no escape: their first special byte is the closing quote.
        if self.buf.get(end) == Some(&b'"') {
            self.pos = end + 1;
            return Ok(StrToken {
                raw: &self.buf[start..=end],
                escapes: 0,
            });
        }
        self.string_from(start, end)
    }

    /// The rest of a string token from `i`, a byte that may be special.
    #[inline(never)]
    fn string_from(&mut self, start: usize, mut i: usize) -> Result<StrToken<'a>, SyntaxError> {
        let mut escapes = 0;
        loop {
            let Some(&b) = self.buf.get(i) else {
                self.pos = i;
                return Err(self.error("unterminated string"));
            };
            match STRING_CLASS[b as usize] {
                0 => i += 1,
                1 => break,
                2 => {
                    escapes += 1;
                    i = self.escape(i)?;
                }
                _ => {
                    self.pos = i;
                    return Err(self.error("control character in a string"));
                }
            }
            i = skip_plain(self.buf, i);
        }
        self.pos = i + 1;
        Ok(StrToken {
            raw: &self.buf[start..=i],
            escapes,
        })
    }

    /// Validates the escape at `i` (a backslash) and returns the index after it. A `\u` escape of a
    /// surrogate must form a pair: a lone one has no UTF-8 form. It is refused here, on the fast path,
    /// and the payload reader repairs such text and reads it again (`without_lone_surrogates`).
    fn escape(&mut self, i: usize) -> Result<usize, SyntaxError> {
        match self.buf.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => {
                let unit = self.hex4(i + 2)?;
                if (0xD800..0xDC00).contains(&unit) {
                    if self.buf.get(i + 6) == Some(&b'\\') && self.buf.get(i + 7) == Some(&b'u') {
                        let low = self.hex4(i + 8)?;
                        if (0xDC00..0xE000).contains(&low) {
                            return Ok(i + 12);
                        }
                    }
                    self.pos = i;
                    Err(self.error(UNPAIRED_SURROGATE))
                } else if (0xDC00..0xE000).contains(&unit) {
                    self.pos = i;
                    Err(self.error(UNPAIRED_SURROGATE))
                } else {
                    Ok(i + 6)
                }
            }
            _ => {
                self.pos = i;
                Err(self.error("invalid escape in a string"))
            }
        }
    }

    fn hex4(&mut self, at: usize) -> Result<u32, SyntaxError> {
        let Some(digits) = self.buf.get(at..at + 4) else {
            self.pos = at;
            return Err(self.error("truncated \\u escape"));
        };
        let mut value = 0u32;
        for &d in digits {
            let nibble = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => {
                    self.pos = at;
                    return Err(self.error("invalid \\u escape"));
                }
            };
            value = value << 4 | u32::from(nibble);
        }
        Ok(value)
    }

    /// A number token, by the JSON grammar (so no NaN, Infinity, leading zeros or bare dots).
    #[inline]
    pub fn number(&mut self) -> Result<&'a [u8], SyntaxError> {
        let start = self.pos;
        let buf = self.buf;
        let mut i = start;
        if buf.get(i) == Some(&b'-') {
            i += 1;
        }
        match buf.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while matches!(buf.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => {
                self.pos = i;
                return Err(self.error("invalid number"));
            }
        }
        if buf.get(i) == Some(&b'.') {
            i += 1;
            if !matches!(buf.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return Err(self.error("invalid number: no digit after the decimal point"));
            }
            while matches!(buf.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        if matches!(buf.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(buf.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !matches!(buf.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return Err(self.error("invalid number: no digit in the exponent"));
            }
            while matches!(buf.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        self.pos = i;
        Ok(&buf[start..i])
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<&'a [u8], SyntaxError> {
        let start = self.pos;
        if self.buf.get(start..start + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(&self.buf[start..self.pos])
        } else {
            Err(self.error("invalid literal (NaN and Infinity are not JSON)"))
        }
    }

    /// A scalar, or the type of a container that starts here (not consumed).
    // Inlined into the loops that read tokens, where a token stays in registers: out of line, every
    // call would return it through memory, as it is wider than two registers.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn scalar(&mut self) -> Result<Scalar<'a>, SyntaxError> {
        Ok(match self.peek() {
            Some(b'"') => Scalar::String(self.string()?),
            Some(b'-' | b'0'..=b'9') => Scalar::Number(self.number()?),
            Some(b't') => Scalar::Other(self.literal(b"true")?, JsonType::Bool),
            Some(b'f') => Scalar::Other(self.literal(b"false")?, JsonType::Bool),
            Some(b'n') => Scalar::Other(self.literal(b"null")?, JsonType::Null),
            Some(b'{') => Scalar::Container(JsonType::Object),
            Some(b'[') => Scalar::Container(JsonType::Array),
            Some(_) => return Err(self.error("expected a JSON value")),
            None => return Err(self.error("unexpected end of data")),
        })
    }

    /// Copies the value here to `out`, minified, checking `shape` limits. `depth` is the number of
    /// containers around it inside the property (0 for a property's own value).
    pub fn value(
        &mut self,
        out: &mut Vec<u8>,
        shape: &mut Shape,
        depth: usize,
    ) -> Result<JsonType, SyntaxError> {
        match self.scalar()? {
            Scalar::String(s) => {
                out.extend_from_slice(s.raw);
                Ok(JsonType::String)
            }
            Scalar::Number(n) => {
                if !fits_double(n) {
                    shape.note(EventErrorKind::NumberOutOfRange, 0);
                }
                out.extend_from_slice(n);
                Ok(JsonType::Number)
            }
            Scalar::Other(raw, ty) => {
                out.extend_from_slice(raw);
                Ok(ty)
            }
            Scalar::Container(ty) => {
                let depth = depth + 1;
                if depth > shape.max_depth.min(MAX_DEPTH_LIMIT) {
                    // The event is rejected: what would have been copied no longer matters.
                    shape.note(EventErrorKind::TooDeep, depth);
                    return self.skip_container(ty);
                }
                if ty == JsonType::Object {
                    self.object_body(out, shape, depth)?;
                } else {
                    self.array_body(out, shape, depth)?;
                }
                Ok(ty)
            }
        }
    }

    fn object_body(
        &mut self,
        out: &mut Vec<u8>,
        shape: &mut Shape,
        depth: usize,
    ) -> Result<(), SyntaxError> {
        out.push(b'{');
        if !self.open(b'{', b'}') {
            let mut keys = 0usize;
            loop {
                let key = self.key()?;
                keys += 1;
                out.extend_from_slice(key.raw);
                out.push(b':');
                self.value(out, shape, depth)?;
                if !self.next_member(b'}')? {
                    break;
                }
                out.push(b',');
            }
            if keys > shape.max_keys {
                shape.note(EventErrorKind::TooManyKeys, keys);
            }
        }
        out.push(b'}');
        Ok(())
    }

    fn array_body(
        &mut self,
        out: &mut Vec<u8>,
        shape: &mut Shape,
        depth: usize,
    ) -> Result<(), SyntaxError> {
        out.push(b'[');
        if !self.open(b'[', b']') {
            let mut len = 0usize;
            loop {
                self.value(out, shape, depth)?;
                len += 1;
                if !self.next_member(b']')? {
                    break;
                }
                out.push(b',');
            }
            if len > shape.max_array_len {
                shape.note(EventErrorKind::ArrayTooLong, len);
            }
        }
        out.push(b']');
        Ok(())
    }

    /// Validates and skips the value here.
    pub fn skip(&mut self) -> Result<JsonType, SyntaxError> {
        match self.scalar()? {
            Scalar::Container(ty) => self.skip_container(ty),
            scalar => Ok(scalar.json_type()),
        }
    }

    /// Validates the container at the cursor, however deep, with a heap stack of closing brackets.
    fn skip_container(&mut self, ty: JsonType) -> Result<JsonType, SyntaxError> {
        let mut closers: Vec<u8> = Vec::new();
        let mut next = Scalar::Container(ty);
        loop {
            if let Scalar::Container(inner) = next {
                let (open, close) = if inner == JsonType::Object {
                    (b'{', b'}')
                } else {
                    (b'[', b']')
                };
                if !self.open(open, close) {
                    closers.push(close);
                    if close == b'}' {
                        self.key()?;
                    }
                    next = self.scalar()?;
                    continue;
                }
            }
            // A value ended: close every container that ends here, then go on to the next member.
            loop {
                let Some(&close) = closers.last() else {
                    return Ok(ty);
                };
                if self.next_member(close)? {
                    if close == b'}' {
                        self.key()?;
                    }
                    break;
                }
                closers.pop();
            }
            next = self.scalar()?;
        }
    }
}

/// A value that is not a container, or the type of the container that starts at the cursor.
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    String(StrToken<'a>),
    Number(&'a [u8]),
    Other(&'a [u8], JsonType),
    Container(JsonType),
}

impl<'a> Scalar<'a> {
    /// The token as sent; nothing for a container, which is not read yet.
    pub fn raw(&self) -> &'a [u8] {
        match *self {
            Self::String(token) => token.raw,
            Self::Number(raw) | Self::Other(raw, _) => raw,
            Self::Container(_) => b"",
        }
    }

    pub fn json_type(&self) -> JsonType {
        match self {
            Self::String(_) => JsonType::String,
            Self::Number(_) => JsonType::Number,
            Self::Other(_, ty) | Self::Container(ty) => *ty,
        }
    }
}

/// Makes values of some kind (Python objects, in `py/`) from JSON text, one of each JSON kind; the
/// containers are filled as the text is read.
pub trait Build {
    type Value;
    type List;
    type Map;
    type Error;

    fn null(&mut self) -> Result<Self::Value, Self::Error>;
    fn bool(&mut self, value: bool) -> Result<Self::Value, Self::Error>;
    /// A string's text, unescaped: UTF-8, since the payload was checked.
    fn string(&mut self, text: &[u8]) -> Result<Self::Value, Self::Error>;
    fn int(&mut self, value: i64) -> Result<Self::Value, Self::Error>;
    /// An integer beyond i64, as its text.
    fn big_int(&mut self, text: &str) -> Result<Self::Value, Self::Error>;
    fn float(&mut self, value: f64) -> Result<Self::Value, Self::Error>;
    fn list(&mut self) -> Result<Self::List, Self::Error>;
    fn push(&mut self, list: &mut Self::List, item: Self::Value) -> Result<(), Self::Error>;
    fn end_list(&mut self, list: Self::List) -> Self::Value;
    fn map(&mut self) -> Result<Self::Map, Self::Error>;
    /// `key` as `string` has it.
    fn insert(
        &mut self,
        map: &mut Self::Map,
        key: &[u8],
        value: Self::Value,
    ) -> Result<(), Self::Error>;
    fn end_map(&mut self, map: Self::Map) -> Self::Value;
}

/// The value of `json`, a value the scanner has validated and minified (a property's value as the
/// decoder keeps it), made by `build`. Numbers are read as JSON readers in Python read them: an integer
/// literal is an int of any size, any other number a float.
pub fn build<B: Build>(json: &[u8], build: &mut B) -> Result<B::Value, B::Error> {
    let mut reader = Scanner::new(json);
    let value = read(&mut reader, build);
    debug_assert!(reader.at_end(), "one value");
    value
}

fn read<B: Build>(reader: &mut Scanner<'_>, build: &mut B) -> Result<B::Value, B::Error> {
    const VALID: &str = "the value was validated";
    match reader.scalar().expect(VALID) {
        Scalar::Container(JsonType::Array) => {
            let mut list = build.list()?;
            if !reader.open(b'[', b']') {
                loop {
                    let item = read(reader, build)?;
                    build.push(&mut list, item)?;
                    if !reader.next_member(b']').expect(VALID) {
                        break;
                    }
                }
            }
            Ok(build.end_list(list))
        }
        Scalar::Container(JsonType::Object) => {
            let mut map = build.map()?;
            if !reader.open(b'{', b'}') {
                loop {
                    let key = reader.key().expect(VALID);
                    let value = read(reader, build)?;
                    build.insert(&mut map, &key.bytes(), value)?;
                    if !reader.next_member(b'}').expect(VALID) {
                        break;
                    }
                }
            }
            Ok(build.end_map(map))
        }
        scalar => build_scalar(scalar, build),
    }
}

/// The value of a string, number, boolean or null token, made by `build`, as `build` reads them.
#[inline]
pub fn build_scalar<B: Build>(scalar: Scalar<'_>, build: &mut B) -> Result<B::Value, B::Error> {
    match scalar {
        Scalar::String(token) => build.string(&token.bytes()),
        Scalar::Number(number) => {
            let text = std::str::from_utf8(number).expect("number tokens are ASCII");
            if number.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                build.float(text.parse().expect("a validated number"))
            } else if let Ok(value) = text.parse() {
                build.int(value)
            } else {
                build.big_int(text)
            }
        }
        Scalar::Other(b"true", _) => build.bool(true),
        Scalar::Other(b"false", _) => build.bool(false),
        Scalar::Other(..) => build.null(),
        Scalar::Container(_) => unreachable!("containers are read by `build`"),
    }
}

#[cold]
fn unescaped_bytes(inner: &[u8]) -> Vec<u8> {
    unescape(inner).into_bytes()
}

/// Unescapes the inside of a validated string token.
fn unescape(inner: &[u8]) -> String {
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let simple = match inner[i + 1] {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0C),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            i += 2;
            continue;
        }
        let unit = hex_value(&inner[i + 2..i + 6]);
        i += 6;
        let code = if (0xD800..0xDC00).contains(&unit) {
            let low = hex_value(&inner[i + 2..i + 6]);
            i += 6;
            0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
        } else {
            unit
        };
        let ch = char::from_u32(code).expect("escapes were validated");
        let mut tmp = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
    }
    String::from_utf8(out).expect("unescaping validated UTF-8 gives UTF-8")
}

fn hex_value(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |acc, &d| {
        let nibble = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        acc << 4 | u32::from(nibble)
    })
}

/// Where JSON text goes: a buffer, or a count of its bytes when only its size is needed.
pub trait Out {
    fn put(&mut self, bytes: &[u8]);

    fn put_byte(&mut self, byte: u8) {
        self.put(&[byte]);
    }
}

impl Out for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline]
    fn put_byte(&mut self, byte: u8) {
        self.push(byte);
    }
}

/// The size of the JSON text written to it.
#[derive(Debug, Default)]
pub struct Length(pub usize);

impl Out for Length {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    #[inline]
    fn put_byte(&mut self, _: u8) {
        self.0 += 1;
    }
}

/// Writes `text` as a JSON string token.
pub fn write_str(out: &mut impl Out, text: &str) {
    out.put_byte(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1F => None,
            _ => continue,
        };
        out.put(&bytes[start..i]);
        if let Some(e) = escape {
            out.put(e);
        } else {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put(b"\\u00");
            out.put(&[HEX[(b >> 4) as usize], HEX[(b & 0xF) as usize]]);
        }
        start = i + 1;
    }
    out.put(&bytes[start..]);
    out.put_byte(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minify(input: &str) -> Result<String, SyntaxError> {
        let mut scanner = Scanner::new(input.as_bytes());
        let mut out = Vec::new();
        let mut shape = Shape::new(3, 255, 255);
        scanner.value(&mut out, &mut shape, 0)?;
        if !scanner.at_end() {
            return Err(scanner.error("trailing data"));
        }
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn minifies_and_keeps_number_text() {
        assert_eq!(
            minify(
                " { \"a\" : [ 1 , 2.50 , 1e400 , 123456789012345678901234567890 ] , \"b\":null } "
            )
            .unwrap(),
            r#"{"a":[1,2.50,1e400,123456789012345678901234567890],"b":null}"#
        );
    }

    #[test]
    fn keeps_escapes_as_sent() {
        assert_eq!(
            minify(r#""h\u00e9 \"x\" \ud83d\ude00""#).unwrap(),
            r#""h\u00e9 \"x\" \ud83d\ude00""#
        );
    }

    #[test]
    fn rejects_what_json_does_not_allow() {
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "'a'",
            "\"a\u{1}\"",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "[1 2]",
            "tru",
            "\"abc",
        ] {
            assert!(minify(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn unescapes_text() {
        let mut scanner = Scanner::new(br#""a\"b\\c\/d\n\u00e9\ud83d\ude00""#);
        let token = scanner.string().unwrap();
        assert_eq!(token.text(), "a\"b\\c/d\n\u{e9}\u{1F600}");
    }

    #[test]
    fn shape_limits_at_and_over() {
        let check = |input: &str| {
            let mut scanner = Scanner::new(input.as_bytes());
            let mut shape = Shape::new(3, 2, 2);
            scanner.value(&mut Vec::new(), &mut shape, 0).unwrap();
            shape.violation
        };
        assert_eq!(check("[[[1]]]"), None);
        assert_eq!(check("[[[[1]]]]"), Some((EventErrorKind::TooDeep, 4)));
        assert_eq!(check("[1,2]"), None);
        assert_eq!(check("[1,2,3]"), Some((EventErrorKind::ArrayTooLong, 3)));
        assert_eq!(check(r#"{"a":1,"b":2}"#), None);
        assert_eq!(
            check(r#"{"a":1,"b":2,"c":3}"#),
            Some((EventErrorKind::TooManyKeys, 3))
        );
    }

    #[test]
    fn any_depth_is_validated_without_recursion() {
        let deep = "[{\"a\":".repeat(100_000) + "1" + &"}]".repeat(100_000);
        assert_eq!(Scanner::new(deep.as_bytes()).skip(), Ok(JsonType::Array));
        assert!(Scanner::new(&deep.as_bytes()[..deep.len() - 1])
            .skip()
            .is_err());
        let mut shape = Shape::new(3, 255, 255);
        let mut scanner = Scanner::new(deep.as_bytes());
        assert_eq!(
            scanner.value(&mut Vec::new(), &mut shape, 0),
            Ok(JsonType::Array)
        );
        assert_eq!(shape.violation, Some((EventErrorKind::TooDeep, 4)));
        for bad in [
            "[[1,]]",
            "[{\"a\":1,}]",
            "[{\"a\"}]",
            "[[1]",
            "[{}}",
            "[{\"a\":[1 2]}]",
        ] {
            assert!(Scanner::new(bad.as_bytes()).skip().is_err(), "{bad}");
        }
    }

    #[test]
    fn write_str_escapes() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\\n\u{1}é");
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\\\\\n\\u0001é\"");
    }
}
