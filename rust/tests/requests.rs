//! Whole requests: where `data` comes from, every base64 variant, raw JSON, JSON and form bodies, gzip,
//! the request-wide limits, batches with invalid events, and every whole-request error with its status.

mod common;

use common::{
    b64, b64_nopad, b64_url, b64_url_nopad, event, events, gzip, named_event, normalised, percent,
    wrap, Setup,
};
use trackgate_native::{EventErrorKind as K, Options, RequestError};

/// An event whose standard base64 has `+`, `/` and padding and spans more than two 76-character lines,
/// with the normalised JSON it gives.
fn tricky() -> (String, String, String) {
    for pad in 0..6 {
        let extra = format!(
            "\"v\":\"~~~???>>>~?~{}\",\"long\":\"{}\"",
            "a".repeat(pad),
            "y".repeat(100)
        );
        let json = event(&extra);
        let encoded = b64(&json);
        if encoded.contains('+') && encoded.contains('/') && encoded.ends_with('=') {
            assert!(encoded.len() > 2 * 76);
            return (json, encoded, normalised(&extra));
        }
    }
    panic!("no payload with '+', '/' and padding");
}

fn kind(result: Result<trackgate_native::Decoded, RequestError>) -> &'static str {
    match result {
        Ok(decoded) => panic!(
            "expected a request error, got {:?} / {:?}",
            events(&decoded),
            decoded.errors
        ),
        Err(e) => e.kind(),
    }
}

