//! Valid events grouped by (token, partition), partition = CRC-32 of the distinct_id modulo the
//! partitions, and packed per batch: one `XADD <stream> * data <json>` per event, and RESP bulk strings
//! in the layout `PACKED_LAYOUT` names: per event day, `HH:<name>`, distinct_id, funnel, and for
//! mp_funnel events time, step and goal.

mod common;

use common::{events, named_event, parse_bulks, parse_commands, Setup, NOW, PEER};
use trackgate_native::{Decoded, Options, PACKED_LAYOUT};

fn partition(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions
}

/// The rules without deduplication: the packed layout these tests read has no dedup hashes (the test at
/// the end reads them).
fn plain() -> Options {
    Options {
        dedup_window: 0,
        ..Options::default()
    }
}

fn setup(partitions: u32) -> Setup {
    Setup::with(Options {
        partitions,
        ..plain()
    })
}

/// One event's packed arguments.
#[derive(Debug, PartialEq)]
struct Packed {
    json: String,
    day: String,
    /// `HH:<event name>`
    field: String,
    distinct_id: String,
    /// funnel, whole seconds, step, goal
    funnel: Option<[String; 4]>,
}

impl Packed {
    fn name(&self) -> &str {
        &self.field[3..]
    }
}

/// Every packed event, in batch order, with its batch's token and partition.
fn unpack(decoded: &Decoded) -> Vec<(String, u32, Packed)> {
    let mut out = Vec::new();
    for batch in &decoded.batches.batches {
        let bulks: Vec<String> = parse_bulks(&batch.packed)
            .into_iter()
            .map(|f| String::from_utf8(f).unwrap())
            .collect();
        assert_eq!(bulks.len(), batch.args);
        let stream = format!("tg:{{{}}}:{}:events", batch.partition, batch.token);
        let mut xadds = parse_commands(&batch.xadds).into_iter();
        let mut rest = &bulks[..];
        while !rest.is_empty() {
            let xadd: Vec<String> = xadds
                .next()
                .expect("an XADD per event")
                .into_iter()
                .map(|a| String::from_utf8(a).unwrap())
                .collect();
            assert_eq!(xadd[..4], ["XADD", stream.as_str(), "*", "data"]);
            assert_eq!(xadd.len(), 5);
            let funnel = (!rest[3].is_empty()).then(|| {
                [
                    rest[3].clone(),
                    rest[4].clone(),
                    rest[5].clone(),
                    rest[6].clone(),
                ]
            });
            let packed = Packed {
                json: xadd[4].clone(),
                day: rest[0].clone(),
                field: rest[1].clone(),
                distinct_id: rest[2].clone(),
                funnel,
            };
            rest = &rest[if packed.funnel.is_some() { 7 } else { 4 }..];
            out.push((batch.token.clone(), batch.partition, packed));
        }
        assert!(xadds.next().is_none(), "an XADD per event, no more");
        assert_eq!(
            out.iter()
                .filter(|(t, p, _)| *t == batch.token && *p == batch.partition)
                .count(),
            batch.count
        );
    }
    out
}

fn ev(token: &str, name: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"event":"{name}","properties":{{"token":"{token}"{sep}{extra}}}}}"#)
}

#[test]
fn the_layout_is_version_7() {
    assert_eq!(PACKED_LAYOUT, 7);
}

#[test]
fn grouped_by_token_and_crc32_partition() {
    const P: u32 = 4;
    let ids = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];
    let mut sent = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let token = if i % 3 == 0 { "B" } else { "A" };
        sent.push((
            token,
            *id,
            ev(
                token,
                &format!("e{i}"),
                &format!("\"distinct_id\":\"{id}\""),
            ),
        ));
    }
    let spread: std::collections::HashSet<u32> = ids.iter().map(|id| partition(id, P)).collect();
    assert!(spread.len() >= 3, "the ids should spread over partitions");
    let mut payload: Vec<String> = sent.iter().map(|(_, _, e)| e.clone()).collect();
    payload.insert(3, named_event("bad", "\"time\":true"));
    let decoded = setup(P).data(format!("[{}]", payload.join(","))).unwrap();
    assert_eq!((decoded.total, decoded.accepted()), (9, 8));

    // Expected batches: (token, partition) in order of first appearance, events in request order.
    let mut expected: Vec<(&str, u32, Vec<usize>)> = Vec::new();
    for (i, (token, id, _)) in sent.iter().enumerate() {
        let p = partition(id, P);
        match expected.iter_mut().find(|(t, q, _)| t == token && *q == p) {
            Some((_, _, members)) => members.push(i),
            None => expected.push((token, p, vec![i])),
        }
    }
    assert!(expected.iter().any(|(_, _, m)| m.len() > 1));
    let got: Vec<(&str, u32, usize)> = decoded
        .batches
        .batches
        .iter()
        .map(|b| (b.token.as_str(), b.partition, b.count))
        .collect();
    let want: Vec<(&str, u32, usize)> =
        expected.iter().map(|(t, p, m)| (*t, *p, m.len())).collect();
    assert_eq!(got, want);

    let all = events(&decoded);
    let packed = unpack(&decoded);
    let order: Vec<usize> = expected.iter().flat_map(|(_, _, m)| m.clone()).collect();
    for ((token, p, fields), i) in packed.iter().zip(&order) {
        let (sent_token, id, _) = sent[*i];
        assert_eq!((token.as_str(), *p), (sent_token, partition(id, P)));
        assert_eq!(fields.json, all[*i], "the first field is the event JSON");
        // NOW is 2023-11-14T22:13:20.5Z
        assert_eq!(fields.day, "2023-11-14");
        assert_eq!(fields.field, format!("22:e{i}"));
        assert_eq!(fields.distinct_id, id);
        assert_eq!(fields.funnel, None);
    }
}

