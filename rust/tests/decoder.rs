//! The per-event rules of the README table, each limit at the limit and one over, the time rules, the
//! `ip` parameter, mp_funnel, mp_ keys, duplicates and the exact normalised JSON.

mod common;

use common::{event, named_event, normalised, Setup, NOW, NOW_TEXT, PEER};
use trackgate_native::{EventErrorKind as K, Options, TokenSet};

fn props(n: usize) -> String {
    (0..n)
        .map(|i| format!("\"p{i}\":{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn object_of(n: usize) -> String {
    let keys: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
    format!("{{{}}}", keys.join(","))
}

fn array_of(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!("[{}]", items.join(","))
}

fn with_options(f: impl FnOnce(&mut Options)) -> Setup {
    let mut options = Options::default();
    f(&mut options);
    Setup::with(options)
}

// ---- the event and its name ----

#[test]
fn minimal_event_is_accepted_and_normalised() {
    assert_eq!(Setup::default().accept(event("")), normalised(""));
}

#[test]
fn event_that_is_not_an_object() {
    let s = Setup::default();
    for bad in ["[1]", "[\"e\"]", "[null]", "[[]]"] {
        s.assert_rejected(bad, K::NotAnObject, "");
    }
}

#[test]
fn event_name_missing() {
    let s = Setup::default();
    s.assert_rejected(
        r#"{"properties":{"token":"tok"}}"#,
        K::EventMissing,
        "event",
    );
    s.assert_rejected("{}", K::EventMissing, "event");
}

#[test]
fn event_name_not_a_string_or_empty() {
    let s = Setup::default();
    for name in ["5", "null", "true", "{}", "[\"e\"]", "{\"a\":[1]}", "\"\""] {
        s.assert_rejected(
            format!(r#"{{"event":{name},"properties":{{"token":"tok"}}}}"#),
            K::EventInvalid,
            "event",
        );
    }
}

#[test]
fn event_name_length_counts_characters_at_and_over_the_limit() {
    let s = Setup::default();
    let at = "é".repeat(255);
    assert_eq!(at.len(), 510, "two bytes a character");
    let json = s.accept(named_event(&at, ""));
    assert!(json.starts_with(&format!("{{\"event\":\"{at}\",")));
    s.assert_rejected(named_event(&"é".repeat(256), ""), K::EventTooLong, "event");
    // An escape is one character too.
    s.accept(named_event(&"\\u00e9".repeat(255), ""));
    s.assert_rejected(
        named_event(&"\\u00e9".repeat(256), ""),
        K::EventTooLong,
        "event",
    );
}

#[test]
fn event_name_limit_is_configurable() {
    let s = with_options(|o| o.max_event_name_chars = 3);
    s.accept(named_event("aé\\u00e9", ""));
    s.assert_rejected(named_event("abcd", ""), K::EventTooLong, "event");
}

// ---- properties and token ----

#[test]
fn properties_not_an_object() {
    let s = Setup::default();
    for props in [
        "[]",
        "[{\"token\":\"tok\"}]",
        "\"tok\"",
        "1",
        "null",
        "true",
    ] {
        s.assert_rejected(
            format!(r#"{{"event":"e","properties":{props}}}"#),
            K::PropertiesInvalid,
            "properties",
        );
    }
}

#[test]
fn missing_properties_mean_an_empty_object_so_no_token() {
    let s = Setup::default();
    s.assert_rejected(r#"{"event":"e"}"#, K::TokenMissing, "properties.token");
    s.assert_rejected(
        r#"{"event":"e","properties":{}}"#,
        K::TokenMissing,
        "properties.token",
    );
    s.assert_rejected(
        r#"{"event":"e","properties":{"distinct_id":"u"}}"#,
        K::TokenMissing,
        "properties.token",
    );
}

#[test]
fn token_must_be_a_non_empty_string() {
    let s = Setup::default();
    for token in ["\"\"", "5", "null", "false", "{}", "[\"tok\"]"] {
        s.assert_rejected(
            format!(r#"{{"event":"e","properties":{{"token":{token}}}}}"#),
            K::TokenInvalid,
            "properties.token",
        );
    }
}

#[test]
fn unknown_token_with_a_token_set() {
    let s = Setup {
        tokens: Some(TokenSet::from(["known".to_owned()])),
        ..Setup::default()
    };
    s.assert_rejected(
        r#"{"event":"e","properties":{"token":"tok"}}"#,
        K::UnknownToken,
        "properties.token",
    );
    s.accept(r#"{"event":"e","properties":{"token":"known"}}"#);
    // Compared by its text, not by how it was escaped.
    s.accept(r#"{"event":"e","properties":{"token":"kn\u006fwn"}}"#);
    // Without a set any token goes.
    Setup::default().accept(r#"{"event":"e","properties":{"token":"anything"}}"#);
}

// ---- time ----

fn timed(time: &str) -> String {
    event(&format!("\"time\":{time}"))
}

/// The normalised `time` of an event sent with `time`, checked in both places it appears.
fn normalised_time(s: &Setup, time: &str) -> String {
    let json = s.accept(timed(time));
    let top = json
        .strip_prefix("{\"event\":\"e\",\"time\":")
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_owned();
    assert!(
        json.ends_with(&format!(
            ",\"properties\":{{\"token\":\"tok\",\"time\":{top}}}}}"
        )),
        "{json}"
    );
    top
}

#[test]
fn time_in_seconds_int_and_float() {
    let s = Setup::default();
    assert_eq!(normalised_time(&s, "1699999000"), "1699999000");
    assert_eq!(normalised_time(&s, "1699999000.25"), "1699999000.25");
    assert_eq!(normalised_time(&s, "1699999000.0"), "1699999000");
    assert_eq!(normalised_time(&s, "1.699999e9"), "1699999000");
}

#[test]
fn time_in_milliseconds_is_divided_by_1000() {
    let s = Setup::default();
    assert_eq!(normalised_time(&s, "1699999000123"), "1699999000.123");
    assert_eq!(normalised_time(&s, "1699999000000"), "1699999000");
    assert_eq!(normalised_time(&s, "1699999000123.5"), "1699999000.1235");
}

#[test]
fn milliseconds_start_at_1e11() {
    // Just under 1e11 is seconds (the year 5138): far in the future, so the receive time.
    let s = Setup::default();
    assert_eq!(normalised_time(&s, "99999999999"), NOW_TEXT);
    // 1e11 itself is milliseconds: 1e8 seconds, 1973, too old.
    s.assert_rejected(timed("100000000000"), K::TimeTooOld, "properties.time");
    let old = with_options(|o| o.max_age = 2e9);
    assert_eq!(normalised_time(&old, "100000000000"), "100000000");
}

#[test]
fn missing_time_is_the_receive_time() {
    let json = Setup::default().accept(event("\"a\":1"));
    assert_eq!(json, normalised("\"a\":1"));
    let at = Setup::at(1_700_000_000.0).accept(event(""));
    assert_eq!(
        at,
        r#"{"event":"e","time":1700000000,"received":1700000000,"token":"tok","properties":{"token":"tok","time":1700000000}}"#
    );
}

#[test]
fn time_exactly_max_age_old_is_accepted_a_bit_older_rejected() {
    let s = Setup::default();
    let at = NOW - 3.0 * 3600.0;
    assert_eq!(at.to_string(), "1699989200.5");
    assert_eq!(normalised_time(&s, "1699989200.5"), "1699989200.5");
    assert_eq!(normalised_time(&s, "1699989200500"), "1699989200.5");
    s.assert_rejected(timed("1699989200.499"), K::TimeTooOld, "properties.time");
    s.assert_rejected(timed("1699989200499"), K::TimeTooOld, "properties.time");
    s.assert_rejected(timed("1699989200"), K::TimeTooOld, "properties.time");
    let error = s.reject(timed("1"));
    assert_eq!(error.kind, K::TimeTooOld);
    assert!(error.message.contains("old"), "{}", error.message);
    // The age, and by how much it is over: rounded alone, the age could read as the limit itself.
    for (max_age, age, said) in [
        (
            3.0 * 3600.0,
            3.0 * 3600.0 + 61.0,
            "is 3 hours 1 minute old, 61 seconds more than the 3 hours allowed",
        ),
        (
            3.0 * 3600.0,
            3.0 * 3600.0 + 59.0,
            "is 3 hours old, 59 seconds more than the 3 hours allowed",
        ),
        (
            3.0 * 3600.0,
            3.0 * 3600.0 + 0.25,
            "is 3 hours old, less than a second more than the 3 hours allowed",
        ),
        (
            5.0 * 86400.0,
            5.0 * 86400.0 + 7200.0,
            "is 5 days 2 hours old, 2 hours more than the 5 days allowed",
        ),
        (
            90.0,
            150.0,
            "is 2 minutes 30 seconds old, 60 seconds more than the 90 seconds allowed",
        ),
    ] {
        let limited = with_options(|o| o.max_age = max_age);
        let message = limited.reject(timed(&(NOW - age).to_string())).message;
        assert!(message.contains(said), "{message}");
    }
}

#[test]
fn max_age_is_configurable() {
    let s = with_options(|o| o.max_age = 5.0 * 86400.0);
    assert_eq!(normalised_time(&s, "1699568000.5"), "1699568000.5");
    s.assert_rejected(timed("1699568000.25"), K::TimeTooOld, "properties.time");
}

#[test]
fn future_time_within_skew_is_kept_beyond_is_the_receive_time() {
    let s = Setup::default();
    assert_eq!(normalised_time(&s, "1700000300.5"), "1700000300.5");
    assert_eq!(normalised_time(&s, "1700000300500"), "1700000300.5");
    assert_eq!(normalised_time(&s, "1700000300.75"), NOW_TEXT);
    assert_eq!(normalised_time(&s, "1700000301"), NOW_TEXT);
    assert_eq!(normalised_time(&s, "1800000000"), NOW_TEXT);
    let strict = with_options(|o| o.max_future_skew = 0.0);
    assert_eq!(normalised_time(&strict, "1700000000.5"), NOW_TEXT);
    assert_eq!(normalised_time(&strict, "1700000000.75"), NOW_TEXT);
    assert_eq!(normalised_time(&strict, "1700000000.25"), "1700000000.25");
}

#[test]
fn time_must_be_a_non_negative_number() {
    let s = Setup::default();
    for time in [
        "-1",
        "-0.5",
        "-1699999000",
        "true",
        "false",
        "null",
        "\"1699999000\"",
        "\"\"",
        "[1699999000]",
        "{}",
        "1e400",
    ] {
        s.assert_rejected(timed(time), K::TimeInvalid, "properties.time");
    }
}

// ---- distinct_id ----

#[test]
fn distinct_id_string_is_kept_number_becomes_a_string() {
    let s = Setup::default();
    let json = s.accept(event("\"distinct_id\":\"u-1\""));
    assert!(json.contains(",\"token\":\"tok\",\"distinct_id\":\"u-1\",\"properties\":"));
    for (sent, stored) in [
        ("42", "\"42\""),
        ("1.50", "\"1.50\""),
        ("-7", "\"-7\""),
        ("1e3", "\"1e3\""),
    ] {
        let json = s.accept(event(&format!("\"distinct_id\":{sent}")));
        assert_eq!(
            json,
            format!(
                r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","distinct_id":{stored},"properties":{{"token":"tok","distinct_id":{stored},"time":{NOW_TEXT}}}}}"#
            )
        );
    }
}

#[test]
fn distinct_id_of_another_type() {
    let s = Setup::default();
    for id in ["true", "null", "{}", "[\"u\"]", "{\"a\":1}"] {
        s.assert_rejected(
            event(&format!("\"distinct_id\":{id}")),
            K::DistinctIdInvalid,
            "properties.distinct_id",
        );
    }
}

#[test]
fn distinct_id_length_at_and_over_the_limit() {
    let s = Setup::default();
    let field = "properties.distinct_id";
    s.accept(event(&format!("\"distinct_id\":\"{}\"", "é".repeat(200))));
    s.assert_rejected(
        event(&format!("\"distinct_id\":\"{}\"", "é".repeat(201))),
        K::DistinctIdTooLong,
        field,
    );
    s.accept(event(&format!(
        "\"distinct_id\":\"{}\"",
        "\\u00e9".repeat(200)
    )));
    s.assert_rejected(
        event(&format!("\"distinct_id\":\"{}\"", "\\u00e9".repeat(201))),
        K::DistinctIdTooLong,
        field,
    );
    s.accept(event(&format!("\"distinct_id\":1{}", "0".repeat(199))));
    s.assert_rejected(
        event(&format!("\"distinct_id\":1{}", "0".repeat(200))),
        K::DistinctIdTooLong,
        field,
    );
    let small = with_options(|o| o.max_distinct_id_chars = 2);
    small.accept(event("\"distinct_id\":\"ab\""));
    small.assert_rejected(
        event("\"distinct_id\":\"abc\""),
        K::DistinctIdTooLong,
        field,
    );
}

// ---- $insert_id ----

#[test]
fn insert_id_valid_is_copied_to_the_top() {
    let s = Setup::default();
    let id = "abcdefghijklmnopqrstuvwxyzABCDEF-123";
    assert_eq!(id.len(), 36);
    let json = s.accept(event(&format!(
        "\"distinct_id\":\"u\",\"$insert_id\":\"{id}\""
    )));
    assert!(
        json.contains(&format!(
            ",\"token\":\"tok\",\"distinct_id\":\"u\",\"insert_id\":\"{id}\",\"properties\":"
        )),
        "{json}"
    );
}

#[test]
fn insert_id_invalid() {
    let s = Setup::default();
    for id in [
        format!("\"{}\"", "a".repeat(37)),
        "\"a_b\"".to_owned(),
        "\"a b\"".to_owned(),
        "\"é\"".to_owned(),
        "\"a.b\"".to_owned(),
        "5".to_owned(),
        "null".to_owned(),
        "[\"a\"]".to_owned(),
    ] {
        s.assert_rejected(
            event(&format!("\"$insert_id\":{id}")),
            K::InsertIdInvalid,
            "properties.$insert_id",
        );
    }
}

// ---- ip ----

#[test]
fn ip_string_is_kept_other_types_rejected() {
    let s = Setup::default();
    let json = s.accept(event("\"ip\":\"1.2.3.4\""));
    assert_eq!(
        json,
        format!(
            r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","ip":"1.2.3.4","properties":{{"token":"tok","ip":"1.2.3.4","time":{NOW_TEXT}}}}}"#
        )
    );
    for ip in ["5", "null", "true", "[\"1.2.3.4\"]", "{}"] {
        s.assert_rejected(
            event(&format!("\"ip\":{ip}")),
            K::IpInvalid,
            "properties.ip",
        );
    }
}

/// The single event of a JSON body sent with `query`.
fn via_request(s: &Setup, query: &str, body: &str) -> String {
    let decoded = s
        .request(query, body, Some("application/json"), None)
        .unwrap();
    common::only_event(&decoded)
}

#[test]
fn ip_1_sets_ip_and_a_missing_distinct_id_from_the_peer() {
    let s = Setup::default();
    let json = via_request(&s, "ip=1", &event("\"ip\":\"1.2.3.4\",\"a\":1"));
    assert_eq!(
        json,
        format!(
            r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","distinct_id":"{PEER}","ip":"{PEER}","properties":{{"token":"tok","ip":"{PEER}","a":1,"time":{NOW_TEXT},"distinct_id":"{PEER}"}}}}"#
        )
    );
    let json = via_request(&s, "ip=1", &event(""));
    assert_eq!(
        json,
        format!(
            r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","distinct_id":"{PEER}","ip":"{PEER}","properties":{{"token":"tok","time":{NOW_TEXT},"distinct_id":"{PEER}","ip":"{PEER}"}}}}"#
        )
    );
}

#[test]
fn ip_1_replaces_an_empty_distinct_id_and_keeps_a_sent_one() {
    let s = Setup::default();
    let json = via_request(&s, "ip=1", &event("\"distinct_id\":\"\""));
    assert_eq!(
        json,
        format!(
            r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","distinct_id":"{PEER}","ip":"{PEER}","properties":{{"token":"tok","distinct_id":"{PEER}","time":{NOW_TEXT},"ip":"{PEER}"}}}}"#
        )
    );
    let json = via_request(&s, "ip=1", &event("\"distinct_id\":\"u1\""));
    assert!(
        json.contains(&format!(
            ",\"distinct_id\":\"u1\",\"ip\":\"{PEER}\",\"properties\":{{\"token\":\"tok\",\"distinct_id\":\"u1\","
        )),
        "{json}"
    );
    let json = via_request(&s, "ip=1", &event("\"distinct_id\":7"));
    assert!(json.contains(",\"distinct_id\":\"7\",\"ip\":"), "{json}");
}

#[test]
fn ip_0_leaves_ip_and_distinct_id_alone() {
    let s = Setup::default();
    for query in ["ip=0", "", "verbose=1"] {
        let json = via_request(&s, query, &event("\"ip\":\"1.2.3.4\""));
        assert_eq!(
            json,
            format!(
                r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","ip":"1.2.3.4","properties":{{"token":"tok","ip":"1.2.3.4","time":{NOW_TEXT}}}}}"#
            )
        );
        let json = via_request(&s, query, &event("\"distinct_id\":\"\""));
        assert_eq!(
            json,
            format!(
                r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","distinct_id":"","properties":{{"token":"tok","distinct_id":"","time":{NOW_TEXT}}}}}"#
            )
        );
        assert_eq!(via_request(&s, query, &event("")), normalised(""));
    }
}

#[test]
fn ip_1_without_a_known_peer_changes_nothing() {
    let s = Setup {
        peer_ip: None,
        ..Setup::default()
    };
    assert_eq!(via_request(&s, "ip=1", &event("")), normalised(""));
}

#[test]
fn ip_flag_spellings() {
    let s = Setup::default();
    for query in ["ip=1", "ip=true", "ip=%31"] {
        let decoded = s
            .request(query, event(""), Some("application/json"), None)
            .unwrap();
        assert!(decoded.params.use_ip, "{query}");
    }
    for query in ["ip=0", "ip=false", "ip=", "ip", "ip=2"] {
        let decoded = s
            .request(query, event(""), Some("application/json"), None)
            .unwrap();
        assert!(!decoded.params.use_ip, "{query}");
    }
}

// ---- mp_funnel ----

fn funnel_event(extra: &str) -> String {
    named_event("mp_funnel", extra)
}

#[test]
fn funnel_steps_that_are_accepted() {
    let s = Setup::default();
    for (step, n) in [
        ("1", 1),
        ("\"2\"", 2),
        ("2.0", 2),
        ("3e0", 3),
        ("100", 100),
        ("\"0100\"", 100),
    ] {
        let json = s.accept(funnel_event(&format!(
            "\"funnel\":\"F\",\"step\":{step},\"goal\":\"G\""
        )));
        assert_eq!(
            json,
            format!(
                r#"{{"event":"mp_funnel","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","funnel":{{"name":"F","step":{n},"goal":"G"}},"properties":{{"token":"tok","funnel":"F","step":{step},"goal":"G","time":{NOW_TEXT}}}}}"#
            )
        );
    }
}

#[test]
fn funnel_steps_that_are_rejected() {
    let s = Setup::default();
    for step in [
        "0",
        "-1",
        "\"x\"",
        "\"2.5\"",
        "1.5",
        "\"0\"",
        "\"-1\"",
        "\"\"",
        "true",
        "null",
        "[1]",
        "{}",
        "101",
        "\"101\"",
        "2147483647",
    ] {
        s.assert_rejected(
            funnel_event(&format!("\"funnel\":\"F\",\"step\":{step},\"goal\":\"G\"")),
            K::StepInvalid,
            "properties.step",
        );
    }
    s.assert_rejected(
        funnel_event("\"funnel\":\"F\",\"goal\":\"G\""),
        K::StepInvalid,
        "properties.step",
    );
}

#[test]
fn funnel_name_must_be_a_non_empty_string() {
    let s = Setup::default();
    for funnel in ["\"funnel\":\"\",", "", "\"funnel\":5,", "\"funnel\":null,"] {
        s.assert_rejected(
            funnel_event(&format!("{funnel}\"step\":1,\"goal\":\"G\"")),
            K::FunnelInvalid,
            "properties.funnel",
        );
    }
}

#[test]
fn funnel_goal_must_be_a_string() {
    let s = Setup::default();
    for goal in ["", ",\"goal\":5", ",\"goal\":null", ",\"goal\":[\"G\"]"] {
        s.assert_rejected(
            funnel_event(&format!("\"funnel\":\"F\",\"step\":1{goal}")),
            K::GoalInvalid,
            "properties.goal",
        );
    }
    let json = s.accept(funnel_event("\"funnel\":\"F\",\"step\":1,\"goal\":\"\""));
    assert!(json.contains("\"funnel\":{\"name\":\"F\",\"step\":1,\"goal\":\"\"}"));
}

#[test]
fn funnel_rules_apply_only_to_mp_funnel() {
    let s = Setup::default();
    let extra = "\"funnel\":\"\",\"step\":\"x\",\"goal\":5";
    assert_eq!(s.accept(event(extra)), normalised(extra));
}

// ---- mp_ keys ----

#[test]
fn mp_keys_are_listed_and_kept() {
    let s = Setup::default();
    let extra = "\"mp_lib\":\"web\",\"a\":1,\"$mp_no\":2,\"mpx\":3,\"mp_x\":{\"mp_nested\":1}";
    let json = s.accept(event(extra));
    assert_eq!(
        json,
        format!(
            r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","mp_keys":["mp_lib","mp_x"],"properties":{{"token":"tok",{extra},"time":{NOW_TEXT}}}}}"#
        )
    );
    assert!(!s.accept(event("\"a\":1")).contains("mp_keys"));
}

// ---- duplicates ----

#[test]
fn duplicate_top_level_property() {
    let s = Setup::default();
    s.assert_rejected(
        event("\"a\":1,\"a\":2"),
        K::DuplicateProperty,
        "properties.a",
    );
    s.assert_rejected(
        event("\"a\":1,\"b\":2,\"a\":1"),
        K::DuplicateProperty,
        "properties.a",
    );
    s.assert_rejected(
        event("\"token\":\"tok\""),
        K::DuplicateProperty,
        "properties.token",
    );
}

#[test]
fn duplicate_written_with_an_escape_is_still_a_duplicate() {
    let s = Setup::default();
    s.assert_rejected(
        event("\"ab\":1,\"\\u0061b\":2"),
        K::DuplicateProperty,
        "properties.ab",
    );
    s.assert_rejected(
        event("\"é\":1,\"\\u00e9\":2"),
        K::DuplicateProperty,
        "properties.é",
    );
}

#[test]
fn nested_duplicates_are_allowed() {
    let s = Setup::default();
    let extra = "\"o\":{\"x\":1,\"x\":2},\"l\":[{\"y\":1,\"y\":1}]";
    assert_eq!(s.accept(event(extra)), normalised(extra));
}

// ---- size limits ----

#[test]
fn properties_count_at_and_over_the_limit() {
    let s = Setup::default();
    // `token` is one of them.
    s.accept(event(&props(254)));
    s.assert_rejected(event(&props(255)), K::TooManyProperties, "properties");
    let small = with_options(|o| o.max_properties = 3);
    small.accept(event(&props(2)));
    small.assert_rejected(event(&props(3)), K::TooManyProperties, "properties");
}

#[test]
fn nested_object_keys_at_and_over_the_limit() {
    let s = Setup::default();
    s.accept(event(&format!("\"o\":{}", object_of(255))));
    s.assert_rejected(
        event(&format!("\"o\":{}", object_of(256))),
        K::TooManyKeys,
        "properties.o",
    );
    s.accept(event(&format!("\"o\":[{}]", object_of(255))));
    s.assert_rejected(
        event(&format!("\"a\":1,\"o\":[1,{{\"p\":{}}}]", object_of(256))),
        K::TooManyKeys,
        "properties.o",
    );
    let small = with_options(|o| o.max_properties = 3);
    small.accept(event(&format!("\"o\":{}", object_of(3))));
    small.assert_rejected(
        event(&format!("\"o\":{}", object_of(4))),
        K::TooManyKeys,
        "properties.o",
    );
}

#[test]
fn depth_at_and_over_the_limit() {
    let s = Setup::default();
    for ok in [
        "{\"b\":{\"c\":[1]}}",
        "[[[1]]]",
        "[[[]]]",
        "{\"b\":[{}]}",
        "[1,[2,[3]]]",
    ] {
        s.accept(event(&format!("\"a\":{ok}")));
    }
    for deep in [
        "{\"b\":{\"c\":[[1]]}}",
        "[[[[1]]]]",
        "[[[{}]]]",
        "[1,[2,[3,[4]]]]",
        "{\"b\":{\"c\":{\"d\":{}}}}",
    ] {
        s.assert_rejected(
            event(&format!("\"x\":1,\"a\":{deep}")),
            K::TooDeep,
            "properties.a",
        );
    }
    let flat = with_options(|o| o.max_depth = 1);
    flat.accept(event("\"a\":[1,2],\"b\":{\"c\":1}"));
    flat.assert_rejected(event("\"a\":[[1]]"), K::TooDeep, "properties.a");
    let none = with_options(|o| o.max_depth = 0);
    none.accept(event("\"a\":1,\"b\":\"[]\""));
    none.assert_rejected(event("\"a\":1,\"b\":[]"), K::TooDeep, "properties.b");
}

#[test]
fn numbers_beyond_a_double_are_refused_where_they_stand() {
    let s = Setup::default();
    for kept in [
        "1.7976931348623157e308",
        "-1e308",
        "1e-400",
        "12345678901234567890123456789",
    ] {
        let json = s.accept(event(&format!("\"a\":{kept}")));
        assert!(json.contains(&format!("\"a\":{kept}")), "{json}");
    }
    let long_integer = "9".repeat(308);
    s.accept(event(&format!("\"a\":{long_integer}")));
    s.accept(event(&format!("\"a\":-1{}", "0".repeat(308))));
    for beyond in [format!("{long_integer}9"), format!("-{long_integer}9")] {
        let beyond = format!("\"a\":{beyond}");
        s.assert_rejected(event(&beyond), K::NumberOutOfRange, "properties.a");
    }
    for beyond in ["1e400", "-1E309", "2.5e+999"] {
        s.assert_rejected(
            event(&format!("\"a\":{beyond}")),
            K::NumberOutOfRange,
            "properties.a",
        );
        let nested = format!("\"b\":{{\"c\":[1,{beyond}]}}");
        s.assert_rejected(event(&nested), K::NumberOutOfRange, "properties.b");
    }
    let fraction = format!("\"a\":{long_integer}9.5");
    s.assert_rejected(event(&fraction), K::NumberOutOfRange, "properties.a");
}

#[test]
fn nesting_far_past_the_limit_is_too_deep_for_that_event_only() {
    // Valid JSON nested 5000 levels inside one property: that event is `too_deep`, its neighbours
    // are kept, as for any other invalid event of a batch.
    let s = Setup::default();
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let payload = format!(
        "[{},{},{}]",
        event(""),
        event(&format!("\"a\":{deep}")),
        event("")
    );
    let decoded = s.data(&payload).map_err(|e| e.to_string());
    let outcome = decoded.map(|d| {
        let errors: Vec<_> = d
            .errors
            .iter()
            .map(|e| (e.index, e.kind, e.field.clone()))
            .collect();
        (d.total, d.accepted(), errors)
    });
    assert_eq!(
        outcome,
        Ok((3, 2, vec![(1, K::TooDeep, "properties.a".to_owned())]))
    );
}

#[test]
fn array_length_at_and_over_the_limit() {
    let s = Setup::default();
    s.accept(event(&format!("\"a\":{}", array_of(255))));
    s.assert_rejected(
        event(&format!("\"a\":{}", array_of(256))),
        K::ArrayTooLong,
        "properties.a",
    );
    s.accept(event(&format!("\"a\":{{\"b\":{}}}", array_of(255))));
    s.assert_rejected(
        event(&format!("\"a\":{{\"b\":{}}}", array_of(256))),
        K::ArrayTooLong,
        "properties.a",
    );
    let small = with_options(|o| o.max_array_len = 2);
    small.accept(event("\"a\":[1,2]"));
    small.assert_rejected(event("\"a\":[1,2,3]"), K::ArrayTooLong, "properties.a");
}

#[test]
fn event_bytes_at_and_over_the_limit() {
    let pad = "x".repeat(1000);
    let extra = format!("\"pad\":\"{pad}\"");
    let expected = format!(
        r#"{{"event":"e","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"tok","properties":{{"token":"tok","pad":"{pad}","time":{NOW_TEXT}}}}}"#
    );
    let input = format!(
        "{{ \"event\" : \"e\" ,\n \"properties\" : {{ \"token\" : \"tok\" , {} }} }}",
        extra.replace(':', " : ")
    );
    assert_eq!(Setup::default().accept(&input), expected);
    let limit = expected.len();
    assert_eq!(limit, 1000 + 129);
    let at = with_options(|o| o.max_event_bytes = limit);
    assert_eq!(at.accept(&input), expected);
    let under = with_options(|o| o.max_event_bytes = limit - 1);
    let error = under.reject(&input);
    assert_eq!((error.kind, error.field.as_str()), (K::EventTooLarge, ""));
}

#[test]
fn event_bytes_default_is_one_megabyte() {
    let s = Setup::default();
    let base = normalised("\"pad\":\"\"").len();
    let pad = "x".repeat(1_000_000 - base);
    let json = s.accept(event(&format!("\"pad\":\"{pad}\"")));
    assert_eq!(json.len(), 1_000_000);
    let pad = "x".repeat(1_000_001 - base);
    let error = s.reject(event(&format!("\"pad\":\"{pad}\"")));
    assert_eq!(error.kind, K::EventTooLarge);
}

// ---- the normalised JSON ----

#[test]
fn normalised_json_exact_bytes() {
    let s = Setup::at(1_245_613_900.25);
    let input = r#" {
        "event" : "game",
        "properties" : {
            "token" : "e3bc",
            "time" : 1245613885,
            "distinct_id" : 42,
            "$insert_id" : "b794-1",
            "ip" : "123.123.123.123",
            "mp_lib" : "python",
            "price" : 1.50,
            "big" : 123456789012345678901234567890,
            "neg" : -0.0e-5,
            "text" : "h\u00e9 \"q\"\n\/ ✓",
            "nested" : { "b" : [ 1 , 2.0 , { "c" : null } , true , false ] , "e" : { } , "f" : [ ] }
        }
    } "#;
    let expected = r#"{"event":"game","time":1245613885,"received":1245613900.25,"token":"e3bc","distinct_id":"42","insert_id":"b794-1","ip":"123.123.123.123","mp_keys":["mp_lib"],"properties":{"token":"e3bc","time":1245613885,"distinct_id":"42","$insert_id":"b794-1","ip":"123.123.123.123","mp_lib":"python","price":1.50,"big":123456789012345678901234567890,"neg":-0.0e-5,"text":"h\u00e9 \"q\"\n\/ ✓","nested":{"b":[1,2.0,{"c":null},true,false],"e":{},"f":[]}}}"#;
    assert_eq!(s.accept(input), expected);
}

#[test]
fn normalised_json_of_a_funnel_event_with_ip_1() {
    let s = Setup::at(1_245_613_900.25);
    let body = r#"{"properties":{"token":"t","time":1245613885123.5,"funnel":"F","step":"2","goal":"G","mp_a":1,"ip":"1.1.1.1"},"event":"mp_funnel"}"#;
    let json = via_request(&s, "ip=1", body);
    assert_eq!(
        json,
        format!(
            r#"{{"event":"mp_funnel","time":1245613885.1235,"received":1245613900.25,"token":"t","distinct_id":"{PEER}","ip":"{PEER}","funnel":{{"name":"F","step":2,"goal":"G"}},"mp_keys":["mp_a"],"properties":{{"token":"t","time":1245613885.1235,"funnel":"F","step":"2","goal":"G","mp_a":1,"ip":"{PEER}","distinct_id":"{PEER}"}}}}"#
        )
    );
}

#[test]
fn normalised_json_keeps_escapes_in_names_keys_and_values() {
    let s = Setup::default();
    let input = r#"{"event":"g\u0061me \"x\"","properties":{"token":"t\u006fk","k\u00e9y":"v\/\u00e9\t","mp_\u0061":1,"\ud83d\ude00":"\ud83d\ude00"}}"#;
    let expected = format!(
        r#"{{"event":"g\u0061me \"x\"","time":{NOW_TEXT},"received":{NOW_TEXT},"token":"t\u006fk","mp_keys":["mp_\u0061"],"properties":{{"token":"t\u006fk","k\u00e9y":"v\/\u00e9\t","mp_\u0061":1,"\ud83d\ude00":"\ud83d\ude00","time":{NOW_TEXT}}}}}"#
    );
    assert_eq!(s.accept(input), expected);
}

#[test]
fn reserved_keys_written_with_escapes_are_recognised() {
    let s = Setup::default();
    let input = r#"{"\u0065vent":"e","properties":{"t\u006fken":"tok","ti\u006de":1699999000,"distinct\u005fid":5}}"#;
    let json = s.accept(input);
    assert_eq!(
        json,
        format!(
            r#"{{"event":"e","time":1699999000,"received":{NOW_TEXT},"token":"tok","distinct_id":"5","properties":{{"t\u006fken":"tok","ti\u006de":1699999000,"distinct\u005fid":"5"}}}}"#
        )
    );
    s.assert_rejected(
        r#"{"event":"e","properties":{"t\u006fken":""}}"#,
        K::TokenInvalid,
        "properties.token",
    );
}