fn only(result: Result<trackgate_native::Decoded, RequestError>) -> String {
    common::only_event(&result.expect("the request should decode"))
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");

// ---- base64 ----

#[test]
fn base64_standard_padded_and_unpadded() {
    let s = Setup::default();
    let (json, encoded, expected) = tricky();
    assert_eq!(s.accept(&encoded), expected);
    let unpadded = b64_nopad(&json);
    assert!(!unpadded.ends_with('='));
    assert_eq!(s.accept(&unpadded), expected);
}

#[test]
fn base64_url_safe_padded_and_unpadded() {
    let s = Setup::default();
    let (json, _, expected) = tricky();
    let url = b64_url(&json);
    assert!(url.contains('-') && url.contains('_') && url.ends_with('='));
    assert_eq!(s.accept(&url), expected);
    assert_eq!(s.accept(b64_url_nopad(&json)), expected);
}

#[test]
fn base64_with_line_breaks() {
    let s = Setup::default();
    let (_, encoded, expected) = tricky();
    let lf = wrap(&encoded, 76, "\n") + "\n";
    assert!(lf.matches('\n').count() >= 3);
    assert_eq!(s.accept(&lf), expected);
    let crlf = wrap(&encoded, 76, "\r\n") + "\r\n";
    assert_eq!(s.accept(&crlf), expected);
    assert_eq!(s.accept(wrap(&encoded, 10, "\t")), expected);
    assert_eq!(s.accept(wrap(&encoded, 64, "\n")), expected);
}

#[test]
fn base64_with_spaces_where_plus_signs_were() {
    let s = Setup::default();
    let (_, encoded, expected) = tricky();
    assert_eq!(s.accept(encoded.replace('+', " ")), expected);
    // An unencoded query string: form decoding turns each `+` into a space.
    let query = format!("data={encoded}&ip=0");
    assert!(query.contains('+'));
    assert_eq!(only(s.request(&query, "", None, None)), expected);
    // The same in a form body.
    assert_eq!(only(s.request("", &query, FORM, None)), expected);
}

#[test]
fn base64_percent_encoded_in_the_query() {
    let s = Setup::default();
    let (_, encoded, expected) = tricky();
    let query = format!("verbose=1&data={}", percent(&encoded));
    assert!(query.contains("%2B") && query.contains("%2F") && query.contains("%3D"));
    let decoded = s.request(&query, "", None, None).unwrap();
    assert!(decoded.params.verbose);
    assert_eq!(common::only_event(&decoded), expected);
}

#[test]
fn base64_mixed_variants_in_one_value() {
    let s = Setup::default();
    let (_, encoded, expected) = tricky();
    let half = encoded.len() / 2;
    let (first, second) = encoded.split_at(half);
    let first = first.replace('+', "-").replace('/', "_");
    let second = second.replace('+', " ").trim_end_matches('=').to_owned();
    let mixed = wrap(&(first + &second), 76, "\r\n");
    assert_eq!(s.accept(&mixed), expected);
    assert_eq!(
        only(s.request(format!("data={}", percent(&mixed)), "", None, None)),
        expected
    );
}

#[test]
fn invalid_base64() {
    let s = Setup::default();
    for bad in [
        "!!!!",
        "abc$def",
        "a",
        "abcde",
        "ab=c",
        "eyJ*ZXZlbnQiOiJlIn0",
        "\"quoted\"",
    ] {
        let error = s.data_error(bad);
        assert_eq!(error.kind(), "invalid_base64", "{bad:?}: {error}");
        assert_eq!(error.status(), 400);
    }
    assert_eq!(
        kind(s.request("data=%24%24%24%24", "", None, None)),
        "invalid_base64"
    );
}

#[test]
fn base64_of_something_that_is_not_json() {
    let s = Setup::default();
    assert_eq!(s.data_error(b64("hello")).kind(), "invalid_json");
    assert_eq!(s.data_error(b64("{\"event\":")).kind(), "invalid_json");
}

// ---- raw JSON and JSON bodies ----

#[test]
fn raw_json_data() {
    let s = Setup::default();
    let json = event("\"a\":[1, 2]");
    let expected = normalised("\"a\":[1,2]");
    assert_eq!(s.accept(&json), expected);
    assert_eq!(s.accept(format!(" \r\n\t{json}\n")), expected);
    assert_eq!(s.accept(format!("[{json}]")), expected);
    assert_eq!(
        only(s.request(format!("data={}", percent(&json)), "", None, None)),
        expected
    );
}

#[test]
fn raw_json_in_a_form_body_as_the_python_library_sends_it() {
    let s = Setup::default();
    let json = format!("[{}]", event("\"a\":\"x y+z&w=v\""));
    let body = format!("data={}&verbose=1&ip=0", percent(&json));
    let decoded = s.request("", &body, FORM, None).unwrap();
    assert!(decoded.params.verbose);
    assert!(!decoded.params.use_ip);
    assert_eq!(
        common::only_event(&decoded),
        normalised("\"a\":\"x y+z&w=v\"")
    );
}

#[test]
fn json_body_with_and_without_content_type() {
    let s = Setup::default();
    let body = format!("[{},{}]", event("\"n\":1"), event("\"n\":2"));
    let expected = vec![normalised("\"n\":1"), normalised("\"n\":2")];
    for content_type in [
        JSON,
        Some("application/json; charset=utf-8"),
        Some("Application/JSON"),
        None,
        Some("text/plain;charset=UTF-8"),
        FORM,
    ] {
        let decoded = s.request("ip=0", &body, content_type, None).unwrap();
        assert_eq!(events(&decoded), expected, "{content_type:?}");
    }
    let one = event("");
    assert_eq!(
        only(s.request("", format!("\n  {one}"), None, None)),
        normalised("")
    );
}

#[test]
fn json_body_with_query_parameters() {
    let s = Setup::default();
    let decoded = s
        .request(
            "verbose=1&img=1&test=1&callback=cb&redirect=https%3A%2F%2Fx.example%2F",
            event(""),
            JSON,
            None,
        )
        .unwrap();
    let p = &decoded.params;
    assert!(p.verbose && p.img && p.test && !p.use_ip);
    assert_eq!(p.callback.as_deref(), Some("cb"));
    assert_eq!(p.redirect.as_deref(), Some("https://x.example/"));
}

#[test]
fn declared_json_body_that_is_a_scalar_is_not_events() {
    // Declared as JSON, so read as JSON: a scalar is `not_events`, broken text is `invalid_json`,
    // never a base64 error.
    let s = Setup::default();
    let got: Vec<(&str, &str)> = ["123", "\"text\"", "null", "true", "nope"]
        .into_iter()
        .map(|body| (body, kind(s.request("", body, JSON, None))))
        .collect();
    assert_eq!(
        got,
        [
            ("123", "not_events"),
            ("\"text\"", "not_events"),
            ("null", "not_events"),
            ("true", "not_events"),
            ("nope", "invalid_json"),
        ]
    );
}

#[test]
fn text_plain_form_body_as_send_beacon_sends_it() {
    let s = Setup::default();
    let (_, encoded, expected) = tricky();
    let body = format!("data={}", percent(&encoded));
    let decoded = s
        .request("verbose=1", &body, Some("text/plain;charset=UTF-8"), None)
        .unwrap();
    assert!(decoded.params.verbose);
    assert_eq!(common::only_event(&decoded), expected);
}

#[test]
fn form_body_with_percent_encoded_json_data() {
    let s = Setup::default();
    let json = event("\"é\":\"ü\"");
    let body = format!("ip=0&data={}", percent(&json));
    assert!(body.contains("%C3%A9"));
    assert_eq!(
        only(s.request("", &body, FORM, None)),
        normalised("\"é\":\"ü\"")
    );
}

// ---- parameters: the body wins ----

#[test]
fn body_parameters_win_over_the_query() {
    let s = Setup::default();
    let query = format!(
        "data={}&ip=1&verbose=0&callback=q",
        b64(named_event("q", ""))
    );
    let body = format!("data={}&ip=0&verbose=1", b64(named_event("b", "")));
    let decoded = s.request(&query, &body, FORM, None).unwrap();
    let json = common::only_event(&decoded);
    assert!(json.starts_with("{\"event\":\"b\","), "{json}");
    assert!(!decoded.params.use_ip);
    assert!(decoded.params.verbose);
    assert_eq!(decoded.params.callback.as_deref(), Some("q"));
    // A body without data leaves the query's.
    let decoded = s.request(&query, "verbose=1", FORM, None).unwrap();
    assert!(common::only_event(&decoded).starts_with("{\"event\":\"q\","));
    assert!(decoded.params.use_ip);
}

#[test]
fn body_parameters_win_over_the_query_in_a_gzip_body() {
    let s = Setup::default();
    let query = format!("data={}&ip=1&img=1", b64(named_event("q", "")));
    let body = gzip(format!("data={}&ip=0", b64(named_event("b", ""))));
    let decoded = s.request(&query, &body, FORM, Some("gzip")).unwrap();
    assert!(common::only_event(&decoded).starts_with("{\"event\":\"b\","));
    assert!(!decoded.params.use_ip);
    assert!(decoded.params.img);
    let decoded = s
        .request(&query, gzip("verbose=1"), FORM, Some("gzip"))
        .unwrap();
    assert!(common::only_event(&decoded).starts_with("{\"event\":\"q\","));
    assert!(decoded.params.use_ip && decoded.params.verbose);
}

#[test]
fn invalid_parameter_text() {
    let s = Setup::default();
    let error = s
        .request("callback=%FF", event(""), JSON, None)
        .unwrap_err();
    assert_eq!((error.kind(), error.status()), ("invalid_parameter", 400));
}

// ---- gzip ----

#[test]
fn gzip_body_by_content_encoding() {
    let s = Setup::default();
    let (_, encoded, expected) = tricky();
    let form = gzip(format!("data={}&ip=0", percent(&encoded)));
    for encoding in ["gzip", "GZIP", " x-gzip "] {
        assert_eq!(
            only(s.request("", &form, FORM, Some(encoding))),
            expected,
            "{encoding}"
        );
    }
    let json = gzip(event(""));
    assert_eq!(
        only(s.request("", &json, JSON, Some("gzip"))),
        normalised("")
    );
}

#[test]
fn gzip_body_by_magic_bytes() {
    let s = Setup::default();
    let json = gzip(format!("[{}]", event("")));
    for encoding in [None, Some("identity"), Some("")] {
        assert_eq!(
            only(s.request("", &json, None, encoding)),
            normalised(""),
            "{encoding:?}"
        );
    }
    let (_, encoded, expected) = tricky();
    let form = gzip(format!("data={}", percent(&encoded)));
    assert_eq!(only(s.request("", &form, FORM, None)), expected);
}

#[test]
fn gzip_inside_base64_and_as_data() {
    let s = Setup::default();
    let json = event("\"a\":1");
    let expected = normalised("\"a\":1");
    let zipped = gzip(&json);
    assert_eq!(s.accept(&zipped), expected);
    assert_eq!(s.accept(b64(&zipped)), expected);
    assert_eq!(s.accept(b64_url_nopad(&zipped)), expected);
    assert_eq!(s.accept(wrap(&b64(&zipped), 76, "\r\n")), expected);
    assert_eq!(
        only(s.request(format!("data={}", b64(&zipped)), "", None, None)),
        expected
    );
    assert_eq!(
        only(s.request("", format!("data={}", percent(&zipped)), FORM, None)),
        expected
    );
}

#[test]
fn unsupported_content_encoding_is_415() {
    let s = Setup::default();
    for encoding in ["br", "deflate", "compress", "zstd", "gzip, br"] {
        let error = s
            .request("", gzip(event("")), JSON, Some(encoding))
            .unwrap_err();
        assert_eq!(
            (error.kind(), error.status()),
            ("unsupported_encoding", 415),
            "{encoding}"
        );
    }
}

#[test]
fn invalid_gzip() {
    let s = Setup::default();
    let error = s.request("", event(""), JSON, Some("gzip")).unwrap_err();
    assert_eq!((error.kind(), error.status()), ("invalid_gzip", 400));
    let zipped = gzip(event(""));
    let truncated = &zipped[..zipped.len() - 10];
    assert_eq!(kind(s.request("", truncated, None, None)), "invalid_gzip");
    assert_eq!(s.data_error(truncated).kind(), "invalid_gzip");
    assert_eq!(s.data_error(b64(truncated)).kind(), "invalid_gzip");
    let mut corrupt = zipped.clone();
    let n = corrupt.len();
    corrupt[n - 8] ^= 0xFF; // the CRC
    assert_eq!(s.data_error(&corrupt).kind(), "invalid_gzip");
}

// ---- request-wide limits ----

fn with_options(f: impl FnOnce(&mut Options)) -> Setup {
    let mut options = Options::default();
    f(&mut options);
    Setup::with(options)
}

#[test]
fn request_bytes_at_and_over_the_limit() {
    let query = "verbose=1";
    let body = format!("data={}", b64(event("")));
    let size = query.len() + body.len();
    let at = with_options(|o| o.max_request_bytes = size);
    assert_eq!(only(at.request(query, &body, FORM, None)), normalised(""));
    let over = with_options(|o| o.max_request_bytes = size - 1);
    let error = over.request(query, &body, FORM, None).unwrap_err();
    assert_eq!((error.kind(), error.status()), ("body_too_large", 413));
    assert_eq!(
        error,
        RequestError::BodyTooLarge {
            size,
            max: size - 1
        }
    );
    // The query alone counts too.
    let query = format!("data={}", b64(event("")));
    let at = with_options(|o| o.max_request_bytes = query.len());
    only(at.request(&query, "", None, None));
    let over = with_options(|o| o.max_request_bytes = query.len() - 1);
    assert_eq!(kind(over.request(&query, "", None, None)), "body_too_large");
}

#[test]
fn data_bytes_at_and_over_the_limit() {
    let data = b64(event(""));
    let at = with_options(|o| o.max_request_bytes = data.len());
    assert_eq!(at.accept(&data), normalised(""));
    let over = with_options(|o| o.max_request_bytes = data.len() - 1);
    let error = over.data_error(&data);
    assert_eq!((error.kind(), error.status()), ("body_too_large", 413));
}

/// A JSON event padded with trailing white space to exactly `len` bytes.
fn padded_json(len: usize) -> String {
    let json = event("");
    format!("{json}{}", " ".repeat(len - json.len()))
}

#[test]
fn decompressed_bytes_at_and_over_the_limit() {
    const MAX: usize = 4000;
    let s = with_options(|o| o.max_request_bytes = MAX);
    let at = gzip(padded_json(MAX));
    let over = gzip(padded_json(MAX + 1));
    assert!(over.len() < MAX / 10);
    // A body, by header and by magic bytes.
    assert_eq!(only(s.request("", &at, JSON, Some("gzip"))), normalised(""));
    assert_eq!(only(s.request("", &at, None, None)), normalised(""));
    for encoding in [Some("gzip"), None] {
        let error = s.request("", &over, JSON, encoding).unwrap_err();
        assert_eq!(
            (error.kind(), error.status()),
            ("decompressed_too_large", 413)
        );
        assert_eq!(error, RequestError::DecompressedTooLarge { max: MAX });
    }
    // A data value: gzip bytes, and gzip inside base64.
    assert_eq!(s.accept(&at), normalised(""));
    assert_eq!(s.accept(b64(&at)), normalised(""));
    assert_eq!(s.data_error(&over).kind(), "decompressed_too_large");
    assert_eq!(s.data_error(b64(&over)).kind(), "decompressed_too_large");
    assert_eq!(
        kind(s.request(format!("data={}", b64(&over)), "", None, None)),
        "decompressed_too_large"
    );
}

#[test]
fn gzip_bomb_is_refused() {
    // 24 members of 1 MiB of spaces each: 24 MiB inflated from about 25 KB, over the 10 MB default.
    let member = gzip(vec![b' '; 1 << 20]);
    let bomb: Vec<u8> = member.repeat(24);
    assert!(bomb.len() < 100_000);
    let s = Setup::default();
    let error = s.request("", &bomb, JSON, Some("gzip")).unwrap_err();
    assert_eq!(
        (error.kind(), error.status()),
        ("decompressed_too_large", 413)
    );
    assert_eq!(
        kind(s.request("", &bomb, None, None)),
        "decompressed_too_large"
    );
    assert_eq!(s.data_error(&bomb).kind(), "decompressed_too_large");
    assert_eq!(s.data_error(b64(&bomb)).kind(), "decompressed_too_large");
}

#[test]
fn nested_gzip_is_refused_after_one_layer() {
    // 300 stored gzip layers around one event: 7 KB sent, each layer small, about 1 MB inflated in all.
    // One layer is inflated per request, wherever it is; gzip inside it is refused.
    let s = with_options(|o| o.max_request_bytes = 100_000);
    let json = event("");
    assert_eq!(s.accept(gzip(&json)), normalised(""));
    let layers = common::nested_gzip(json.as_bytes(), 300);
    assert!(layers.len() < 10_000);
    let form = format!("data={}", percent(&layers));
    for outcome in [
        s.data(&layers),
        s.request("", &form, FORM, None),
        s.request(&form, "", None, None),
        s.data(b64(&layers)),
        s.request("", &layers, JSON, Some("gzip")),
        s.request("", &layers, JSON, None),
    ] {
        let err = outcome.expect_err("nested gzip must be refused");
        assert_eq!((err.kind(), err.status()), ("invalid_gzip", 400), "{err}");
    }
}

#[test]
fn request_cap_of_usize_max_still_inflates_gzip() {
    // "No limit" spelled as the largest cap: the inflating cap (`max + 1`) must not overflow.
    let s = with_options(|o| o.max_request_bytes = usize::MAX);
    let zipped = gzip(event(""));
    assert_eq!(
        only(s.request("", &zipped, JSON, Some("gzip"))),
        normalised("")
    );
    assert_eq!(s.accept(&zipped), normalised(""));
}

fn batch(n: usize) -> String {
    let events: Vec<String> = (0..n).map(|i| event(&format!("\"i\":{i}"))).collect();
    format!("[{}]", events.join(","))
}

#[test]
fn events_per_request_at_and_over_the_limit() {
    let s = Setup::default();
    let decoded = s.data(batch(2000)).unwrap();
    assert_eq!((decoded.total, decoded.accepted()), (2000, 2000));
    let error = s.data_error(batch(2001));
    assert_eq!((error.kind(), error.status()), ("too_many_events", 413));
    assert_eq!(error, RequestError::TooManyEvents { max: 2000 });
    let one = with_options(|o| o.max_events = 1);
    one.accept(batch(1));
    one.accept(event(""));
    assert_eq!(one.data_error(batch(2)).kind(), "too_many_events");
    let three = with_options(|o| o.max_events = 3);
    assert_eq!(three.data(batch(3)).unwrap().accepted(), 3);
    assert_eq!(
        kind(three.request("", batch(4), JSON, None)),
        "too_many_events"
    );
}

// ---- batches with invalid events ----

#[test]
fn a_bad_event_in_a_batch_keeps_the_others() {
    let s = Setup::default();
    let payload = format!(
        "[{},{},{},42,{},\"e\",{}]",
        named_event("a", ""),
        r#"{"event":"b","properties":{}}"#,
        named_event("c", ""),
        named_event("d", "\"time\":-1"),
        named_event("f", ""),
    );
    for decoded in [
        s.data(&payload).unwrap(),
        s.data(b64(&payload)).unwrap(),
        s.request("", &payload, JSON, None).unwrap(),
    ] {
        assert_eq!(decoded.total, 7);
        let names: Vec<String> = events(&decoded)
            .iter()
            .map(|e| e[10..11].to_owned())
            .collect();
        assert_eq!(names, ["a", "c", "f"]);
        let errors: Vec<(usize, K, &str)> = decoded
            .errors
            .iter()
            .map(|e| (e.index, e.kind, e.field.as_str()))
            .collect();
        assert_eq!(
            errors,
            [
                (1, K::TokenMissing, "properties.token"),
                (3, K::NotAnObject, ""),
                (4, K::TimeInvalid, "properties.time"),
                (5, K::NotAnObject, ""),
            ]
        );
    }
}

#[test]
fn every_event_invalid_is_still_not_a_request_error() {
    let s = Setup::default();
    let decoded = s.data("[1,2,{}]").unwrap();
    assert_eq!((decoded.total, decoded.accepted()), (3, 0));
    let kinds: Vec<K> = decoded.errors.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [K::NotAnObject, K::NotAnObject, K::EventMissing]);
}

