"""/import in-process: the App with a memory sink, fixed credentials (TOKEN's secret) and a fixed clock
(see memory_gateway.py). Every answer: the 401 shape, 413, strict's shapes, and what the decoder keeps of
each body (the form mixpanel-python sends, a JSON array, NDJSON, gzip); the time rules and the counting
of old days. The credentials themselves are checked against a real registry in test_import_clients.py."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import json
import re
from typing import Any
from urllib.parse import urlencode

import pytest
from memory_gateway import (
    NOW,
    SECRET,
    TOKEN,
    FixedCredentials,
    FixedTokens,
    MemoryBuckets,
    MemorySink,
    Proto,
    answer,
    counted,
    running,
)
from trackgate._native import IMPORT_EARLIEST_TIME
from trackgate.gateway.imports import MAX_FUTURE_SKEW
from trackgate.rate_limit import RateLimit

DAY = 86400
INVALID_CREDENTIALS = {"code": 401, "error": "Invalid credentials", "status": 0}
LEGACY = (("authorization", "Basic " + base64.b64encode(f"{SECRET}:".encode()).decode()),)
JSON_BODY = (*LEGACY, ("content-type", "application/json"))
NDJSON_BODY = (*LEGACY, ("content-type", "application/x-ndjson"))


def imported(n: int = 0, *, days_ago: float = 10, **props: Any) -> dict[str, Any]:
    """An event as mixpanel-python's `import_data` makes it, `days_ago` days before NOW."""
    properties = {
        "token": TOKEN,
        "distinct_id": f"user-{n}",
        "time": NOW - days_ago * DAY,
        "$insert_id": f"insert-{n}",
        **props,
    }
    return {"event": "Imported", "properties": {k: v for k, v in properties.items() if v is not None}}


def python_form(*events: dict[str, Any]) -> bytes:
    """The form body of mixpanel-python's `import_data`: one event's JSON, `verbose`, `ip`, `api_key`."""
    sent = events[0] if len(events) == 1 else list(events)
    return urlencode({"data": json.dumps(sent), "verbose": 1, "ip": 0, "api_key": TOKEN}).encode()


def post(
    body: bytes,
    query: str = "",
    headers: tuple[tuple[str, str], ...] = LEGACY,
    sink: MemorySink | None = None,
    **kwargs: Any,
) -> Proto:
    return answer(query, body, method="POST", headers=headers, sink=sink, path="/import", **kwargs)


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"\n".join(json.dumps(e).encode() for e in events) + b"\n"


# the form mixpanel-python sends


@pytest.mark.parametrize("path", ["/import", "/import/"])
def test_mixpanel_pythons_import_is_stored_on_its_own_day(path: str) -> None:
    sink = MemorySink()
    proto = answer("", python_form(imported()), method="POST", headers=LEGACY, sink=sink, path=path)
    assert (proto.status, json.loads(proto.body)) == (200, {"status": 1, "error": None})
    [stored] = sink.stored()
    assert (stored["token"], stored["time"], stored["received"]) == (TOKEN, NOW - 10 * DAY, NOW)
    [(batches, count)] = sink.submitted
    assert count == 1
    [batch] = batches
    # Counted: its day is packed for the counting function.
    assert time_day(NOW - 10 * DAY).encode() in batch.packed
    assert counted("requests", route="import", status=200) >= 1


def time_day(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).date().isoformat()


def test_an_event_may_leave_the_token_out_and_one_that_gives_another_is_refused() -> None:
    sink = MemorySink()
    other = imported(1, token="tk-someone-else")
    proto = post(json.dumps([imported(0, token=None), other]).encode(), "verbose=1", JSON_BODY, sink)
    assert proto.status == 400
    [record] = json.loads(proto.body)["failed_records"]
    assert (record["index"], record["field"], record["kind"]) == (1, "properties.token", "token_invalid")
    [stored] = sink.stored()
    assert stored["token"] == TOKEN
    assert "token" not in stored["properties"]


