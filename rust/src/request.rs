//! An HTTP request's query string and body: which parameters arrived, and from where.

use std::borrow::Cow;

use crate::errors::RequestError;
use crate::payload::{gunzip, is_gzip, looks_like_json};

/// The parameters of the original API, as the gateway acts on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // the API's own flags, each independent of the others
pub struct Params {
    pub verbose: bool,
    pub img: bool,
    pub test: bool,
    pub use_ip: bool,
    /// /import's `strict=1`: every event validated as Mixpanel's strict mode does, answered in its shape.
    pub strict: bool,
    pub callback: Option<String>,
    pub redirect: Option<String>,
}

/// Raw (percent-decoded) parameter values; a later source overrides an earlier one.
#[derive(Debug, Default)]
struct RawParams<'a> {
    data: Option<Cow<'a, [u8]>>,
    ip: Option<Cow<'a, [u8]>>,
    verbose: Option<Cow<'a, [u8]>>,
    img: Option<Cow<'a, [u8]>>,
    callback: Option<Cow<'a, [u8]>>,
    redirect: Option<Cow<'a, [u8]>>,
    test: Option<Cow<'a, [u8]>>,
    strict: Option<Cow<'a, [u8]>>,
}

impl<'a> RawParams<'a> {
    /// The flags as the gateway acts on them; callback and redirect are left for the caller, who
    /// decides what a value that is not UTF-8 means.
    fn flags(&self) -> Params {
        Params {
            verbose: flag(self.verbose.as_ref()),
            img: flag(self.img.as_ref()),
            test: flag(self.test.as_ref()),
            use_ip: flag(self.ip.as_ref()),
            strict: flag(self.strict.as_ref()),
            callback: None,
            redirect: None,
        }
    }

    /// Reads `application/x-www-form-urlencoded` text (a query string has the same form).
    fn read_form(&mut self, form: &'a [u8]) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'&', form).chain(std::iter::once(form.len())) {
            let pair = &form[start..end];
            start = end + 1;
            let (key, value) = match memchr::memchr(b'=', pair) {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let key = form_decode(key);
            let slot = match &*key {
                b"data" => &mut self.data,
                b"ip" => &mut self.ip,
                b"verbose" => &mut self.verbose,
                b"img" => &mut self.img,
                b"callback" => &mut self.callback,
                b"redirect" => &mut self.redirect,
                b"test" => &mut self.test,
                b"strict" => &mut self.strict,
                _ => continue,
            };
            *slot = Some(form_decode(value));
        }
    }
}

/// Form decoding: `+` is a space, `%XX` a byte. A `%` not followed by two hex digits stays as it is,
/// as browsers do.
pub fn form_decode(raw: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = memchr::memchr2(b'%', b'+', raw) else {
        return Cow::Borrowed(raw);
    };
    // One pass, byte by byte: in a form-encoded JSON body nearly every third byte is an escape, too
    // dense for a search per escape to pay. Bytes go through a small buffer on the stack, appended to the
    // output when full: a push per byte would keep the vector's length in memory.
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut chunk = [0u8; 256];
    let mut held = 0;
    let mut rest = &raw[first..];
    while let Some((&b, tail)) = rest.split_first() {
        let byte;
        (byte, rest) = match b {
            b'+' => (b' ', tail),
            b'%' => match tail {
                [hi, lo, after @ ..] if HEX[*hi as usize] | HEX[*lo as usize] < 16 => {
                    (HEX[*hi as usize] << 4 | HEX[*lo as usize], after)
                }
                _ => (b'%', tail),
            },
            _ => (b, tail),
        };
        // `held` is below 256 here; the mask lets the compiler see it.
        chunk[held & 0xff] = byte;
        held += 1;
        if held == chunk.len() {
            out.extend_from_slice(&chunk);
            held = 0;
        }
    }
    out.extend_from_slice(&chunk[..held]);
    Cow::Owned(out)
}

