//! Every way a request or an event can fail, with a stable snake_case kind and a message for people.
//!
//! Constructors are `#[cold]`: the decode path is written for the valid case, and keeping message
//! formatting out of line keeps it lean.

use std::fmt;

/// The request as a whole cannot be used. Its kind (one exhaustive match) gives its name and HTTP status.
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
    /// Only from `trackgate.decode`, which takes a payload whole or not at all.
    InvalidEvents {
        invalid: usize,
        total: usize,
        /// The first invalid event's index and message.
        index: usize,
        message: String,
    },
}

/// Declares an enum of error kinds with the stable snake_case name of each, and `ALL`, every variant in
/// the order declared: tables made from `ALL` (statuses, the names Python exports) cannot miss one.
macro_rules! kinds {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $text:literal,)* }
    ) => {
        $(#[$meta])*
        pub enum $name { $($(#[$variant_meta])* $variant,)* }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

kinds! {
    /// What made a request unusable as a whole: a `RequestError` without its details.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum RequestErrorKind {
        Empty = "empty",
        BodyTooLarge = "body_too_large",
        DecompressedTooLarge = "decompressed_too_large",
        InvalidGzip = "invalid_gzip",
        UnsupportedEncoding = "unsupported_encoding",
        InvalidBase64 = "invalid_base64",
        InvalidUtf8 = "invalid_utf8",
        InvalidJson = "invalid_json",
        NotEvents = "not_events",
        EmptyBatch = "empty_batch",
        TooManyEvents = "too_many_events",
        InvalidParameter = "invalid_parameter",
        /// Some events are invalid: `trackgate.decode` refuses the payload (a gateway stores the others).
        InvalidEvents = "invalid_events",
    }
}

impl RequestErrorKind {
    /// 413 tells mixpanel-browser to halve its batch and retry; every other client error is final.
    pub fn status(self) -> u16 {
        match self {
            Self::BodyTooLarge | Self::DecompressedTooLarge | Self::TooManyEvents => 413,
            Self::UnsupportedEncoding => 415,
            Self::Empty
            | Self::InvalidGzip
            | Self::InvalidBase64
            | Self::InvalidUtf8
            | Self::InvalidJson
            | Self::NotEvents
            | Self::EmptyBatch
            | Self::InvalidParameter
            | Self::InvalidEvents => 400,
        }
    }
}

impl RequestError {
    pub fn error_kind(&self) -> RequestErrorKind {
        use RequestErrorKind as K;
        match self {
            Self::Empty => K::Empty,
            Self::BodyTooLarge { .. } => K::BodyTooLarge,
            Self::DecompressedTooLarge { .. } => K::DecompressedTooLarge,
            Self::InvalidGzip { .. } => K::InvalidGzip,
            Self::UnsupportedEncoding { .. } => K::UnsupportedEncoding,
            Self::InvalidBase64 { .. } => K::InvalidBase64,
            Self::InvalidUtf8 { .. } => K::InvalidUtf8,
            Self::InvalidJson { .. } => K::InvalidJson,
            Self::NotEvents { .. } => K::NotEvents,
            Self::EmptyBatch => K::EmptyBatch,
            Self::TooManyEvents { .. } => K::TooManyEvents,
            Self::InvalidParameter { .. } => K::InvalidParameter,
            Self::InvalidEvents { .. } => K::InvalidEvents,
        }
    }

    /// The stable snake_case name of its kind.
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }

    pub fn status(&self) -> u16 {
        self.error_kind().status()
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
            Self::InvalidEvents {
                invalid,
                total,
                index,
                message,
            } => write!(
                f,
                "{invalid} of {total} events are invalid; the first, at index {index}: {message}"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

kinds! {
    /// Why one event (or profile update) of a request was rejected. The others of the request are
    /// unaffected.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum EventErrorKind {
        NotAnObject = "not_an_object",
        EventMissing = "event_missing",
        EventInvalid = "event_invalid",
        EventTooLong = "event_too_long",
        PropertiesInvalid = "properties_invalid",
        TokenMissing = "token_missing",
        TokenInvalid = "token_invalid",
        UnknownToken = "unknown_token",
        TimeInvalid = "time_invalid",
        TimeTooOld = "time_too_old",
        DistinctIdInvalid = "distinct_id_invalid",
        DistinctIdTooLong = "distinct_id_too_long",
        InsertIdInvalid = "insert_id_invalid",
        IpInvalid = "ip_invalid",
        FunnelInvalid = "funnel_invalid",
        StepInvalid = "step_invalid",
        GoalInvalid = "goal_invalid",
        TooManyProperties = "too_many_properties",
        TooManyKeys = "too_many_keys",
        TooDeep = "too_deep",
        ArrayTooLong = "array_too_long",
        DuplicateProperty = "duplicate_property",
        NumberOutOfRange = "number_out_of_range",
        EventTooLarge = "event_too_large",
        // Profile updates (/engage, /groups) only.
        DistinctIdMissing = "distinct_id_missing",
        GroupInvalid = "group_invalid",
        OperationMissing = "operation_missing",
        TooManyOperations = "too_many_operations",
        OperationInvalid = "operation_invalid",
        FlagInvalid = "flag_invalid",
        // /import only: what `strict=1` requires, and `$merge` events.
        TimeMissing = "time_missing",
        InsertIdMissing = "insert_id_missing",
        MergeInvalid = "merge_invalid",
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
    /// The event's `$insert_id`, when it sent a valid one: what /import's strict answer names a failed
    /// record by.
    pub insert_id: Option<String>,
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
            insert_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn snake_case(name: &str) -> bool {
        !name.is_empty()
            && name.split('_').all(|word| {
                !word.is_empty()
                    && word
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    }

    #[test]
    fn every_request_error_kind_has_a_client_error_status_and_its_own_name() {
        let names: HashSet<_> = RequestErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), RequestErrorKind::ALL.len());
        for kind in RequestErrorKind::ALL {
            assert!(snake_case(kind.as_str()), "{kind}");
            assert!(matches!(kind.status(), 400 | 413 | 415), "{kind}");
        }
        assert_eq!(RequestErrorKind::TooManyEvents.status(), 413);
        assert_eq!(RequestErrorKind::UnsupportedEncoding.status(), 415);
    }

    #[test]
    fn a_request_error_has_the_name_and_status_of_its_kind() {
        let error = RequestError::TooManyEvents { max: 2 };
        assert_eq!(error.error_kind(), RequestErrorKind::TooManyEvents);
        assert_eq!((error.kind(), error.status()), ("too_many_events", 413));
    }

    #[test]
    fn every_event_error_kind_has_its_own_name() {
        let names: HashSet<_> = EventErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventErrorKind::ALL.len());
        assert!(names.iter().all(|name| snake_case(name)));
        let request_names: HashSet<_> = RequestErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert!(names.is_disjoint(&request_names));
    }
}
