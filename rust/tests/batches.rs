//! Valid events grouped by (token, partition), partition = CRC-32 of the distinct_id modulo the
//! partitions, and packed as `count * FIELDS_PER_EVENT` RESP bulk strings per batch.

mod common;

use common::{events, named_event, parse_bulks, Setup, NOW, PEER};
use trackgate_native::{Decoded, Options, FIELDS_PER_EVENT};

fn partition(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions
}

fn setup(partitions: u32) -> Setup {
    Setup::with(Options {
        partitions,
        ..Options::default()
    })
}

/// The fields of every packed event, in batch order, with its batch's token and partition.
fn unpack(decoded: &Decoded) -> Vec<(String, u32, Vec<String>)> {
    let mut out = Vec::new();
    for batch in &decoded.batches.batches {
        let bulks = parse_bulks(&batch.packed);
        assert_eq!(bulks.len(), batch.count * FIELDS_PER_EVENT);
        for fields in bulks.chunks(FIELDS_PER_EVENT) {
            let fields = fields
                .iter()
                .map(|f| String::from_utf8(f.clone()).unwrap())
                .collect();
            out.push((batch.token.clone(), batch.partition, fields));
        }
    }
    out
}

fn ev(token: &str, name: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"event":"{name}","properties":{{"token":"{token}"{sep}{extra}}}}}"#)
}

#[test]
fn seven_fields_per_event() {
    assert_eq!(FIELDS_PER_EVENT, 7);
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
        assert_eq!(fields[0], all[*i], "the first field is the event JSON");
        assert_eq!(fields[1], format!("e{i}"));
        assert_eq!(fields[2], id);
        assert_eq!(fields[3], "1700000000");
        assert_eq!(&fields[4..], ["", "", ""]);
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
        assert_eq!(p, partition(&fields[2], 16));
        assert_eq!(fields[1], format!("e{}", fields[2]));
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
    assert_eq!(
        packed[0].2,
        [
            all[0].as_str(),
            "mp_funnel",
            "u1",
            "1699999000",
            "F1",
            "2",
            "G"
        ]
    );
    assert_eq!(
        packed[1].2,
        [all[1].as_str(), "game", "u1", "1699999000", "", "", ""]
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
    let by_name = |name: &str| packed.iter().find(|(_, _, f)| f[1] == name).unwrap();
    assert_eq!(by_name("a").1, partition("ins-1", P));
    assert_eq!(by_name("a").2[2], "");
    assert_eq!(by_name("b").1, partition("ins-2", P));
    assert_eq!(by_name("b").2[2], "");
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
        assert_eq!(fields[2], PEER);
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
fn default_partitions_are_sixteen() {
    let s = Setup::default();
    let payload: Vec<String> = (0..64)
        .map(|i| ev("t", "e", &format!("\"distinct_id\":\"user-{i}\"")))
        .collect();
    let decoded = s.data(format!("[{}]", payload.join(","))).unwrap();
    let mut seen: Vec<u32> = unpack(&decoded).iter().map(|(_, p, _)| *p).collect();
    assert!(seen.iter().all(|p| *p < 16));
    seen.sort_unstable();
    seen.dedup();
    assert!(
        seen.len() > 8,
        "64 users should reach most of 16 partitions"
    );
    for (_, p, fields) in unpack(&decoded) {
        assert_eq!(p, partition(&fields[2], 16));
    }
}

#[test]
fn time_field_is_whole_seconds_of_the_normalised_time() {
    let s = setup(2);
    for (sent, whole) in [
        ("1699999000.999", "1699999000"),
        ("1699999000", "1699999000"),
        ("1699999000999", "1699999000"),
        ("1800000000", "1700000000"),
    ] {
        let decoded = s.data(ev("t", "e", &format!("\"time\":{sent}"))).unwrap();
        assert_eq!(unpack(&decoded)[0].2[3], whole, "{sent}");
    }
}

#[test]
fn a_requests_events_reach_their_partition_in_time_order() {
    // mixpanel-browser sends batches out of tracking order; the stream and the funnel counters must see
    // one user's events by time, while `events()` keeps the request's order.
    let options = Options {
        partitions: 1,
        ..Options::default()
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
    let batch = &decoded.batches.batches[0];
    let packed = parse_bulks(&batch.packed);
    let packed_names = packed
        .iter()
        .step_by(FIELDS_PER_EVENT)
        .map(Vec::as_slice)
        .collect();
    assert_eq!(
        names(packed_names),
        ["first", "second", "third", "also_third"]
    );
}
