"""/import against a real gateway and a real Redis: the /import requests of the mixpanel-python 5.4.1
capture replayed byte for byte, and mixpanel-python's `import_data` and `merge` with the legacy project
secret and with a service account (and refused, cleanly, with wrong credentials); their events found in
the streams and counted on the days they happened."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import redis
import requests
from conftest import PARTITIONS, TRACKGATE, Gateway, RedisServer, create_project_keys, stored_events
from mixpanel import BufferedConsumer, Consumer, Mixpanel, MixpanelException, ServiceAccountCredentials
from redis.asyncio import Redis
from trackgate import keys, projects, service_accounts

CAPTURES = Path(__file__).resolve().parent / "spec" / "captures" / "people"
PYTHON_RUN = "mixpanel-python-5.4.1-people.jsonl"
# What the captured client was configured with: the project's token and legacy API secret, and a
# service account used with `project_id=12345` (here the project's name).
CAPTURED_TOKEN = "e3bc4100330c35722740fb8c6f5abddc"
CAPTURED_SECRET = "capture-secret-0123456789abcdef"
CAPTURED_ACCOUNT = ("capture-sa.user", "capture-sa-secret")
CAPTURED_PROJECT_ID = "12345"
DAY = 86400
# Imported days stay counted however old the captures grow.
RETENTION_DAYS = "36600"


@pytest.fixture(scope="module")
def import_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("import-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def import_gateway(import_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("import-gateway"),
        "--counter-retention-days",
        RETENTION_DAYS,
        redis_url=import_redis.url,
    )
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(import_redis: RedisServer) -> Iterator[redis.Redis]:
    with import_redis.client() as client:
        yield client


def captured_imports() -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (CAPTURES / PYTHON_RUN).read_text().splitlines()]
    return [line for line in lines if line["path"].split("?")[0].rstrip("/") == "/import"]


def replay_raw(gateway: Gateway, capture: dict[str, Any]) -> tuple[int, bytes]:
    """The captured request sent as its bytes: its request line, its headers in wire order, its body."""
    head = base64.b64decode(capture["raw_request_line_b64"])
    head += b"".join(f"{name}: {value}\r\n".encode() for name, value in capture["raw_headers"]) + b"\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + base64.b64decode(capture["body_b64"]))
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def sent_event(capture: dict[str, Any]) -> dict[str, Any]:
    """The event a captured request carries, decoded here with the standard library only."""
    form = dict(parse_qsl(base64.b64decode(capture["body_b64"]).decode()))
    event: dict[str, Any] = json.loads(form["data"])
    return event


def without_time(event: dict[str, Any]) -> tuple[str, str]:
    """An event's name and properties but its time (which the gateway sets for an event without one)."""
    properties = {k: v for k, v in event["properties"].items() if k != "time"}
    return event["event"], json.dumps(properties, sort_keys=True)


def day_of(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).date().isoformat()


def daily_count(client: redis.Redis, token: str, day: str, name: str) -> int:
    """The event's count that day, summed over the partitions, as reports read it."""
    total = 0
    for partition in range(PARTITIONS):
        value = client.hget(keys.daily_counts_key(token, partition, day), name)
        total += int(value) if value is not None else 0
    return total


def test_the_captured_import_requests_replayed(
    import_gateway: Gateway, import_redis: RedisServer, client: redis.Redis
) -> None:
    async def register() -> None:
        async with Redis.from_url(import_redis.url) as admin:
            await projects.create_project(
                admin, CAPTURED_PROJECT_ID, token=CAPTURED_TOKEN, secret=CAPTURED_SECRET
            )
            await service_accounts.add(admin, CAPTURED_TOKEN, *CAPTURED_ACCOUNT)

    asyncio.run(register())
    captures = captured_imports()
    assert len(captures) == 4  # import_data and merge, with the legacy secret and a service account
    for capture in captures:
        status, body = replay_raw(import_gateway, capture)
        assert (status, json.loads(body)) == (200, {"status": 1, "error": None}), body
    sent = [sent_event(capture) for capture in captures]
    stored = stored_events(client, CAPTURED_TOKEN)
    assert sorted(map(without_time, stored)) == sorted(map(without_time, sent))
    assert {e["token"] for e in stored} == {CAPTURED_TOKEN}
    for event in sent:
        if event["event"] == "$merge":
            continue
        when = event["properties"]["time"]
        assert when < time.time() - 5 * DAY  # older than /track takes
        [found] = [e for e in stored if e["event"] == event["event"]]
        assert found["time"] == found["properties"]["time"] == when
        # Counted on the day it happened.
        assert daily_count(client, CAPTURED_TOKEN, day_of(when), event["event"]) == 1
    merges = [e for e in stored if e["event"] == "$merge"]
    assert sorted(m["properties"]["$distinct_ids"][0] for m in merges) == ["anon-123", "anon-456"]
    # Merges carry no time: counted on the day they arrived.
    assert {day_of(m["time"]) for m in merges} == {day_of(m["received"]) for m in merges}
    days = {day_of(m["time"]) for m in merges}
    assert sum(daily_count(client, CAPTURED_TOKEN, day, "$merge") for day in days) == 2


def add_service_account(redis_url: str, project: str) -> tuple[str, str]:
    """A new service account's user and secret, through the real CLI."""
    args = [TRACKGATE, "project", "add-service-account", project, "--redis-url", redis_url]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert set(lines) == {"user", "secret"}
    return lines["user"], lines["secret"]


