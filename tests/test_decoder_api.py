"""`trackgate.decode` and `trackgate.decode_request` from a Python programmer's side: every default limit
at the limit and one over, the DecodeError API, the spec's own example, and the golden requests captured
from mixpanel-browser and mixpanel-python, each checked against an independent stdlib decoding."""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
import urllib.parse
import zlib
from pathlib import Path
from typing import Any, cast

import pytest
import trackgate
from trackgate import _native

# Copies of ../shared/spec (the API text and the captured requests), so the suite needs nothing outside.
SHARED_SPEC = Path(__file__).resolve().parent / "spec"
NOW = 1795667298.0  # whole, so that the stored JSON can be written out by hand
N = "1795667298"  # NOW as the normalised JSON writes it
TOKEN = "e3bc4100330c35722740fb8c6f5abddc"
FORM = "application/x-www-form-urlencoded"


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def event(properties: dict[str, Any] | None = None, name: str = "e") -> dict[str, Any]:
    return {"event": name, "properties": {"token": "t", **(properties or {})}}


def decode_error(data: str | bytes, **rules: Any) -> trackgate.DecodeError:
    with pytest.raises(trackgate.DecodeError) as caught:
        trackgate.decode(data, now=NOW, **rules)
    return caught.value


def the_one_error(data: str | bytes, **rules: Any) -> tuple[str, str]:
    """(field, kind) of the single invalid event in `data`."""
    error = decode_error(data, **rules)
    assert error.kind == "invalid_events"
    [only] = error.errors()
    return str(only["field"]), str(only["kind"])


def accepted(data: str | bytes, **rules: Any) -> list[trackgate.Event]:
    return trackgate.decode(data, now=NOW, **rules)


# ---------------------------------------------------------------------------------------------------------
# Every default limit: at the limit accepted, one over rejected with its own kind.


def test_properties_count_255_and_256() -> None:
    at_limit = {f"p{i}": i for i in range(254)}  # and the token: 255
    assert len(accepted(b64(event(at_limit)))[0].properties) == 256  # plus the time added
    over = {**at_limit, "p254": 254}
    assert the_one_error(b64(event(over))) == ("properties", "too_many_properties")


def test_depth_3_and_4() -> None:
    assert accepted(b64(event({"n": {"a": [1]}, "m": [[{}]]})))[0].properties["n"] == {"a": [1]}
    assert the_one_error(b64(event({"n": {"a": [[{}]]}}))) == ("properties.n", "too_deep")
    assert the_one_error(b64(event({"n": [[[{}]]]}))) == ("properties.n", "too_deep")


def test_array_length_255_and_256() -> None:
    assert len(accepted(b64(event({"list": list(range(255))})))[0].properties["list"]) == 255
    assert the_one_error(b64(event({"list": list(range(256))}))) == ("properties.list", "array_too_long")
    nested = {"outer": [list(range(256))]}
    assert the_one_error(b64(event(nested))) == ("properties.outer", "array_too_long")


def test_nested_object_keys_255_and_256() -> None:
    keys = {str(i): i for i in range(255)}
    assert len(accepted(b64(event({"o": keys})))[0].properties["o"]) == 255
    assert the_one_error(b64(event({"o": {"inner": {**keys, "255": 255}}}))) == (
        "properties.o",
        "too_many_keys",
    )


def test_event_name_255_and_256_characters() -> None:
    name = "é" * 255  # 510 bytes: the limit counts characters
    assert accepted(b64(event(name=name)))[0].event == name
    assert the_one_error(b64(event(name=name + "e"))) == ("event", "event_too_long")


def test_distinct_id_200_and_201_characters() -> None:
    distinct_id = "ü" * 200
    assert accepted(b64(event({"distinct_id": distinct_id})))[0].distinct_id == distinct_id
    assert the_one_error(b64(event({"distinct_id": distinct_id + "u"}))) == (
        "properties.distinct_id",
        "distinct_id_too_long",
    )


def test_insert_id_36_and_37_characters() -> None:
    insert_id = "0123456789abcdef-0123456789ABCDEF-xy"
    assert accepted(b64(event({"$insert_id": insert_id})))[0].insert_id == insert_id
    assert the_one_error(b64(event({"$insert_id": insert_id + "z"}))) == (
        "properties.$insert_id",
        "insert_id_invalid",
    )
    assert the_one_error(b64(event({"$insert_id": "a_b"}))) == ("properties.$insert_id", "insert_id_invalid")