#[test]
fn events_come_back_in_request_order_across_batches() {
    let s = setup(16);
    let payload: Vec<String> = (0..40)
        .map(|i| ev("tok", &format!("e{i}"), &format!("\"distinct_id\":{i}")))
        .collect();
    let decoded = s.data(format!("[{}]", payload.join(","))).unwrap();
    assert!(decoded.batches.batches.len() > 4);
    let names: Vec<String> = events(&decoded)
        .iter()
        .map(|e| e.split('"').nth(3).unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    assert_eq!(names, want);
    // Numbers are partitioned by their text, as the string they are stored as.
    for (token, p, fields) in unpack(&decoded) {
        assert_eq!(token, "tok");
        assert_eq!(p, partition(&fields.distinct_id, 16));
        assert_eq!(fields.name(), format!("e{}", fields.distinct_id));
    }
}

#[test]
fn funnel_time_and_unescaped_fields() {
    let s = setup(8);
    let payload = format!(
        "[{},{}]",
        r#"{"event":"mp_funnel","properties":{"token":"t","distinct_id":"u\u0031","time":1699999000.75,"funnel":"F\u0031","step":"2","goal":"G"}}"#,
        r#"{"event":"g\u0061me","properties":{"token":"t","distinct_id":"u1","time":1699999000900}}"#,
    );
    let decoded = s.data(&payload).unwrap();
    assert_eq!(decoded.batches.batches.len(), 1);
    let batch = &decoded.batches.batches[0];
    assert_eq!(
        (batch.token.as_str(), batch.partition, batch.count),
        ("t", partition("u1", 8), 2)
    );
    let all = events(&decoded);
    let packed = unpack(&decoded);
    // 1699999000 is 2023-11-14T21:56:40Z
    let funnel = ["F1", "1699999000", "2", "G"].map(String::from);
    assert_eq!(
        packed[0].2,
        Packed {
            json: all[0].clone(),
            day: "2023-11-14".into(),
            field: "21:mp_funnel".into(),
            distinct_id: "u1".into(),
            funnel: Some(funnel),
        }
    );
    assert_eq!(
        packed[1].2,
        Packed {
            json: all[1].clone(),
            day: "2023-11-14".into(),
            field: "21:game".into(),
            distinct_id: "u1".into(),
            funnel: None,
        }
    );
    assert!(all[0].contains("\"distinct_id\":\"u\\u0031\""));
    assert!(all[0].contains("\"funnel\":{\"name\":\"F\\u0031\",\"step\":2,\"goal\":\"G\"}"));
}

#[test]
fn partition_falls_back_to_insert_id_then_to_the_json() {
    const P: u32 = 1 << 16;
    let s = setup(P);
    let payload = format!(
        "[{},{},{}]",
        ev("t", "a", "\"$insert_id\":\"ins-1\""),
        ev("t", "b", "\"distinct_id\":\"\",\"$insert_id\":\"ins-2\""),
        ev("t", "c", ""),
    );
    let decoded = s.data(&payload).unwrap();
    let all = events(&decoded);
    let packed = unpack(&decoded);
    let by_name = |name: &str| packed.iter().find(|(_, _, f)| f.name() == name).unwrap();
    assert_eq!(by_name("a").1, partition("ins-1", P));
    assert_eq!(by_name("a").2.distinct_id, "");
    assert_eq!(by_name("b").1, partition("ins-2", P));
    assert_eq!(by_name("b").2.distinct_id, "");
    assert_eq!(by_name("c").1, partition(&all[2], P));
}

#[test]
fn peer_address_partitions_with_ip_1() {
    const P: u32 = 1 << 16;
    let s = setup(P);
    let body = format!(
        "[{},{}]",
        ev("t", "a", ""),
        ev("t", "b", "\"distinct_id\":\"\"")
    );
    let decoded = s
        .request("ip=1", &body, Some("application/json"), None)
        .unwrap();
    let packed = unpack(&decoded);
    assert_eq!(decoded.batches.batches.len(), 1);
    for (_, p, fields) in packed {
        assert_eq!(p, partition(PEER, P));
        assert_eq!(fields.distinct_id, PEER);
    }
}

#[test]
fn one_partition_one_batch_per_token() {
    let s = setup(1);
    let payload: Vec<String> = (0..10)
        .map(|i| {
            let token = ["x", "y", "z"][i % 3];
            ev(token, "e", &format!("\"distinct_id\":\"d{i}\""))
        })
        .collect();
    let decoded = s.data(format!("[{}]", payload.join(","))).unwrap();
    let got: Vec<(&str, u32, usize)> = decoded
        .batches
        .batches
        .iter()
        .map(|b| (b.token.as_str(), b.partition, b.count))
        .collect();
    assert_eq!(got, [("x", 0, 4), ("y", 0, 3), ("z", 0, 3)]);
}

#[test]
fn default_partitions_are_four() {
    let s = Setup::with(plain());
    let payload: Vec<String> = (0..64)
        .map(|i| ev("t", "e", &format!("\"distinct_id\":\"user-{i}\"")))
        .collect();
    let decoded = s.data(format!("[{}]", payload.join(","))).unwrap();
    let mut seen: Vec<u32> = unpack(&decoded).iter().map(|(_, p, _)| *p).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [0, 1, 2, 3], "64 users reach all 4 partitions");
    for (_, p, fields) in unpack(&decoded) {
        assert_eq!(p, partition(&fields.distinct_id, 4));
    }
}