/// A byte's value as a hex digit, or 0x10 when it is none (so that `hi | lo < 16` checks both).
const HEX: [u8; 256] = {
    let mut table = [0x10u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

fn flag(value: Option<&Cow<'_, [u8]>>) -> bool {
    matches!(value.map(|v| v.trim_ascii()), Some(b"1" | b"true"))
}

fn text(value: Option<Cow<'_, [u8]>>, name: &'static str) -> Result<Option<String>, RequestError> {
    value
        .map(|v| {
            String::from_utf8(v.into_owned()).map_err(|_| RequestError::InvalidParameter {
                name,
                detail: "is not valid UTF-8",
            })
        })
        .transpose()
}

/// The parameters of a request, and its events' bytes: the body itself when it is JSON, else `data`.
#[derive(Debug)]
pub struct Split<'a> {
    pub params: Params,
    pub payload: Payload<'a>,
    /// The body was gzip: the payload must not be inflated again.
    pub inflated: bool,
}

/// Where a request's events are.
#[derive(Debug)]
pub enum Payload<'a> {
    /// The body is JSON (by its first byte, or declared so).
    Json(Cow<'a, [u8]>),
    /// The value of the `data` parameter.
    Data(Cow<'a, [u8]>),
    Missing,
}

/// Splits a request into its parameters and its `data`. The body's parameters win over the query's.
pub fn split<'a>(
    query: &'a [u8],
    body: &'a [u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    max_request_bytes: usize,
) -> Result<Split<'a>, RequestError> {
    let size = query.len() + body.len();
    if size > max_request_bytes {
        return Err(RequestError::BodyTooLarge {
            size,
            max: max_request_bytes,
        });
    }
    // The query string counts against the same cap as the inflated body.
    let body_budget = max_request_bytes - query.len();
    let encoding = content_encoding.map_or("", str::trim);
    let declared_gzip =
        encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip");
    if !(declared_gzip || encoding.is_empty() || encoding.eq_ignore_ascii_case("identity")) {
        return Err(RequestError::UnsupportedEncoding {
            encoding: encoding.to_owned(),
        });
    }
    // Undeclared gzip is recognised by its magic bytes. One layer only: gzip inside it is refused here
    // as it is inside `data`, whatever the body turns out to be.
    let body: Cow<'a, [u8]> = if declared_gzip || is_gzip(body) {
        let inflated = gunzip(body, body_budget)?;
        if is_gzip(&inflated) {
            return Err(RequestError::nested_gzip());
        }
        Cow::Owned(inflated)
    } else {
        Cow::Borrowed(body)
    };
    let declared_json = declared_json(content_type);
    let is_json = |body: &[u8]| is_json(body, declared_json);
    let inflated = matches!(body, Cow::Owned(_));
    let mut raw = RawParams::default();
    raw.read_form(query);
    let payload = match body {
        Cow::Borrowed(body) => {
            if is_json(body) {
                Payload::Json(Cow::Borrowed(body))
            } else {
                raw.read_form(body);
                raw.data.take().map_or(Payload::Missing, Payload::Data)
            }
        }
        // The inflated body is owned here, so the parameters read from it must be owned too.
        Cow::Owned(body) => {
            if is_json(&body) {
                Payload::Json(Cow::Owned(body))
            } else {
                let mut from_body = RawParams::default();
                from_body.read_form(&body);
                let own = |v: Option<Cow<'_, [u8]>>| v.map(|v| Cow::Owned(v.into_owned()));
                let data = own(from_body.data).or(raw.data.take());
                raw.ip = own(from_body.ip).or(raw.ip);
                raw.verbose = own(from_body.verbose).or(raw.verbose);
                raw.img = own(from_body.img).or(raw.img);
                raw.callback = own(from_body.callback).or(raw.callback);
                raw.redirect = own(from_body.redirect).or(raw.redirect);
                raw.test = own(from_body.test).or(raw.test);
                raw.strict = own(from_body.strict).or(raw.strict);
                data.map_or(Payload::Missing, Payload::Data)
            }
        }
    };
    let flags = raw.flags();
    let params = Params {
        callback: text(raw.callback, "callback")?,
        redirect: text(raw.redirect, "redirect")?,
        ..flags
    };
    Ok(Split {
        params,
        payload,
        inflated,
    })
}

/// The parameters that shape the answer to a request refused as a whole (verbose, img, callback), read
/// again on that rare path: from the query string, and from a form body that is neither encoded, JSON
/// nor over `max_request_bytes` (nothing is inflated twice). A callback that is not UTF-8 is dropped.
pub fn answer_params(
    query: &[u8],
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    max_request_bytes: usize,
) -> Params {
    let mut raw = RawParams::default();
    raw.read_form(query);
    let plain = content_encoding.map_or(true, |e| e.trim().is_empty());
    if plain
        && body.len() <= max_request_bytes
        && !is_gzip(body)
        && !is_json(body, declared_json(content_type))
    {
        raw.read_form(body);
    }
    let flags = raw.flags();
    Params {
        callback: text(raw.callback, "callback").ok().flatten(),
        ..flags
    }
}

