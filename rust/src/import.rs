//! `/import`: historical events, as Mixpanel's import API takes them. The gateway authenticates the
//! request (its project secret or a service account), so the project is the request's: an event may
//! leave `properties.token` out, and one that gives it must give that project's. Besides /track's
//! transports the body may be NDJSON (objects one a line). The time rules are the `Options` the caller
//! passes (the gateway's: no age limit, an hour ahead), with a floor: nothing before 1971. With
//! `strict=1` every event also needs `time`, `distinct_id` (not a placeholder) and `$insert_id`. A
//! `$merge` event needs `$distinct_ids`, exactly two ids.
//!
//! An event is counted (event counts, funnels) on its own day when that day's counters can still be
//! kept: at most `counter_retention_days` days before the receive time's day. An older one is stored in
//! its stream but not counted: counters made for it would outlive the retention it is meant to bound.

use std::convert::Infallible;

use crate::errors::{EventError, EventErrorKind as K, RequestError};
use crate::event::{char_count, DistinctId, Normalised, Sink, Value};
use crate::json::{write_str, Scalar, Scanner, StrToken};
use crate::payload::{decode_text, scan_events, Events};
use crate::{Context, Params};

/// The earliest time /import takes, 1971-01-01T00:00:00Z: an earlier one is a clock's zero, or
/// seconds read as milliseconds, not history.
pub const EARLIEST_TIME: f64 = 31_536_000.0;

const DAY: f64 = 86_400.0;

/// The event name of an identity merge, which names its two ids in `$distinct_ids`.
const MERGE: &[u8] = b"$merge";
const MERGE_IDS: &[u8] = b"$distinct_ids";

/// distinct_ids that stand for no one (Mixpanel refuses them as invalid in strict mode), compared
/// without regard to case or surrounding white space.
pub const PLACEHOLDER_IDS: [&str; 18] = [
    "",
    "0",
    "-1",
    "[]",
    "{}",
    "null",
    "nil",
    "<nil>",
    "none",
    "undefined",
    "unknown",
    "anon",
    "anonymous",
    "n/a",
    "na",
    "true",
    "false",
    "00000000-0000-0000-0000-000000000000",
];

/// The project a request is authenticated for, and how long its counters are kept.
#[derive(Debug, Clone, Copy)]
pub struct Project<'a> {
    pub token: &'a str,
    /// The gateway's `--counter-retention-days`: events of older days are stored, not counted.
    pub counter_retention_days: u32,
}

/// The events of an /import payload (one object, an array, or NDJSON) for `project`.
pub fn decode_events(
    json: &[u8],
    ctx: &Context<'_>,
    params: &Params,
    project: &Project<'_>,
) -> Result<Events, RequestError> {
    let mut quoted = Vec::with_capacity(project.token.len() + 2);
    write_str(&mut quoted, project.token);
    let token = StrToken {
        raw: &quoted,
        // Any escape at all is what matters: the token is read unescaped only then.
        escapes: usize::from(quoted.len() != project.token.len() + 2),
    };
    let today = (ctx.now / DAY).floor();
    let counted_from = (today - f64::from(project.counter_retention_days)) * DAY;
    decode_text(json, |text| {
        let sink = Imported {
            events: Events::new(ctx.options),
            strict: params.strict,
            counted_from,
            max_id_chars: ctx.options.max_distinct_id_chars,
        };
        scan_events(text, ctx, params.use_ip, Some(token), true, sink).map(|s| s.events)
    })
}

/// The gateway's sink (`Events`) behind /import's own rules.
struct Imported {
    events: Events,
    strict: bool,
    /// Events from this time on are counted; earlier ones only stored.
    counted_from: f64,
    max_id_chars: usize,
}

impl Sink for Imported {
    fn event(&mut self, event: &Normalised<'_>) {
        let index = self.events.total;
        if let Err(error) = self.check(event, index) {
            self.events.error(error);
        } else if event.time >= self.counted_from {
            self.events.event(event);
        } else {
            self.events.total += 1;
            let partitions = self.events.partitions;
            self.events
                .batches
                .push_uncounted(&event.valid(), event.json, partitions);
        }
    }

    fn error(&mut self, error: EventError) {
        self.events.error(error);
    }

    fn finish(&mut self) {
        self.events.finish();
    }
}