#[test]
fn day_hour_and_funnel_time_come_from_the_normalised_time() {
    let s = Setup::with(Options {
        max_age: 2.0 * 86_400.0,
        ..plain()
    });
    // NOW is 2023-11-14T22:13:20.5Z
    for (sent, day, field, whole) in [
        ("1699999000.999", "2023-11-14", "21:mp_funnel", "1699999000"),
        ("1699999000999", "2023-11-14", "21:mp_funnel", "1699999000"),
        ("1699919999.5", "2023-11-13", "23:mp_funnel", "1699919999"), // 23:59:59.5
        ("1699920000", "2023-11-14", "00:mp_funnel", "1699920000"),
        ("1800000000", "2023-11-14", "22:mp_funnel", "1700000000"), // future: the receive time
    ] {
        let props = format!(r#""time":{sent},"funnel":"f","step":1,"goal":"g""#);
        let decoded = s.data(ev("t", "mp_funnel", &props)).unwrap();
        let (_, _, packed) = &unpack(&decoded)[0];
        assert_eq!(
            (packed.day.as_str(), packed.field.as_str()),
            (day, field),
            "{sent}"
        );
        assert_eq!(packed.funnel.as_ref().unwrap()[1], whole, "{sent}");
    }
}

#[test]
fn a_requests_events_reach_their_partition_in_time_order() {
    // mixpanel-browser sends batches out of tracking order; the stream and the funnel counters must see
    // one user's events by time, while `events()` keeps the request's order.
    let options = Options {
        partitions: 1,
        ..plain()
    };
    let setup = Setup::with(options);
    let event = |name: &str, time: f64| {
        format!(
            r#"{{"event":"{name}","properties":{{"token":"tok","distinct_id":"u","time":{time}}}}}"#
        )
    };
    let body = format!(
        "[{},{},{},{}]",
        event("third", NOW - 10.0),
        event("first", NOW - 30.0),
        event("second", NOW - 20.0),
        event("also_third", NOW - 10.0)
    );
    let decoded = setup.request(b"", body.as_bytes(), None, None).unwrap();
    let names = |jsons: Vec<&[u8]>| -> Vec<String> {
        jsons
            .iter()
            .map(|j| {
                let text = std::str::from_utf8(j).unwrap();
                text[10..text.find("\",").unwrap()].to_owned()
            })
            .collect()
    };
    assert_eq!(
        names(decoded.events().collect()),
        ["third", "first", "second", "also_third"]
    );
    let packed: Vec<String> = unpack(&decoded)
        .into_iter()
        .map(|(_, _, p)| p.json)
        .collect();
    let packed_names = packed.iter().map(String::as_bytes).collect();
    assert_eq!(
        names(packed_names),
        ["first", "second", "third", "also_third"]
    );
}

#[test]
fn with_deduplication_each_event_ends_with_its_dedup_hash() {
    let s = Setup::with(Options {
        partitions: 1,
        dedup_window: 600,
        ..Options::default()
    });
    let body = format!(
        "[{},{},{}]",
        ev("t", "a", r#""distinct_id":"u","$insert_id":"i-1""#),
        ev("t", "mp_funnel", r#""funnel":"f","step":1,"goal":"g""#),
        ev("t", "a", r#""distinct_id":"u","$insert_id":"i-1""#),
    );
    let decoded = s.data(body).unwrap();
    let [batch] = &decoded.batches.batches[..] else {
        panic!("one partition")
    };
    let bulks = parse_bulks(&batch.packed);
    assert_eq!(bulks.len(), batch.args);
    // 4 + 1 for each plain event, 7 + 1 for the funnel event; all three have one time, so keep their order.
    assert_eq!(batch.args, 5 + 8 + 5);
    let (first, funnel, last) = (&bulks[4], &bulks[12], &bulks[17]);
    assert_eq!(first.len(), trackgate_native::resp::DEDUP_HASH_BYTES);
    assert!(
        funnel.is_empty(),
        "no $insert_id: nothing to deduplicate on"
    );
    assert_eq!(first, last, "the same event twice hashes the same");
}
