"""The rate limits in the ingestion flow, in-process (memory_gateway.py, with the buckets in memory): a
request past its project's limit is answered 429 with `Retry-After` in the shape it asked for, on every
ingestion endpoint, with CORS headers, stores nothing and is counted per project."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from memory_gateway import (
    INVALID,
    ORIGIN,
    TOKEN,
    FixedTokens,
    MemoryBuckets,
    MemorySink,
    Proto,
    counted,
    data,
    event,
    running,
)
from trackgate.gateway.answers import TRANSPARENT_GIF
from trackgate.rate_limit import RateLimit

LIMIT = RateLimit.of(1, 1)
UPDATE = {"$token": TOKEN, "$distinct_id": "u-1", "$set": {"plan": "pro"}}
GROUP = {"$token": TOKEN, "$group_key": "company", "$group_id": "acme", "$set": {"size": 3}}
PAYLOADS: dict[str, dict[str, Any]] = {"/track": event(), "/engage": UPDATE, "/groups": GROUP}
REFUSED = f"project {TOKEN} is past its rate limit ({LIMIT.text()}); retry in 1 s"


def second_answer(
    path: str, params: dict[str, str], sink: MemorySink, method: str = "GET", **first: str
) -> Proto:
    """The answer to a request of `params` right after a first one took the project's burst of one."""

    async def scenario() -> Proto:
        tokens = FixedTokens(TOKEN, limits={TOKEN: LIMIT})
        async with running(sink, tokens, MemoryBuckets()) as gateway:
            taken = await gateway.call("GET", data(PAYLOADS[path], **first), path=path)
            assert taken.status == 200
            headers = (("origin", ORIGIN),)
            if method == "POST":
                body = urlencode(params).encode()
                return await gateway.call("POST", body=body, headers=headers, path=path)
            return await gateway.call("GET", params, headers=headers, path=path)

    return asyncio.run(scenario())


@pytest.mark.parametrize("path", list(PAYLOADS))
def test_past_the_limit_a_plain_request_is_429_with_retry_after_and_cors(path: str) -> None:
    sink = MemorySink()
    proto = second_answer(path, data(PAYLOADS[path]), sink)
    assert (proto.status, proto.text) == (429, "0")
    assert proto.header("retry-after") == "1"
    assert proto.header("access-control-allow-origin") == ORIGIN
    assert proto.header("access-control-allow-credentials") == "true"
    assert len(sink.submitted) == 1  # the first request's


@pytest.mark.parametrize("path", list(PAYLOADS))
def test_past_the_limit_a_verbose_request_says_why_in_json(path: str) -> None:
    proto = second_answer(path, data(PAYLOADS[path], verbose="1"), MemorySink(), method="POST")
    assert proto.status == 429
    assert proto.header("content-type") == "application/json"
    assert json.loads(proto.body) == {
        "status": 0,
        "error": REFUSED,
        "num_records_imported": 0,
        "failed_records": [],
    }
    assert proto.header("retry-after") == "1"


def test_past_the_limit_jsonp_wraps_the_answer() -> None:
    proto = second_answer("/track", data(event(), callback="mp.cb_1", verbose="1"), MemorySink())
    assert proto.status == 429
    assert proto.header("content-type") == "text/javascript; charset=utf-8"
    wrapped = proto.text.removeprefix("mp.cb_1(")
    assert wrapped.endswith(")")
    assert json.loads(wrapped[:-1])["error"] == REFUSED
    assert proto.header("retry-after") == "1"


def test_past_the_limit_a_pixel_is_still_a_pixel() -> None:
    proto = second_answer("/track", data(event(), img="1"), MemorySink())
    assert (proto.status, proto.body) == (429, TRANSPARENT_GIF)
    assert proto.header("retry-after") == "1"


def test_past_the_limit_a_redirect_is_not_followed() -> None:
    url = "https://shop.example/next"
    sink = MemorySink()

    async def scenario() -> Proto:
        tokens = FixedTokens(TOKEN, limits={TOKEN: LIMIT})
        async with running(sink, tokens, MemoryBuckets(), redirect_hosts=("shop.example",)) as gateway:
            assert (await gateway.call("GET", data(event(), redirect=url))).status == 302
            return await gateway.call("GET", data(event(), redirect=url))

    proto = asyncio.run(scenario())
    assert (proto.status, proto.header("location"), proto.header("retry-after")) == (429, None, "1")


def test_base64_data_and_test_mode_count_as_the_requests_they_stand_for() -> None:
    encoded = base64.b64encode(json.dumps(event()).encode()).decode()
    proto = second_answer("/track", {"data": encoded, "test": "1"}, MemorySink())
    assert (proto.status, proto.header("retry-after")) == (429, "1")


def test_a_request_with_no_valid_event_takes_nothing_and_is_answered_as_before() -> None:
    buckets = MemoryBuckets()

    async def scenario() -> None:
        tokens = FixedTokens(TOKEN, limits={TOKEN: LIMIT})
        async with running(MemorySink(), tokens, buckets) as gateway:
            for _ in range(3):
                assert (await gateway.call("GET", data(INVALID))).status == 400
            assert buckets.takes == []
            assert (await gateway.call("GET", data(event()))).status == 200
            assert buckets.takes == [(TOKEN, 1)]

    asyncio.run(scenario())


def test_each_refusal_is_counted_per_project_in_requests_and_events() -> None:
    before = (
        counted("rate_limited_requests", token=TOKEN),
        counted("rate_limited_events", token=TOKEN),
        counted("requests_rejected", reason="rate_limited"),
    )
    second_answer("/track", data(event(), event(), event()), MemorySink())
    assert (
        counted("rate_limited_requests", token=TOKEN),
        counted("rate_limited_events", token=TOKEN),
        counted("requests_rejected", reason="rate_limited"),
    ) == (before[0] + 1, before[1] + 3, before[2] + 1)


def test_a_project_without_a_limit_is_not_limited_beside_one_that_is() -> None:
    other = "tk-other-project"
    sink = MemorySink()

    async def scenario() -> list[int]:
        tokens = FixedTokens(TOKEN, other, limits={TOKEN: LIMIT})
        async with running(sink, tokens, MemoryBuckets()) as gateway:
            return [(await gateway.call("GET", data(event(other)))).status for _ in range(20)]

    assert asyncio.run(scenario()) == [200] * 20
    assert len(sink.stored()) == 20
