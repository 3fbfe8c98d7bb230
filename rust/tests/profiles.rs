//! Profile updates (`/engage`, `/groups`): every operation's normalised JSON and packed arguments,
//! every rule and the field its error names, the transports shared with `/track`, and the partition
//! each profile goes to.

mod common;

use common::{b64, check_invariants, events, gzip, parse_bulks, parse_commands, Setup, PEER};
use trackgate_native::{
    decode_profile_request, resp::partition_of, Decoded, EventErrorKind as K, Options,
    RequestError, Target, TokenSet,
};

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");
/// `common::NOW` as `$last_seen`.
const NOW_SECONDS: &str = "2023-11-14T22:13:20";

fn decode(s: &Setup, target: Target, query: &str, body: &str) -> Result<Decoded, RequestError> {
    decode_profile_request(
        query.as_bytes(),
        body.as_bytes(),
        JSON,
        None,
        &s.ctx(),
        target,
    )
    .inspect(check_invariants)
}

/// A person's update: `$token` and `$distinct_id`, then `rest`.
fn person(rest: &str) -> String {
    format!(r#"{{"$token":"tok","$distinct_id":"u1",{rest}}}"#)
}

/// A group's update: `$token`, `$group_key` and `$group_id`, then `rest`.
fn group(rest: &str) -> String {
    format!(r#"{{"$token":"tok","$group_key":"company","$group_id":"acme",{rest}}}"#)
}

/// The one valid update's normalised JSON and its packed arguments.
fn accept(target: Target, update: &str) -> (String, Vec<String>) {
    let decoded = decode(&Setup::default(), target, "", update).expect("decodes");
    assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
    let [json] = &events(&decoded)[..] else {
        panic!("one update expected")
    };
    let [batch] = &decoded.batches.batches[..] else {
        panic!("one batch expected")
    };
    let args: Vec<String> = parse_bulks(&batch.packed)
        .into_iter()
        .map(|a| String::from_utf8(a).unwrap())
        .collect();
    assert_eq!(args.len(), batch.args);
    (json.clone(), args)
}

#[track_caller]
fn rejected(target: Target, update: &str, kind: K, field: &str) {
    let decoded = decode(&Setup::default(), target, "", update).expect("decodes");
    assert_eq!(decoded.accepted(), 0, "accepted: {update}");
    let [error] = &decoded.errors[..] else {
        panic!("one error expected: {:?}", decoded.errors)
    };
    assert_eq!(
        (error.kind, error.field.as_str()),
        (kind, field),
        "{update}: {}",
        error.message
    );
    assert!(!error.message.is_empty());
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

// ---- every operation ----

#[test]
fn set_and_set_once_carry_their_properties_in_order() {
    for op in ["$set", "$set_once"] {
        let (json, args) = accept(
            Target::People,
            &person(&format!(
                r#""{op}": {{"plan": "pro", "n": 1.50, "tags": ["a", {{"b": null}}]}}"#
            )),
        );
        assert_eq!(
            json,
            format!(
                r#"{{"time":1700000000.5,"received":1700000000.5,"token":"tok","distinct_id":"u1","{op}":{{"plan":"pro","n":1.50,"tags":["a",{{"b":null}}]}}}}"#
            )
        );
        assert_eq!(
            args,
            strings(&[
                op,
                "",
                "u1",
                NOW_SECONDS,
                "6",
                "plan",
                "\"pro\"",
                "n",
                "1.50",
                "tags",
                r#"["a",{"b":null}]"#
            ])
        );
    }
}

#[test]
fn add_takes_numbers() {
    let (json, args) = accept(
        Target::People,
        &person(r#""$add": {"logins": 1, "credits": -2.5}"#),
    );
    assert!(
        json.ends_with(r#""$add":{"logins":1,"credits":-2.5}}"#),
        "{json}"
    );
    assert_eq!(
        args,
        strings(&[
            "$add",
            "",
            "u1",
            NOW_SECONDS,
            "4",
            "logins",
            "1",
            "credits",
            "-2.5"
        ])
    );
    rejected(
        Target::People,
        &person(r#""$add": {"logins": "1"}"#),
        K::OperationInvalid,
        "$add.logins",
    );
    rejected(
        Target::People,
        &person(r#""$add": {"big": 1e400}"#),
        K::NumberOutOfRange,
        "$add.big",
    );
}

#[test]
fn append_union_and_remove() {
    let (_, args) = accept(
        Target::People,
        &person(r#""$append": {"$transactions": {"$amount": 9.99, "sku": "x1"}}"#),
    );
    assert_eq!(
        &args[4..],
        strings(&["2", "$transactions", r#"{"$amount":9.99,"sku":"x1"}"#])
    );
    let (_, args) = accept(Target::People, &person(r#""$union": {"tags": ["a", "b"]}"#));
    assert_eq!(
        &args[..],
        strings(&["$union", "", "u1", NOW_SECONDS, "2", "tags", r#"["a","b"]"#])
    );
    rejected(
        Target::People,
        &person(r#""$union": {"tags": "a"}"#),
        K::OperationInvalid,
        "$union.tags",
    );
    let (_, args) = accept(Target::People, &person(r#""$remove": {"tags": "a"}"#));
    assert_eq!(&args[4..], strings(&["2", "tags", "\"a\""]));
}

#[test]
fn unset_names_and_delete_ignores_its_value() {
    let (json, args) = accept(Target::People, &person(r#""$unset": ["a", "b\u0063"]"#));
    assert!(json.ends_with(r#""$unset":["a","bc"]}"#), "{json}");
    assert_eq!(
        &args[..],
        strings(&["$unset", "", "u1", NOW_SECONDS, "2", "a", "bc"])
    );
    rejected(
        Target::People,
        &person(r#""$unset": ["a", 1]"#),
        K::OperationInvalid,
        "$unset",
    );
    rejected(
        Target::People,
        &person(r#""$unset": "a""#),
        K::OperationInvalid,
        "$unset",
    );
    for value in [r#""""#, r#""u1""#, "null", r#"{"x":[1]}"#] {
        let (json, args) = accept(Target::People, &person(&format!(r#""$delete": {value}"#)));
        assert!(json.ends_with(r#""$delete":""}"#), "{json}");
        assert_eq!(&args[..], strings(&["$delete", "", "u1", NOW_SECONDS, "0"]));
    }
}

#[test]
fn group_updates_name_their_group_and_have_no_append() {
    let (json, args) = accept(Target::Groups, &group(r#""$set": {"seats": 40}"#));
    assert_eq!(
        json,
        r#"{"time":1700000000.5,"received":1700000000.5,"token":"tok","group_key":"company","group_id":"acme","$set":{"seats":40}}"#
    );
    assert_eq!(
        args,
        strings(&["$set", "company", "acme", NOW_SECONDS, "2", "seats", "40"])
    );
    for op in [
        "$set_once",
        "$add",
        "$union",
        "$remove",
        "$unset",
        "$delete",
    ] {
        let value = match op {
            "$union" => r#"{"l":[1]}"#,
            "$unset" => r#"["n"]"#,
            _ => r#"{"n":1}"#,
        };
        accept(Target::Groups, &group(&format!(r#""{op}": {value}"#)));
    }
    rejected(
        Target::Groups,
        &group(r#""$append": {"l": 1}"#),
        K::OperationInvalid,
        "$append",
    );
    // A number is a group id too, stored as its text.
    let (json, args) = accept(
        Target::Groups,
        r#"{"$token":"tok","$group_key":"org","$group_id":42,"$set":{}}"#,
    );
    assert!(
        json.contains(r#""group_key":"org","group_id":"42""#),
        "{json}"
    );
    assert_eq!(
        &args[..5],
        strings(&["$set", "org", "42", NOW_SECONDS, "0"])
    );
}

// ---- the update's own members ----

#[test]
fn time_ip_and_flags() {
    let (json, args) = accept(
        Target::People,
        &person(
            r#""$time": 1699999000123, "$ip": "198.51.100.4", "$ignore_time": true, "$ignore_alias": false, "$set": {}"#,
        ),
    );
    assert!(
        json.starts_with(r#"{"time":1699999000.123,"received":1700000000.5"#),
        "{json}"
    );
    assert!(
        json.contains(r#""ip":"198.51.100.4","ignore_time":true,"$set""#),
        "{json}"
    );
    assert_eq!(&args[..5], strings(&["$set", "", "u1", "", "0"]));
    // With ip=1 the caller's address, unless the update names its own.
    let s = Setup::default();
    let body = person(r#""$set": {}"#);
    let decoded = decode(&s, Target::People, "ip=1", &body).unwrap();
    assert!(events(&decoded)[0].contains(&format!(r#""ip":"{PEER}""#)));
    let body = person(r#""$ip": "0", "$set": {}"#);
    let decoded = decode(&s, Target::People, "ip=1", &body).unwrap();
    assert!(events(&decoded)[0].contains(r#""ip":"0""#));
    // Far ahead: the receive time. Long ago: kept (no age limit for profiles).
    let (json, _) = accept(
        Target::People,
        &person(r#""$time": 1800000000, "$set": {}"#),
    );
    assert!(json.starts_with(r#"{"time":1700000000.5,"#), "{json}");
    let (json, args) = accept(Target::People, &person(r#""$time": 86400.5, "$set": {}"#));
    assert!(json.starts_with(r#"{"time":86400.5,"#), "{json}");
    assert_eq!(args[3], "1970-01-02T00:00:00");
}

#[test]
fn the_token_and_the_profile_name_their_field() {
    let p = Target::People;
    let cases: &[(Target, &str, K, &str)] = &[
        (
            p,
            r#"{"$distinct_id":"u","$set":{}}"#,
            K::TokenMissing,
            "$token",
        ),
        (
            p,
            r#"{"$token":"","$distinct_id":"u","$set":{}}"#,
            K::TokenInvalid,
            "$token",
        ),
        (
            p,
            r#"{"$token":7,"$distinct_id":"u","$set":{}}"#,
            K::TokenInvalid,
            "$token",
        ),
        (
            p,
            r#"{"$token":"tok","$set":{}}"#,
            K::DistinctIdMissing,
            "$distinct_id",
        ),
        (
            p,
            r#"{"$token":"tok","$distinct_id":"","$set":{}}"#,
            K::DistinctIdInvalid,
            "$distinct_id",
        ),
        (
            p,
            r#"{"$token":"tok","$distinct_id":[1],"$set":{}}"#,
            K::DistinctIdInvalid,
            "$distinct_id",
        ),
        (
            Target::Groups,
            r#"{"$token":"tok","$group_id":"a","$set":{}}"#,
            K::GroupInvalid,
            "$group_key",
        ),
        (
            Target::Groups,
            r#"{"$token":"tok","$group_key":1,"$group_id":"a","$set":{}}"#,
            K::GroupInvalid,
            "$group_key",
        ),
        (
            Target::Groups,
            r#"{"$token":"tok","$group_key":"k","$set":{}}"#,
            K::GroupInvalid,
            "$group_id",
        ),
        (
            Target::Groups,
            r#"{"$token":"tok","$group_key":"k","$group_id":true,"$set":{}}"#,
            K::GroupInvalid,
            "$group_id",
        ),
    ];
    for (target, update, kind, field) in cases {
        rejected(*target, update, *kind, field);
    }
}

#[test]
fn the_members_and_the_operation_name_their_field() {
    let p = Target::People;
    let cases: &[(Target, &str, K, &str)] = &[
        (
            p,
            &person(r#""$time":"now","$set":{}"#),
            K::TimeInvalid,
            "$time",
        ),
        (
            p,
            &person(r#""$time":-1,"$set":{}"#),
            K::TimeInvalid,
            "$time",
        ),
        (p, &person(r#""$ip":1,"$set":{}"#), K::IpInvalid, "$ip"),
        (
            p,
            &person(r#""$ignore_time":"true","$set":{}"#),
            K::FlagInvalid,
            "$ignore_time",
        ),
        (
            p,
            &person(r#""$ignore_alias":1,"$set":{}"#),
            K::FlagInvalid,
            "$ignore_alias",
        ),
        (p, &person(r#""$device_id":"d""#), K::OperationMissing, ""),
        (
            p,
            &person(r#""$set":{},"$add":{}"#),
            K::TooManyOperations,
            "",
        ),
        (
            p,
            &person(r#""$set":{},"$set":{}"#),
            K::TooManyOperations,
            "",
        ),
        (p, &person(r#""$set":[1]"#), K::OperationInvalid, "$set"),
        (
            p,
            &person(r#""$set_once":"x""#),
            K::OperationInvalid,
            "$set_once",
        ),
        (p, &person(r#""$add":null"#), K::OperationInvalid, "$add"),
        (
            p,
            &person(r#""$set":{"a":1,"a":2}"#),
            K::DuplicateProperty,
            "$set.a",
        ),
        (
            p,
            r#"{"$token":"tok","$token":"tok","$distinct_id":"u","$set":{}}"#,
            K::DuplicateProperty,
            "$token",
        ),
        (
            p,
            &person(r#""$set":{"deep":[[[[1]]]]}"#),
            K::TooDeep,
            "$set.deep",
        ),
        (
            p,
            &person(r#""$append":{"n":{"x":1e999}}"#),
            K::NumberOutOfRange,
            "$append.n",
        ),
    ];
    for (target, update, kind, field) in cases {
        rejected(*target, update, *kind, field);
    }
    let decoded = decode(&Setup::default(), p, "", "[1, {}]").unwrap();
    let kinds: Vec<_> = decoded.errors.iter().map(|e| (e.index, e.kind)).collect();
    assert_eq!(kinds, [(0, K::NotAnObject), (1, K::TokenMissing)]);
}

#[test]
fn limits_of_event_properties_apply() {
    let s = Setup::with(Options {
        max_properties: 2,
        max_array_len: 2,
        max_distinct_id_chars: 3,
        max_event_bytes: 150,
        ..Options::default()
    });
    let check = |update: &str, kind: K, field: &str| {
        let decoded = decode(&s, Target::People, "", update).unwrap();
        let [error] = &decoded.errors[..] else {
            panic!("one error expected: {update}")
        };
        assert_eq!(
            (error.kind, error.field.as_str()),
            (kind, field),
            "{update}"
        );
    };
    check(
        r#"{"$token":"tok","$distinct_id":"abcd","$set":{}}"#,
        K::DistinctIdTooLong,
        "$distinct_id",
    );
    let short = |rest: &str| format!(r#"{{"$token":"tok","$distinct_id":"u",{rest}}}"#);
    check(
        &short(r#""$set":{"a":1,"b":2,"c":3}"#),
        K::TooManyProperties,
        "$set",
    );
    check(&short(r#""$set":{"a":[1,2,3]}"#), K::ArrayTooLong, "$set.a");
    check(
        &short(r#""$set":{"a":{"x":1,"y":2,"z":3}}"#),
        K::TooManyKeys,
        "$set.a",
    );
    check(
        &short(r#""$unset":["a","b","c"]"#),
        K::ArrayTooLong,
        "$unset",
    );
    check(
        &short(&format!(r#""$set":{{"a":"{}"}}"#, "x".repeat(100))),
        K::EventTooLarge,
        "",
    );
    let fits = short(&format!(r#""$set":{{"a":"{}"}}"#, "x".repeat(10)));
    assert_eq!(decode(&s, Target::People, "", &fits).unwrap().accepted(), 1);
}

#[test]
fn an_unknown_token_is_refused_by_name() {
    let s = Setup {
        tokens: Some(TokenSet::from(["known".to_owned()])),
        ..Setup::default()
    };
    let decoded = decode(&s, Target::People, "", &person(r#""$set":{}"#)).unwrap();
    assert_eq!(decoded.errors[0].kind, K::UnknownToken);
    assert_eq!(decoded.errors[0].field, "$token");
}

#[test]
fn escaped_strings_are_stored_one_way() {
    let (json, args) = accept(
        Target::People,
        &person(r#""$union": {"t\u0061gs": ["\u00e9", "a\/b", "q\"", "\ud83d\ude00"]}"#),
    );
    assert!(
        json.ends_with("\"$union\":{\"tags\":[\"\u{e9}\",\"a/b\",\"q\\\"\",\"\u{1F600}\"]}}"),
        "{json}"
    );
    assert_eq!(args[5], "tags");
    assert_eq!(args[6], "[\"\u{e9}\",\"a/b\",\"q\\\"\",\"\u{1F600}\"]");
}

// ---- transports, batches, partitions ----

#[test]
fn the_transports_of_track() {
    let s = Setup::default();
    let update = person(r#""$set": {"plan": "pro"}"#);
    let batch = format!("[{update},{update}]");
    let ctx = s.ctx();
    let run = |query: &[u8], body: &[u8], ct, ce| {
        decode_profile_request(query, body, ct, ce, &ctx, Target::People)
            .inspect(check_invariants)
            .unwrap()
    };
    let b64_data = format!(
        "data={}",
        b64(&batch).replace('+', "%2B").replace('/', "%2F")
    );
    let results = [
        run(b64_data.as_bytes(), b"", None, None),
        run(b"verbose=1", b64_data.as_bytes(), FORM, None),
        run(b"", batch.as_bytes(), JSON, None),
        run(b"", &gzip(b64_data.as_bytes()), FORM, Some("gzip")),
        run(
            b"",
            b64_data.as_bytes(),
            Some("text/plain;charset=UTF-8"),
            None,
        ),
    ];
    for decoded in &results {
        assert_eq!((decoded.total, decoded.accepted()), (2, 2));
    }
    assert!(results[1].params.verbose);
    let too_many = format!("[{}]", [update.as_str(); 3].join(","));
    let limited = Setup::with(Options {
        max_events: 2,
        ..Options::default()
    });
    let error = decode(&limited, Target::People, "", &too_many).unwrap_err();
    assert_eq!((error.kind(), error.status()), ("too_many_events", 413));
    assert_eq!(
        decode(&s, Target::People, "", "[]").unwrap_err().kind(),
        "empty_batch"
    );
}

#[test]
fn updates_keep_their_order_and_a_profile_its_partition() {
    let s = Setup::with(Options {
        partitions: 8,
        ..Options::default()
    });
    let updates: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"$token":"tok","$distinct_id":"user-{}","$time":{},"$set":{{"i":{i}}}}}"#,
                i % 5,
                1_699_999_999 - i
            )
        })
        .collect();
    let decoded = decode(&s, Target::People, "", &format!("[{}]", updates.join(","))).unwrap();
    for batch in &decoded.batches.batches {
        let commands = parse_commands(&batch.xadds);
        assert_eq!(commands.len(), batch.count);
        let stream = format!("tg:{{{}}}:tok:updates", batch.partition);
        let mut last = -1;
        for command in commands {
            assert_eq!(command[1], stream.as_bytes());
            let json = String::from_utf8(command[4].clone()).unwrap();
            let user = json
                .split("\"distinct_id\":\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            assert_eq!(partition_of(user.as_bytes(), 8), batch.partition);
            let i: i64 = json
                .split("{\"i\":")
                .nth(1)
                .unwrap()
                .trim_end_matches("}}")
                .parse()
                .unwrap();
            assert!(i > last, "the order sent, not the times'");
            last = i;
        }
    }
    let group = r#"{"$token":"tok","$group_key":"company","$group_id":"acme","$set":{}}"#;
    let decoded = decode(&s, Target::Groups, "", group).unwrap();
    assert_eq!(
        decoded.batches.batches[0].partition,
        partition_of(b"company\0acme", 8)
    );
}
