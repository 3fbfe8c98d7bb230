//! Every way a request or an event can fail, with a stable snake_case kind and a message for people.
//!
//! Constructors are `#[cold]`: the decode path is written for the valid case, and keeping message
//! formatting out of line keeps it lean.

use std::fmt;

/// The request as a whole cannot be used. One exhaustive match maps each to its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    Empty,
    BodyTooLarge {
        size: usize,
        max: usize,
    },
    DecompressedTooLarge {
        max: usize,
    },
    InvalidGzip {
        detail: String,
    },
    UnsupportedEncoding {
        encoding: String,
    },
    InvalidBase64 {
        detail: String,
    },
    InvalidUtf8 {
        offset: usize,
    },
    InvalidJson {
        offset: usize,
        detail: &'static str,
    },
    NotEvents {
        found: &'static str,
    },
    EmptyBatch,
    TooManyEvents {
        max: usize,
    },
    InvalidParameter {
        name: &'static str,
        detail: &'static str,
    },
}

impl RequestError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::DecompressedTooLarge { .. } => "decompressed_too_large",
            Self::InvalidGzip { .. } => "invalid_gzip",
            Self::UnsupportedEncoding { .. } => "unsupported_encoding",
            Self::InvalidBase64 { .. } => "invalid_base64",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::InvalidJson { .. } => "invalid_json",
            Self::NotEvents { .. } => "not_events",
            Self::EmptyBatch => "empty_batch",
            Self::TooManyEvents { .. } => "too_many_events",
            Self::InvalidParameter { .. } => "invalid_parameter",
        }
    }

    /// 413 tells mixpanel-browser to halve its batch and retry; every other client error is final.
    pub fn status(&self) -> u16 {
        match self {
            Self::BodyTooLarge { .. }
            | Self::DecompressedTooLarge { .. }
            | Self::TooManyEvents { .. } => 413,
            Self::UnsupportedEncoding { .. } => 415,
            Self::Empty
            | Self::InvalidGzip { .. }
            | Self::InvalidBase64 { .. }
            | Self::InvalidUtf8 { .. }
            | Self::InvalidJson { .. }
            | Self::NotEvents { .. }
            | Self::EmptyBatch
            | Self::InvalidParameter { .. } => 400,
        }
    }

    #[cold]
    pub(crate) fn invalid_json(offset: usize, detail: &'static str) -> Self {
        Self::InvalidJson { offset, detail }
    }

    #[cold]
    pub(crate) fn invalid_base64(detail: String) -> Self {
        Self::InvalidBase64 { detail }
    }

    #[cold]
    pub(crate) fn nested_gzip() -> Self {
        Self::InvalidGzip {
            detail: "gzip inside gzip is not accepted".into(),
        }
    }

    #[cold]
    pub(crate) fn invalid_gzip(detail: &std::io::Error) -> Self {
        Self::InvalidGzip {
            detail: detail.to_string(),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str(
                "no data: send the events in the `data` parameter (query string or form body) or as a JSON body",
            ),
            Self::BodyTooLarge { size, max } => {
                write!(f, "the request is {size} bytes; at most {max} bytes are accepted")
            }
            Self::DecompressedTooLarge { max } => {
                write!(f, "the gzip data inflates to more than {max} bytes, the request limit")
            }
            Self::InvalidGzip { detail } => write!(f, "the body is not valid gzip: {detail}"),
            Self::UnsupportedEncoding { encoding } => write!(
                f,
                "Content-Encoding {encoding:?} is not supported; send gzip or no encoding"
            ),
            Self::InvalidBase64 { detail } => {
                write!(f, "data is neither JSON nor valid base64: {detail}")
            }
            Self::InvalidUtf8 { offset } => {
                write!(f, "data is not valid UTF-8 (byte {offset} of the decoded payload)")
            }
            Self::InvalidJson { offset, detail } => {
                write!(f, "data is not valid JSON: {detail} at byte {offset} of the decoded payload")
            }
            Self::NotEvents { found } => write!(
                f,
                "data must hold an event object or an array of event objects, not {found}"
            ),
            Self::EmptyBatch => f.write_str("data is an empty array: a batch needs at least one event"),
            Self::TooManyEvents { max } => {
                write!(f, "more than {max} events in one request; send smaller batches")
            }
            Self::InvalidParameter { name, detail } => write!(f, "parameter `{name}` {detail}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// Why one event of a request was rejected. The other events of the request are unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventErrorKind {
    NotAnObject,
    EventMissing,
    EventInvalid,
    EventTooLong,
    PropertiesInvalid,
    TokenMissing,
    TokenInvalid,
    UnknownToken,
    TimeInvalid,
    TimeTooOld,
    DistinctIdInvalid,
    DistinctIdTooLong,
    InsertIdInvalid,
    IpInvalid,
    FunnelInvalid,
    StepInvalid,
    GoalInvalid,
    TooManyProperties,
    TooManyKeys,
    TooDeep,
    ArrayTooLong,
    DuplicateProperty,
    NumberOutOfRange,
    EventTooLarge,
}

impl EventErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAnObject => "not_an_object",
            Self::EventMissing => "event_missing",
            Self::EventInvalid => "event_invalid",
            Self::EventTooLong => "event_too_long",
            Self::PropertiesInvalid => "properties_invalid",
            Self::TokenMissing => "token_missing",
            Self::TokenInvalid => "token_invalid",
            Self::UnknownToken => "unknown_token",
            Self::TimeInvalid => "time_invalid",
            Self::TimeTooOld => "time_too_old",
            Self::DistinctIdInvalid => "distinct_id_invalid",
            Self::DistinctIdTooLong => "distinct_id_too_long",
            Self::InsertIdInvalid => "insert_id_invalid",
            Self::IpInvalid => "ip_invalid",
            Self::FunnelInvalid => "funnel_invalid",
            Self::StepInvalid => "step_invalid",
            Self::GoalInvalid => "goal_invalid",
            Self::TooManyProperties => "too_many_properties",
            Self::TooManyKeys => "too_many_keys",
            Self::TooDeep => "too_deep",
            Self::ArrayTooLong => "array_too_long",
            Self::DuplicateProperty => "duplicate_property",
            Self::NumberOutOfRange => "number_out_of_range",
            Self::EventTooLarge => "event_too_large",
        }
    }
}

impl fmt::Display for EventErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected event: where it stood in the request, which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    pub index: usize,
    /// Dotted path of the offending field (`properties.time`); empty when the event itself is at fault.
    pub field: String,
    pub kind: EventErrorKind,
    pub message: String,
}

impl EventError {
    #[cold]
    pub(crate) fn new(
        index: usize,
        kind: EventErrorKind,
        field: impl Into<String>,
        message: String,
    ) -> Self {
        Self {
            index,
            field: field.into(),
            kind,
            message,
        }
    }
}