#[test]
fn empty_batch() {
    let s = Setup::default();
    for payload in ["[]".to_owned(), " [ \n ] ".to_owned(), b64("[]")] {
        let error = s.data_error(&payload);
        assert_eq!((error.kind(), error.status()), ("empty_batch", 400));
    }
    assert_eq!(kind(s.request("", "[]", JSON, None)), "empty_batch");
}

#[test]
fn scalar_payload_is_not_events() {
    let s = Setup::default();
    for json in ["123", "\"event\"", "null", "true", " -1.5 "] {
        let error = s.data_error(b64(json));
        assert_eq!(
            (error.kind(), error.status()),
            ("not_events", 400),
            "{json}"
        );
    }
}

/// Text as mixpanel-js's base64 path encodes it: each UTF-16 unit on its own, so a character beyond
/// U+FFFF becomes two 3-byte surrogates (CESU-8).
fn cesu8(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for unit in text.encode_utf16() {
        let unit = u32::from(unit);
        match unit {
            0..=0x7F => out.push(unit as u8),
            0x80..=0x7FF => out.extend([0xC0 | (unit >> 6) as u8, 0x80 | (unit & 0x3F) as u8]),
            _ => out.extend([
                0xE0 | (unit >> 12) as u8,
                0x80 | ((unit >> 6) & 0x3F) as u8,
                0x80 | (unit & 0x3F) as u8,
            ]),
        }
    }
    out
}

