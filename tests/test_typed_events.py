"""`trackgate.decode` makes its events in Rust, in one pass; they are the events that reading the
normalised JSON the gateway stores gives (msgspec, into the same Structs): the same fields, the same
values of the same types (an int stays an int, 1.0 a float), in the same order."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trackgate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trackgate import _native

NOW = 1795667298.3074808
STORED = msgspec.json.Decoder(trackgate.Event)


def as_stored(events: list[bytes]) -> list[trackgate.Event]:
    return [STORED.decode(raw) for raw in events]


def typed(events: list[Any]) -> bytes:
    """Events as JSON: equal only when the values have the same types (1 and 1.0 are written apart)."""
    return msgspec.json.encode(events)


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except trackgate.DecodeError as error:
        return error


def assert_same(data: str | bytes, **rules: Any) -> None:
    """`trackgate.decode` against the stored events read back, for a payload valid or not."""
    options = trackgate.Options(**rules)
    request = outcome(lambda: _native.decode_data(data, now=NOW, options=options))
    decoded = outcome(lambda: trackgate.decode(data, now=NOW, options=options))
    if isinstance(request, trackgate.DecodeError):
        assert isinstance(decoded, trackgate.DecodeError)
        assert (decoded.kind, decoded.message, decoded.events) == (request.kind, request.message, [])
        return
    expected = as_stored(request.events())
    if not request.errors:
        assert typed(decoded) == typed(expected)
        return
    assert isinstance(decoded, trackgate.DecodeError)
    assert (decoded.kind, decoded.status) == ("invalid_events", 400)
    assert typed(decoded.events) == typed(expected)
    assert [(e["index"], e["field"], e["kind"], e["msg"]) for e in decoded.errors()] == [
        (e.index, e.field, e.kind, e.message) for e in request.errors
    ]


# JSON text, written out so that numbers keep the forms clients send (1.50, 1E+2, -0, 10**30).
numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["-0", "0.0", "-0.0", "1.50", "1E+2", "2e-3", "1e308", "123456789012345678901234567890"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
texts = st.text(st.characters(codec="utf-8"), max_size=12)
strings = texts.map(json.dumps) | texts.map(lambda t: json.dumps(t, ensure_ascii=False))
scalars = st.one_of(numbers, strings, st.sampled_from(["true", "false", "null"]))
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
        | st.lists(st.tuples(strings, inner), max_size=4).map(
            lambda members: "{" + ",".join(f"{k}:{v}" for k, v in members) + "}"
        )
    ),
    max_leaves=8,
)
keys = st.sampled_from(["a", "mp_lib", "mp_x", "$os", "é", "k\\u00e9y", "time", "distinct_id", "ip"]) | texts
reserved = st.sampled_from(
    [
        '"distinct_id":"u1"',
        '"distinct_id":42',
        '"distinct_id":4.50',
        '"distinct_id":""',
        '"$insert_id":"abc-123"',
        '"ip":"10.0.0.1"',
        f'"time":{int(NOW) - 60}',
        f'"time":{NOW - 1.25}',
        f'"time":{int(NOW * 1000) - 5000}',
        '"time":"soon"',
        '"token":""',
    ]
)


TOKENS = ['"t"', '"tok\\u00e9n"']


@st.composite
def events(draw: st.DrawFn) -> str:
    members = ['"token":' + draw(st.sampled_from(TOKENS))]
    members += draw(st.lists(reserved, max_size=3, unique=True))
    members += [f"{json.dumps(k)}:{v}" for k, v in draw(st.lists(st.tuples(keys, values), max_size=5))]
    name = draw(st.sampled_from(['"e"', '"Page View"', '"mp_funnel"', '"\\ud83d\\ude00 x"', "5"]))
    if name == '"mp_funnel"':
        members += draw(st.sampled_from([['"funnel":"f"', '"step":2', '"goal":"g"'], ['"step":"3"']]))
    return '{"event":' + name + ',"properties":{' + ",".join(members) + "}}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=4), st.booleans())
def test_decode_makes_the_events_the_stored_json_gives(batch: list[str], single: bool) -> None:
    assert_same(batch[0] if single else "[" + ",".join(batch) + "]")


@pytest.mark.parametrize(
    "payload",
    [
        '{"event":"e","properties":{"token":"t","big":123456789012345678901234567890,"neg":-0}}',
        '{"event":"e","properties":{"token":"t","n":{"a":[1,2.0,{"b":null}],"a":true}}}',
        '{"event":"e","properties":{"token":"t","time":1795667000,"mp_lib":"web","mp_x":1}}',
        '{"event":"mp_funnel","properties":{"token":"t","funnel":"f","step":"2","goal":"g"}}',
        '[{"event":"e","properties":{"token":"t"}},{"event":"e"},7]',
        '{"event":"e","properties":{"token":"t","s":"\\u0000\\ud800"}}',
        "[]",
        "not base64!",
    ],
)
def test_decode_of_edge_cases(payload: str) -> None:
    assert_same(payload)


def test_decode_shares_nothing_between_events_that_differ() -> None:
    batch = [{"event": "e", "properties": {"token": "t", "i": i, "s": f"v{i % 2}"}} for i in range(5)]
    decoded = trackgate.decode(json.dumps(batch), now=NOW)
    assert [(e.properties["i"], e.properties["s"]) for e in decoded] == [(i, f"v{i % 2}") for i in range(5)]
    assert decoded[0].properties is not decoded[2].properties


def test_events_with_the_same_keys_have_dicts_of_their_own() -> None:
    """Properties dicts of events with the same keys are made alike, but each is the caller's alone."""
    event = {"event": "e", "properties": {"token": "t", "a": "same", "b": [1]}}
    first, second = trackgate.decode(json.dumps([event, event]), now=NOW)
    first.properties["a"] = "changed"
    first.properties["added"] = 1
    first.properties["b"].append(2)
    assert second.properties == {"token": "t", "a": "same", "b": [1], "time": NOW}
    (later,) = trackgate.decode(json.dumps(event), now=NOW)
    assert later.properties == {"token": "t", "a": "same", "b": [1], "time": NOW}
    assert second.properties["b"] is not later.properties["b"]


def test_an_event_class_with_post_init_is_called() -> None:
    """Events are made by filling their slots only where that is all their constructor does."""
    seen: list[str] = []

    class Checked(trackgate.Event, frozen=True, kw_only=True):
        def __post_init__(self) -> None:
            seen.append(self.event)

    decode = _native.EventDecoder(Checked, trackgate.Funnel).decode
    batch = [{"event": name, "properties": {"token": "t"}} for name in ("a", "b")]
    decoded = decode(json.dumps(batch), now=NOW)
    assert seen == ["a", "b"]
    assert [type(event) for event in decoded] == [Checked, Checked]
    assert [msgspec.structs.asdict(e) for e in decoded] == [
        msgspec.structs.asdict(e) for e in trackgate.decode(json.dumps(batch), now=NOW)
    ]


def test_decode_keeps_no_array_of_an_event_alive() -> None:
    """What the decoder keeps from the last events to make the next holds none of their arrays."""
    (event,) = trackgate.decode(
        json.dumps({"event": "e", "properties": {"token": "t", "a": [1] * 200}}), now=NOW
    )
    array = event.properties["a"]
    del event
    assert sys.getrefcount(array) == 2  # `array`, and the call's argument