def test_event_bytes_1_000_000_and_one_more() -> None:
    """The limit applies to the normalised JSON, written out here by hand."""

    def stored(pad: str) -> str:
        return (
            f'{{"event":"e","time":{N},"received":{N},"token":"t",'
            f'"properties":{{"token":"t","pad":"{pad}","time":{N}}}}}'
        )

    pad = "x" * (1_000_000 - len(stored("")))
    request = _native.decode_data(json.dumps(event({"pad": pad})), now=NOW, options=trackgate.Options())
    assert request.events() == [stored(pad).encode()]
    assert len(request.events()[0]) == 1_000_000
    assert the_one_error(json.dumps(event({"pad": pad + "x"}))) == ("", "event_too_large")


def test_request_bytes_10_000_000_and_one_more() -> None:
    head = b"data=" + b64(event()).encode() + b"&pad="
    body = head + b"x" * (10_000_000 - len(head))
    request = trackgate.decode_request(b"", body, FORM, now=NOW, options=trackgate.Options())
    assert request.accepted == 1
    with pytest.raises(trackgate.DecodeError) as caught:
        trackgate.decode_request(b"", body + b"x", FORM, now=NOW, options=trackgate.Options())
    assert (caught.value.kind, caught.value.status) == ("body_too_large", 413)
    # The query string counts too.
    with pytest.raises(trackgate.DecodeError) as caught:
        trackgate.decode_request(b"ip=1", body, FORM, now=NOW, options=trackgate.Options())
    assert caught.value.kind == "body_too_large"


def test_gzip_inflating_to_10_000_000_and_one_more() -> None:
    head = b"data=" + b64(event()).encode() + b"&pad="
    form = head + b"x" * (10_000_000 - len(head))
    request = trackgate.decode_request(
        b"", gzip.compress(form), FORM, "gzip", now=NOW, options=trackgate.Options()
    )
    assert request.accepted == 1
    bomb = gzip.compress(form + b"x")
    assert len(bomb) < 100_000  # small on the wire: the cap is on what it inflates to
    with pytest.raises(trackgate.DecodeError) as caught:
        trackgate.decode_request(b"", bomb, FORM, "gzip", now=NOW, options=trackgate.Options())
    assert (caught.value.kind, caught.value.status) == ("decompressed_too_large", 413)


def test_events_per_request_2000_and_2001() -> None:
    batch = [event({"i": i}) for i in range(2001)]
    events = accepted(json.dumps(batch[:2000]))
    assert [e.properties["i"] for e in events] == list(range(2000))
    error = decode_error(json.dumps(batch))
    assert (error.kind, error.status) == ("too_many_events", 413)
    assert error.errors() == []


def test_time_max_age_and_future_skew_boundaries() -> None:
    assert accepted(b64(event({"time": NOW - 10800})))[0].time == NOW - 10800
    assert the_one_error(b64(event({"time": NOW - 10801}))) == ("properties.time", "time_too_old")
    assert accepted(b64(event({"time": (NOW - 10800) * 1000})))[0].time == NOW - 10800
    assert accepted(b64(event({"time": NOW + 300})))[0].time == NOW + 300
    assert accepted(b64(event({"time": NOW + 301})))[0].time == NOW
    assert accepted(b64(event({"time": NOW - 86400})), max_age=86400.0)[0].time == NOW - 86400


# ---------------------------------------------------------------------------------------------------------
# The Python API.


def test_readme_example() -> None:
    [signup] = trackgate.decode(
        '{"event": "signup", "properties": {"token": "t0k", "distinct_id": 7}}', now=NOW
    )
    assert (signup.event, signup.distinct_id, signup.time, signup.received) == ("signup", "7", NOW, NOW)
    assert signup.properties == {"token": "t0k", "distinct_id": "7", "time": NOW}
    error = decode_error(b"eyJldmVudCI6ICJnYW1lIn0=")
    [only] = error.errors()
    assert (only["index"], only["loc"], only["kind"]) == (0, (0, "properties", "token"), "token_missing")


