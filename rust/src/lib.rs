//! trackgate's native decoder: Mixpanel `/track` requests in, validated and normalised events out,
//! grouped by (token, partition) and packed for Redis. Plain Rust; `py.rs` is the only file that knows
//! about Python.

use std::collections::HashSet;

pub mod errors;
pub mod event;
pub mod json;
pub mod payload;
pub mod replies;
pub mod request;
pub mod resp;

#[cfg(feature = "python")]
mod py;

pub use errors::{EventError, EventErrorKind, RequestError, RequestErrorKind};
pub use request::Params;
pub use resp::{Batch, PACKED_LAYOUT};

/// The rules. Every limit is inclusive: a value equal to it is accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Seconds: older events are rejected (the original API's rule is 3 hours; Mixpanel now takes 5 days).
    pub max_age: f64,
    /// Seconds: events further in the future are set to the receive time.
    pub max_future_skew: f64,
    pub max_event_name_chars: usize,
    pub max_distinct_id_chars: usize,
    /// Top-level properties of an event, and keys of any object nested in them.
    pub max_properties: usize,
    /// Containers nested inside one property value.
    pub max_depth: usize,
    pub max_array_len: usize,
    /// Bytes of an event's normalised JSON.
    pub max_event_bytes: usize,
    /// Bytes of a request (query string and body), also after decompression.
    pub max_request_bytes: usize,
    pub max_events: usize,
    pub partitions: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_age: 3.0 * 3600.0,
            max_future_skew: 300.0,
            max_event_name_chars: 255,
            max_distinct_id_chars: 200,
            max_properties: 255,
            max_depth: 3,
            max_array_len: 255,
            max_event_bytes: 1_000_000,
            max_request_bytes: 10_000_000,
            max_events: 2000,
            partitions: 4,
        }
    }
}

/// The tokens of the projects the gateway serves.
pub type TokenSet = HashSet<String>;

/// What the decoder needs besides the bytes: the rules, the clock and the caller, passed in so that
/// results are deterministic.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub options: &'a Options,
    /// The receive time, in seconds since 1970.
    pub now: f64,
    /// The caller's address, used with `ip=1`.
    pub peer_ip: Option<&'a str>,
    /// When given, events whose token is not in it are rejected as `unknown_token`.
    pub tokens: Option<&'a TokenSet>,
}

/// A decoded request.
#[derive(Debug)]
pub struct Decoded {
    pub params: Params,
    pub total: usize,
    /// One per rejected event, in index order.
    pub errors: Vec<EventError>,
    pub batches: resp::Batches,
}

impl Decoded {
    pub fn accepted(&self) -> usize {
        self.batches.events.len()
    }

    /// The normalised JSON of each valid event, in request order.
    pub fn events(&self) -> impl Iterator<Item = &[u8]> {
        self.batches
            .events
            .iter()
            .map(|&e| self.batches.event_json(e))
    }
}

/// Decodes one HTTP request to `/track`.
pub fn decode_request(
    query: &[u8],
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    ctx: &Context<'_>,
) -> Result<Decoded, RequestError> {
    let max = ctx.options.max_request_bytes;
    let split = request::split(query, body, content_type, content_encoding, max)?;
    let use_ip = split.params.use_ip;
    let events = match &split.payload {
        request::Payload::Json(body) => payload::decode_events(body, ctx, use_ip)?,
        request::Payload::Data(data) => {
            let json = payload::data_to_json(data, max - query.len(), !split.inflated)?;
            payload::decode_events(&json, ctx, use_ip)?
        }
        request::Payload::Missing => return Err(RequestError::Empty),
    };
    Ok(Decoded {
        params: split.params,
        total: events.total,
        errors: events.errors,
        batches: events.batches,
    })
}

/// Decodes the value of one `data` parameter (base64, raw JSON or gzip bytes).
pub fn decode_data(data: &[u8], ctx: &Context<'_>) -> Result<Decoded, RequestError> {
    if data.len() > ctx.options.max_request_bytes {
        return Err(RequestError::BodyTooLarge {
            size: data.len(),
            max: ctx.options.max_request_bytes,
        });
    }
    let json = payload::data_to_json(data, ctx.options.max_request_bytes, true)?;
    let events = payload::decode_events(&json, ctx, false)?;
    Ok(Decoded {
        params: Params::default(),
        total: events.total,
        errors: events.errors,
        batches: events.batches,
    })
}