# credentials


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic " + base64.b64encode(b"not-the-secret:").decode(),
        "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode(),  # the public token is not enough
        "Bearer " + SECRET,
        "Basic not-base64!",
    ],
)
@pytest.mark.parametrize("query", ["", "strict=1", "verbose=1&callback=cb"])
def test_wrong_credentials_are_401_in_mixpanels_shape_before_the_body_is_read(
    authorization: str | None, query: str
) -> None:
    async def scenario() -> None:
        async with running() as gateway:
            body = python_form(imported())
            unread = Proto([body])
            headers = (("authorization", authorization),) if authorization else ()
            proto = await gateway.call("POST", query, body, headers, proto=unread, path="/import")
            assert proto.status == 401
            assert json.loads(proto.body) == INVALID_CREDENTIALS
            assert proto.header("content-type") == "application/json"
            assert (proto.header("www-authenticate") or "").startswith('Basic realm="trackgate"')
            assert unread.reads == 0
            assert not gateway.sink.submitted

    asyncio.run(scenario())


def test_credentials_that_cannot_be_checked_are_503_with_retry_after() -> None:
    proto = post(python_form(imported()), credentials=FixedCredentials(unreachable=True))
    assert (proto.status, proto.header("retry-after")) == (503, "2")
    assert (
        json.loads(proto.body)["error"]
        == "the credentials cannot be checked: Redis is unreachable; retry later"
    )


# bodies


def test_a_json_array_ndjson_and_gzip_bodies() -> None:
    events = [imported(n) for n in range(3)]
    bodies = [
        (json.dumps(events).encode(), JSON_BODY),
        (ndjson(*events), NDJSON_BODY),
        (gzip.compress(ndjson(*events)), (*NDJSON_BODY, ("content-encoding", "gzip"))),
        (gzip.compress(json.dumps(events).encode()), (*JSON_BODY, ("content-encoding", "gzip"))),
    ]
    for body, headers in bodies:
        sink = MemorySink()
        proto = post(body, "strict=1", headers, sink)
        assert (proto.status, json.loads(proto.body)) == (
            200,
            {"code": 200, "status": "OK", "num_records_imported": 3},
        ), headers
        assert sorted(e["insert_id"] for e in sink.stored()) == ["insert-0", "insert-1", "insert-2"]


def test_ndjson_lines_that_are_not_objects_fail_by_index() -> None:
    sink = MemorySink()
    body = ndjson(imported(0)) + b"[1, 2]\n\n" + ndjson(imported(2))
    proto = post(body, "strict=1", NDJSON_BODY, sink)
    assert proto.status == 400
    [record] = json.loads(proto.body)["failed_records"]
    assert record == {
        "index": 1,
        "$insert_id": None,
        "field": "",
        "message": "event 1 must be an object, got an array",
    }
    assert len(sink.stored()) == 2


def test_more_than_2000_events_or_10_mb_are_413_naming_the_limit() -> None:
    many = [imported(n) for n in range(2001)]
    proto = post(ndjson(*many), "strict=1", NDJSON_BODY)
    assert proto.status == 413
    assert json.loads(proto.body) == {
        "code": 413,
        "status": "Request Entity Too Large",
        "error": "more than 2000 events in one request; send smaller batches",
        "num_records_imported": 0,
    }
    verbose = post(python_form(*many))
    assert verbose.status == 413
    assert "2000" in json.loads(verbose.body)["error"]
    # Refused by its Content-Length, unread: 10 MB by default, here a smaller limit.
    large = post(ndjson(*many[:50]), "strict=1", NDJSON_BODY, max_request_bytes=1000)
    assert (large.status, json.loads(large.body)["error"]) == (413, "the request is larger than 1000 bytes")
    gzipped = (*NDJSON_BODY, ("content-encoding", "gzip"))
    inflated = post(gzip.compress(b" " * 20_000 + ndjson(imported())), "", gzipped, max_request_bytes=10_000)
    assert (inflated.status, json.loads(inflated.body)) == (
        413,
        {
            "status": 0,
            "error": "the gzip data inflates to more than 10000 bytes, the request limit",
            "num_records_imported": 0,
            "failed_records": [],
        },
    )