#[test]
fn characters_beyond_the_bmp_as_mixpanel_js_encodes_them() {
    let s = Setup::default();
    let text = event("\"title\":\"caf\u{e9} \u{1F600}\u{1F680}!\"");
    let raw = cesu8(&text);
    assert_ne!(raw, text.as_bytes(), "the emoji are surrogates");
    for data in [b64(&raw).into_bytes(), raw.clone(), gzip(&raw)] {
        let json = s.accept(&data);
        assert!(
            json.contains("\"title\":\"caf\u{e9} \u{1F600}\u{1F680}!\""),
            "{json}"
        );
    }
    // A string cut between the two halves of a pair, as a truncation by UTF-16 units leaves it: the
    // lone half, high or low, is U+FFFD.
    let pair = cesu8("\u{1F600}");
    let (high, low) = (&pair[..3], &pair[3..]);
    for (half, at_end) in [(high, false), (high, true), (low, false)] {
        let mut raw = event("\"a\":\"x\"").into_bytes();
        let at = raw.iter().position(|&b| b == b'x').unwrap();
        let tail = if at_end { &b""[..] } else { &b"y"[..] };
        raw.splice(at..=at, half.iter().chain(tail).copied());
        let want = if at_end {
            "\"a\":\"\u{FFFD}\""
        } else {
            "\"a\":\"\u{FFFD}y\""
        };
        let json = s.accept(b64(&raw));
        assert!(json.contains(want), "{json}");
    }
    // A JSON error after pairs is placed in the payload as sent.
    let mut raw = cesu8(&event("\"a\":\"\u{1F600}\u{1F600}\",\"b\":x"));
    let at = raw.iter().position(|&b| b == b'x').unwrap();
    raw.truncate(at + 1);
    match s.data_error(&raw) {
        RequestError::InvalidJson { offset, .. } => assert_eq!(offset, at),
        other => panic!("{other:?}"),
    }
    // Anything else that is not UTF-8 stays an error, after repaired pairs too.
    let mut raw = cesu8(&event("\"a\":\"\u{1F600}x\""));
    let at = raw.iter().position(|&b| b == b'x').unwrap();
    raw[at] = 0xFF;
    assert_eq!(
        s.data_error(b64(&raw)),
        RequestError::InvalidUtf8 { offset: at }
    );
}

