"""Retries made harmless, end to end: two gateway processes (real Granian) on one Redis, mixpanel-python
sending its events twice as a client does that heard no answer, and the captured mixpanel-python and
mixpanel-browser requests replayed twice. Each event is stored once, the verbose answer of a retry says
how many of its events were duplicates, and /metrics counts them."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from conftest import CAPTURE_ORIGIN, Gateway, RedisServer, create_project, stored_events
from mixpanel import Consumer, Mixpanel

CAPTURES = Path(__file__).resolve().parent / "spec" / "captures"
CAPTURED_TOKEN = "e3bc4100330c35722740fb8c6f5abddc"


@pytest.fixture(scope="module")
def dedup_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("dedup-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateways(dedup_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gateway]]:
    """Two gateway processes, of two workers each, sharing one Redis; events of the capture day taken."""
    create_project(dedup_redis.url, "captured clients", token=CAPTURED_TOKEN)
    started = []
    for name in ("a", "b"):
        gateway = Gateway(
            tmp_path_factory.mktemp(f"dedup-gateway-{name}"),
            "--workers", "2",
            "--max-age", str(10 * 365 * 86400),
            redis_url=dedup_redis.url,
        )  # fmt: skip
        gateway.start()
        started.append(gateway)
    yield started
    for gateway in started:
        gateway.stop()


@pytest.fixture
def client(dedup_redis: RedisServer) -> Iterator[redis.Redis]:
    with dedup_redis.client() as c:
        yield c


def deduplicated(gateway: Gateway) -> float:
    """trackgate_events_deduplicated_total on the gateway's /metrics (its workers' summed)."""
    text = requests.get(gateway.url("/metrics"), timeout=10).text
    found = re.search(r"^trackgate_events_deduplicated_total (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


def test_a_request_sent_to_two_gateways_is_stored_once_and_the_second_answer_says_so(
    gateways: list[Gateway], dedup_redis: RedisServer, client: redis.Redis
) -> None:
    token = create_project(dedup_redis.url, "two gateways")
    now = 1_795_667_300.0
    events: list[dict[str, Any]] = [
        {"event": "Signup", "properties": {"token": token, "distinct_id": f"u{i}", "time": now + i,
                                           "$insert_id": uuid.uuid4().hex}}
        for i in range(20)
    ]  # fmt: skip
    body = {"data": json.dumps(events), "verbose": "1"}
    before = deduplicated(gateways[1])
    first = requests.post(gateways[0].url("/track"), data=body, timeout=10)
    assert (first.status_code, first.json()) == (200, {"status": 1, "error": None})
    again = requests.post(gateways[1].url("/track"), data=body, timeout=10)
    assert (again.status_code, again.json()) == (200, {"status": 1, "error": None, "duplicates": 20})
    stored = stored_events(client, token)
    assert sorted(e["properties"]["$insert_id"] for e in stored) == sorted(
        e["properties"]["$insert_id"] for e in events
    )
    assert deduplicated(gateways[1]) - before == 20
    # A plain answer is Mixpanel's `1`, duplicates or not.
    plain = requests.post(gateways[0].url("/track"), data={"data": json.dumps(events)}, timeout=10)
    assert (plain.status_code, plain.text) == (200, "1")
    assert len(stored_events(client, token)) == 20


class RetryingConsumer(Consumer):  # type: ignore[misc]
    """mixpanel-python's Consumer, unchanged, used as a client that heard no answer and sends each
    message again; it keeps the gateway's verbose answers."""

    def __init__(self, events_url: str) -> None:
        super().__init__(events_url=events_url)
        self.answers: list[dict[str, Any]] = []
        post = self._session.post

        def recording(*args: Any, **kwargs: Any) -> Any:
            response = post(*args, **kwargs)
            self.answers.append(response.json())
            return response

        self._session.post = recording

    def send(self, endpoint: str, json_message: str, api_key: Any = None, api_secret: Any = None) -> None:
        for _ in range(2):
            super().send(endpoint, json_message, api_key, api_secret)


def test_mixpanel_python_retrying_stores_each_event_once(
    gateways: list[Gateway], dedup_redis: RedisServer, client: redis.Redis
) -> None:
    token = create_project(dedup_redis.url, "retrying python")
    consumer = RetryingConsumer(gateways[0].url("/track"))
    mp = Mixpanel(token, consumer=consumer)
    for i in range(3):
        mp.track(f"python-user-{i}", "Retried", {"i": i})  # raises unless status 1
    stored = stored_events(client, token)
    assert sorted(e["properties"]["i"] for e in stored) == [0, 1, 2]
    assert (
        consumer.answers
        == [
            {"status": 1, "error": None},
            {"status": 1, "error": None, "duplicates": 1},
        ]
        * 3
    )


def captured_track(name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (CAPTURES / name).read_text().splitlines()]
    return [line for line in lines if line["path"].split("?")[0].rstrip("/") == "/track"]


@pytest.mark.parametrize("capture", ["mixpanel-python-5.4.1.jsonl", "mixpanel-browser-2.82.1.jsonl"])
def test_captured_requests_replayed_twice_are_stored_once(
    gateways: list[Gateway], client: redis.Redis, capture: str
) -> None:
    for key in client.scan_iter(match=f"*{CAPTURED_TOKEN}*events"):
        client.delete(key)  # the other capture's
    requests_sent = captured_track(capture)
    assert requests_sent
    for gateway in gateways:  # the same requests to one gateway, then to the other
        for line in requests_sent:
            headers = {k: v for k, v in line["headers"].items() if k in ("content-type", "content-encoding")}
            response = requests.request(
                line["method"],
                gateway.url(line["path"]),
                data=base64.b64decode(line["body_b64"]),
                headers={**headers, "origin": CAPTURE_ORIGIN},
                timeout=10,
            )
            assert response.status_code == 200, response.text
    stored = stored_events(client, CAPTURED_TOKEN)
    ids = [e["properties"]["$insert_id"] for e in stored]
    assert ids
    assert len(ids) == len(set(ids))