# strict


def test_strict_answers_the_failed_records_and_stores_the_valid_ones() -> None:
    sink = MemorySink()
    events = [
        imported(0),
        imported(1, time=None),
        imported(2, distinct_id=None),
        imported(3, **{"$insert_id": None}),  # type: ignore[arg-type]
        imported(4, distinct_id="undefined"),
        imported(5),
        {"event": "", "properties": {"$insert_id": "insert-6", "distinct_id": "u", "time": NOW}},
    ]
    proto = post(json.dumps(events).encode(), "strict=1", JSON_BODY, sink)
    assert proto.status == 400
    answer = json.loads(proto.body)
    assert (answer["code"], answer["status"], answer["num_records_imported"]) == (400, "Bad Request", 2)
    assert answer["error"].startswith(
        "5 of 7 events failed; the first, at index 1: properties.time is missing"
    )
    assert [(r["index"], r["$insert_id"], r["field"]) for r in answer["failed_records"]] == [
        (1, "insert-1", "properties.time"),
        (2, "insert-2", "properties.distinct_id"),
        (3, None, "properties.$insert_id"),
        (4, "insert-4", "properties.distinct_id"),
        (6, "insert-6", "event"),
    ]
    assert "placeholder" in answer["failed_records"][3]["message"]
    assert sorted(e["insert_id"] for e in sink.stored()) == ["insert-0", "insert-5"]


@pytest.mark.parametrize("placeholder", ["anon", "NULL", "undefined", "0", "-1", "[]", "{}", "", " none "])
def test_strict_refuses_placeholder_distinct_ids(placeholder: str) -> None:
    proto = post(json.dumps([imported(0, distinct_id=placeholder)]).encode(), "strict=1", JSON_BODY)
    assert proto.status == 400
    [record] = json.loads(proto.body)["failed_records"]
    assert record["field"] == "properties.distinct_id"
    # Without strict, an id is an id.
    assert post(json.dumps([imported(0, distinct_id=placeholder)]).encode(), "", JSON_BODY).status == 200


def test_without_strict_every_answer_is_tracks_verbose_one() -> None:
    proto = post(json.dumps([imported(0), imported(1, time="yesterday")]).encode(), "verbose=1", JSON_BODY)
    assert proto.status == 400
    answer = json.loads(proto.body)
    assert (answer["status"], answer["num_records_imported"]) == (0, 1)
    assert answer["failed_records"][0]["kind"] == "time_invalid"
    # JSON whatever `verbose` says: mixpanel-python reads `status` from every answer.
    plain = post(json.dumps([imported(1, time="yesterday")]).encode(), "", JSON_BODY)
    assert (plain.status, json.loads(plain.body)["status"]) == (400, 0)
    ok = post(json.dumps([imported(1)]).encode(), "callback=cb&img=1", JSON_BODY)
    assert (ok.status, ok.text, ok.header("content-type")) == (
        200,
        '{"status":1,"error":null}',
        "application/json",
    )


# time