#[test]
fn invalid_utf8() {
    let s = Setup::default();
    let mut raw = event("\"a\":\"x\"").into_bytes();
    let at = raw.iter().position(|&b| b == b'x').unwrap();
    raw[at] = 0xFF;
    let error = s.data_error(&raw);
    assert_eq!((error.kind(), error.status()), ("invalid_utf8", 400));
    assert_eq!(error, RequestError::InvalidUtf8 { offset: at });
    assert_eq!(s.data_error(b64(&raw)).kind(), "invalid_utf8");
    assert_eq!(s.data_error(gzip(&raw)).kind(), "invalid_utf8");
    assert_eq!(kind(s.request("", &raw, JSON, None)), "invalid_utf8");
    // Inside a percent-encoded JSON data value, in the query and in a form body.
    let encoded = percent(&raw);
    assert!(encoded.contains("%FF"));
    assert_eq!(
        kind(s.request(format!("data={encoded}"), "", None, None)),
        "invalid_utf8"
    );
    assert_eq!(
        kind(s.request("", format!("data={encoded}"), FORM, None)),
        "invalid_utf8"
    );
    // In an ignored member and in a key too; a truncated sequence. (An encoded surrogate is read as
    // UTF-16: see characters_beyond_the_bmp_as_mixpanel_js_encodes_them.)
    for bad in [
        &b"{\"x\":\"\xC3\",\"event\":\"e\"}"[..],
        b"[{\"\xFE\":1}]",
        b"{\"event\":\"\xED\xA0\"}",
    ] {
        assert_eq!(s.data_error(bad).kind(), "invalid_utf8");
    }
}

