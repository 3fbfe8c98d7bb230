"""/engage and /groups in-process: the App with a memory sink, a fixed token list and a fixed clock (see
memory_gateway.py). The flow is /track's (test_track_handler.py); these check that each profile endpoint
takes the same transports and gives the same answers, with its own decoding of profile updates."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from memory_gateway import NOW, ORIGIN, TOKEN, FixedTokens, MemorySink, Proto, answer, counted
from trackgate import keys
from trackgate.batcher import Unavailable
from trackgate.gateway.answers import TRANSPARENT_GIF

ROUTES = ["/engage", "/engage/", "/groups", "/groups/"]


def update(path: str, changes: dict[str, Any] | None = None, *, token: str = TOKEN) -> dict[str, Any]:
    """A valid update of the route's kind: a person's or a group's `$set`, with `changes`."""
    who: dict[str, Any] = (
        {"$group_key": "company", "$group_id": "acme"} if "groups" in path else {"$distinct_id": "u-1"}
    )
    return {"$token": token, **who, "$set": {"plan": "pro"}, **(changes or {})}


def payload(*updates: dict[str, Any], **params: str) -> dict[str, str]:
    return {"data": json.dumps(list(updates) if len(updates) != 1 else updates[0]), **params}


def call(path: str, query: str | dict[str, str] = "", body: bytes | None = None, **kwargs: Any) -> Proto:
    return answer(query, body, path=path, **kwargs)


@pytest.mark.parametrize("path", ROUTES)
def test_a_form_post_as_mixpanel_python_sends_it(path: str) -> None:
    sink = MemorySink()
    body = urlencode({**payload(update(path)), "verbose": "1", "ip": "0"}).encode()
    proto = call(path, body=body, method="POST", sink=sink)
    assert (proto.status, proto.text) == (200, '{"status":1,"error":null}')
    [(batches, count)] = sink.submitted
    assert count == 1
    [batch] = batches
    assert keys.profile_updates_key(batch.token, batch.partition).encode() in batch.xadds
    [stored] = sink.stored()
    assert stored["$set"] == {"plan": "pro"}
    assert stored["time"] == stored["received"] == NOW
    assert ("group_id" in stored) == ("groups" in path)


@pytest.mark.parametrize("path", ["/engage/", "/groups/"])
def test_a_base64_batch_as_mixpanel_browser_sends_it(path: str) -> None:
    sink = MemorySink()
    data = base64.b64encode(json.dumps([update(path), update(path, {"$set": {"n": 1}})]).encode())
    body = b"data=" + data.replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")
    headers = (("origin", ORIGIN), ("content-type", "application/x-www-form-urlencoded"))
    proto = call(path, "verbose=1&ip=1&_=1796660242167", body, method="POST", headers=headers, sink=sink,
                 client="198.51.100.7:4000")  # fmt: skip
    assert (proto.status, proto.header("access-control-allow-origin")) == (200, ORIGIN)
    assert proto.header("access-control-allow-credentials") == "true"
    assert [(u["$set"], u["ip"]) for u in sink.stored()] == [
        ({"plan": "pro"}, "198.51.100.7"),
        ({"n": 1}, "198.51.100.7"),
    ]


@pytest.mark.parametrize("path", ["/engage", "/groups"])
def test_get_json_body_gzip_and_beacon(path: str) -> None:
    one = json.dumps(update(path)).encode()
    form = urlencode(payload(update(path))).encode()
    requests: list[dict[str, Any]] = [
        {"query": payload(update(path))},
        {"body": one, "method": "POST", "headers": (("content-type", "application/json"),)},
        {"body": gzip.compress(form), "method": "POST", "headers": (("content-encoding", "gzip"),)},
        {"body": form, "method": "POST", "headers": (("content-type", "text/plain;charset=UTF-8"),)},
    ]
    for request in requests:
        sink = MemorySink()
        proto = call(path, sink=sink, **request)
        assert (proto.status, proto.text) == (200, "1"), request
        assert len(sink.stored()) == 1


