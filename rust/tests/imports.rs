//! `/import`: the project the gateway authenticated, NDJSON beside /track's payloads, the time floor,
//! `strict=1`'s rules, `$merge`, the `$insert_id` of a failed event, and the days stored but not
//! counted.

mod common;

use common::{check_invariants, events, parse_bulks, Setup, NOW};
use trackgate_native::import::{Project, EARLIEST_TIME};
use trackgate_native::{
    decode_import_request, Decoded, EventErrorKind as K, Options, RequestError,
};

const NDJSON: Option<&str> = Some("application/x-ndjson");
const DAY: f64 = 86_400.0;
const PROJECT: Project<'static> = Project {
    token: "tok",
    counter_retention_days: 400,
};

/// /import's rules as the gateway sets them: no age limit.
fn setup() -> Setup {
    Setup::with(Options {
        max_age: f64::INFINITY,
        max_future_skew: 3600.0,
        ..Options::default()
    })
}

fn decode(query: &str, body: &str) -> Result<Decoded, RequestError> {
    decode_with(&PROJECT, query, body)
}

fn decode_with(project: &Project<'_>, query: &str, body: &str) -> Result<Decoded, RequestError> {
    decode_import_request(
        query.as_bytes(),
        body.as_bytes(),
        NDJSON,
        None,
        &setup().ctx(),
        project,
    )
    .inspect(check_invariants)
}

