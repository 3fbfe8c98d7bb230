"""Real clients, unchanged, pointed at the gateway: the official `mixpanel` library, requests shaped as
mixpanel-browser sends them (and replayed byte for byte from a capture), and the spec's own example."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import redis
import requests
from conftest import CAPTURE_ORIGIN, Gateway, create_project, stored_events, stored_with
from mixpanel import BufferedConsumer, Consumer, Mixpanel

# Every kind of value a property can hold, and characters that break naive encoders.
RICH_PROPERTIES: dict[str, Any] = {
    "nested": {"level1": {"level2": [1, 2, "three"], "flag": False}, "count": 3},
    "list": [1, "two", None, 4.5, {"k": "v"}],
    "unicode": "héllo ✓ 日本語 🎉",
    "special": "+/= &?#%\"'<>\\",
    "amount": 42.5,
    "big": 2**53,
    "is_test": True,
    "nothing": None,
    "empty": "",
}


def test_official_library_consumer(gateway: Gateway, rclient: redis.Redis, token: str) -> None:
    marker = uuid.uuid4().hex
    mp = Mixpanel(token, consumer=Consumer(events_url=gateway.url("/track")))
    mp.track("python-user-1", "Signed Up", {**RICH_PROPERTIES, "marker": marker})  # raises unless status 1
    [stored] = stored_with(rclient, token, "marker", marker)
    assert stored["event"] == "Signed Up"
    assert stored["distinct_id"] == "python-user-1"
    props = stored["properties"]
    assert {k: props[k] for k in RICH_PROPERTIES} == RICH_PROPERTIES
    assert props["mp_lib"] == "python"
    assert props["token"] == token
    assert len(props["$insert_id"]) == 32
    assert stored["insert_id"] == props["$insert_id"]


def test_official_library_buffered_consumer(gateway: Gateway, rclient: redis.Redis, token: str) -> None:
    marker = uuid.uuid4().hex
    consumer = BufferedConsumer(events_url=gateway.url("/track"))  # batches of 50
    mp = Mixpanel(token, consumer=consumer)
    for i in range(60):
        mp.track(f"buffered-{i % 7}", "Batch Event", {**RICH_PROPERTIES, "marker": marker, "i": i})
    consumer.flush()
    stored = stored_with(rclient, token, "marker", marker)
    assert sorted(e["properties"]["i"] for e in stored) == list(range(60))
    for event in stored:
        assert {k: event["properties"][k] for k in RICH_PROPERTIES} == RICH_PROPERTIES
        assert event["distinct_id"] == f"buffered-{event['properties']['i'] % 7}"


def test_official_library_sees_a_refusal(gateway: Gateway) -> None:
    from mixpanel import MixpanelException

    mp = Mixpanel("no-such-token-123", consumer=Consumer(events_url=gateway.url("/track")))
    with pytest.raises(MixpanelException):
        mp.track("someone", "Refused")


def _browser_event(token: str, marker: str, i: int) -> dict[str, Any]:
    return {
        "event": f"Browser Event {i}",
        "properties": {
            "$os": "Linux",
            "$browser": "Chrome",
            "$current_url": "http://127.0.0.1:46359/index.html?cache=1",
            "mp_lib": "web",
            "$lib_version": "2.82.1",
            "$insert_id": uuid.uuid4().hex[:20],
            "time": 1795667298.212 + i,
            "distinct_id": f"$device:{marker}",
            "token": token,
            "b64probe": "~~~~~~??????",
            "marker": marker,
            "i": i,
        },
    }


@pytest.mark.parametrize("encode_plus", [True, False], ids=["percent-encoded", "raw-plus"])
def test_browser_shaped_get(
    tuned_gateway: Gateway, rclient: redis.Redis, token: str, encode_plus: bool
) -> None:
    marker = uuid.uuid4().hex
    batch = [_browser_event(token, marker, i) for i in range(3)]
    data = base64.b64encode(json.dumps(batch, separators=(",", ":")).encode()).decode()
    # The probe property makes sure that both characters that differ between alphabets appear.
    assert "+" in data
    assert "/" in data
    # Old hand-built URLs put base64 in unencoded, so '+' arrives as a space after form decoding.
    data = quote(data, safe="") if encode_plus else data
    r = requests.get(
        tuned_gateway.url(f"/track/?data={data}&ip=1&_=1795667298218&verbose=1"),
        headers={"origin": CAPTURE_ORIGIN},
    )
    assert (r.status_code, r.json()) == (200, {"status": 1, "error": None})
    assert r.headers["access-control-allow-origin"] == CAPTURE_ORIGIN
    stored = sorted(stored_with(rclient, token, "marker", marker), key=lambda e: e["properties"]["i"])
    assert [e["event"] for e in stored] == ["Browser Event 0", "Browser Event 1", "Browser Event 2"]
    for sent, got in zip(batch, stored, strict=True):
        assert got["properties"] == {**sent["properties"], "ip": "127.0.0.1"}


def test_browser_shaped_post_with_send_beacon_body(
    tuned_gateway: Gateway, rclient: redis.Redis, token: str
) -> None:
    marker = uuid.uuid4().hex
    data = base64.b64encode(json.dumps(_browser_event(token, marker, 0)).encode()).decode()
    r = requests.post(
        tuned_gateway.url("/track/?ip=0&_=1795667298257"),
        data="data=" + quote(data, safe=""),
        headers={"content-type": "text/plain;charset=UTF-8", "origin": CAPTURE_ORIGIN},
    )
    assert (r.status_code, r.text) == (200, "1")
    [stored] = stored_with(rclient, token, "marker", marker)
    assert "ip" not in stored["properties"]


def _mixpanel_js_base64(text: str) -> str:
    """base64 as mixpanel-js writes it (`_.utf8Encode`, then `_.base64Encode`): each UTF-16 unit of the
    JSON encoded on its own, so a character beyond U+FFFF becomes two 3-byte surrogates (CESU-8)."""
    units = text.encode("utf-16-le", "surrogatepass")
    chars = "".join(chr(int.from_bytes(units[i : i + 2], "little")) for i in range(0, len(units), 2))
    return base64.b64encode(chars.encode("utf-8", "surrogatepass")).decode()


def test_browser_batch_with_emoji(tuned_gateway: Gateway, rclient: redis.Redis, token: str) -> None:
    marker = uuid.uuid4().hex
    batch = [_browser_event(token, marker, i) for i in range(2)]
    batch[0]["properties"]["title"] = "Launch \U0001f680 caf\u00e9"
    # mixpanel-js cuts strings at 255 UTF-16 units, which can split a pair: the lone half becomes U+FFFD.
    batch[1]["properties"]["title"] = "x" * 254 + "\ud83d"  # the first UTF-16 unit of U+1F600
    data = _mixpanel_js_base64(json.dumps(batch, ensure_ascii=False, separators=(",", ":")))
    r = requests.post(
        tuned_gateway.url("/track/?ip=1&_=1795667298218&verbose=1"),
        data="data=" + quote(data, safe=""),
        headers={"content-type": "application/x-www-form-urlencoded", "origin": CAPTURE_ORIGIN},
    )
    assert (r.status_code, r.json()) == (200, {"status": 1, "error": None})
    stored = sorted(stored_with(rclient, token, "marker", marker), key=lambda e: e["properties"]["i"])
    assert [e["properties"]["title"] for e in stored] == ["Launch \U0001f680 caf\u00e9", "x" * 254 + "\ufffd"]


@pytest.fixture(scope="module")
def capture_token(redis_server: Any) -> str:
    # The token the captured clients were configured with.
    return create_project(redis_server.url, "captured clients", token="e3bc4100330c35722740fb8c6f5abddc")


def _payloads(method: str, path: str, content_type: str | None, body: bytes) -> list[dict[str, Any]]:
    """The events a captured request carried, decoded here in plain Python."""
    params = dict(parse_qsl(urlsplit(path).query))
    if body:
        params.update(parse_qsl(body.decode()))
    data = params["data"]
    text = data if data.lstrip().startswith(("{", "[")) else base64.b64decode(data).decode()
    payload = json.loads(text)
    return payload if isinstance(payload, list) else [payload]


@pytest.mark.parametrize("capture", range(6))
def test_captured_browser_requests_replayed(
    tuned_gateway: Gateway, rclient: redis.Redis, capture_token: str, capture: int
) -> None:
    method, path, content_type, origin, body_b64 = BROWSER_CAPTURES[capture]
    body = base64.b64decode(body_b64)
    headers = {"origin": origin}
    if content_type:
        headers["content-type"] = content_type
    r = requests.request(method, tuned_gateway.url(path), data=body or None, headers=headers)
    assert r.status_code == 200
    if "verbose=1" in path:
        assert r.json() == {"status": 1, "error": None}
    else:
        assert r.text == "1"
    assert r.headers["access-control-allow-origin"] == origin
    assert r.headers["access-control-allow-credentials"] == "true"
    use_ip = "ip=1" in path
    stored = {e["properties"].get("$insert_id"): e for e in stored_events(rclient, capture_token)}
    for sent in _payloads(method, path, content_type, body):
        got = stored[sent["properties"]["$insert_id"]]
        assert got["event"] == sent["event"]
        expected = dict(sent["properties"])
        if use_ip:
            expected["ip"] = "127.0.0.1"
        assert got["properties"] == expected


# The example request of the original API text (the URL wraps across two lines there).
SPEC_EXAMPLE = (
    "/track/?data=eyJldmVudCI6ICJnYW1lIiwgInByb3BlcnRpZXMiOiB7ImlwIjogIjEyMy4xMjMuMTIzLjEyMyIsICJ0b2tlbiI6ICJlM2"
    "JiNDEwMDMzMGMzNTcyMjc0MGZiOGM2ZjVhYmRkYyIsICJ0aW1lIjogMTI0NTYxMzg4NSwgImFjdGlvbiI6ICJwbGF5In19&ip=1"
)


@pytest.fixture(scope="module")
def spec_token(redis_server: Any) -> str:
    return create_project(redis_server.url, "spec example", token="e3bb4100330c35722740fb8c6f5abddc")


def test_the_spec_example_url(gateway: Gateway, rclient: redis.Redis, spec_token: str) -> None:
    # {"event": "game", "properties": {"ip": "123.123.123.123", "token": "e3bb...", "time": 1245613885, ...}}
    # The project exists; the event's time is from 2009, far more than 3 hours ago: the rules reject it.
    r = requests.get(gateway.url(SPEC_EXAMPLE))
    assert (r.status_code, r.text) == (400, "0")
    verbose = requests.get(gateway.url(SPEC_EXAMPLE + "&verbose=1")).json()
    assert verbose["failed_records"][0]["kind"] == "time_too_old"
    assert stored_events(rclient, spec_token) == []


# Requests mixpanel-browser 2.82.1 sent to /track (headless Chromium, page on another origin), byte for
# byte: method, path, Content-Type, Origin, base64 of the body. From the capture in the project's spec.
BROWSER_CAPTURES: list[tuple[str, str, str | None, str, str]] = [
    (
        "POST",
        "/track/?ip=1&_=1795667298218",
        "application/x-www-form-urlencoded",
        "http://127.0.0.1:46359",
        "ZGF0YT1leUpsZG1WdWRDSTZJazV2WW1GMFkyZ2dSWFpsYm5RaUxDSndjbTl3WlhKMGFXVnpJanA3SWlSdmN5STZJa3hwYm5W"
        "NElpd2lKR0p5YjNkelpYSWlPaUpEYUhKdmJXVWlMQ0lrWTNWeWNtVnVkRjkxY213aU9pSm9kSFJ3T2k4dk1USTNMakF1TUM0"
        "eE9qUTJNelU1TDJsdVpHVjRMbWgwYld3JTJGWTJGd2RIVnlaVDFvZEhSd09pOHZNVEkzTGpBdU1DNHhPak0zTmpBNUlpd2lK"
        "R0p5YjNkelpYSmZkbVZ5YzJsdmJpSTZNVFUyTENJa2MyTnlaV1Z1WDJobGFXZG9kQ0k2TnpJd0xDSWtjMk55WldWdVgzZHBa"
        "SFJvSWpveE1qZ3dMQ0p0Y0Y5c2FXSWlPaUozWldJaUxDSWtiR2xpWDNabGNuTnBiMjRpT2lJeUxqZ3lMakVpTENJa2FXNXpa"
        "WEowWDJsa0lqb2lOVFZpT1hNeU5XZGliMmczWnpjd015SXNJblJwYldVaU9qRTNPVFUyTmpjeU9UZ3VNakV5TENKa2FYTjBh"
        "VzVqZEY5cFpDSTZJbUp5YjNkelpYSXRkWE5sY2kweElpd2lKR1JsZG1salpWOXBaQ0k2SW1FeVpXUXlOelZqTFdabE9HVXRO"
        "RFprT0MxaVlqRXhMV001WTJNME1ESXhNRGxsTVNJc0lpUnBibWwwYVdGc1gzSmxabVZ5Y21WeUlqb2lKR1JwY21WamRDSXNJ"
        "aVJwYm1sMGFXRnNYM0psWm1WeWNtbHVaMTlrYjIxaGFXNGlPaUlrWkdseVpXTjBJaXdpSkhWelpYSmZhV1FpT2lKaWNtOTNj"
        "MlZ5TFhWelpYSXRNU0lzSW01bGMzUmxaQ0k2ZXlKc1pYWmxiREVpT25zaWJHVjJaV3d5SWpwYk1Td3lMQ0owYUhKbFpTSmRM"
        "Q0ptYkdGbklqcG1ZV3h6Wlgwc0ltTnZkVzUwSWpvemZTd2ljM0JsWTJsaGJDSTZJaXN2UFNBbVB5TWlMQ0oxYm1samIyUmxJ"
        "am9pYU1PcGJHeHZJT0tja3lJc0ltRnRiM1Z1ZENJNk5ESXVOU3dpYVhOZmRHVnpkQ0k2ZEhKMVpTd2lZalkwY0hKdlltVWlP"
        "aUolMkJmbjUlMkJmbjQlMkZQejglMkZQejhpTENKcGJuTjBZVzVqWlNJNkltNXZZbUYwWTJnaUxDSjBiMnRsYmlJNkltVXpZ"
        "bU0wTVRBd016TXdZek0xTnpJeU56UXdabUk0WXpabU5XRmlaR1JqSW4xOQ==",
    ),
    (
        "POST",
        "/track/?ip=1&_=1795667298257",
        "text/plain;charset=UTF-8",
        "http://127.0.0.1:46359",
        "ZGF0YT1leUpsZG1WdWRDSTZJa0psWVdOdmJpQkZkbVZ1ZENJc0luQnliM0JsY25ScFpYTWlPbnNpSkc5eklqb2lUR2x1ZFhn"
        "aUxDSWtZbkp2ZDNObGNpSTZJa05vY205dFpTSXNJaVJqZFhKeVpXNTBYM1Z5YkNJNkltaDBkSEE2THk4eE1qY3VNQzR3TGpF"
        "Nk5EWXpOVGt2YVc1a1pYZ3VhSFJ0YkQ5allYQjBkWEpsUFdoMGRIQTZMeTh4TWpjdU1DNHdMakU2TXpjMk1Ea2lMQ0lrWW5K"
        "dmQzTmxjbDkyWlhKemFXOXVJam94TlRZc0lpUnpZM0psWlc1ZmFHVnBaMmgwSWpvM01qQXNJaVJ6WTNKbFpXNWZkMmxrZEdn"
        "aU9qRXlPREFzSW0xd1gyeHBZaUk2SW5kbFlpSXNJaVJzYVdKZmRtVnljMmx2YmlJNklqSXVPREl1TVNJc0lpUnBibk5sY25S"
        "ZmFXUWlPaUoxZHpKMVlqTjZZM2N4Y0docGRtTnhJaXdpZEdsdFpTSTZNVGM1TlRZMk56STVPQzR5TlRZc0ltUnBjM1JwYm1O"
        "MFgybGtJam9pWW5KdmQzTmxjaTExYzJWeUxURWlMQ0lrWkdWMmFXTmxYMmxrSWpvaVlUSmxaREkzTldNdFptVTRaUzAwTm1R"
        "NExXSmlNVEV0WXpsall6UXdNakV3T1dVeElpd2lKR2x1YVhScFlXeGZjbVZtWlhKeVpYSWlPaUlrWkdseVpXTjBJaXdpSkds"
        "dWFYUnBZV3hmY21WbVpYSnlhVzVuWDJSdmJXRnBiaUk2SWlSa2FYSmxZM1FpTENJa2RYTmxjbDlwWkNJNkltSnliM2R6WlhJ"
        "dGRYTmxjaTB4SWl3aWJtVnpkR1ZrSWpwN0lteGxkbVZzTVNJNmV5SnNaWFpsYkRJaU9sc3hMRElzSW5Sb2NtVmxJbDBzSW1a"
        "c1lXY2lPbVpoYkhObGZTd2lZMjkxYm5RaU9qTjlMQ0p6Y0dWamFXRnNJam9pS3k4OUlDWSUyRkl5SXNJblZ1YVdOdlpHVWlP"
        "aUpvdzZsc2JHOGc0cHlUSWl3aVlXMXZkVzUwSWpvME1pNDFMQ0pwYzE5MFpYTjBJanAwY25WbExDSmlOalJ3Y205aVpTSTZJ"
        "bjUlMkJmbjUlMkJmajglMkZQejglMkZQeUlzSW1sdWMzUmhibU5sSWpvaVltVmhZMjl1SWl3aWRHOXJaVzRpT2lKbE0ySmpO"
        "REV3TURNek1HTXpOVGN5TWpjME1HWmlPR00yWmpWaFltUmtZeUo5ZlElM0QlM0Q=",
    ),
    (
        "GET",
        "/track/?data=eyJldmVudCI6IkdFVCBFdmVudCIsInByb3BlcnRpZXMiOnsiJG9zIjoiTGludXgiLCIkYnJvd3NlciI6IkN"
        "ocm9tZSIsIiRjdXJyZW50X3VybCI6Imh0dHA6Ly8xMjcuMC4wLjE6NDYzNTkvaW5kZXguaHRtbD9jYXB0dXJlPWh0dHA6Ly8"
        "xMjcuMC4wLjE6Mzc2MDkiLCIkYnJvd3Nlcl92ZXJzaW9uIjoxNTYsIiRzY3JlZW5faGVpZ2h0Ijo3MjAsIiRzY3JlZW5fd2l"
        "kdGgiOjEyODAsIm1wX2xpYiI6IndlYiIsIiRsaWJfdmVyc2lvbiI6IjIuODIuMSIsIiRpbnNlcnRfaWQiOiIwOWYxd2U1a2o"
        "wbGdyOXJhIiwidGltZSI6MTc5NTY2NzI5OC4yNDIsImRpc3RpbmN0X2lkIjoiYnJvd3Nlci11c2VyLTEiLCIkZGV2aWNlX2l"
        "kIjoiYTJlZDI3NWMtZmU4ZS00NmQ4LWJiMTEtYzljYzQwMjEwOWUxIiwiJGluaXRpYWxfcmVmZXJyZXIiOiIkZGlyZWN0Iiw"
        "iJGluaXRpYWxfcmVmZXJyaW5nX2RvbWFpbiI6IiRkaXJlY3QiLCIkdXNlcl9pZCI6ImJyb3dzZXItdXNlci0xIiwibmVzdGV"
        "kIjp7ImxldmVsMSI6eyJsZXZlbDIiOlsxLDIsInRocmVlIl0sImZsYWciOmZhbHNlfSwiY291bnQiOjN9LCJzcGVjaWFsIjo"
        "iKy89ICY%2FIyIsInVuaWNvZGUiOiJow6lsbG8g4pyTIiwiYW1vdW50Ijo0Mi41LCJpc190ZXN0Ijp0cnVlLCJiNjRwcm9iZ"
        "SI6In5%2Bfn5%2Bfj8%2FPz8%2FPyIsImluc3RhbmNlIjoiZ2V0bWV0aG9kIiwidG9rZW4iOiJlM2JjNDEwMDMzMGMzNTcyM"
        "jc0MGZiOGM2ZjVhYmRkYyJ9fQ%3D%3D&ip=1&_=1795667298243",
        "application/x-www-form-urlencoded",
        "http://127.0.0.1:46359",
        "",
    ),
    (
        "POST",
        "/track/?ip=1&_=1795667298297",
        "application/x-www-form-urlencoded",
        "http://127.0.0.1:46359",
        "ZGF0YT0lN0IlMjJldmVudCUyMiUzQSUyMkpTT04lMjBFdmVudCUyMiUyQyUyMnByb3BlcnRpZXMlMjIlM0ElN0IlMjIlMjRv"
        "cyUyMiUzQSUyMkxpbnV4JTIyJTJDJTIyJTI0YnJvd3NlciUyMiUzQSUyMkNocm9tZSUyMiUyQyUyMiUyNGN1cnJlbnRfdXJs"
        "JTIyJTNBJTIyaHR0cCUzQSUyRiUyRjEyNy4wLjAuMSUzQTQ2MzU5JTJGaW5kZXguaHRtbCUzRmNhcHR1cmUlM0RodHRwJTNB"
        "JTJGJTJGMTI3LjAuMC4xJTNBMzc2MDklMjIlMkMlMjIlMjRicm93c2VyX3ZlcnNpb24lMjIlM0ExNTYlMkMlMjIlMjRzY3Jl"
        "ZW5faGVpZ2h0JTIyJTNBNzIwJTJDJTIyJTI0c2NyZWVuX3dpZHRoJTIyJTNBMTI4MCUyQyUyMm1wX2xpYiUyMiUzQSUyMndl"
        "YiUyMiUyQyUyMiUyNGxpYl92ZXJzaW9uJTIyJTNBJTIyMi44Mi4xJTIyJTJDJTIyJTI0aW5zZXJ0X2lkJTIyJTNBJTIycndj"
        "dDIxZ3NpMHU0Y3U5eSUyMiUyQyUyMnRpbWUlMjIlM0ExNzk1NjY3Mjk4LjI5NSUyQyUyMmRpc3RpbmN0X2lkJTIyJTNBJTIy"
        "YnJvd3Nlci11c2VyLTElMjIlMkMlMjIlMjRkZXZpY2VfaWQlMjIlM0ElMjJhMmVkMjc1Yy1mZThlLTQ2ZDgtYmIxMS1jOWNj"
        "NDAyMTA5ZTElMjIlMkMlMjIlMjRpbml0aWFsX3JlZmVycmVyJTIyJTNBJTIyJTI0ZGlyZWN0JTIyJTJDJTIyJTI0aW5pdGlh"
        "bF9yZWZlcnJpbmdfZG9tYWluJTIyJTNBJTIyJTI0ZGlyZWN0JTIyJTJDJTIyJTI0dXNlcl9pZCUyMiUzQSUyMmJyb3dzZXIt"
        "dXNlci0xJTIyJTJDJTIybmVzdGVkJTIyJTNBJTdCJTIybGV2ZWwxJTIyJTNBJTdCJTIybGV2ZWwyJTIyJTNBJTVCMSUyQzIl"
        "MkMlMjJ0aHJlZSUyMiU1RCUyQyUyMmZsYWclMjIlM0FmYWxzZSU3RCUyQyUyMmNvdW50JTIyJTNBMyU3RCUyQyUyMnNwZWNp"
        "YWwlMjIlM0ElMjIlMkIlMkYlM0QlMjAlMjYlM0YlMjMlMjIlMkMlMjJ1bmljb2RlJTIyJTNBJTIyaCVDMyVBOWxsbyUyMCVF"
        "MiU5QyU5MyUyMiUyQyUyMmFtb3VudCUyMiUzQTQyLjUlMkMlMjJpc190ZXN0JTIyJTNBdHJ1ZSUyQyUyMmI2NHByb2JlJTIy"
        "JTNBJTIyfn5+fn5+JTNGJTNGJTNGJTNGJTNGJTNGJTIyJTJDJTIyaW5zdGFuY2UlMjIlM0ElMjJqc29uZm10JTIyJTJDJTIy"
        "dG9rZW4lMjIlM0ElMjJlM2JjNDEwMDMzMGMzNTcyMjc0MGZiOGM2ZjVhYmRkYyUyMiU3RCU3RA==",
    ),
    (
        "POST",
        "/track/?verbose=1&ip=1&_=1795667298604",
        "application/x-www-form-urlencoded",
        "http://127.0.0.1:46359",
        "ZGF0YT1XM3NpWlhabGJuUWlPaUlrYVdSbGJuUnBabmtpTENKd2NtOXdaWEowYVdWeklqcDdJaVJ2Y3lJNklreHBiblY0SWl3"
        "aUpHSnliM2R6WlhJaU9pSkRhSEp2YldVaUxDSWtZM1Z5Y21WdWRGOTFjbXdpT2lKb2RIUndPaTh2TVRJM0xqQXVNQzR4T2pR"
        "Mk16VTVMMmx1WkdWNExtaDBiV3clMkZZMkZ3ZEhWeVpUMW9kSFJ3T2k4dk1USTNMakF1TUM0eE9qTTNOakE1SWl3aUpHSnli"
        "M2R6WlhKZmRtVnljMmx2YmlJNk1UVTJMQ0lrYzJOeVpXVnVYMmhsYVdkb2RDSTZOekl3TENJa2MyTnlaV1Z1WDNkcFpIUm9J"
        "am94TWpnd0xDSnRjRjlzYVdJaU9pSjNaV0lpTENJa2JHbGlYM1psY25OcGIyNGlPaUl5TGpneUxqRWlMQ0lrYVc1elpYSjBY"
        "MmxrSWpvaWIzUndNSFIxWmpaamRtOTRhamh4ZUNJc0luUnBiV1VpT2pFM09UVTJOamN5T1RndU1UZ3NJbVJwYzNScGJtTjBY"
        "MmxrSWpvaVluSnZkM05sY2kxMWMyVnlMVEVpTENJa1pHVjJhV05sWDJsa0lqb2lZVEpsWkRJM05XTXRabVU0WlMwME5tUTRM"
        "V0ppTVRFdFl6bGpZelF3TWpFd09XVXhJaXdpSkdsdWFYUnBZV3hmY21WbVpYSnlaWElpT2lJa1pHbHlaV04wSWl3aUpHbHVh"
        "WFJwWVd4ZmNtVm1aWEp5YVc1blgyUnZiV0ZwYmlJNklpUmthWEpsWTNRaUxDSWtkWE5sY2w5cFpDSTZJbUp5YjNkelpYSXRk"
        "WE5sY2kweElpd2lKR0Z1YjI1ZlpHbHpkR2x1WTNSZmFXUWlPaUlrWkdWMmFXTmxPbUV5WldReU56VmpMV1psT0dVdE5EWmtP"
        "QzFpWWpFeExXTTVZMk0wTURJeE1EbGxNU0lzSW5SdmEyVnVJam9pWlROaVl6UXhNREF6TXpCak16VTNNakkzTkRCbVlqaGpO"
        "bVkxWVdKa1pHTWlMQ0p0Y0Y5elpXNTBYMko1WDJ4cFlsOTJaWEp6YVc5dUlqb2lNaTQ0TWk0eEluMTlMSHNpWlhabGJuUWlP"
        "aUpDY205M2MyVnlJRVYyWlc1MElESWlMQ0p3Y205d1pYSjBhV1Z6SWpwN0lpUnZjeUk2SWt4cGJuVjRJaXdpSkdKeWIzZHpa"
        "WElpT2lKRGFISnZiV1VpTENJa1kzVnljbVZ1ZEY5MWNtd2lPaUpvZEhSd09pOHZNVEkzTGpBdU1DNHhPalEyTXpVNUwybHVa"
        "R1Y0TG1oMGJXdyUyRlkyRndkSFZ5WlQxb2RIUndPaTh2TVRJM0xqQXVNQzR4T2pNM05qQTVJaXdpSkdKeWIzZHpaWEpmZG1W"
        "eWMybHZiaUk2TVRVMkxDSWtjMk55WldWdVgyaGxhV2RvZENJNk56SXdMQ0lrYzJOeVpXVnVYM2RwWkhSb0lqb3hNamd3TENK"
        "dGNGOXNhV0lpT2lKM1pXSWlMQ0lrYkdsaVgzWmxjbk5wYjI0aU9pSXlMamd5TGpFaUxDSWthVzV6WlhKMFgybGtJam9pYkRO"
        "amVHUTVjV2hyTjJ4aU1HVm1aeUlzSW5ScGJXVWlPakUzT1RVMk5qY3lPVGd1TVRnNExDSmthWE4wYVc1amRGOXBaQ0k2SW1K"
        "eWIzZHpaWEl0ZFhObGNpMHhJaXdpSkdSbGRtbGpaVjlwWkNJNkltRXlaV1F5TnpWakxXWmxPR1V0TkRaa09DMWlZakV4TFdN"
        "NVkyTTBNREl4TURsbE1TSXNJaVJwYm1sMGFXRnNYM0psWm1WeWNtVnlJam9pSkdScGNtVmpkQ0lzSWlScGJtbDBhV0ZzWDNK"
        "bFptVnljbWx1WjE5a2IyMWhhVzRpT2lJa1pHbHlaV04wSWl3aUpIVnpaWEpmYVdRaU9pSmljbTkzYzJWeUxYVnpaWEl0TVNJ"
        "c0ltNWxjM1JsWkNJNmV5SnNaWFpsYkRFaU9uc2liR1YyWld3eUlqcGJNU3d5TENKMGFISmxaU0pkTENKbWJHRm5JanBtWVd4"
        "elpYMHNJbU52ZFc1MElqb3pmU3dpYzNCbFkybGhiQ0k2SWlzdlBTQW1QeU1pTENKMWJtbGpiMlJsSWpvaWFNT3BiR3h2SU9L"
        "Y2t5SXNJbUZ0YjNWdWRDSTZOREl1TlN3aWFYTmZkR1Z6ZENJNmRISjFaU3dpWWpZMGNISnZZbVVpT2lKJTJCZm41JTJCZm40"
        "JTJGUHo4JTJGUHo4aUxDSnpaWEVpT2pJc0luUnZhMlZ1SWpvaVpUTmlZelF4TURBek16QmpNelUzTWpJM05EQm1ZamhqTm1Z"
        "MVlXSmtaR01pTENKdGNGOXpaVzUwWDJKNVgyeHBZbDkyWlhKemFXOXVJam9pTWk0NE1pNHhJbjE5TEhzaVpYWmxiblFpT2lK"
        "Q2NtOTNjMlZ5SUVWMlpXNTBJREVpTENKd2NtOXdaWEowYVdWeklqcDdJaVJ2Y3lJNklreHBiblY0SWl3aUpHSnliM2R6WlhJ"
        "aU9pSkRhSEp2YldVaUxDSWtZM1Z5Y21WdWRGOTFjbXdpT2lKb2RIUndPaTh2TVRJM0xqQXVNQzR4T2pRMk16VTVMMmx1WkdW"
        "NExtaDBiV3clMkZZMkZ3ZEhWeVpUMW9kSFJ3T2k4dk1USTNMakF1TUM0eE9qTTNOakE1SWl3aUpHSnliM2R6WlhKZmRtVnlj"
        "Mmx2YmlJNk1UVTJMQ0lrYzJOeVpXVnVYMmhsYVdkb2RDSTZOekl3TENJa2MyTnlaV1Z1WDNkcFpIUm9Jam94TWpnd0xDSnRj"
        "RjlzYVdJaU9pSjNaV0lpTENJa2JHbGlYM1psY25OcGIyNGlPaUl5TGpneUxqRWlMQ0lrYVc1elpYSjBYMmxrSWpvaWRXWTJO"
        "Vzh3ZHpBeU1YRjFZV3AzZUNJc0luUnBiV1VpT2pFM09UVTJOamN5T1RndU1UZzFMQ0prYVhOMGFXNWpkRjlwWkNJNkltSnli"
        "M2R6WlhJdGRYTmxjaTB4SWl3aUpHUmxkbWxqWlY5cFpDSTZJbUV5WldReU56VmpMV1psT0dVdE5EWmtPQzFpWWpFeExXTTVZ"
        "Mk0wTURJeE1EbGxNU0lzSWlScGJtbDBhV0ZzWDNKbFptVnljbVZ5SWpvaUpHUnBjbVZqZENJc0lpUnBibWwwYVdGc1gzSmxa"
        "bVZ5Y21sdVoxOWtiMjFoYVc0aU9pSWtaR2x5WldOMElpd2lKSFZ6WlhKZmFXUWlPaUppY205M2MyVnlMWFZ6WlhJdE1TSXNJ"
        "bTVsYzNSbFpDSTZleUpzWlhabGJERWlPbnNpYkdWMlpXd3lJanBiTVN3eUxDSjBhSEpsWlNKZExDSm1iR0ZuSWpwbVlXeHpa"
        "WDBzSW1OdmRXNTBJam96ZlN3aWMzQmxZMmxoYkNJNklpc3ZQU0FtUHlNaUxDSjFibWxqYjJSbElqb2lhTU9wYkd4dklPS2Nr"
        "eUlzSW1GdGIzVnVkQ0k2TkRJdU5Td2lhWE5mZEdWemRDSTZkSEoxWlN3aVlqWTBjSEp2WW1VaU9pSiUyQmZuNSUyQmZuNCUy"
        "RlB6OCUyRlB6OGlMQ0p6WlhFaU9qRXNJblJ2YTJWdUlqb2laVE5pWXpReE1EQXpNekJqTXpVM01qSTNOREJtWWpoak5tWTFZ"
        "V0prWkdNaUxDSnRjRjl6Wlc1MFgySjVYMnhwWWw5MlpYSnphVzl1SWpvaU1pNDRNaTR4SW4xOVhRJTNEJTNE",
    ),
    (
        "GET",
        "/track/?data=eyJldmVudCI6IkdFVCBGaXJzdCBFdmVudCIsInByb3BlcnRpZXMiOnsiJG9zIjoiTGludXgiLCIkYnJvd3N"
        "lciI6IkNocm9tZSIsIiRjdXJyZW50X3VybCI6Imh0dHA6Ly8xMjcuMC4wLjE6MzgwNzcvZ2V0X2ZpcnN0Lmh0bWw%2FY2Fwd"
        "HVyZT1odHRwOi8vMTI3LjAuMC4xOjM3OTE3IiwiJGJyb3dzZXJfdmVyc2lvbiI6MTU2LCIkc2NyZWVuX2hlaWdodCI6NzIwL"
        "CIkc2NyZWVuX3dpZHRoIjoxMjgwLCJtcF9saWIiOiJ3ZWIiLCIkbGliX3ZlcnNpb24iOiIyLjgyLjEiLCIkaW5zZXJ0X2lkI"
        "joianVhM2RqMWR2ZHNnd2s0ZCIsInRpbWUiOjE3OTU2NjczMzkuODMxLCJkaXN0aW5jdF9pZCI6IiRkZXZpY2U6NzJjZmFkZ"
        "DQtZjk2ZC00YTJkLWEwYjEtYWJlODliMWYxNjc2IiwiJGRldmljZV9pZCI6IjcyY2ZhZGQ0LWY5NmQtNGEyZC1hMGIxLWFiZ"
        "Tg5YjFmMTY3NiIsIiRpbml0aWFsX3JlZmVycmVyIjoiJGRpcmVjdCIsIiRpbml0aWFsX3JlZmVycmluZ19kb21haW4iOiIkZ"
        "GlyZWN0Iiwic3BlY2lhbCI6IisvPSAmPyMiLCJ1bmljb2RlIjoiaMOpbGxvIOKckyIsImFtb3VudCI6NDIuNSwiaXNfdGVzd"
        "CI6dHJ1ZSwibmVzdGVkIjp7ImEiOlsxLCJ0d28iXX0sImI2NHByb2JlIjoifn5%2Bfn5%2BPz8%2FPz8%2FIiwidG9rZW4iO"
        "iJlM2JjNDEwMDMzMGMzNTcyMjc0MGZiOGM2ZjVhYmRkYyJ9fQ%3D%3D&ip=1&_=1795667339847",
        None,
        "http://127.0.0.1:38077",
        "",
    ),
]
