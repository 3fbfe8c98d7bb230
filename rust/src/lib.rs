//! trackgate's native decoder: Mixpanel `/track` requests in, validated and normalised events out,
//! grouped by (token, partition) and packed for Redis; the same for the profile updates of `/engage`
//! and `/groups` (`profile.rs`), and for the historical events of `/import` (`import.rs`). Plain Rust;
//! `py/` is the only module that knows about Python.

use std::collections::HashSet;

#[macro_use]
mod options;
pub mod errors;
pub mod event;
pub mod import;
pub mod json;
pub mod payload;
pub mod profile;
pub mod replies;
pub mod request;
pub mod resp;

#[cfg(feature = "python")]
mod py;

pub use errors::{EventError, EventErrorKind, RequestError, RequestErrorKind};
pub use options::Options;
pub use profile::{Operation, Target};
pub use request::Params;
pub use resp::{Batch, PACKED_LAYOUT};

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
    fn new(params: Params, events: payload::Events) -> Self {
        Self {
            params,
            total: events.total,
            errors: events.errors,
            batches: events.batches,
        }
    }

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
    let sink = || payload::Events::new(ctx.options);
    decode_payload(
        query,
        body,
        content_type,
        content_encoding,
        ctx,
        |json, params| payload::decode_events(json, ctx, params.use_ip, sink),
    )
}

/// Decodes one HTTP request to `/engage` (`Target::People`) or `/groups` (`Target::Groups`): the
/// same transports and encodings as `/track`, profile updates instead of events.
pub fn decode_profile_request(
    query: &[u8],
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    ctx: &Context<'_>,
    target: Target,
) -> Result<Decoded, RequestError> {
    decode_payload(
        query,
        body,
        content_type,
        content_encoding,
        ctx,
        |json, params| profile::decode_updates(json, ctx, params.use_ip, target),
    )
}

/// Decodes one HTTP request to `/import` for the project the gateway authenticated it for (see
/// `import.rs`): historical events, with the transports of `/track`, NDJSON besides, and `strict=1`.
pub fn decode_import_request(
    query: &[u8],
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    ctx: &Context<'_>,
    project: &import::Project<'_>,
) -> Result<Decoded, RequestError> {
    decode_payload(
        query,
        body,
        content_type,
        content_encoding,
        ctx,
        |json, params| import::decode_events(json, ctx, params, project),
    )
}

/// A request's parameters and its payload's JSON, which `decode` reads (with the parameters).
fn decode_payload(
    query: &[u8],
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    ctx: &Context<'_>,
    decode: impl FnOnce(&[u8], &Params) -> Result<payload::Events, RequestError>,
) -> Result<Decoded, RequestError> {
    let max = ctx.options.max_request_bytes;
    let split = request::split(query, body, content_type, content_encoding, max)?;
    let params = &split.params;
    let entries = match &split.payload {
        request::Payload::Json(body) => decode(body, params)?,
        request::Payload::Data(data) => {
            let json = payload::data_to_json(data, max - query.len(), !split.inflated)?;
            decode(&json, params)?
        }
        request::Payload::Missing => return Err(RequestError::Empty),
    };
    Ok(Decoded::new(split.params, entries))
}

/// Decodes the value of one `data` parameter (base64, raw JSON or gzip bytes).
pub fn decode_data(data: &[u8], ctx: &Context<'_>) -> Result<Decoded, RequestError> {
    let events = decode_data_into(data, ctx, || payload::Events::new(ctx.options))?;
    Ok(Decoded::new(Params::default(), events))
}

/// Decodes the value of one `data` parameter into a sink that `new_sink` makes (see `event::Sink`).
pub fn decode_data_into<S: event::Sink>(
    data: &[u8],
    ctx: &Context<'_>,
    new_sink: impl FnMut() -> S,
) -> Result<S, RequestError> {
    if data.len() > ctx.options.max_request_bytes {
        return Err(RequestError::BodyTooLarge {
            size: data.len(),
            max: ctx.options.max_request_bytes,
        });
    }
    let json = payload::data_to_json(data, ctx.options.max_request_bytes, true)?;
    payload::decode_events(&json, ctx, false, new_sink)
}