def events_named(client: redis.Redis, token: str, name: str) -> list[dict[str, Any]]:
    return [e for e in stored_events(client, token) if e["event"] == name]


def test_mixpanel_python_imports_and_merges_with_the_legacy_secret(
    import_gateway: Gateway, import_redis: RedisServer, client: redis.Redis
) -> None:
    token, secret = create_project_keys(import_redis.url, "python legacy import")
    mp = Mixpanel(token, consumer=Consumer(import_url=import_gateway.url("/import")))
    when = int(time.time()) - 90 * DAY
    mp.import_data(token, "user-1", "Backfilled", when, {"source": "csv"}, api_secret=secret)
    mp.merge(token, "anon-1", "user-1", api_secret=secret)
    [event] = events_named(client, token, "Backfilled")
    assert (event["time"], event["distinct_id"], event["properties"]["source"]) == (when, "user-1", "csv")
    assert daily_count(client, token, day_of(when), "Backfilled") == 1
    [merge] = events_named(client, token, "$merge")
    assert merge["properties"]["$distinct_ids"] == ["anon-1", "user-1"]
    # A made-up secret, or the public token: refused, and the client says so.
    for wrong in ("not-a-secret", token):
        with pytest.raises(MixpanelException, match="Invalid credentials"):
            mp.import_data(token, "user-1", "Refused", when, api_secret=wrong)
        with pytest.raises(MixpanelException, match="Invalid credentials"):
            mp.merge(token, "anon-2", "user-1", api_secret=wrong)
    # Another project's secret is that project's: events naming this one's token are not its.
    other_token, other = create_project_keys(import_redis.url, "python legacy elsewhere")
    with pytest.raises(MixpanelException, match="is not the token of the project"):
        mp.import_data(token, "user-1", "Refused", when, api_secret=other)
    for project in (token, other_token):
        assert events_named(client, project, "Refused") == []
    assert len(events_named(client, token, "$merge")) == 1


def test_mixpanel_python_imports_and_merges_with_a_service_account(
    import_gateway: Gateway, import_redis: RedisServer, client: redis.Redis
) -> None:
    name = "python service account"
    token, _ = create_project_keys(import_redis.url, name)
    user, secret = add_service_account(import_redis.url, name)
    url = import_gateway.url("/import")
    when = int(time.time()) - 400 * DAY

    def client_with(account_secret: str, project_id: str) -> Mixpanel:
        credentials = ServiceAccountCredentials(user, account_secret, project_id)
        return Mixpanel(token, consumer=Consumer(import_url=url, credentials=credentials))

    for project_id, event in ((name, "By name"), (token, "By token")):  # project_id: a name or a token
        mp = client_with(secret, project_id)
        mp.import_data(None, "user-2", event, when)
        mp.merge(None, "anon-3", "user-2")
        assert daily_count(client, token, day_of(when), event) == 1
    assert len(events_named(client, token, "$merge")) == 2
    other = "python service elsewhere"
    create_project_keys(import_redis.url, other)
    for wrong in (
        client_with("not-the-secret", name),
        client_with(secret, other),
        client_with(secret, "nope"),
    ):
        with pytest.raises(MixpanelException, match="Invalid credentials"):
            wrong.import_data(None, "user-2", "Refused", when)
        with pytest.raises(MixpanelException, match="Invalid credentials"):
            wrong.merge(None, "anon-4", "user-2")
    assert events_named(client, token, "Refused") == []


def test_buffered_imports_of_mixpanel_python(
    import_gateway: Gateway, import_redis: RedisServer, client: redis.Redis
) -> None:
    token, secret = create_project_keys(import_redis.url, "python buffered import")
    consumer = BufferedConsumer(import_url=import_gateway.url("/import"))  # batches of 50
    mp = Mixpanel(token, consumer=consumer)
    start = int(time.time()) - 30 * DAY
    for i in range(60):
        mp.import_data(token, f"user-{i % 7}", "Buffered", start + i * 3600, api_secret=secret)
    consumer.flush()
    stored = events_named(client, token, "Buffered")
    assert sorted(e["time"] for e in stored) == [start + i * 3600 for i in range(60)]
    days = {day_of(start + i * 3600) for i in range(60)}
    assert sum(daily_count(client, token, day, "Buffered") for day in days) == 60


def test_an_import_sent_again_is_stored_and_counted_once(
    import_gateway: Gateway, import_redis: RedisServer, client: redis.Redis
) -> None:
    token, secret = create_project_keys(import_redis.url, "retried import")
    when = int(time.time()) - 20 * DAY
    events = [
        {"event": "Retried", "properties": {"distinct_id": "u", "time": when + i, "$insert_id": f"r-{i}"}}
        for i in range(3)
    ]
    body = "\n".join(json.dumps(e) for e in events)

    def send() -> requests.Response:
        url = import_gateway.url("/import?strict=1")
        headers = {"content-type": "application/x-ndjson"}
        return requests.post(url, data=body, headers=headers, auth=(secret, ""), timeout=10)

    first = send()
    assert (first.status_code, first.json()) == (
        200,
        {"code": 200, "status": "OK", "num_records_imported": 3},
    )
    again = send()
    assert again.json() == {"code": 200, "status": "OK", "num_records_imported": 3, "duplicates": 3}
    assert len(events_named(client, token, "Retried")) == 3
    assert daily_count(client, token, day_of(when), "Retried") == 3