def test_decode_error_is_a_value_error_with_kind_status_errors_and_events() -> None:
    batch = [event({"n": 1}, name="ok"), {"event": "no token"}, event(name="ok too"), 5]
    error = decode_error(json.dumps(batch))
    assert isinstance(error, ValueError)
    assert (error.kind, error.status) == ("invalid_events", 400)
    assert [(e["index"], e["loc"], e["field"], e["kind"]) for e in error.errors()] == [
        (1, (1, "properties", "token"), "properties.token", "token_missing"),
        (3, (3,), "", "not_an_object"),
    ]
    assert all(isinstance(e["msg"], str) and e["msg"] for e in error.errors())
    assert [type(e) for e in error.events] == [trackgate.Event, trackgate.Event]
    events = cast(list[trackgate.Event], error.events)  # the line above checked their type
    assert [e.event for e in events] == ["ok", "ok too"]
    assert events[0].properties == {"token": "t", "n": 1, "time": NOW}


def test_whole_request_errors_carry_no_events() -> None:
    error = decode_error("not base64!")
    assert (error.kind, error.status, error.errors(), error.events) == ("invalid_base64", 400, [], [])
    assert isinstance(error.message, str)
    assert error.message
    assert str(error)


def test_whole_request_errors_carry_the_answer_parameters() -> None:
    """What shapes the answer to a refused request: from the query string and a form body (the body's
    win), never from a body the decoder would have had to inflate."""
    form = "application/x-www-form-urlencoded"

    def refused(
        query: bytes, body: bytes, content_type: str | None = form, encoding: str | None = None
    ) -> Any:
        with pytest.raises(trackgate.DecodeError) as caught:
            trackgate.decode_request(
                query, body, content_type, encoding, now=NOW, options=trackgate.Options()
            )
        return caught.value

    error = refused(b"callback=fromquery&img=1", b"data=%25%25&verbose=1&callback=frombody")
    assert (error.kind, error.verbose, error.img, error.callback) == (
        "invalid_base64",
        True,
        True,
        "frombody",
    )
    error = refused(b"verbose=1", gzip.compress(b"data=x&callback=zipped"), encoding="gzip")
    assert (error.verbose, error.callback) == (True, None)
    error = refused(b"", b"")
    assert (error.kind, error.verbose, error.img, error.callback) == ("empty", False, False, None)


def test_every_accepted_form_of_data_gives_the_same_events() -> None:
    batch = [event({"b64probe": "~~~~~~??????", "i": i}) for i in range(3)]
    text = json.dumps(batch).encode()
    while len(text) % 3 == 0:  # so that the base64 has padding to leave out
        text += b" "
    standard = base64.b64encode(text).decode()
    assert "+" in standard
    assert "/" in standard
    assert standard.endswith("=")
    forms = {
        "standard": standard,
        "unpadded": standard.rstrip("="),
        "url-safe": base64.urlsafe_b64encode(text).decode(),
        "url-safe unpadded": base64.urlsafe_b64encode(text).decode().rstrip("="),
        "line breaks": "\n".join(standard[i : i + 76] for i in range(0, len(standard), 76)),
        "CRLF and tabs": "\r\n\t".join(standard[i : i + 60] for i in range(0, len(standard), 60)),
        "spaces for +": standard.replace("+", " "),
        "raw JSON": text.decode(),
        "raw JSON, spaced": json.dumps(batch, indent=2),
    }
    expected = accepted(text)
    assert [e.properties["i"] for e in expected] == [0, 1, 2]
    for name, data in forms.items():
        assert accepted(data) == expected, name
        assert accepted(data.encode()) == expected, name
    assert accepted(gzip.compress(text)) == expected
    assert accepted(gzip.compress(standard.encode())) == expected


def test_str_and_bytes_give_the_same_events() -> None:
    payload = b64([event({"distinct_id": "u1"}), event({"distinct_id": 2})])
    assert accepted(payload) == accepted(payload.encode())
    raw = json.dumps(event({"unicode": "héllo ✓"}), ensure_ascii=False)
    assert accepted(raw) == accepted(raw.encode())
    query = "data=" + urllib.parse.quote(payload)
    as_str = trackgate.decode_request(query, b"", now=NOW, options=trackgate.Options())
    as_bytes = trackgate.decode_request(query.encode(), b"", now=NOW, options=trackgate.Options())
    assert as_str.events() == as_bytes.events()
    assert len(as_str.events()) == 2