/// Whether the Content-Type says JSON. A body declared as JSON is read as JSON even when it is not, so
/// the error says what is wrong with it.
fn declared_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| {
        let media = t.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("application/json")
    })
}

fn is_json(body: &[u8], declared_json: bool) -> bool {
    declared_json && !body.trim_ascii().is_empty() || looks_like_json(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_params_of_a_refused_request() {
        let form = Some("application/x-www-form-urlencoded");
        let p = answer_params(b"callback=cb", b"verbose=1&data=%%%", form, None, 1000);
        assert!(p.verbose);
        assert_eq!(p.callback.as_deref(), Some("cb"));
        // Not read from an encoded, a JSON or an oversized body: the query's alone.
        assert!(!answer_params(b"", b"verbose=1", form, Some("gzip"), 1000).verbose);
        assert!(!answer_params(b"", b"verbose=1", Some("application/json"), None, 1000).verbose);
        assert!(!answer_params(b"", b"verbose=1", form, None, 4).verbose);
        assert!(answer_params(b"img=1", b"verbose=1", form, None, 4).img);
        // A callback that is not UTF-8 is dropped, not an error.
        assert_eq!(
            answer_params(b"callback=%FF", b"", None, None, 1000).callback,
            None
        );
    }

    #[test]
    fn form_decoding() {
        assert_eq!(&*form_decode(b"a+b%20c%2Bd%zz%4"), b"a b c+d%zz%4");
        assert_eq!(&*form_decode(b"%"), b"%");
        assert_eq!(&*form_decode(b"x%"), b"x%");
        assert_eq!(&*form_decode(b"%%41%4a%4A%g1%1g"), b"%AJJ%g1%1g");
        assert_eq!(&*form_decode(b"++%2B+"), b"  + ");
        assert_eq!(&*form_decode("é+%C3%A9".as_bytes()), "é é".as_bytes());
        assert!(matches!(form_decode(b"plain"), Cow::Borrowed(_)));
        // Longer than the stack chunk, escapes across its boundaries.
        for shift in 0..4 {
            let raw = [
                &b"xyz"[..shift],
                &b"%7B%22a%22%3A+1%2C%zz%4x+b%"[..].repeat(40),
            ]
            .concat();
            let want: Vec<u8> = [&b"xyz"[..shift], &b"{\"a\": 1,%zz%4x b%"[..].repeat(40)].concat();
            assert_eq!(&*form_decode(&raw), &want[..], "shift {shift}");
        }
    }

    #[test]
    fn body_parameters_win() {
        let split = split(
            b"data=Q&verbose=0&ip=1",
            b"data=B&verbose=1",
            None,
            None,
            1000,
        )
        .unwrap();
        assert!(matches!(split.payload, Payload::Data(d) if &*d == b"B"));
        assert!(split.params.verbose);
        assert!(split.params.use_ip);
    }

    #[test]
    fn query_data_when_body_has_none() {
        let split = split(b"data=Q&img=1&callback=cb", b"verbose=1", None, None, 1000).unwrap();
        assert!(matches!(split.payload, Payload::Data(d) if &*d == b"Q"));
        assert!(split.params.img && split.params.verbose);
        assert_eq!(split.params.callback.as_deref(), Some("cb"));
    }

    #[test]
    fn json_body_is_the_data() {
        let body = b" [{\"event\":\"x\"}]";
        let split = split(b"verbose=1", body, None, None, 1000).unwrap();
        assert!(matches!(split.payload, Payload::Json(d) if &*d == body));
        let declared = split_json(b"123");
        assert!(matches!(declared.payload, Payload::Json(d) if &*d == b"123"));
    }

    fn split_json(body: &[u8]) -> Split<'_> {
        split(
            b"",
            body,
            Some("application/json; charset=utf-8"),
            None,
            1000,
        )
        .unwrap()
    }

    #[test]
    fn size_and_encoding_errors() {
        assert_eq!(
            split(b"", &[b'a'; 11], None, None, 10)
                .unwrap_err()
                .status(),
            413
        );
        assert_eq!(
            split(b"", b"x", None, Some("br"), 10).unwrap_err().status(),
            415
        );
        assert_eq!(
            split(b"callback=%ff", b"", None, None, 100)
                .unwrap_err()
                .kind(),
            "invalid_parameter"
        );
    }
}