/// An event `days` days before NOW, its properties `rest` after distinct_id and time.
fn old(days: f64, rest: &str) -> String {
    let time = NOW - days * DAY;
    let sep = if rest.is_empty() { "" } else { "," };
    format!(r#"{{"event":"e","properties":{{"distinct_id":"u1","time":{time}{sep}{rest}}}}}"#)
}

fn kinds(decoded: &Decoded) -> Vec<(usize, K, &str)> {
    let errors = decoded.errors.iter();
    errors
        .map(|e| (e.index, e.kind, e.field.as_str()))
        .collect()
}

#[test]
fn the_project_is_the_requests_a_token_sent_must_be_its() {
    let body = [
        old(1.0, ""),
        old(1.0, r#""token":"tok""#),
        old(1.0, r#""token":"other""#),
    ]
    .join("\n");
    let decoded = decode("", &body).unwrap();
    assert_eq!(kinds(&decoded), [(2, K::TokenInvalid, "properties.token")]);
    let stored = events(&decoded);
    assert!(stored.iter().all(|e| e.contains(r#""token":"tok""#)));
    assert!(!stored[0].contains(r#""properties":{"token""#));
    // A token written with escapes is the same token.
    let escaped = old(1.0, r#""token":"t\u006fk""#);
    assert!(decode("", &escaped).unwrap().errors.is_empty());
}

#[test]
fn ndjson_an_array_and_one_object_are_payloads() {
    let lines = format!(
        "\n{}\n\n{}  \r\n{}",
        old(1.0, ""),
        old(2.0, ""),
        old(3.0, "")
    );
    assert_eq!(decode("", &lines).unwrap().accepted(), 3);
    let array = format!("[{},{}]", old(1.0, ""), old(2.0, ""));
    assert_eq!(decode("", &array).unwrap().accepted(), 2);
    assert_eq!(decode("", &old(1.0, "")).unwrap().accepted(), 1);
    // A line that is not an object is an invalid event; one that is not JSON, an invalid request.
    let mixed = format!("{}\n5\n{}", old(1.0, ""), old(2.0, ""));
    assert_eq!(
        kinds(&decode("", &mixed).unwrap()),
        [(1, K::NotAnObject, "")]
    );
    let broken = format!("{}\n{{\"event\":", old(1.0, ""));
    assert_eq!(decode("", &broken).unwrap_err().kind(), "invalid_json");
    // At most max_events, NDJSON as any payload.
    let many = vec![old(1.0, ""); 2001].join("\n");
    assert_eq!(
        decode("", &many).unwrap_err(),
        RequestError::TooManyEvents { max: 2000 }
    );
    assert_eq!(
        decode("", &many[..many.len() - old(1.0, "").len() - 1])
            .unwrap()
            .accepted(),
        2000
    );
}

#[test]
fn no_age_limit_but_nothing_before_1971_and_at_most_an_hour_ahead() {
    let at = |time: f64| format!(r#"{{"event":"e","properties":{{"time":{time}}}}}"#);
    let body = [
        at(EARLIEST_TIME),
        at(EARLIEST_TIME - 1.0),
        at(0.0),
        at(NOW + 3600.0),
        at(NOW + 3601.0),
    ]
    .join("\n");
    let decoded = decode("", &body).unwrap();
    assert_eq!(
        kinds(&decoded),
        [
            (1, K::TimeTooOld, "properties.time"),
            (2, K::TimeTooOld, "properties.time")
        ]
    );
    let stored = events(&decoded);
    assert!(stored[0].contains(r#""time":31536000,"#));
    assert!(stored[1].contains(&format!(r#""time":{},"#, NOW + 3600.0)));
    assert!(stored[2].contains(r#""time":1700000000.5,"#));
}

#[test]
fn strict_needs_time_a_real_distinct_id_and_an_insert_id() {
    let full = r#""$insert_id":"id-1""#;
    let body = [
        old(1.0, full),
        r#"{"event":"e","properties":{"distinct_id":"u1","$insert_id":"id-2"}}"#.to_owned(),
        r#"{"event":"e","properties":{"time":1700000000,"$insert_id":"id-3"}}"#.to_owned(),
        old(1.0, ""),
        old(1.0, r#""$insert_id":"id-5""#).replace(r#""u1""#, r#"" Undefined ""#),
        old(1.0, r#""$insert_id":"id-6""#).replace(r#""u1""#, "-1"),
    ]
    .join("\n");
    let strict = decode("strict=1", &body).unwrap();
    assert_eq!(
        kinds(&strict),
        [
            (1, K::TimeMissing, "properties.time"),
            (2, K::DistinctIdMissing, "properties.distinct_id"),
            (3, K::InsertIdMissing, "properties.$insert_id"),
            (4, K::DistinctIdInvalid, "properties.distinct_id"),
            (5, K::DistinctIdInvalid, "properties.distinct_id"),
        ]
    );
    assert!(strict.params.strict);
    // Each failed event names its $insert_id when it sent a valid one.
    let ids: Vec<_> = strict
        .errors
        .iter()
        .map(|e| e.insert_id.as_deref())
        .collect();
    assert_eq!(
        ids,
        [Some("id-2"), Some("id-3"), None, Some("id-5"), Some("id-6")]
    );
    // Without strict each of them is an event.
    let lenient = decode("", &body).unwrap();
    assert_eq!(lenient.accepted(), 6);
    assert!(!lenient.params.strict);
}

#[test]
fn an_error_of_the_common_rules_names_the_insert_id_too() {
    let decoded = decode("", &old(1.0, r#""$insert_id":"id-9","ip":5"#)).unwrap();
    let [error] = &decoded.errors[..] else {
        panic!("one error: {:?}", decoded.errors)
    };
    assert_eq!(
        (error.kind, error.insert_id.as_deref()),
        (K::IpInvalid, Some("id-9"))
    );
    let invalid_id = decode("", &old(1.0, r#""$insert_id":"not valid!","ip":5"#)).unwrap();
    assert_eq!(invalid_id.errors[0].insert_id, None);
}

#[test]
fn a_merge_names_exactly_two_ids() {
    let merge =
        |ids: &str| format!(r#"{{"event":"$merge","properties":{{"$distinct_ids":{ids}}}}}"#);
    let good = [r#"["a","b"]"#, r#"["a", 2]"#, r#"[ "anon" , "b" ]"#];
    for ids in good {
        let decoded = decode("", &merge(ids)).unwrap();
        assert_eq!(decoded.accepted(), 1, "{ids}");
    }
    let bad = [
        r#"["a"]"#,
        r#"["a","b","c"]"#,
        "[]",
        r#""a""#,
        r#"["a",""]"#,
        r#"["a",null]"#,
        r#"["a",["b"]]"#,
        "null",
    ];
    for ids in bad {
        let decoded = decode("", &merge(ids)).unwrap();
        assert_eq!(
            kinds(&decoded),
            [(0, K::MergeInvalid, "properties.$distinct_ids")],
            "{ids}"
        );
    }
    assert_eq!(
        decode("", &merge("[]").replace("\"$distinct_ids\":[]", "\"x\":1"))
            .unwrap()
            .errors[0]
            .kind,
        K::MergeInvalid
    );
    // Strict: no distinct_id needed (the ids are in $distinct_ids), no placeholder among them.
    let strict = |ids: &str| {
        format!(
            r#"{{"event":"$merge","properties":{{"time":1700000000,"$insert_id":"m","$distinct_ids":{ids}}}}}"#
        )
    };
    assert!(decode("strict=1", &strict(r#"["a","b"]"#))
        .unwrap()
        .errors
        .is_empty());
    let placeholder = decode("strict=1", &strict(r#"["anon","b"]"#)).unwrap();
    assert_eq!(placeholder.errors[0].kind, K::MergeInvalid);
}

#[test]
fn days_older_than_the_retention_are_stored_not_counted() {
    let project = Project {
        token: "tok",
        counter_retention_days: 30,
    };
    let today = (NOW / DAY).floor() * DAY;
    let at = |time: f64, id: &str| {
        format!(
            r#"{{"event":"e","properties":{{"distinct_id":"u1","time":{time},"$insert_id":"{id}"}}}}"#
        )
    };
    let body = [
        at(today - 30.0 * DAY, "kept"),
        at(today - 30.0 * DAY - 1.0, "uncounted"),
        at(today - 3000.0 * DAY, "ancient"),
    ]
    .join("\n");
    let decoded = decode_with(&project, "", &body).unwrap();
    assert_eq!(decoded.accepted(), 3);
    let [batch] = &decoded.batches.batches[..] else {
        panic!("one partition: the user's")
    };
    // Each event packed (4 arguments and its dedup hash, which applies to every event), in time order;
    // the day of each, "" for the two stored but not counted.
    assert_eq!((batch.count, batch.args), (3, 15));
    let packed = parse_bulks(&batch.packed);
    let days: Vec<&[u8]> = packed.chunks(5).map(|event| &event[0][..]).collect();
    assert_eq!(days, [&b""[..], b"", b"2023-10-15"]);
    let hashes: Vec<usize> = packed.chunks(5).map(|event| event[4].len()).collect();
    assert_eq!(hashes, [trackgate_native::resp::DEDUP_HASH_BYTES; 3]);
    assert_eq!(events(&decoded).len(), 3);
}
