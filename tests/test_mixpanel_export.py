"""Mixpanel's raw event export, `/api/2.0/export` on the reports process, against a real gateway and a
real Redis: events sent through /track (generated, by mixpanel-python, and the official clients'
captured requests replayed byte for byte), read back as Mixpanel's export writes them, and compared with
what was sent and with trackgate's own `/api/export`."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
import requests
from captures import CAPTURED_TOKEN, captured, replay, sent_objects
from conftest import Gateway, RedisServer, create_project_keys
from mixpanel import Consumer, Mixpanel
from trackgate import mixpanel_export

DAY = 86400
TODAY = dt.datetime.now(dt.UTC).date()
# Three whole UTC days, all past: no event is ever in the future, whatever the hour.
DAYS = [TODAY - dt.timedelta(days=n) for n in (5, 4, 3)]
NAMES = ["Signed up", "Page view", "Purchase"]
CAPTURE_DAY = dt.date(2026, 11, 26)


class Sent(NamedTuple):
    """An event as a client sent it, with when the gateway could have received it (ms)."""

    event: dict[str, Any]
    after_ms: int
    before_ms: int


class Project(NamedTuple):
    token: str
    secret: str
    sent: list[Sent]


def midnight(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def seconds(sent_time: float) -> float:
    """A sent `time` in seconds, as the decoder reads it (milliseconds from 1e11 on)."""
    return sent_time / 1000 if sent_time >= 1e11 else sent_time


@pytest.fixture(scope="module")
def export_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: the captured clients' token is a project here only."""
    server = RedisServer(tmp_path_factory.mktemp("export-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def export_gateway(export_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Events up to 30 days old are accepted: the generated days and the captures' day."""
    gw = Gateway(tmp_path_factory.mktemp("export"), "--max-age", str(30 * DAY), redis_url=export_redis.url)
    gw.start()
    yield gw
    gw.stop()


def population(token: str) -> list[dict[str, Any]]:
    """Events spread over each of DAYS, plus one at each day's first and last instant; some with `time`
    in milliseconds, some with a number as distinct_id, every kind of property value."""
    events = []
    for day in DAYS:
        start = midnight(day)
        times: list[float] = [start, start + DAY - 0.001, *(start + 61 + i * 2879.9 for i in range(30))]
        for i, at in enumerate(times):
            properties: dict[str, Any] = {
                "token": token,
                "distinct_id": 42 if i % 10 == 3 else f"user-{i % 7}",
                "time": int(at * 1000) if i % 4 == 1 else at,
                "$insert_id": uuid.uuid4().hex,
                "n": i,
                "nested": {"list": [1, "two", None, 4.5], "flag": False},
                "unicode": "héllo ✓ 日本語",
                "mp_lib": "python",
            }
            events.append({"event": NAMES[i % len(NAMES)], "properties": properties})
    return events


def send(gateway: Gateway, events: list[dict[str, Any]]) -> list[Sent]:
    sent = []
    for i in range(0, len(events), 25):
        batch = events[i : i + 25]
        after = int(time.time() * 1000)
        r = requests.post(gateway.url("/track"), data={"data": json.dumps(batch), "verbose": "1"}, timeout=10)
        assert r.json() == {"status": 1, "error": None}, r.text
        before = int(time.time() * 1000)
        sent += [Sent(event, after, before) for event in batch]
    return sent


@pytest.fixture(scope="module")
def project(export_gateway: Gateway, export_redis: RedisServer) -> Project:
    token, secret = create_project_keys(export_redis.url, "mixpanel export")
    return Project(token, secret, send(export_gateway, population(token)))


def mixpanel_export_of(gateway: Gateway, secret: str | None, **params: str) -> requests.Response:
    auth = (secret, "") if secret is not None else None
    return requests.get(
        gateway.reports_url(mixpanel_export.PATH), params=params, auth=auth, stream=True, timeout=30
    )


def lines(r: requests.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    found = [json.loads(line) for line in r.iter_lines()]
    if found:
        assert r.headers["transfer-encoding"] == "chunked"  # streamed
    assert all(set(line) == {"event", "properties"} for line in found)
    return found


def exported(gateway: Gateway, secret: str, **params: str) -> dict[str, dict[str, Any]]:
    """The lines of an export by `$insert_id`, each once."""
    found = lines(mixpanel_export_of(gateway, secret, **params))
    by_id = {line["properties"]["$insert_id"]: line for line in found}
    assert len(by_id) == len(found)
    return by_id


def expected_line(sent: dict[str, Any], *, ip: str | None = None) -> dict[str, Any]:
    """What Mixpanel's export writes of an event sent so, less `mp_processing_time_ms`: the properties as
    sent but the token, `time` in whole seconds, `distinct_id` a string."""
    properties = {k: v for k, v in sent["properties"].items() if k != "token"}
    properties["time"] = int(seconds(properties["time"]))
    if "distinct_id" in properties:
        properties["distinct_id"] = str(properties["distinct_id"])
    if ip is not None:
        properties["ip"] = ip
    return {"event": sent["event"], "properties": properties}


def check(line: dict[str, Any], sent: Sent) -> None:
    """A line is the sent event as Mixpanel writes it, received while its request was answered."""
    properties = dict(line["properties"])
    processed = properties.pop("mp_processing_time_ms")
    assert isinstance(processed, int)
    assert sent.after_ms - 1 <= processed <= sent.before_ms + 1
    assert {**line, "properties": properties} == expected_line(sent.event)
    assert isinstance(properties["time"], int)


def on_days(
    project: Project, first: dt.date, last: dt.date, names: set[str] | None = None
) -> dict[str, Sent]:
    """The sent events of `names` (all when None) whose time falls from `first` to `last`, by $insert_id."""
    lo, hi = midnight(first), midnight(last) + DAY
    return {
        s.event["properties"]["$insert_id"]: s
        for s in project.sent
        if lo <= seconds(s.event["properties"]["time"]) < hi and (names is None or s.event["event"] in names)
    }


def test_every_event_of_the_range_as_mixpanel_writes_it(export_gateway: Gateway, project: Project) -> None:
    params = {"from_date": str(DAYS[0]), "to_date": str(DAYS[-1])}
    found = exported(export_gateway, project.secret, **params)
    want = on_days(project, DAYS[0], DAYS[-1])
    assert len(want) == len(project.sent) == 96
    assert found.keys() == want.keys()
    for insert_id, line in found.items():
        check(line, want[insert_id])
    # The same events as trackgate's own export of the range, one implementation underneath.
    own = requests.get(
        export_gateway.reports_url("/api/export"),
        params={"from": params["from_date"], "to": params["to_date"]},
        auth=(project.secret, ""),
        timeout=30,
    )
    stored = [json.loads(line) for line in own.iter_lines()]
    assert {e["insert_id"] for e in stored} == found.keys()
    for e in stored:
        line = found[e["insert_id"]]
        assert (line["event"], line["properties"]["time"]) == (e["event"], int(e["time"]))
        assert line["properties"]["mp_processing_time_ms"] == round(e["received"] * 1000)


def test_the_dates_are_whole_utc_days_both_included(export_gateway: Gateway, project: Project) -> None:
    for first, last in [(DAYS[1], DAYS[1]), (DAYS[1], DAYS[2]), (DAYS[0], DAYS[0])]:
        found = exported(export_gateway, project.secret, from_date=str(first), to_date=str(last))
        want = on_days(project, first, last)
        assert found.keys() == want.keys(), (first, last)
        # The day's first and last instant are in it.
        times = sorted(line["properties"]["time"] for line in found.values())
        assert (times[0], times[-1]) == (int(midnight(first)), int(midnight(last)) + DAY - 1)
    empty = mixpanel_export_of(export_gateway, project.secret, from_date=str(TODAY), to_date=str(TODAY))
    assert lines(empty) == []


def test_the_event_filter(export_gateway: Gateway, project: Project) -> None:
    span = {"from_date": str(DAYS[0]), "to_date": str(DAYS[-1])}
    for names in (["Purchase"], ["Purchase", "Signed up"], ["Purchase", "Purchase"]):
        found = exported(export_gateway, project.secret, **span, event=json.dumps(names))
        want = on_days(project, DAYS[0], DAYS[-1], set(names))
        assert found.keys() == want.keys(), names
        assert {line["event"] for line in found.values()} == set(names)
    assert lines(mixpanel_export_of(export_gateway, project.secret, **span, event='["no such event"]')) == []


def test_the_limit(export_gateway: Gateway, project: Project) -> None:
    span = {"from_date": str(DAYS[0]), "to_date": str(DAYS[-1])}
    every = exported(export_gateway, project.secret, **span)
    for limit in (1, 7, 95):
        found = exported(export_gateway, project.secret, **span, limit=str(limit))
        assert len(found) == limit
        assert all(every[insert_id] == line for insert_id, line in found.items())
    assert exported(export_gateway, project.secret, **span, limit=str(mixpanel_export.MAX_LIMIT)) == every
    purchases = exported(export_gateway, project.secret, **span, limit="3", event='["Purchase"]')
    assert len(purchases) == 3
    assert {line["event"] for line in purchases.values()} == {"Purchase"}


def test_time_in_milliseconds(export_gateway: Gateway, project: Project) -> None:
    span = {"from_date": str(DAYS[1]), "to_date": str(DAYS[1])}
    in_ms = exported(export_gateway, project.secret, **span, time_in_ms="true")
    in_seconds = exported(export_gateway, project.secret, **span, time_in_ms="false")
    want = on_days(project, DAYS[1], DAYS[1])
    assert in_ms.keys() == in_seconds.keys() == want.keys()
    for insert_id, line in in_ms.items():
        assert line["properties"]["time"] == round(
            seconds(want[insert_id].event["properties"]["time"]) * 1000
        )
        assert line["properties"]["time"] // 1000 == in_seconds[insert_id]["properties"]["time"]


BAD: list[tuple[dict[str, str | None], str]] = [
    ({"from_date": None}, "from_date"),
    ({"to_date": None}, "to_date"),
    ({"from_date": "2026-13-01", "to_date": "2026-11-01"}, "from_date"),
    ({"from_date": "2026-11-01", "to_date": "yesterday"}, "to_date"),
    ({"from_date": "2026-11-02", "to_date": "2026-11-01"}, "from_date/to_date"),
    ({"from_date": "2024-01-01", "to_date": "2026-11-01"}, "from_date/to_date"),
    ({"event": "Purchase"}, "event"),
    ({"event": '{"Purchase": 1}'}, "event"),
    ({"event": "[]"}, "event"),
    ({"event": json.dumps([f"e{i}" for i in range(mixpanel_export.MAX_EVENT_NAMES + 1)])}, "event"),
    ({"limit": "0"}, "limit"),
    ({"limit": str(mixpanel_export.MAX_LIMIT + 1)}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"where": 'properties["n"] > 3'}, "where"),
    ({"time_in_ms": "maybe"}, "time_in_ms"),
]


@pytest.mark.parametrize(("params", "named"), BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_parameters_are_refused_naming_them(
    export_gateway: Gateway, project: Project, params: dict[str, str | None], named: str
) -> None:
    """Each on an otherwise good query (None: the parameter left out)."""
    span: dict[str, str | None] = {"from_date": "2026-11-01", "to_date": "2026-11-02"}
    r = requests.get(
        export_gateway.reports_url(mixpanel_export.PATH),
        params={k: v for k, v in {**span, **params}.items() if v is not None},
        auth=(project.secret, ""),
        timeout=10,
    )
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"].split(":")[0] == named


def test_the_secret_is_needed_and_reads_its_own_project(
    export_gateway: Gateway, project: Project, export_redis: RedisServer
) -> None:
    span = {"from_date": str(DAYS[0]), "to_date": str(DAYS[-1])}
    for secret in (None, "not-a-secret"):
        r = mixpanel_export_of(export_gateway, secret, **span)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic")
    _, other = create_project_keys(export_redis.url, "mixpanel export elsewhere")
    assert lines(mixpanel_export_of(export_gateway, other, **span)) == []
    r = requests.post(
        export_gateway.reports_url(mixpanel_export.PATH), data=span, auth=(project.secret, ""), timeout=10
    )
    assert r.status_code == 405
    # With a trailing slash, as Mixpanel's older documentation writes the path.
    slash = requests.get(
        export_gateway.reports_url(mixpanel_export.PATH + "/"),
        params=span,
        auth=(project.secret, ""),
        timeout=30,
    )
    assert len(lines(slash)) == len(project.sent)


def test_mixpanel_python_events_exported(export_gateway: Gateway, export_redis: RedisServer) -> None:
    token, secret = create_project_keys(export_redis.url, "python library export")
    mp = Mixpanel(token, consumer=Consumer(events_url=export_gateway.url("/track")))
    after = int(time.time() * 1000)
    properties = {"plan": "pro", "nested": {"a": [1, 2.5, None]}, "special": "+/= &?#%\"'<>\\"}
    mp.track("python-user", "Signed Up", properties)
    mp.track("python-user", "Purchase", {"amount": 9.99})
    before = int(time.time() * 1000)
    found = lines(mixpanel_export_of(export_gateway, secret, from_date=str(TODAY), to_date=str(TODAY)))
    assert sorted(line["event"] for line in found) == ["Purchase", "Signed Up"]
    for line in found:
        props = line["properties"]
        assert after - 1 <= props.pop("mp_processing_time_ms") <= before + 1
        assert props["distinct_id"] == "python-user"
        assert len(props["$insert_id"]) == 32
        assert props["mp_lib"] == "python"
        assert "token" not in props
        assert after // 1000 - 1 <= props["time"] <= before // 1000
    signed_up = next(line for line in found if line["event"] == "Signed Up")
    assert {k: signed_up["properties"][k] for k in properties} == properties


def test_the_official_clients_captured_events_exported(
    export_gateway: Gateway, export_redis: RedisServer
) -> None:
    _, secret = create_project_keys(export_redis.url, "captured clients", CAPTURED_TOKEN)
    want: dict[str, dict[str, Any]] = {}
    track_requests = [
        capture
        for name in ("mixpanel-python-5.4.1.jsonl", "mixpanel-browser-2.82.1.jsonl")
        for capture in captured(name, ("/track",))
    ]
    for capture in track_requests:
        r = replay(export_gateway, capture)
        assert r.status_code == 200, r.text
        ip = "127.0.0.1" if "ip=1" in capture["path"] else None
        for event in sent_objects(capture):
            want[event["properties"]["$insert_id"]] = expected_line(event, ip=ip)
    assert len(want) == 68
    found = exported(export_gateway, secret, from_date=str(CAPTURE_DAY), to_date=str(TODAY))
    assert found.keys() == want.keys()
    for insert_id, line in found.items():
        assert isinstance(line["properties"].pop("mp_processing_time_ms"), int)
        assert line == want[insert_id], insert_id