#[test]
fn nan_and_infinity_are_invalid_json() {
    let s = Setup::default();
    for value in [
        "NaN",
        "Infinity",
        "-Infinity",
        "nan",
        "+1",
        "01",
        "1.",
        ".5",
    ] {
        let payload = format!("[{},{}]", event(""), event(&format!("\"a\":{value}")));
        let error = s.data_error(&payload);
        assert_eq!(
            (error.kind(), error.status()),
            ("invalid_json", 400),
            "{value}"
        );
        assert_eq!(s.data_error(b64(&payload)).kind(), "invalid_json");
    }
    assert_eq!(s.data_error(event("\"time\":NaN")).kind(), "invalid_json");
}

#[test]
fn broken_json_is_invalid_json() {
    let s = Setup::default();
    let one = event("");
    for payload in [
        format!("{one} x"),
        format!("{one}{one}"),
        format!("[{one}]]"),
        format!("[{one}] {{"),
        format!("[{one},]"),
        format!("[{one}"),
        "{".to_owned(),
        "[".to_owned(),
        r#"{"event":"e","properties":{"token":"tok","a":"x	y"}}"#.to_owned(),
        // After a lone surrogate (read as U+FFFD), the payload is still read to its end.
        r#"{"event":"e","properties":{"token":"tok","a":"\ud800"},}"#.to_owned(),
        r#"{"event":"e",}"#.to_owned(),
        "{'event':'e'}".to_owned(),
    ] {
        let error = s.data_error(&payload);
        assert_eq!(error.kind(), "invalid_json", "{payload}");
        assert_eq!(error.status(), 400);
        assert_eq!(s.data_error(b64(&payload)).kind(), "invalid_json");
    }
    assert_eq!(s.data_error(b64("123 x")).kind(), "invalid_json");
}