def test_times_from_1971_to_an_hour_ahead_later_ones_set_to_now() -> None:
    sink = MemorySink()
    events = [
        imported(0, time=IMPORT_EARLIEST_TIME),
        imported(1, time=IMPORT_EARLIEST_TIME - 1),
        imported(2, time=NOW + MAX_FUTURE_SKEW),
        imported(3, time=NOW + MAX_FUTURE_SKEW + 1),
        imported(4, time=(NOW - 3 * 365 * DAY) * 1000),  # milliseconds
    ]
    proto = post(json.dumps(events).encode(), "verbose=1", JSON_BODY, sink)
    assert proto.status == 400
    [record] = json.loads(proto.body)["failed_records"]
    assert (record["index"], record["kind"]) == (1, "time_too_old")
    times = {e["insert_id"]: e["time"] for e in sink.stored()}
    assert times == {
        "insert-0": IMPORT_EARLIEST_TIME,
        "insert-2": NOW + MAX_FUTURE_SKEW,
        "insert-3": NOW,
        "insert-4": NOW - 3 * 365 * DAY,
    }


def test_days_past_the_counter_retention_are_stored_not_counted() -> None:
    retention = 30
    day = NOW // DAY * DAY
    sink = MemorySink()
    events = [
        imported(0, time=day - retention * DAY),  # the oldest day still counted
        imported(1, time=day - retention * DAY - 1),  # the day before: stored only
        imported(2, days_ago=2 * 365),
    ]
    proto = post(json.dumps(events).encode(), "strict=1", JSON_BODY, sink, counter_retention_days=retention)
    assert json.loads(proto.body)["num_records_imported"] == 3
    assert {e["insert_id"] for e in sink.stored()} == {"insert-0", "insert-1", "insert-2"}
    packed = b"".join(batch.packed for batches, _ in sink.submitted for batch in batches)
    assert re.findall(rb"\d{4}-\d\d-\d\d", packed) == [time_day(day - retention * DAY).encode()]


# $merge


def test_merge_events_name_two_ids() -> None:
    sink = MemorySink()
    merge = {"event": "$merge", "properties": {"$distinct_ids": ["anon-1", "user-1"], "token": TOKEN}}
    proto = post(python_form(merge), sink=sink)
    assert (proto.status, json.loads(proto.body)) == (200, {"status": 1, "error": None})
    [stored] = sink.stored()
    assert stored["event"] == "$merge"
    assert stored["properties"]["$distinct_ids"] == ["anon-1", "user-1"]
    for ids in (["anon-1"], ["a", "b", "c"], "anon-1", ["a", ""], ["a", {"b": 1}], None):
        wrong = {"event": "$merge", "properties": {"$distinct_ids": ids}}
        refused = post(json.dumps(wrong).encode(), "verbose=1", JSON_BODY)
        assert refused.status == 400, ids
        [record] = json.loads(refused.body)["failed_records"]
        assert (record["kind"], record["field"]) == ("merge_invalid", "properties.$distinct_ids")
    strict = {"time": NOW, "$insert_id": "m-1", "$distinct_ids": ["anon-1", "user-1"]}
    assert (
        post(json.dumps({"event": "$merge", "properties": strict}).encode(), "strict=1", JSON_BODY).status
        == 200
    )
    placeholder = {**strict, "$distinct_ids": ["anon", "u"]}
    sent = {"event": "$merge", "properties": placeholder}
    assert post(json.dumps(sent).encode(), "strict=1", JSON_BODY).status == 400


# the flow /track's: rate limits


def test_a_project_past_its_rate_limit_is_429_in_the_shape_asked() -> None:
    def limited(query: str) -> Proto:
        sink = MemorySink()
        tokens = FixedTokens(TOKEN, limits={TOKEN: RateLimit.of(1)})
        proto = post(json.dumps([imported(0)]).encode(), query, JSON_BODY, sink, tokens=tokens,
                     buckets=MemoryBuckets(levels={TOKEN: 0.0}))  # fmt: skip
        assert (proto.status, sink.submitted) == (429, [])
        assert int(proto.header("retry-after") or 0) >= 1
        return proto

    strict = json.loads(limited("strict=1").body)
    assert (strict["code"], strict["status"], strict["num_records_imported"]) == (429, "Too Many Requests", 0)
    assert "rate limit" in strict["error"]
    assert json.loads(limited("").body)["status"] == 0
