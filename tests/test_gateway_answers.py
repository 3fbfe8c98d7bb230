"""Every parameter, answer and status of /track, against a real gateway and Redis."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pytest
import redis
import requests
from conftest import Gateway, RedisServer, create_project, stored_with
from trackgate.gateway.body import BodyDeadlines
from trackgate.gateway.refusals import RefusalLog

GIF_PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def event(token: str, marker: str, **props: Any) -> dict[str, Any]:
    properties = {"token": token, "distinct_id": "u-" + marker, "marker": marker, **props}
    return {"event": "test event", "properties": properties}


def form(payload: object, **params: str) -> dict[str, str]:
    return {"data": json.dumps(payload), **params}


def b64(payload: object) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


@pytest.fixture
def marker() -> str:
    return uuid.uuid4().hex


# plain answers


def test_post_answers_1_and_stores(gateway: Gateway, rclient: redis.Redis, token: str, marker: str) -> None:
    r = requests.post(gateway.url("/track"), data=form(event(token, marker, n=1)))
    assert (r.status_code, r.text) == (200, "1")
    assert r.headers["content-type"].startswith("text/plain")
    [stored] = stored_with(rclient, token, "marker", marker)
    assert stored["event"] == "test event"
    assert stored["properties"]["n"] == 1


def test_get_with_base64_data_on_track_slash(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str
) -> None:
    r = requests.get(gateway.url("/track/?data=" + quote(b64(event(token, marker)))))
    assert (r.status_code, r.text) == (200, "1")
    assert len(stored_with(rclient, token, "marker", marker)) == 1


def test_plain_failure_is_0_and_400(gateway: Gateway, token: str) -> None:
    r = requests.post(gateway.url("/track"), data=form({"properties": {"token": token}}))
    assert (r.status_code, r.text) == (400, "0")


# verbose


def test_verbose_success_is_exact_json(gateway: Gateway, token: str, marker: str) -> None:
    r = requests.post(gateway.url("/track"), data=form(event(token, marker), verbose="1"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == b'{"status":1,"error":null}'


def test_verbose_failure_names_the_field_and_keeps_valid_neighbours(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str
) -> None:
    batch = [event(token, marker, i=0), event(token, marker, i=1), event(token, marker, i=2)]
    batch[1]["properties"]["time"] = "yesterday"
    r = requests.post(gateway.url("/track?verbose=1"), data=form(batch))
    assert r.status_code == 400
    answer = r.json()
    assert answer["status"] == 0
    assert "properties.time" in answer["error"]
    assert answer["num_records_imported"] == 2
    [failed] = answer["failed_records"]
    assert (failed["index"], failed["field"], failed["kind"]) == (1, "properties.time", "time_invalid")
    assert failed["message"]
    assert sorted(e["properties"]["i"] for e in stored_with(rclient, token, "marker", marker)) == [0, 2]


def test_verbose_whole_request_error(gateway: Gateway) -> None:
    r = requests.post(gateway.url("/track?verbose=1"), data={"data": "{not json"})
    assert r.status_code == 400
    answer = r.json()
    assert answer["status"] == 0
    assert "data" in answer["error"]
    assert answer["num_records_imported"] == 0


def test_a_request_refused_as_a_whole_answers_as_its_body_asks(gateway: Gateway) -> None:
    r = requests.post(gateway.url("/track"), data={"data": "{not json", "verbose": "1", "callback": "cb"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.text.startswith("cb({")
    assert json.loads(r.text[3:-1])["status"] == 0
    # A body that inflates past the limit is not read for parameters; the query string still says how
    # to answer.
    bomb = gzip.compress(b"data=" + b"x" * 11_000_000 + b"&callback=never")
    r = requests.post(
        gateway.url("/track?img=1"),
        data=bomb,
        headers={"content-encoding": "gzip", "content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413
    assert r.headers["content-type"] == "image/gif"
    # Over the limit before it is read: the query string alone.
    r = requests.post(gateway.url("/track?verbose=1&callback=big"), data={"data": "x" * 11_000_000})
    assert r.status_code == 413
    assert r.text.startswith("big({")
    assert "larger than" in json.loads(r.text[4:-1])["error"]


# tokens


def test_unknown_token_is_401_and_not_stored(gateway: Gateway, rclient: redis.Redis, marker: str) -> None:
    stranger = "unknown" + marker[:20]
    r = requests.post(gateway.url("/track?verbose=1"), data=form(event(stranger, marker)))
    assert r.status_code == 401
    assert r.json()["failed_records"][0]["kind"] == "unknown_token"
    assert stored_with(rclient, stranger, "marker", marker) == []


def test_unknown_token_next_to_an_invalid_event_is_400(gateway: Gateway, token: str, marker: str) -> None:
    batch = [event("unknown" + marker[:20], marker), {"event": "no token"}]
    r = requests.post(gateway.url("/track"), data=form(batch))
    assert (r.status_code, r.text) == (400, "0")


def test_a_project_created_a_moment_ago_is_accepted(
    gateway: Gateway, rclient: redis.Redis, marker: str
) -> None:
    assert gateway.redis_url
    new_token = create_project(gateway.redis_url, "fresh-" + marker)
    r = requests.post(gateway.url("/track"), data=form(event(new_token, marker)))
    assert (r.status_code, r.text) == (200, "1")
    assert len(stored_with(rclient, new_token, "marker", marker)) == 1


# callback (JSONP)


@pytest.mark.parametrize("name", ["cb", "mp.callbacks.cb_1", "$jq_123", "_"])
def test_callback_wraps_the_answer(gateway: Gateway, token: str, marker: str, name: str) -> None:
    r = requests.post(gateway.url("/track"), data=form(event(token, marker), callback=name))
    assert r.status_code == 200
    assert r.text == f"{name}(1)"
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["x-content-type-options"] == "nosniff"


def test_callback_with_verbose_wraps_the_json(gateway: Gateway, token: str, marker: str) -> None:
    r = requests.get(gateway.url(f"/track?callback=cb&verbose=1&data={quote(b64(event(token, marker)))}"))
    assert r.text == 'cb({"status":1,"error":null})'


@pytest.mark.parametrize(
    "name", ["alert(1)", "a..b", "1abc", "a" * 129, "x;y", "cb//", "é", "a.b.", "<script>", "a b"]
)
def test_bad_callback_is_400_never_echoed_nothing_stored(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str, name: str
) -> None:
    r = requests.post(gateway.url("/track"), data=form(event(token, marker), callback=name))
    assert r.status_code == 400
    assert name not in r.text
    assert not r.headers["content-type"].startswith("text/javascript")
    assert stored_with(rclient, token, "marker", marker) == []


def test_callback_of_128_characters_is_fine(gateway: Gateway, token: str, marker: str) -> None:
    name = "a." * 63 + "bc"
    assert len(name) == 128
    r = requests.post(gateway.url("/track"), data=form(event(token, marker), callback=name))
    assert (r.status_code, r.text) == (200, f"{name}(1)")


# img


def test_img_answers_a_transparent_pixel(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str
) -> None:
    r = requests.get(gateway.url(f"/track?img=1&data={quote(b64(event(token, marker)))}"))
    assert r.status_code == 200
    assert r.content == GIF_PIXEL
    assert r.headers["content-type"] == "image/gif"
    assert r.headers["cache-control"] == "no-store"
    assert len(stored_with(rclient, token, "marker", marker)) == 1


def test_img_failure_still_a_pixel_with_the_status(gateway: Gateway, token: str) -> None:
    r = requests.get(gateway.url(f"/track?img=1&data={quote(b64({'properties': {'token': token}}))}"))
    assert r.status_code == 400
    assert r.content == GIF_PIXEL


# redirect


@pytest.mark.parametrize(
    "target",
    [
        "https://shop.example.org/thanks?order=7&x=%20y",
        "https://SHOP.example.org./",
        "http://example.com:8080/",
    ],
)
def test_redirect_to_an_allowed_host(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str, target: str
) -> None:
    r = requests.get(
        gateway.url(f"/track?redirect={quote(target, safe='')}&data={quote(b64(event(token, marker)))}"),
        allow_redirects=False,
    )
    assert r.status_code == 302
    assert r.headers["location"] == target
    assert len(stored_with(rclient, token, "marker", marker)) == 1


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.com/",
        "javascript:alert(1)",
        "//example.com/x",
        "ftp://example.com/",
        "https://example.com@evil.com/",
        "https://evil.com\\@example.com/",
        "https://example.com/\r\nSet-Cookie: a=b",
        "https://example.com/ x",
        "https://example.com.evil.com/",
        "https://example.com:99999/",
    ],
)
def test_redirect_elsewhere_is_400_and_nothing_stored(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str, target: str
) -> None:
    r = requests.get(
        gateway.url(f"/track?redirect={quote(target, safe='')}&data={quote(b64(event(token, marker)))}"),
        allow_redirects=False,
    )
    assert r.status_code == 400
    assert "location" not in r.headers
    assert "set-cookie" not in r.headers
    assert stored_with(rclient, token, "marker", marker) == []


def test_redirect_is_followed_when_events_fail(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str
) -> None:
    # A static link (an email's) whose event no longer passes: the person still gets where they clicked.
    data = quote(b64([{"properties": {"token": token}}, event(token, marker)]))
    r = requests.get(gateway.url(f"/track?redirect=https://example.com/&data={data}"), allow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (302, "https://example.com/")
    assert len(stored_with(rclient, token, "marker", marker)) == 1
    metrics = requests.get(gateway.url("/metrics"), timeout=10).text
    assert 'trackgate_events_rejected_total{kind="event_missing"}' in metrics
    # A request that is not events at all is still refused.
    r = requests.get(gateway.url("/track?redirect=https://example.com/&data=%25%25"), allow_redirects=False)
    assert r.status_code == 400


# test=1


def test_test_mode_validates_and_stores_nothing(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str
) -> None:
    r = requests.post(gateway.url("/track?test=1&verbose=1"), data=form(event(token, marker)))
    assert (r.status_code, r.json()) == (200, {"status": 1, "error": None})
    bad = requests.post(gateway.url("/track?test=1"), data=form([event(token, marker), {"event": "x"}]))
    assert (bad.status_code, bad.text) == (400, "0")
    assert stored_with(rclient, token, "marker", marker) == []


# sizes, encodings, bodies


def test_too_many_events_is_413(gateway: Gateway, token: str, marker: str) -> None:
    r = requests.post(gateway.url("/track?verbose=1"), data=form([event(token, marker)] * 2001))
    assert r.status_code == 413
    assert r.json()["status"] == 0


def test_body_over_the_cap_is_413(tuned_gateway: Gateway, token: str, marker: str) -> None:
    r = requests.post(tuned_gateway.url("/track"), data=form(event(token, marker, pad="x" * 200_000)))
    assert (r.status_code, r.text) == (413, "0")


def test_chunked_body_over_the_cap_is_413(tuned_gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"data="
        for _ in range(30):
            yield b"A" * 10_000

    r = requests.post(
        tuned_gateway.url("/track"),
        data=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413


def test_unsupported_content_encoding_is_415(gateway: Gateway, token: str, marker: str) -> None:
    r = requests.post(
        gateway.url("/track"),
        data=json.dumps(event(token, marker)),
        headers={"content-type": "application/json", "content-encoding": "br"},
    )
    assert r.status_code == 415


def test_gzip_json_body(gateway: Gateway, rclient: redis.Redis, token: str, marker: str) -> None:
    body = gzip.compress(json.dumps([event(token, marker, i=i) for i in range(5)]).encode())
    r = requests.post(
        gateway.url("/track"),
        data=body,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert (r.status_code, r.text) == (200, "1")
    assert len(stored_with(rclient, token, "marker", marker)) == 5


@pytest.mark.parametrize("query", ["", "data=", "data=%%%", "data=W10="])
def test_unusable_requests_are_400(gateway: Gateway, query: str) -> None:
    assert requests.get(gateway.url("/track?" + query)).status_code == 400


# methods, routes


def test_other_methods_are_405(gateway: Gateway) -> None:
    r = requests.put(gateway.url("/track"), data="x")
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST", "OPTIONS"}


def test_service_routes(gateway: Gateway, token: str, marker: str) -> None:
    assert requests.post(gateway.url("/track"), data=form(event(token, marker))).text == "1"
    assert (
        requests.get(gateway.url("/healthz")).status_code,
        requests.get(gateway.url("/readyz")).status_code,
    ) == (
        200,
        200,
    )
    metrics = requests.get(gateway.url("/metrics"))
    assert metrics.status_code == 200
    assert 'trackgate_requests_total{route="track",status="200"}' in metrics.text
    assert re.search(r"^trackgate_events_stored_total \d", metrics.text, re.MULTILINE)
    assert requests.get(gateway.url("/nope")).status_code == 404


# CORS


def test_preflight_echoes_any_origin_by_default(gateway: Gateway) -> None:
    r = requests.options(
        gateway.url("/track/"),
        headers={
            "origin": "https://site.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://site.example"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"].lower()


def test_cors_on_the_answer(gateway: Gateway, token: str, marker: str) -> None:
    r = requests.post(
        gateway.url("/track?verbose=1"),
        data=form(event(token, marker)),
        headers={"origin": "https://a.example"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert r.headers["access-control-allow-credentials"] == "true"


def test_allow_list_of_origins(tuned_gateway: Gateway, rclient: redis.Redis, token: str, marker: str) -> None:
    ok = requests.post(
        tuned_gateway.url("/track"),
        data=form(event(token, marker)),
        headers={"origin": "https://app.example.com"},
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    other = marker[::-1]
    refused = requests.post(
        tuned_gateway.url("/track"),
        data=form(event(token, other)),
        headers={"origin": "https://evil.example"},
    )
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    assert stored_with(rclient, token, "marker", other) == []
    preflight = requests.options(tuned_gateway.url("/track"), headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in preflight.headers


# the caller's address


def _stored_ip(
    gateway: Gateway, rclient: redis.Redis, token: str, marker: str, headers: dict[str, str]
) -> str:
    payload = {"event": "ip test", "properties": {"token": token, "marker": marker}}
    r = requests.get(gateway.url(f"/track?ip=1&data={quote(b64(payload))}"), headers=headers)
    assert r.text == "1"
    [stored] = stored_with(rclient, token, "marker", marker)
    assert stored["properties"]["ip"] == stored["distinct_id"]
    return str(stored["properties"]["ip"])


def test_caller_address_is_the_peer(gateway: Gateway, rclient: redis.Redis, token: str, marker: str) -> None:
    assert _stored_ip(gateway, rclient, token, marker, {}) == "127.0.0.1"


def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop(
    gateway: Gateway, rclient: redis.Redis, token: str
) -> None:
    # 10.1.2.3 is a trusted proxy and is skipped; 6.6.6.6 was written by the client and is never believed.
    headers = {"x-forwarded-for": "6.6.6.6, 203.0.113.9, 10.1.2.3"}
    assert _stored_ip(gateway, rclient, token, uuid.uuid4().hex, headers) == "203.0.113.9"


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    tuned_gateway: Gateway, rclient: redis.Redis, token: str, marker: str
) -> None:
    headers = {"x-forwarded-for": "203.0.113.9"}
    assert _stored_ip(tuned_gateway, rclient, token, marker, headers) == "127.0.0.1"


def test_refusals_are_logged_at_most_once_a_second_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    refusals = RefusalLog(interval=1.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="trackgate.http"):
        for _ in range(5):
            refusals.warning("overloaded", "refused %s", "a")
        refusals.warning("invalid_json", "refused %s", "b")
        now[0] += 1.0
        refusals.warning("overloaded", "refused %s", "c")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a",
        "refused b",
        "refused c (and 4 more refused for this reason since its last line)",
    ]


def _stalled_upload(gw: Gateway) -> socket.socket:
    """A POST that announces 100 bytes of body and sends 2."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    head = (
        "POST /track?verbose=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    )
    sock.sendall(head.encode() + b"da")
    return sock