@pytest.mark.parametrize("wrong", [None, 5, bytearray(b"data=x"), memoryview(b"data=x")])
def test_text_that_is_neither_str_nor_bytes_is_a_type_error(wrong: object) -> None:
    with pytest.raises(TypeError, match=f"expected str or bytes, not {type(wrong).__name__}"):
        trackgate.decode_request(wrong, b"", now=NOW, options=trackgate.Options())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected str or bytes"):
        trackgate.decode(wrong, now=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("empty", ["", b"", "  \n", b"\t"])
def test_empty_input_has_its_own_error(empty: str | bytes) -> None:
    error = decode_error(empty)
    assert (error.kind, error.status) == ("empty", 400)
    with pytest.raises(trackgate.DecodeError) as caught:
        trackgate.decode_request("", b"", now=NOW, options=trackgate.Options())
    assert caught.value.kind == "empty"


def test_rules_as_keywords_or_options_but_not_both() -> None:
    old = b64(event({"time": NOW - 86400}))
    assert accepted(old, max_age=2 * 86400.0)
    assert trackgate.decode(old, now=NOW, options=trackgate.Options(max_age=2 * 86400.0))
    with pytest.raises(TypeError):
        trackgate.decode(old, now=NOW, options=trackgate.Options(), max_age=1.0)


@pytest.mark.parametrize(
    ("rule", "value", "error", "message"),
    [
        ("max_events", -1, ValueError, "max_events must be at least 1, got -1"),
        ("max_events", 0, ValueError, "max_events must be at least 1, got 0"),
        ("max_events", 10**20, ValueError, f"max_events must be at most {2**64 - 1}, got {10**20}"),
        ("max_properties", 0, ValueError, "max_properties must be at least 1"),
        ("max_event_bytes", 0, ValueError, "max_event_bytes must be at least 1"),
        ("max_distinct_id_chars", 0, ValueError, "max_distinct_id_chars must be at least 1"),
        ("max_depth", -1, ValueError, "max_depth must be from 0 to 64, got -1"),
        ("max_depth", 65, ValueError, "max_depth must be from 0 to 64, got 65"),
        ("partitions", -1, ValueError, "partitions must be from 1 to 65536, got -1"),
        ("partitions", 65537, ValueError, "partitions must be from 1 to 65536, got 65537"),
        ("max_array_len", "5", TypeError, "max_array_len must be an int, not str"),
        ("max_events", True, TypeError, "max_events must be an int, not bool"),
        ("max_age", float("nan"), ValueError, "max_age must be a finite number"),
    ],
)
def test_a_wrong_rule_names_itself(rule: str, value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        trackgate.Options(**{rule: value})  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(message)):
        trackgate.decode(b64(event()), now=NOW, **{rule: value})  # type: ignore[arg-type]


def test_the_smallest_rules_are_accepted() -> None:
    options = trackgate.Options(max_depth=0, max_array_len=0, max_events=1, partitions=1, max_properties=1)
    assert (options.max_depth, options.max_array_len, options.partitions) == (0, 0, 1)


@pytest.mark.parametrize("now", [-1.0, float("nan"), float("inf")])
def test_a_wrong_now_is_a_value_error(now: float) -> None:
    with pytest.raises(ValueError, match="now must be a finite number of seconds since 1970"):
        trackgate.decode(b64(event()), now=now)
    with pytest.raises(ValueError, match="now must be"):
        trackgate.decode_request("data=x", b"", now=now, options=trackgate.Options())


def test_a_str_with_surrogates_decodes_as_mixpanel_browser_bytes_do() -> None:
    # A lone surrogate, and a pair as two code points ("surrogatepass" decoding of CESU-8 leaves them so).
    lone, pair = "\ud800", "\ud83d\ude00"
    [stored] = accepted('{"event":"é' + lone + '","properties":{"token":"t"}}')
    assert stored.event == "é\ufffd"
    [stored] = accepted('{"event":"' + pair + '","properties":{"token":"t"}}')
    assert stored.event == "\U0001f600"
    as_bytes = ('{"event":"' + pair + '","properties":{"token":"t"}}').encode("utf-8", "surrogatepass")
    assert accepted(as_bytes) == accepted('{"event":"' + pair + '","properties":{"token":"t"}}')
    query = "data=" + '{"event":"e' + lone + '","properties":{"token":"t"}}'
    request = trackgate.decode_request(query, b"", now=NOW, options=trackgate.Options())
    assert json.loads(request.events()[0])["event"] == "e\ufffd"


def test_a_token_set_is_made_of_str() -> None:
    tokens = trackgate.TokenSet(iter(["a", "b"]))
    assert ("a" in tokens, "c" in tokens, len(tokens)) == (True, False, 2)
    assert (1 in tokens, None in tokens) == (False, False)  # like a set's: not a str, not in it
    with pytest.raises(TypeError, match="an iterable of str, not one str"):
        trackgate.TokenSet("abc")
    with pytest.raises(TypeError, match="tokens must be str, not int"):
        trackgate.TokenSet(["a", 1])  # type: ignore[list-item]


def test_numbers_beyond_a_double_are_refused_by_name() -> None:
    payload = json.dumps(event({"ok": 1})).replace('"ok": 1', '"ok": 1, "huge": 1e400')
    assert the_one_error(payload) == ("properties.huge", "number_out_of_range")
    assert "beyond the range of a double" in str(decode_error(payload).errors()[0]["msg"])
    kept = json.dumps(event()).replace('"token": "t"', '"token": "t", "big": 1' + "0" * 30)
    assert accepted(kept)[0].properties["big"] == 10**30


def test_decode_without_now_uses_the_clock() -> None:
    before = time.time()
    [stored] = trackgate.decode(b64(event()))
    assert before <= stored.received <= time.time()
    assert stored.time == stored.received


def test_decode_request_reports_invalid_events_without_raising() -> None:
    body = "data=" + urllib.parse.quote(b64([event({"distinct_id": "u"}), event({"time": "soon"})]))
    request = trackgate.decode_request(
        "ip=1&verbose=1", body.encode(), FORM, now=NOW, options=trackgate.Options(), peer_ip="192.0.2.1"
    )
    assert (request.total, request.accepted, request.verbose, request.use_ip) == (2, 1, True, True)
    assert [(e.index, e.field, e.kind) for e in request.errors] == [(1, "properties.time", "time_invalid")]
    [stored] = [json.loads(raw) for raw in request.events()]
    assert (stored["distinct_id"], stored["ip"], stored["properties"]["ip"]) == (
        "u",
        "192.0.2.1",
        "192.0.2.1",
    )
    [batch] = request.batches
    assert (batch.token, batch.partition, batch.count) == (
        "t",
        zlib.crc32(b"u") % 4,
        1,
    )  # 4 partitions by default


def test_unknown_tokens_are_rejected_with_a_token_set() -> None:
    body = ("data=" + urllib.parse.quote(b64([event(), event({"token": "known"})]))).encode()
    request = trackgate.decode_request(
        "", body, FORM, now=NOW, options=trackgate.Options(), tokens=trackgate.TokenSet(["known"])
    )
    assert [(e.index, e.kind) for e in request.errors] == [(0, "unknown_token")]
    assert request.accepted == 1


# ---------------------------------------------------------------------------------------------------------
# The spec's own example.


def spec_example() -> tuple[str, dict[str, Any]]:
    """The `data` of the example URL (wrapped across two lines in the text) and the event shown below it."""
    text = (SHARED_SPEC / "track-api-original.txt").read_text()
    url = re.search(r"http://api\.mixpanel\.com/track/\?data=(.*?)&ip=1", text, re.DOTALL)
    assert url, "the example URL is in the spec"
    data = url.group(1).replace("\n", "")
    shown = re.search(r"structure of:\n(\{.*\})\n", text)
    assert shown, "the example event is in the spec"
    return data, json.loads(shown.group(1))


def test_spec_example_is_too_old_under_the_3_hour_rule() -> None:
    data, _ = spec_example()
    with pytest.raises(trackgate.DecodeError) as caught:
        trackgate.decode(data, now=time.time())
    [only] = caught.value.errors()
    assert (only["field"], only["kind"]) == ("properties.time", "time_too_old")
    assert caught.value.events == []


def test_spec_example_decodes_to_the_event_it_shows() -> None:
    data, shown = spec_example()
    now = 1245613885 + 60
    [stored] = trackgate.decode(data, now=now)
    shown_properties = shown["properties"]
    # The spec's own typo: its base64 carries the token "e3bb41...", the JSON shown beside it "e3bc41...".
    assert stored.token == "e3bb4100330c35722740fb8c6f5abddc"
    assert shown_properties["token"] == TOKEN
    assert stored.properties == {**shown_properties, "token": stored.token}
    assert list(stored.properties) == list(shown_properties)
    assert (stored.event, stored.time, stored.received) == (shown["event"], 1245613885, now)
    assert (stored.ip, stored.distinct_id, stored.insert_id, stored.funnel, stored.mp_keys) == (
        "123.123.123.123",
        None,
        None,
        None,
        (),
    )


def test_spec_example_url_with_ip_1() -> None:
    data, shown = spec_example()
    request = trackgate.decode_request(
        f"data={data}&ip=1", b"", now=1245613885 + 60, options=trackgate.Options(), peer_ip="198.51.100.7"
    )
    [stored] = [json.loads(raw) for raw in request.events()]
    assert request.use_ip
    assert (stored["ip"], stored["distinct_id"]) == ("198.51.100.7", "198.51.100.7")
    assert stored["properties"]["action"] == shown["properties"]["action"]


# ---------------------------------------------------------------------------------------------------------
# Golden requests: what real clients sent, decoded here with the standard library only.


def capture_lines() -> list[Any]:
    lines = []
    for path in sorted((SHARED_SPEC / "captures").glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            lines.append(pytest.param(json.loads(line), id=f"{path.stem}:{number}"))
    return lines


CAPTURES = capture_lines()


def test_the_captures_are_there() -> None:
    paths = [urllib.parse.urlsplit(c.values[0]["path"]).path for c in CAPTURES]
    assert sum(p.startswith("/track") for p in paths) == 9
    assert sum(p.startswith("/engage") for p in paths) == 2


def sent_by_the_client(capture: dict[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The parameters and the events of a captured request, decoded independently of trackgate."""
    query = urllib.parse.urlsplit(capture["path"]).query
    body = base64.b64decode(capture["body_b64"])
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    params.update(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
    data = params["data"]
    text = data if data.lstrip()[:1] in ("{", "[") else base64.b64decode(data).decode()
    sent = json.loads(text)
    return params, sent if isinstance(sent, list) else [sent]


# People updates go to /engage, not to the decoder of /track events.
TRACK_CAPTURES = [
    c for c in CAPTURES if not urllib.parse.urlsplit(c.values[0]["path"]).path.startswith("/engage")
]


@pytest.mark.parametrize("capture", TRACK_CAPTURES)
def test_golden_capture(capture: dict[str, Any]) -> None:
    split = urllib.parse.urlsplit(capture["path"])
    assert split.path in ("/track", "/track/")
    headers = capture["headers"]
    request = trackgate.decode_request(
        split.query,
        base64.b64decode(capture["body_b64"]),
        headers.get("content-type"),
        headers.get("content-encoding"),
        now=capture["ts"],
        options=trackgate.Options(max_age=5 * 86400),
        peer_ip="127.0.0.1",
    )
    params, sent = sent_by_the_client(capture)
    assert request.errors == []
    assert (request.total, request.accepted) == (len(sent), len(sent))
    assert (request.use_ip, request.verbose) == (params.get("ip") == "1", params.get("verbose") == "1")

    stored_events = [json.loads(raw) for raw in request.events()]
    for original, stored in zip(sent, stored_events, strict=True):
        properties = dict(original["properties"])
        if request.use_ip:
            properties["ip"] = "127.0.0.1"  # ip=1: the caller's address
        assert stored["properties"] == properties  # every property intact
        assert list(stored["properties"]) == list(properties)
        expected = {
            "event": original["event"],
            "time": properties["time"],  # already float seconds, within 5 days of the capture
            "received": capture["ts"],
            "token": TOKEN,
            "distinct_id": properties["distinct_id"],
            "insert_id": properties["$insert_id"],
            **({"ip": "127.0.0.1"} if request.use_ip else {}),
            "mp_keys": [key for key in properties if key.startswith("mp_")],
            "properties": properties,
        }
        assert stored == expected
        assert list(stored) == list(expected)
    # And as typed events: trackgate.decode on the same data (no ip=1 there) gives the same properties.
    typed = trackgate.decode(params["data"], now=capture["ts"], max_age=5 * 86400)
    assert [e.properties for e in typed] == [e["properties"] for e in sent]
    assert [e.mp_keys for e in typed] == [
        tuple(k for k in e["properties"] if k.startswith("mp_")) for e in sent
    ]

    packed_users = []
    for batch in request.batches:
        assert batch.token == TOKEN
        packed_users += [batch.partition] * batch.count
    expected_partitions = [zlib.crc32(e["properties"]["distinct_id"].encode()) % 4 for e in sent]
    assert sorted(packed_users) == sorted(expected_partitions)
