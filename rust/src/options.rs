//! The decoder's rules, each written once: `Options`, its `Default`, and (in `py/options.rs`) the Python
//! constructor, its checks and the table of rules that the gateway's settings are made from.

/// Hands the rules to `$then`, a macro: each rule written once, with its type, its default, its bounds
/// (inclusive) and the help text that `trackgate serve --help` shows. `Options` and its `Default` are
/// made from it here; the Python binding makes its constructor, its checks and its table from it too.
macro_rules! with_rules {
    ($then:ident) => {
        $then! {
            /// Older events are rejected. The original API's rule is 3 hours; Mixpanel now takes 5 days.
            max_age: f64 = 10_800.0, 0.0..=f64::INFINITY,
                "seconds an event's time may lie in the past";
            /// Events further ahead are given the receive time.
            max_future_skew: f64 = 300.0, 0.0..=f64::INFINITY,
                "seconds an event's time may lie ahead before it is set to now";
            max_event_name_chars: usize = 255, 1..=usize::MAX,
                "characters in an event name";
            max_distinct_id_chars: usize = 200, 1..=usize::MAX,
                "characters in a distinct_id";
            max_properties: usize = 255, 1..=usize::MAX,
                "properties of an event; keys of a nested object";
            /// Containers nested inside one property value.
            max_depth: usize = 3, 0..=crate::json::MAX_DEPTH_LIMIT,
                "nesting levels inside a property";
            max_array_len: usize = 255, 0..=usize::MAX,
                "elements of an array";
            max_event_bytes: usize = 1_000_000, 1..=usize::MAX,
                "bytes of an event's normalised JSON";
            /// The query string and the body, also after decompression.
            max_request_bytes: usize = 10_000_000, 1..=usize::MAX,
                "bytes of a request, inflated";
            max_events: usize = 2000, 1..=usize::MAX,
                "events in one request";
            partitions: u32 = 4, 1..=65_536,
                "streams per project; a user's events always share one";
            /// An event whose (name, distinct_id, time in whole seconds, `$insert_id`) was stored this
            /// recently is not stored again: the decoder packs each event's dedup hash when it is on.
            dedup_window: u32 = 600, 0..=604_800,
                "seconds within which an event sent again is stored once (0: off)";
        }
    };
}

macro_rules! declare_options {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident: $type:ty = $default:tt, $min:literal..=$max:expr, $help:literal;
    )*) => {
        /// The rules. Every limit is inclusive: a value equal to it is accepted.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Options {
            $(
                #[doc = concat!(" ", $help, ".")]
                $(#[doc = $doc])*
                pub $name: $type,
            )*
        }

        impl Default for Options {
            fn default() -> Self {
                Self { $($name: $default,)* }
            }
        }
    };
}

with_rules!(declare_options);
