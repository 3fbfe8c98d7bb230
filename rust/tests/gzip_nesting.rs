//! gzip inside gzip inside gzip...: each layer is small, so a deep stack of them fits in a small
//! request. Decoding one must neither exhaust the stack nor hold every layer in memory at once.
//!
//! Its own test binary: a stack overflow aborts the whole process, and should take no other test with it.

mod common;

use trackgate_native::{decode_data, decode_request, Context, Options};

/// Runs `f` on a thread with a small stack: 2 MiB (Rust's default for a spawned thread) in a debug
/// build, 256 KiB in an optimised one, whose frames are smaller. Either is ample for a flat payload.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let size = if cfg!(debug_assertions) {
        2 * 1024 * 1024
    } else {
        256 * 1024
    };
    std::thread::Builder::new()
        .stack_size(size)
        .spawn(f)
        .unwrap()
        .join()
        .expect("the decoder panicked")
}

#[test]
fn deeply_nested_gzip_does_not_overflow_the_stack() {
    // About 50 KB: 2000 layers, far under the 10 MB request cap.
    let data = common::nested_gzip(common::event("").as_bytes(), 2000);
    assert!(data.len() < 100_000, "{} bytes", data.len());
    let body = data.clone();
    let (from_data, from_body) = on_small_stack(move || {
        let options = Options::default();
        let ctx = Context {
            options: &options,
            now: common::NOW,
            peer_ip: None,
            tokens: None,
        };
        (
            decode_data(&data, &ctx).map(|d| d.accepted()),
            decode_request(b"", &body, None, Some("gzip"), &ctx).map(|d| d.accepted()),
        )
    });
    // Returned at all (no overflow), and refused: one gzip layer per request.
    assert_eq!(from_data.map_err(|e| e.kind()), Err("invalid_gzip"));
    assert_eq!(from_body.map_err(|e| e.kind()), Err("invalid_gzip"));
}

#[test]
fn one_deep_event_decodes_on_the_same_small_stack() {
    // The control: the small stack is enough for ordinary payloads, gzip included.
    let rejected = on_small_stack(|| {
        let options = Options::default();
        let ctx = Context {
            options: &options,
            now: common::NOW,
            peer_ip: None,
            tokens: None,
        };
        // 255 containers in the property, 258 in the payload: just under the scanner's hard cap.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(254), "]".repeat(254));
        let json = common::event(&format!("\"x\":{deep}"));
        let gz = common::gzip(&json);
        let plain = decode_data(json.as_bytes(), &ctx).unwrap();
        let zipped = decode_data(&gz, &ctx).unwrap();
        (plain.errors.len(), zipped.errors.len())
    });
    assert_eq!(rejected, (1, 1), "too_deep for the property, no crash");
}