def _assert_408_after_a_second(gw: Gateway) -> None:
    sock = _stalled_upload(gw)
    started = time.monotonic()
    answer = sock.recv(65536).decode()
    waited = time.monotonic() - started
    sock.close()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "did not arrive within 1 s" in answer
    assert 0.5 < waited < 5
    assert requests.get(gw.url("/healthz"), timeout=5).status_code == 200


def test_a_body_that_stops_arriving_gets_408(tuned_gateway: Gateway) -> None:
    _assert_408_after_a_second(tuned_gateway)


def test_a_body_that_stops_arriving_gets_408_with_rust_tasks(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Granian's Rust task implementation shares one task object between requests: the deadline must
    # cancel the read itself.
    gw = Gateway(tmp_path, "--task-impl", "rust", "--body-timeout", "1", redis_url=redis_server.url)
    gw.start()
    try:
        _assert_408_after_a_second(gw)
    finally:
        gw.stop()


def test_clients_that_leave_mid_body_are_not_errors(tuned_gateway: Gateway) -> None:
    for _ in range(20):
        _stalled_upload(tuned_gateway).close()
    time.sleep(0.5)
    assert requests.get(tuned_gateway.url("/healthz"), timeout=5).status_code == 200
    log = tuned_gateway.log()
    assert "Traceback" not in log
    assert "raised an exception" not in log
    time.sleep(0.5)  # the counts are published every 0.25 s
    metrics = requests.get(tuned_gateway.url("/metrics"), timeout=5).text
    counted = re.search(r'^trackgate_requests_total\{route="track",status="499"\} (\S+)$', metrics, re.M)
    assert counted is not None
    assert float(counted.group(1)) >= 20


def test_body_deadlines_cancel_only_the_reads_past_their_time() -> None:
    now = [100.0]
    deadlines = BodyDeadlines(10.0, clock=lambda: now[0])

    async def scenario() -> list[tuple[bool, bool]]:
        loop = asyncio.get_running_loop()
        reads = [deadlines.begin()]  # at 100
        now[0] = 105.0
        reads += [deadlines.begin(), deadlines.begin()]  # at 105
        for read in reads:
            read.pending = loop.create_future()
        deadlines.end(reads[2])  # its body arrived
        now[0] = 110.0
        deadlines.sweep()
        first = [
            (r.expired, r.pending is not None and cast(asyncio.Future[bytes], r.pending).cancelled())
            for r in reads
        ]
        now[0] = 116.0
        deadlines.sweep()
        return first + [
            (r.expired, r.pending is not None and cast(asyncio.Future[bytes], r.pending).cancelled())
            for r in reads
        ]

    outcome = asyncio.run(scenario())
    assert outcome[:3] == [(True, True), (False, False), (False, False)]
    assert outcome[3:] == [(True, True), (True, True), (False, False)]