def test_invalid_updates_are_refused_by_index_naming_the_field_and_the_valid_ones_stored() -> None:
    sink = MemorySink()
    bad = [
        update("/engage", {"$set": [1]}),
        {"$token": TOKEN, "$set": {}},
        update("/engage", {"$add": {"n": "1"}}),
    ]
    proto = call("/engage", payload(update("/engage"), *bad, verbose="1"), sink=sink)
    assert proto.status == 400
    failure = json.loads(proto.body)
    assert failure["num_records_imported"] == 1
    assert [(r["index"], r["field"], r["kind"]) for r in failure["failed_records"]] == [
        (1, "$set", "operation_invalid"),
        (2, "$distinct_id", "distinct_id_missing"),
        (3, "", "too_many_operations"),
    ]
    assert failure["error"].startswith("3 of 4 events failed; the first, at index 1: $set must be an object")
    assert len(sink.stored()) == 1
    assert call("/engage", payload(update("/engage"), *bad)).text == "0"


def test_groups_have_no_append_and_take_add() -> None:
    group = {k: v for k, v in update("/groups").items() if k != "$set"}
    proto = call("/groups", payload({**group, "$append": {"l": 1}}, verbose="1"))
    [record] = json.loads(proto.body)["failed_records"]
    assert (proto.status, record["field"], record["kind"]) == (400, "$append", "operation_invalid")
    assert call("/groups", payload({**group, "$add": {"n": 1}})).status == 200


@pytest.mark.parametrize("path", ["/engage", "/groups"])
def test_jsonp_pixel_redirect_and_test_mode(path: str) -> None:
    proto = call(path, payload(update(path), callback="mp.cb_1", verbose="1"))
    assert (proto.status, proto.text) == (200, 'mp.cb_1({"status":1,"error":null})')
    proto = call(path, payload(update(path), img="1"))
    assert (proto.status, proto.body) == (200, TRANSPARENT_GIF)
    url = "https://shop.example/welcome"
    proto = call(path, payload(update(path), redirect=url), redirect_hosts=("shop.example",))
    assert (proto.status, proto.header("location")) == (302, url)
    sink = MemorySink()
    assert call(path, payload(update(path), test="1"), sink=sink).status == 200
    assert sink.submitted == []


def test_an_unknown_token_is_401_and_a_new_project_is_found_by_a_reload() -> None:
    tokens = FixedTokens(TOKEN)
    assert call("/engage", payload(update("/engage", token="tk-nobody")), tokens=tokens).status == 401
    assert tokens.reloads == 1
    tokens = FixedTokens(TOKEN, after_reload=(TOKEN, "tk-new"))
    assert call("/engage", payload(update("/engage", token="tk-new")), tokens=tokens).status == 200


@pytest.mark.parametrize("path", ["/engage/", "/groups/"])
def test_preflight_and_origins(path: str) -> None:
    headers = (("origin", ORIGIN), ("access-control-request-headers", "content-type"))
    proto = call(path, method="OPTIONS", headers=headers)
    assert (proto.status, proto.header("access-control-allow-origin")) == (204, ORIGIN)
    assert proto.header("access-control-allow-methods") == "GET, POST, OPTIONS"
    evil = (("origin", "https://evil.example"),)
    assert call(path, payload(update(path)), headers=evil, allowed_origins=(ORIGIN,)).status == 403


def test_too_many_updates_is_413_and_outages_503() -> None:
    many = payload(*[update("/engage")] * 3)
    assert call("/engage", many, max_events=2).status == 413
    proto = call("/engage", payload(update("/engage")), sink=MemorySink(refusal=Unavailable.OVERLOADED))
    assert (proto.status, proto.header("retry-after")) == (503, "2")


def test_requests_are_counted_under_their_route() -> None:
    before = counted("requests", route="groups", status=200)
    call("/groups", payload(update("/groups")))
    assert counted("requests", route="groups", status=200) == before + 1
