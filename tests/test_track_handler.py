"""/track in-process: the App with a memory sink, a fixed token list and a fixed clock (see
memory_gateway.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import PARTITIONS, partition_of
from memory_gateway import (
    INVALID,
    NOW,
    ORIGIN,
    TOKEN,
    FixedTokens,
    MemorySink,
    Proto,
    answer,
    answer_stalled,
    counted,
    data,
    event,
    form,
    running,
)
from trackgate.batcher import Unavailable
from trackgate.gateway.answers import TRANSPARENT_GIF
from trackgate.rsgi import ProtocolClosed

# plain answers


def test_plain_post_answers_1_and_submits_the_events_received_at_the_clocks_time() -> None:
    sink = MemorySink()
    proto = answer(body=form(event(n=1)), method="POST", sink=sink)
    assert (proto.status, proto.text) == (200, "1")
    assert proto.header("content-type") == "text/plain; charset=utf-8"
    [(_, count)] = sink.submitted
    assert count == 1
    [stored] = sink.stored()
    assert stored["properties"]["n"] == 1
    assert stored["time"] == stored["received"] == NOW


def test_chunked_body_is_read_whole() -> None:
    sink = MemorySink()
    proto = answer(body=form(event(), event()), method="POST", chunked=True, sink=sink)
    assert (proto.status, proto.text) == (200, "1")
    assert len(sink.stored()) == 2


def test_plain_answer_to_a_partly_invalid_batch_is_0_and_stores_the_valid_events() -> None:
    sink = MemorySink()
    proto = answer(data(event(), INVALID), sink=sink)
    assert (proto.status, proto.text) == (400, "0")
    assert len(sink.stored()) == 1


# verbose, JSONP, pixel


def test_verbose_success() -> None:
    proto = answer(data(event(), verbose="1"))
    assert (proto.status, proto.text) == (200, '{"status":1,"error":null}')
    assert proto.header("content-type") == "application/json"


def test_verbose_failure_names_the_field_and_lists_the_failed_records() -> None:
    proto = answer(data(event(), INVALID, verbose="1"))
    assert proto.status == 400
    failure = json.loads(proto.body)
    assert failure["status"] == 0
    assert failure["error"] == "1 of 2 events failed; the first, at index 1: the event name must not be empty"
    assert failure["num_records_imported"] == 1
    [record] = failure["failed_records"]
    assert (record["index"], record["field"]) == (1, "event")


def test_jsonp_wraps_the_answer() -> None:
    proto = answer(data(event(), callback="mp.cb_1", verbose="1"))
    assert (proto.status, proto.text) == (200, 'mp.cb_1({"status":1,"error":null})')
    assert proto.header("content-type") == "text/javascript; charset=utf-8"
    assert proto.header("x-content-type-options") == "nosniff"


def test_an_invalid_callback_is_refused_and_never_echoed() -> None:
    sink = MemorySink()
    proto = answer(data(event(), callback="alert(1)", verbose="1"), sink=sink)
    assert proto.status == 400
    assert proto.header("content-type") == "application/json"
    assert "alert" not in proto.text
    assert json.loads(proto.body)["error"].startswith("callback: must be a dotted JavaScript identifier")
    assert sink.submitted == []


def test_img_answers_a_pixel() -> None:
    proto = answer(data(event(), img="1"))
    assert (proto.status, proto.body) == (200, TRANSPARENT_GIF)
    assert (proto.header("content-type"), proto.header("cache-control")) == ("image/gif", "no-store")


# redirect


def test_redirect_to_an_allowed_host_after_storing() -> None:
    sink = MemorySink()
    url = "https://shop.example/welcome?x=1"
    proto = answer(data(event(), redirect=url), sink=sink, redirect_hosts=("shop.example",))
    assert (proto.status, proto.header("location"), proto.body) == (302, url, b"")
    assert len(sink.stored()) == 1


def test_redirect_even_when_events_are_invalid() -> None:
    url = "https://shop.example/"
    proto = answer(data(INVALID, redirect=url), redirect_hosts=("shop.example",))
    assert (proto.status, proto.header("location")) == (302, url)


@pytest.mark.parametrize(
    "url", ["https://evil.example/", "javascript:alert(1)", "https://shop.example\\@evil.example/"]
)
def test_redirect_elsewhere_is_refused(url: str) -> None:
    sink = MemorySink()
    proto = answer(data(event(), redirect=url), sink=sink, redirect_hosts=("shop.example",))
    assert (proto.status, proto.header("location")) == (400, None)
    assert sink.submitted == []


# test=1, tokens


def test_test_mode_validates_and_stores_nothing() -> None:
    sink = MemorySink()
    assert answer(data(event(), test="1"), sink=sink).status == 200
    assert answer(data(INVALID, test="1"), sink=sink).status == 400
    assert sink.submitted == []


def test_unknown_token_is_401_after_a_reload() -> None:
    tokens = FixedTokens(TOKEN)
    sink = MemorySink()
    proto = answer(data(event("tk-nobody")), tokens=tokens, sink=sink)
    assert (proto.status, proto.text) == (401, "0")
    assert tokens.reloads == 1
    assert sink.submitted == []


def test_a_token_created_since_the_last_reload_is_accepted() -> None:
    tokens = FixedTokens(TOKEN, after_reload=(TOKEN, "tk-new"))
    sink = MemorySink()
    assert answer(data(event("tk-new")), tokens=tokens, sink=sink).status == 200
    assert [e["token"] for e in sink.stored()] == ["tk-new"]


def test_unknown_and_invalid_events_together_are_400() -> None:
    assert answer(data(event("tk-nobody"), INVALID)).status == 400


# CORS, methods


def test_allowed_origin_is_echoed() -> None:
    proto = answer(data(event()), headers=(("origin", ORIGIN),), allowed_origins=(ORIGIN,))
    assert proto.status == 200
    assert proto.header("access-control-allow-origin") == ORIGIN
    assert proto.header("access-control-allow-credentials") == "true"


def test_disallowed_origin_is_403_and_stores_nothing() -> None:
    sink = MemorySink()
    headers = (("origin", "https://evil.example"),)
    proto = answer(data(event()), headers=headers, sink=sink, allowed_origins=(ORIGIN,))
    assert (proto.status, proto.text) == (403, "0")
    assert proto.header("access-control-allow-origin") is None
    assert sink.submitted == []


def test_preflight() -> None:
    headers = (("origin", ORIGIN), ("access-control-request-headers", "content-type, x-requested-with"))
    proto = answer(method="OPTIONS", headers=headers)
    assert (proto.status, proto.body) == (204, b"")
    assert proto.header("access-control-allow-origin") == ORIGIN
    assert proto.header("access-control-allow-methods") == "GET, POST, OPTIONS"
    assert proto.header("access-control-allow-headers") == "content-type, x-requested-with"


def test_preflight_without_origin_says_only_what_is_allowed() -> None:
    proto = answer(method="OPTIONS")
    assert (proto.status, proto.headers) == (204, [("allow", "GET, POST, OPTIONS")])


def test_other_methods_are_405_with_allow() -> None:
    proto = answer(data(event()), method="DELETE")
    assert (proto.status, proto.text) == (405, "0")
    assert proto.header("allow") == "GET, POST, OPTIONS"


# the sink


@pytest.mark.parametrize("reason", list(Unavailable))
def test_a_sink_that_cannot_take_the_events_is_503_with_retry_after(reason: Unavailable) -> None:
    proto = answer(data(event(), verbose="1"), sink=MemorySink(refusal=reason), retry_after=7)
    assert proto.status == 503
    assert proto.header("retry-after") == "7"
    assert reason.replace("_", " ") in json.loads(proto.body)["error"]


def test_a_write_that_fails_is_503() -> None:
    proto = answer(data(event()), sink=MemorySink(failure=Unavailable.REDIS_UNAVAILABLE))
    assert (proto.status, proto.header("retry-after")) == (503, "2")


def test_a_batch_left_unstored_is_503_write_failed() -> None:
    unstored = frozenset(range(4))
    proto = answer(data(event(), verbose="1"), sink=MemorySink(unstored=unstored))
    assert proto.status == 503
    assert "write failed" in json.loads(proto.body)["error"]


def test_another_requests_unstored_batch_does_not_fail_this_one() -> None:
    others = frozenset(range(PARTITIONS)) - {partition_of("u-1")}  # (event()'s distinct_id)
    assert answer(data(event()), sink=MemorySink(unstored=others)).status == 200


# the body


def test_a_body_over_the_limit_is_413_answered_as_its_query_asks() -> None:
    sink = MemorySink()
    body = form(event(pad="x" * 600))
    proto = answer({"verbose": "1"}, body, method="POST", sink=sink, max_request_bytes=500)
    assert proto.status == 413
    assert json.loads(proto.body)["error"] == "the request is larger than 500 bytes"
    assert sink.submitted == []


def test_a_chunked_body_over_the_limit_is_413() -> None:
    body = form(event(pad="x" * 600))
    assert answer(body=body, method="POST", chunked=True, max_request_bytes=500).status == 413


def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    proto = answer_stalled("verbose=1", body_timeout=10.0)
    assert proto.status == 408
    assert json.loads(proto.body)["error"] == "the request body did not arrive within 10 s"


def test_a_client_that_leaves_mid_body_is_not_answered() -> None:
    async def scenario() -> Proto:
        async with running() as gateway:
            read: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            read.set_exception(ProtocolClosed("gone"))
            return await gateway.call("POST", body=b"data=...", proto=Proto([], read=read))

    before = counted("requests", route="track", status=499)
    assert asyncio.run(scenario()).status == 0
    assert counted("requests", route="track", status=499) == before + 1


# the caller's address


def _stored_ip(headers: tuple[tuple[str, str], ...], client: str, **settings: Any) -> str:
    sink = MemorySink()
    proto = answer(data(event(), ip="1"), headers=headers, client=client, sink=sink, **settings)
    assert proto.status == 200
    [stored] = sink.stored()
    return str(stored["ip"])


def test_the_address_is_the_peer() -> None:
    assert _stored_ip((), "198.51.100.7:4000") == "198.51.100.7"
    assert _stored_ip((), "[2001:db8::1]:4000") == "2001:db8::1"


def test_behind_trusted_proxies_the_rightmost_untrusted_hop() -> None:
    headers = (("x-forwarded-for", "6.6.6.6, 203.0.113.9"), ("x-forwarded-for", "10.1.2.3"))
    assert _stored_ip(headers, "10.0.0.1:4000", trusted_proxies=("10.0.0.0/8",)) == "203.0.113.9"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    headers = (("x-forwarded-for", "203.0.113.9"),)
    assert _stored_ip(headers, "198.51.100.7:4000", trusted_proxies=("10.0.0.0/8",)) == "198.51.100.7"


def test_a_forwarded_for_that_is_not_an_address_stops_the_walk() -> None:
    headers = (("x-forwarded-for", "203.0.113.9, unknown, 10.1.2.3"),)
    assert _stored_ip(headers, "10.0.0.1:4000", trusted_proxies=("10.0.0.0/8",)) == "10.1.2.3"


# whole-request decode errors keep the decoder's status


def test_a_decode_error_is_answered_with_the_decoders_status_and_shape() -> None:
    proto = answer({"data": "{not json", "callback": "cb", "verbose": "1"})
    assert proto.status == 400
    assert proto.text.startswith('cb({"status":0,"error":')


def test_an_unsupported_encoding_is_415() -> None:
    headers = (("content-encoding", "br"),)
    assert answer(body=form(event()), method="POST", headers=headers).status == 415


def test_get_without_data_is_400() -> None:
    assert answer("verbose=1").status == 400
