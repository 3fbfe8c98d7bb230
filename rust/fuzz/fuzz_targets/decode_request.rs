//! Arbitrary bytes as a whole `/track` request (query, body, Content-Type, Content-Encoding, options)
//! and as a `data` value. Nothing may panic, and whatever decodes must be self-consistent: every
//! normalised event is valid JSON of the documented shape, and the packed batches hold exactly the
//! accepted events.
//!
//! Input layout: byte 0 picks the headers and the caller, byte 1 the options, byte 2 the length of the
//! query string; the query string follows, then the body. The body alone is also fed to `decode_data`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trackgate_native::{
    decode_data, decode_request, Context, Decoded, Options, RequestError, TokenSet,
};

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some("application/x-www-form-urlencoded"),
    Some("application/json"),
    Some("text/plain;charset=UTF-8"),
    Some("application/json; charset=utf-8"),
    Some("multipart/form-data"),
    Some(""),
    None,
];

const ENCODINGS: [Option<&str>; 8] = [
    None,
    Some("gzip"),
    Some("identity"),
    Some("br"),
    Some("x-gzip"),
    Some(" GZIP "),
    Some(""),
    None,
];

/// The default options, or small limits so that every limit is within the fuzzer's reach.
fn options(selector: u8) -> Options {
    let mut options = Options::default();
    if selector & 1 == 1 {
        options.max_event_name_chars = usize::from(selector >> 1 & 7);
        options.max_distinct_id_chars = usize::from(selector >> 2 & 7);
        options.max_properties = usize::from(selector >> 3 & 7);
        options.max_depth = usize::from(selector >> 4 & 3);
        options.max_array_len = usize::from(selector >> 5 & 7);
        options.max_event_bytes = 64 << (selector >> 6);
        options.max_request_bytes = 4096;
        options.max_events = usize::from(selector >> 2 & 15) + 1;
        options.partitions = u32::from(selector >> 4) + 1;
        options.max_age = f64::from(selector) * 1000.0;
        options.max_future_skew = f64::from(selector >> 3);
    }
    options
}

fn check_error(error: &RequestError) {
    assert!(matches!(error.status(), 400 | 413 | 415), "{error:?}");
    assert!(!error.kind().is_empty());
    assert!(!error.to_string().is_empty());
}

fn check_decoded(decoded: &Decoded, partitions: u32) {
    assert_eq!(decoded.accepted() + decoded.errors.len(), decoded.total);
    assert!(decoded.total >= 1);
    let mut last = None;
    for error in &decoded.errors {
        assert!(error.index < decoded.total);
        assert!(last < Some(error.index), "errors in index order, once each");
        last = Some(error.index);
        assert!(!error.message.is_empty());
    }
    for json in decoded.events() {
        let value: Value = serde_json::from_slice(json).unwrap_or_else(|e| {
            panic!(
                "normalised event is not JSON ({e}): {}",
                String::from_utf8_lossy(json)
            )
        });
        let event = value.as_object().expect("an event is an object");
        assert!(event["event"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(event["token"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(event["time"].is_number() && event["received"].is_number());
        let properties = event["properties"].as_object().expect("properties");
        assert_eq!(properties.get("token"), event.get("token"));
        assert_eq!(properties.get("time"), event.get("time"));
        if let Some(id) = event.get("distinct_id") {
            assert!(id.is_string());
            assert_eq!(properties.get("distinct_id"), Some(id));
        }
    }
    let mut packed_events = 0;
    for batch in &decoded.batches.batches {
        assert!(batch.count >= 1 && batch.partition < partitions.max(1));
        assert_eq!(bulk_count(&batch.packed), batch.args);
        assert!(batch.args >= batch.count * 5 && batch.args <= batch.count * 8);
        packed_events += batch.count;
    }
    assert_eq!(packed_events, decoded.accepted());
}

/// The number of RESP bulk strings in `packed`, which must hold nothing else.
fn bulk_count(mut packed: &[u8]) -> usize {
    let mut count = 0;
    while !packed.is_empty() {
        assert_eq!(packed[0], b'$');
        let end = packed.iter().position(|&b| b == b'\r').expect("CRLF");
        let len: usize = std::str::from_utf8(&packed[1..end])
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(&packed[end..end + 2], b"\r\n");
        let rest = &packed[end + 2..];
        assert_eq!(&rest[len..len + 2], b"\r\n");
        packed = &rest[len + 2..];
        count += 1;
    }
    count
}

fn run(input: &[u8]) {
    let [flags, selector, query_len, rest @ ..] = input else {
        return;
    };
    let split = usize::from(*query_len).min(rest.len());
    let (query, body) = rest.split_at(split);
    let options = options(*selector);
    let tokens: TokenSet = ["tok", "t", ""].into_iter().map(str::to_owned).collect();
    let ctx = Context {
        options: &options,
        now: 1_700_000_000.5,
        peer_ip: (flags & 0x40 != 0).then_some("203.0.113.7"),
        tokens: (flags & 0x80 != 0).then_some(&tokens),
    };
    let content_type = CONTENT_TYPES[usize::from(flags & 7)];
    let encoding = ENCODINGS[usize::from(flags >> 3 & 7)];
    match decode_request(query, body, content_type, encoding, &ctx) {
        Ok(decoded) => check_decoded(&decoded, options.partitions),
        Err(error) => check_error(&error),
    }
    match decode_data(body, &ctx) {
        Ok(decoded) => {
            assert_eq!(decoded.params, Default::default());
            check_decoded(&decoded, options.partitions);
        }
        Err(error) => check_error(&error),
    }
}

fuzz_target!(|input: &[u8]| run(input));