#[test]
fn lone_surrogate_escapes_are_read_as_the_replacement_character() {
    // A string cut between the two halves of a pair (JavaScript and Java count UTF-16 units), then
    // JSON-encoded: the lone half is U+FFFD; pairs, escaped backslashes and the rest are untouched.
    let s = Setup::default();
    for (sent, stored) in [
        (r"\ud83d", r"\ufffd"),
        (r"a\ude00b", r"a\ufffdb"),
        (r"\ud83d\ud83d\ude00", r"\ufffd\ud83d\ude00"),
        (r"\ud83d\u0041", r"\ufffd\u0041"),
        (r"\\ud83d", r"\\ud83d"),
        (r"\\\ud83d", r"\\\ufffd"),
    ] {
        let json = s.accept(event(&format!("\"a\":\"{sent}\",\"{sent}\":1")));
        assert!(
            json.contains(&format!("\"a\":\"{stored}\",\"{stored}\":1")),
            "{sent}: {json}"
        );
    }
    let name = s.accept(r#"{"event":"x\ud83d","properties":{"token":"tok"}}"#);
    assert!(name.starts_with(r#"{"event":"x\ufffd""#), "{name}");
    // A broken escape after one is still an error, at its place in the payload.
    let broken = r#"{"event":"e","properties":{"token":"tok","a":"\ud800","b":"\u12"}}"#;
    match s.data_error(broken) {
        RequestError::InvalidJson { offset, .. } => {
            assert_eq!(offset, broken.find(r"\u12").unwrap() + 2); // at its digits
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_requests() {
    let s = Setup::default();
    for data in ["", " ", "\r\n\t "] {
        let error = s.data_error(data);
        assert_eq!((error.kind(), error.status()), ("empty", 400), "{data:?}");
    }
    for (query, body, content_type) in [
        ("", "", None),
        ("verbose=1", "", FORM),
        ("data=", "", None),
        ("data=%20%20", "", None),
        ("", "data=", FORM),
        ("", "ip=1&verbose=1", Some("text/plain")),
        ("", "  ", JSON),
        ("", "", JSON),
    ] {
        let error = s.request(query, body, content_type, None).unwrap_err();
        assert_eq!(
            (error.kind(), error.status()),
            ("empty", 400),
            "{query:?} {body:?}"
        );
    }
}

// ---- statuses ----

#[test]
fn status_of_each_request_error_kind() {
    let s = with_options(|o| {
        o.max_request_bytes = 1000;
        o.max_events = 2;
    });
    let cases: Vec<(Result<trackgate_native::Decoded, RequestError>, &str, u16)> = vec![
        (s.request("", "", None, None), "empty", 400),
        (
            s.request("", "x".repeat(1001), None, None),
            "body_too_large",
            413,
        ),
        (
            s.request("", gzip(padded_json(1001)), JSON, Some("gzip")),
            "decompressed_too_large",
            413,
        ),
        (
            s.request("", event(""), JSON, Some("gzip")),
            "invalid_gzip",
            400,
        ),
        (
            s.request("", event(""), JSON, Some("br")),
            "unsupported_encoding",
            415,
        ),
        (
            s.request("data=%25%25", "", None, None),
            "invalid_base64",
            400,
        ),
        (
            s.request("", b"[\"\xFF\"]", JSON, None),
            "invalid_utf8",
            400,
        ),
        (s.request("", "[1,]", JSON, None), "invalid_json", 400),
        (
            s.request(format!("data={}", b64("7")), "", None, None),
            "not_events",
            400,
        ),
        (s.request("", "[]", JSON, None), "empty_batch", 400),
        (s.request("", "[1,2,3]", JSON, None), "too_many_events", 413),
        (
            s.request("redirect=%FF", "[1]", JSON, None),
            "invalid_parameter",
            400,
        ),
    ];
    for (result, expected_kind, status) in cases {
        let error = result.expect_err(expected_kind);
        assert_eq!(
            (error.kind(), error.status()),
            (expected_kind, status),
            "{error}"
        );
        assert!(!error.to_string().is_empty());
    }
}