impl Imported {
    /// /import's rules beyond /track's, in the order their errors are reported.
    fn check(&self, event: &Normalised<'_>, index: usize) -> Result<(), EventError> {
        let reject = |kind: K, field: &str, message: String| {
            let mut error = EventError::new(index, kind, field, message);
            error.insert_id = event.insert_id.map(|id| id.text().into_owned());
            error
        };
        if event.time < EARLIEST_TIME {
            return Err(reject(
                K::TimeTooOld,
                "properties.time",
                "properties.time is before 1971: /import takes events from 1971-01-01 on".into(),
            ));
        }
        let merge = *event.name.bytes() == *MERGE;
        if self.strict {
            if !event.time_sent() {
                return Err(reject(
                    K::TimeMissing,
                    "properties.time",
                    "properties.time is missing: strict mode needs every event's time".into(),
                ));
            }
            // A merge names its users in `$distinct_ids` instead.
            if !merge {
                let Some(id) = sent_distinct_id(event.distinct_id) else {
                    return Err(reject(
                        K::DistinctIdMissing,
                        "properties.distinct_id",
                        "properties.distinct_id is missing: strict mode needs every event's user"
                            .into(),
                    ));
                };
                if is_placeholder(&id) {
                    return Err(reject(
                        K::DistinctIdInvalid,
                        "properties.distinct_id",
                        format!("properties.distinct_id {id:?} is a placeholder, not a user's id"),
                    ));
                }
            }
            if event.insert_id.is_none() {
                return Err(reject(
                    K::InsertIdMissing,
                    "properties.$insert_id",
                    "properties.$insert_id is missing: strict mode needs every event's $insert_id"
                        .into(),
                ));
            }
        }
        if merge && !self.merge_ids_valid(event) {
            let also = if self.strict {
                ", neither a placeholder"
            } else {
                ""
            };
            return Err(reject(
                K::MergeInvalid,
                "properties.$distinct_ids",
                format!(
                    "a $merge event needs properties.$distinct_ids, an array of exactly two distinct_ids \
                     (non-empty strings or numbers of at most {} characters{also})",
                    self.max_id_chars
                ),
            ));
        }
        Ok(())
    }

    /// Whether the event's `$distinct_ids` is an array of two ids, each as a distinct_id must be.
    fn merge_ids_valid(&self, event: &Normalised<'_>) -> bool {
        let mut sent = None;
        let Ok(()) = event.try_for_each_property(|entry| -> Result<(), Infallible> {
            if entry.key == MERGE_IDS {
                sent = Some(entry.value);
            }
            Ok(())
        });
        let Some(Value::Json(array)) = sent else {
            return false;
        };
        let mut scanner = Scanner::new(array);
        if scanner.peek() != Some(b'[') || scanner.open(b'[', b']') {
            return false;
        }
        let mut ids = 0;
        loop {
            let id = match scanner.scalar() {
                Ok(Scalar::String(s)) => s.text().into_owned(),
                Ok(Scalar::Number(n)) => String::from_utf8_lossy(n).into_owned(),
                _ => return false,
            };
            let chars = char_count(id.as_bytes());
            if chars == 0 || chars > self.max_id_chars || (self.strict && is_placeholder(&id)) {
                return false;
            }
            ids += 1;
            match scanner.next_member(b']') {
                Ok(true) => {}
                Ok(false) => return ids == 2,
                Err(_) => return false,
            }
        }
    }
}

/// The distinct_id the event sent (not the caller's address that `ip=1` gives one without), as text.
fn sent_distinct_id(id: DistinctId<'_>) -> Option<String> {
    match id {
        DistinctId::String(_) | DistinctId::Number(_) => {
            id.text().map(std::borrow::Cow::into_owned)
        }
        DistinctId::None | DistinctId::Peer(_) => None,
    }
}

/// Whether a distinct_id is one of PLACEHOLDER_IDS.
pub fn is_placeholder(id: &str) -> bool {
    let id = id.trim();
    PLACEHOLDER_IDS
        .iter()
        .any(|placeholder| id.eq_ignore_ascii_case(placeholder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_whatever_their_case_and_spacing() {
        for id in ["anon", " NULL ", "Undefined", "-1", "[]", "", "  "] {
            assert!(is_placeholder(id), "{id:?}");
        }
        for id in ["anon-123", "0.0", "user-1", "nulls"] {
            assert!(!is_placeholder(id), "{id:?}");
        }
    }

    #[test]
    fn the_earliest_time_is_1971() {
        assert_eq!(
            crate::resp::utc_date((EARLIEST_TIME / DAY) as i64),
            "1971-01-01"
        );
    }
}
