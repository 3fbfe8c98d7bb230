"""The native decoder against the pure-Python oracle (tests/reference_decoder.py), event by event.

Hypothesis builds events, valid and broken in every way the README's rules name, sends them in every way a
client can (base64 in its variants, raw JSON, form and JSON bodies, gzip, single and batched) and demands
the same answer from `trackgate.decode_request` and the oracle: the same whole-request error kind and
status, or the same parameters, the same per-event (index, field, kind) errors, the same normalised events
(as parsed JSON, key order included) and the same partition batches. A table of hand-picked edge cases
pins the decisions the README leaves open (listed in reference_decoder's docstring), and random bytes must
never get anything but a DecodeError out of the native decoder.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import math
import struct
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import reference_decoder as ref
import trackgate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trackgate import _native

NOW = 1795667298.3074808  # the capture day, so generated times look like real ones
PEER_IP = "10.1.2.3"
FORM = "application/x-www-form-urlencoded"


# ---------------------------------------------------------------------------------------------------------
# Running both decoders on one call, and comparing what they said.


@dataclasses.dataclass(frozen=True)
class Call:
    """One decoder call: a whole request (`decode_request`) or one data value (`decode_data`)."""

    query: str | bytes = ""
    body: bytes = b""
    content_type: str | None = None
    content_encoding: str | None = None
    data: str | bytes | None = None  # set: a decode_data call, the other fields unused
    peer_ip: str | None = None


def native_options(options: ref.Options) -> trackgate.Options:
    # Without dedup hashes: the reference packs the plain layout (the hashes are tested against Redis in
    # test_dedup_function.py, and in the decoder's own tests).
    return trackgate.Options(**dataclasses.asdict(options), dedup_window=0)


def run_native(call: Call, options: ref.Options, now: float, tokens: list[str] | None) -> Any:
    """The native Request, or the DecodeError it raised."""
    try:
        if call.data is not None:
            return _native.decode_data(call.data, now=now, options=native_options(options))
        return trackgate.decode_request(
            call.query,
            call.body,
            call.content_type,
            call.content_encoding,
            now=now,
            options=native_options(options),
            peer_ip=call.peer_ip,
            tokens=None if tokens is None else trackgate.TokenSet(tokens),
        )
    except trackgate.DecodeError as error:
        return error


def run_oracle(call: Call, options: ref.Options, now: float, tokens: list[str] | None) -> Any:
    """The oracle's Result, or the ReferenceDecodeError it raised."""
    try:
        if call.data is not None:
            return ref.decode_data(call.data, now=now, options=options)
        return ref.decode_request(
            call.query,
            call.body,
            call.content_type,
            call.content_encoding,
            now=now,
            options=options,
            peer_ip=call.peer_ip,
            tokens=tokens,
        )
    except ref.ReferenceDecodeError as error:
        return error


def bulk_at(packed: bytes, pos: int) -> tuple[bytes, int]:
    """The RESP bulk string (`$<len>\\r\\n<bytes>\\r\\n`) at `pos`, and where the next one starts."""
    assert packed[pos : pos + 1] == b"$", f"not a bulk string at {pos}: {packed[pos : pos + 20]!r}"
    header_end = packed.index(b"\r\n", pos)
    length = int(packed[pos + 1 : header_end])
    start = header_end + 2
    assert packed[start + length : start + length + 2] == b"\r\n"
    return packed[start : start + length], start + length + 2


def bulk_strings(packed: bytes) -> list[bytes]:
    """RESP bulk strings back into their bytes."""
    strings = []
    pos = 0
    while pos < len(packed):
        string, pos = bulk_at(packed, pos)
        strings.append(string)
    return strings


def resp_commands(packed: bytes) -> list[list[bytes]]:
    """RESP commands (`*<n>\\r\\n` and n bulk strings, ...) back into their arguments."""
    commands = []
    pos = 0
    while pos < len(packed):
        assert packed[pos : pos + 1] == b"*", f"not a command at {pos}: {packed[pos : pos + 20]!r}"
        header_end = packed.index(b"\r\n", pos)
        n = int(packed[pos + 1 : header_end])
        pos = header_end + 2
        args = []
        for _ in range(n):
            arg, pos = bulk_at(packed, pos)
            args.append(arg)
        commands.append(args)
    return commands


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def assert_same_events(native: Any, oracle: ref.Result) -> None:
    native_events = native.events()
    assert len(native_events) == oracle.accepted
    for raw, expected in zip(native_events, oracle.events, strict=True):
        got = json.loads(raw)
        want = json.loads(expected.json)
        assert got == want, f"event {expected.index}:\n native {raw!r}\n oracle {expected.json!r}"
        # Key order is part of the contract: README order at the top, properties as sent (N1, N3).
        assert list(got) == list(want), f"event {expected.index}: key order"
        assert list(got["properties"]) == list(want["properties"]), f"event {expected.index}: property order"


def assert_same_batches(native: Any, oracle: ref.Result, partitions: int) -> None:
    """Every valid event is packed once, with the oracle's fields, in its (token, partition) batch, in
    time order (N6). Events partitioned by their JSON (no distinct_id, no $insert_id) are only checked for
    their token: their partition depends on the JSON to the byte."""
    packed_events = []  # (token, partition, canonical JSON, other fields)
    per_batch_order: dict[tuple[str, int], list[str]] = defaultdict(list)
    for batch in native.batches:
        token, partition = batch.token, batch.partition
        assert 0 <= partition < partitions
        strings = bulk_strings(batch.packed)
        assert len(strings) == batch.args
        stream = f"tg:{{{partition}}}:{token}:events".encode()
        commands = resp_commands(batch.xadds)
        assert len(commands) == batch.count
        at = 0
        for command in commands:
            # N5: the event's XADD; four arguments, seven for an mp_funnel event (its fourth, the funnel,
            # is not empty).
            assert command[:4] == [b"XADD", stream, b"*", b"data"]
            assert len(command) == 5
            event_json = command[4]
            width = 7 if strings[at + 3] else 4
            fields = strings[at : at + width]
            at += width
            key = canonical(json.loads(event_json))
            packed_events.append((token, partition, key, tuple(f.decode() for f in fields)))
            per_batch_order[(token, partition)].append(key)
        assert at == len(strings)
    assert Counter(e[2] for e in packed_events) == Counter(canonical(json.loads(r)) for r in native.events())

    want_keyed: Counter[tuple[str, int, str, tuple[str, ...]]] = Counter()
    want_unkeyed: Counter[tuple[str, str, tuple[str, ...]]] = Counter()
    timed_order: dict[tuple[str, int], list[tuple[float, str]]] = defaultdict(list)
    for event in oracle.events:
        parsed = json.loads(event.json)
        key = canonical(parsed)
        if event.partition_key == "json":
            want_unkeyed[(event.token, key, event.packed_fields)] += 1
        else:
            want_keyed[(event.token, event.partition, key, event.packed_fields)] += 1
            timed_order[(event.token, event.partition)].append((parsed["time"], key))
    # N6: a batch holds its events by time; sorted() is stable, so equal times keep request order.
    want_order = {
        batch: [key for _, key in sorted(timed, key=lambda pair: pair[0])]
        for batch, timed in timed_order.items()
    }
    got_keyed = Counter(e for e in packed_events if (e[0], e[2], e[3]) not in want_unkeyed)
    got_unkeyed = Counter((e[0], e[2], e[3]) for e in packed_events if (e[0], e[2], e[3]) in want_unkeyed)
    assert got_keyed == want_keyed
    assert got_unkeyed == want_unkeyed
    for batch, keys in want_order.items():
        keyed = set(keys)
        assert [k for k in per_batch_order[batch] if k in keyed] == keys, f"order in batch {batch}"


def assert_agree(call: Call, options: ref.Options, now: float, tokens: list[str] | None = None) -> Any:
    """Runs both decoders and fails on any difference; returns the oracle's answer."""
    native = run_native(call, options, now, tokens)
    oracle = run_oracle(call, options, now, tokens)
    context = f"call={call!r}\noptions={options!r}"
    if isinstance(oracle, ref.ReferenceDecodeError) or isinstance(native, trackgate.DecodeError):
        native_says = (native.kind, native.status) if isinstance(native, trackgate.DecodeError) else native
        oracle_says = (oracle.kind, oracle.status) if isinstance(oracle, ref.ReferenceDecodeError) else oracle
        if not isinstance(native_says, tuple):
            native_says = f"accepted {native.accepted}, errors {native.errors}"
        if not isinstance(oracle_says, tuple):
            oracle_says = f"accepted {oracle.accepted}, errors {oracle.errors}"
        assert native_says == oracle_says, (
            f"whole-request outcome differs\n{context}\n{getattr(native, 'message', '')}"
        )
        return oracle
    params = ("verbose", "img", "test", "use_ip", "callback", "redirect", "total", "accepted")
    assert {p: getattr(native, p) for p in params} == {p: getattr(oracle, p) for p in params}, context
    native_errors = [(e.index, e.field, e.kind) for e in native.errors]
    oracle_errors = [(e.index, e.field, e.kind) for e in oracle.errors]
    assert native_errors == oracle_errors, f"per-event errors differ\n{context}\nnative: {native.errors}"
    assert_same_events(native, oracle)
    assert_same_batches(native, oracle, options.partitions)
    return oracle


# ---------------------------------------------------------------------------------------------------------
# Generated events.


class Obj(list[tuple[str, Any]]):
    """A JSON object as a list of members, so that a key can be sent twice."""


@dataclasses.dataclass(frozen=True)
class Style:
    ensure_ascii: bool = False  # \\u escapes: same values, more bytes
    spaced: bool = False  # insignificant white space, which the decoders drop

    def dumps(self, value: Any) -> str:
        if isinstance(value, Obj):
            colon, comma = (": ", ", ") if self.spaced else (":", ",")
            return "{" + comma.join(self.dumps(k) + colon + self.dumps(v) for k, v in value) + "}"
        if isinstance(value, list):
            return "[" + (", " if self.spaced else ",").join(self.dumps(v) for v in value) + "]"
        separators = (", ", ": ") if self.spaced else (",", ":")
        return json.dumps(value, ensure_ascii=self.ensure_ascii, separators=separators)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
RESERVED = frozenset({"token", "time", "distinct_id", "$insert_id", "ip", "funnel", "step", "goal"})
free_names = (
    st.sampled_from(["mp_lib", "mp_x", "$os", "a", "nested", "$current_url"]) | st.text(max_size=8)
).filter(lambda name: name not in RESERVED)


def bounded_values(levels: int, width: int, keys: int) -> st.SearchStrategy[Any]:
    """JSON values within the container limits: at most `levels` deep, `width` elements, `keys` keys."""
    if levels == 0:
        return scalars
    child = bounded_values(levels - 1, width, keys)
    return (
        scalars
        | st.lists(child, max_size=min(width, 4))
        | st.dictionaries(st.text(max_size=6), child, max_size=min(keys, 4))
    )


@st.composite
def over_a_limit(draw: st.DrawFn, options: ref.Options) -> Any:
    """A property value that breaks exactly one container limit (and maybe more inside)."""
    which = draw(st.sampled_from(["deep", "long", "keys"]))
    inner = draw(bounded_values(1, 2, 2))
    if which == "deep":
        value: Any = inner if isinstance(inner, list | dict) else [inner]
        for _ in range(options.max_depth):
            value = draw(st.sampled_from([[value], {"k": value}]))
        return value
    if which == "long":
        return [inner] * (options.max_array_len + 1)
    return {str(i): inner for i in range(options.max_properties + 1)}


@st.composite
def options_strategy(draw: st.DrawFn) -> ref.Options:
    """Small limits often, so that generated events land on both sides of each one."""
    return ref.Options(
        max_age=draw(st.sampled_from([10800.0, 5 * 86400.0, 60.0])),
        max_future_skew=draw(st.sampled_from([300.0, 0.0, 30.0])),
        max_event_name_chars=draw(st.sampled_from([255, 4, 12])),
        max_distinct_id_chars=draw(st.sampled_from([200, 3, 10])),
        max_properties=draw(st.sampled_from([255, 5, 8])),
        max_depth=draw(st.sampled_from([3, 1, 2])),
        max_array_len=draw(st.sampled_from([255, 2, 4])),
        max_event_bytes=draw(st.sampled_from([1_000_000, 1_000_000, 400, 700])),
        max_request_bytes=draw(st.sampled_from([10_000_000] * 5 + [1500])),
        max_events=draw(st.sampled_from([2000, 2000, 3])),
        partitions=draw(st.sampled_from([16, 1, 7])),
    )


def text_of_length(length: int) -> st.SearchStrategy[str]:
    return st.text(min_size=length, max_size=length)


def text_up_to(length: int, *, min_size: int = 0) -> st.SearchStrategy[str]:
    """Short text, or text of exactly the limit."""
    return st.text(min_size=min_size, max_size=min(length, 8)) | text_of_length(length)


@st.composite
def time_values(draw: st.DrawFn, now: float, options: ref.Options, *, valid: bool) -> Any:
    """Seconds or milliseconds, int or float; valid: within max_age (or in the future, which is allowed);
    else too old or not a time at all."""
    if valid:
        age = draw(
            st.sampled_from(
                [0.0, 1.0, options.max_age, -options.max_future_skew, -options.max_future_skew - 1]
            )
            | st.floats(min_value=-86400.0, max_value=options.max_age)
        )
    elif draw(st.booleans()):
        age = draw(st.sampled_from([options.max_age + 1, 10 * 86400.0]) | st.floats(options.max_age + 1, 1e9))
    else:
        return draw(st.sampled_from([-1, -0.5, True, False, None, "1795667298", [], {}]))
    seconds = now - age
    form = draw(st.sampled_from(["int", "float", "ms", "ms_float"]))
    if form == "int":
        # Rounding towards the receive time keeps a valid age valid and an invalid one invalid.
        return math.ceil(seconds) if age > 0 else math.floor(seconds)
    if form == "float":
        return seconds
    if form == "ms":
        return math.ceil(seconds * 1000) if age > 0 else math.floor(seconds * 1000)
    return seconds * 1000


EVENT_PARTS: tuple[str, ...] = (
    "event",
    "properties",
    "token",
    "time",
    "distinct_id",
    "insert_id",
    "ip",
    "funnel",
    "step",
    "goal",
)
EVENT_PARTS += ("too_many_properties", "container_limit", "duplicate", "not_an_object", "name_member_missing")


@st.composite
def events(draw: st.DrawFn, now: float, options: ref.Options) -> Any:
    """One event: valid half the time; otherwise one or two of its parts broken (so every rule is hit
    alone and in pairs, which exercises the order of the rules)."""
    broken = (
        set() if draw(st.booleans()) else draw(st.sets(st.sampled_from(EVENT_PARTS), min_size=1, max_size=2))
    )
    if "not_an_object" in broken:
        return draw(st.sampled_from([5, "event", None, [], [{"event": "x"}], True]))
    name_limit = options.max_event_name_chars
    if "event" in broken:
        name = draw(st.sampled_from(["", 5, None, ["x"], {"a": 1}]) | text_of_length(name_limit + 1))
    else:
        name = draw(st.sampled_from(["mp_funnel", "sign", "mp_funnel"]) | text_up_to(name_limit, min_size=1))
    if name == "mp_funnel" and name_limit < len(name) and "event" not in broken:
        name = "sign"
    funnel = name == "mp_funnel" or draw(st.integers(0, 5)) == 0  # funnel fields on other events are kept

    members: list[tuple[str, Any]] = []

    def part(
        key: str, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any], *, optional: bool
    ) -> None:
        if key in broken:
            value = draw(invalid | st.just(_ABSENT)) if not optional else draw(invalid)
        else:
            value = draw(valid | st.just(_ABSENT)) if optional else draw(valid)
        if value is not _ABSENT:
            members.append(({"insert_id": "$insert_id"}.get(key, key), value))

    part(
        "token", st.sampled_from(["tok-a", "tok-b"]), st.sampled_from(["", 7, None, "tok-c"]), optional=False
    )
    part("time", time_values(now, options, valid=True), time_values(now, options, valid=False), optional=True)
    id_limit = options.max_distinct_id_chars
    part(
        "distinct_id",
        text_up_to(id_limit)
        | st.just("")
        | st.integers(0, 10 ** min(id_limit, 12) - 1)
        | (st.just(-0.5) if id_limit >= 4 else st.nothing()),
        text_of_length(id_limit + 1) | st.sampled_from([None, True, [], {}]),
        optional=True,
    )
    part(
        "insert_id",
        st.from_regex(r"[A-Za-z0-9-]{0,36}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9-]{37,40}", fullmatch=True) | st.sampled_from(["a_b", "é", 5, None]),
        optional=True,
    )
    part("ip", st.sampled_from(["1.2.3.4", "", "::1"]), st.sampled_from([5, None, [], False]), optional=True)
    if funnel:
        part(
            "funnel",
            st.sampled_from(["My Funnel", "F"]),
            st.sampled_from(["", 3, None]),
            optional=name != "mp_funnel",
        )
        part(
            "step",
            st.sampled_from([1, "2", "02", 2.0, 100, "100", "0000000100"]) | st.integers(1, 99),
            st.sampled_from([0, -1, 2.5, "0", "x", "2.0", " 2", 101, "101", 2**31, "2147483648", True, None]),
            optional=name != "mp_funnel",
        )
        part(
            "goal",
            st.sampled_from(["Impression", ""]),
            st.sampled_from([4, None, []]),
            optional=name != "mp_funnel",
        )

    room = options.max_properties - len(members)
    if "too_many_properties" in broken:
        extras = [(f"p{i}", i) for i in range(room + 1)]
    else:
        values = bounded_values(options.max_depth, options.max_array_len, options.max_properties)
        extras = draw(
            st.lists(st.tuples(free_names, values), max_size=max(min(room, 6), 0), unique_by=lambda m: m[0])
        )
    if "container_limit" in broken:
        extras.append((draw(free_names), draw(over_a_limit(options))))
    members += extras
    if "duplicate" in broken and members:
        members.append((draw(st.sampled_from(members))[0], draw(scalars)))
    props = Obj(draw(st.permutations(members)))

    event = Obj()
    if "name_member_missing" not in broken:
        event.append(("event", name))
    if "properties" in broken:
        event.append(("properties", draw(st.sampled_from([None, [], "props", 3]))))
    elif props or draw(st.booleans()):  # no properties member at all means {}
        event.append(("properties", props))
    if draw(st.integers(0, 10)) == 0:
        event.append(("$extra", draw(bounded_values(2, 3, 3))))
    return Obj(draw(st.permutations(event)))


_ABSENT: Any = object()


@st.composite
def payloads(draw: st.DrawFn, now: float, options: ref.Options) -> str:
    """The JSON text of one event or of a batch."""
    style = Style(
        # \\u escapes make the sent JSON longer than the stored one; keep them away from small event limits.
        ensure_ascii=options.max_event_bytes == 1_000_000 and draw(st.booleans()),
        spaced=draw(st.booleans()),
    )
    if draw(st.booleans()):
        return style.dumps(draw(events(now, options)))
    batch = draw(st.lists(events(now, options), min_size=1, max_size=5))
    return style.dumps(batch)


# How a payload travels. Each builds a Call from the JSON text.
def _b64(data: bytes, *, urlsafe: bool = False, padded: bool = True, line: str = "") -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    if not padded:
        text = text.rstrip("=")
    if line:
        text = line.join(text[i : i + 60] for i in range(0, len(text), 60))
    return text


def _form(**params: str | bytes) -> str:
    return "&".join(f"{k}={urllib.parse.quote_plus(v)}" for k, v in params.items())


TRANSPORTS: dict[str, Callable[[str], Call]] = {
    "form_base64": lambda j: Call(body=_form(data=_b64(j.encode())).encode(), content_type=FORM),
    "form_base64_unpadded": lambda j: Call(body=_form(data=_b64(j.encode(), padded=False)).encode()),
    "form_base64_urlsafe": lambda j: Call(
        body=_form(data=_b64(j.encode(), urlsafe=True)).encode(), content_type=FORM
    ),
    "form_base64_lines": lambda j: Call(
        body=_form(data=_b64(j.encode(), line="\r\n")).encode(), content_type=FORM
    ),
    "beacon_base64": lambda j: Call(
        body=_form(data=_b64(j.encode())).encode(), content_type="text/plain;charset=UTF-8"
    ),
    "query_base64": lambda j: Call(query=_form(data=_b64(j.encode()))),
    # A query string built without percent-encoding: form decoding turns every "+" into a space.
    "query_base64_unencoded": lambda j: Call(query="data=" + _b64(j.encode())),
    "query_base64_urlsafe_lines": lambda j: Call(query=_form(data=_b64(j.encode(), urlsafe=True, line="\n"))),
    "form_json": lambda j: Call(body=_form(data=j).encode(), content_type=FORM),
    "query_json": lambda j: Call(query=_form(data=j).encode()),
    "json_body": lambda j: Call(body=j.encode(), content_type="application/json"),
    "json_body_untyped": lambda j: Call(body=b"\n " + j.encode()),
    "gzip_form": lambda j: Call(
        body=gzip.compress(_form(data=_b64(j.encode())).encode()), content_type=FORM, content_encoding="gzip"
    ),
    "gzip_form_magic_only": lambda j: Call(body=gzip.compress(_form(data=j).encode()), content_type=FORM),
    "gzip_json_body": lambda j: Call(
        body=gzip.compress(j.encode()), content_type="application/json", content_encoding="gzip"
    ),
    "form_gzip_data": lambda j: Call(body=_form(data=gzip.compress(j.encode())).encode(), content_type=FORM),
    "form_base64_gzip_data": lambda j: Call(body=_form(data=_b64(gzip.compress(j.encode()))).encode()),
    "data_str_base64": lambda j: Call(data=_b64(j.encode(), padded=False)),
    "data_bytes_json": lambda j: Call(data=j.encode()),
    "data_gzip": lambda j: Call(data=gzip.compress(j.encode())),
}


@st.composite
def extra_parameters(draw: st.DrawFn, call: Call) -> Call:
    """ip, verbose, img, test, callback and redirect, in the query or in a form body, and sometimes a
    second `data` in the query that the body's must override."""
    if call.data is not None:
        return call
    params = draw(
        st.dictionaries(
            st.sampled_from(["ip", "verbose", "img", "test", "callback", "redirect", "_"]),
            st.sampled_from(["1", "0", "true", "", "cb_1", "http://example.com/a?b=c"]),
            max_size=4,
        )
    )
    if draw(st.booleans()):
        params["ip"] = draw(st.sampled_from(["1", "1", "0", "true"]))
    query = call.query
    body = call.body
    body_is_form = bool(body) and call.content_encoding is None and body.lstrip()[:1] not in (b"{", b"[")
    body_is_form = body_is_form and call.content_type != "application/json" and not body.startswith(b"\x1f")
    for name, value in params.items():
        if body_is_form and draw(st.booleans()):
            body += b"&" + _form(**{name: value}).encode()
        else:
            extra = _form(**{name: value})
            query = f"{query}&{extra}" if isinstance(query, str) else query + b"&" + extra.encode()
    if body and draw(st.integers(0, 3)) == 0:
        stale = "&data=" + _b64(b'{"event":"from the query"}')
        query = query + stale if isinstance(query, str) else query + stale.encode()
    peer_ip = draw(st.sampled_from([PEER_IP, PEER_IP, None]))
    return dataclasses.replace(call, query=query, body=body, peer_ip=peer_ip)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_native_agrees_with_oracle_on_generated_requests(data: st.DataObject) -> None:
    options = data.draw(options_strategy(), label="options")
    now = data.draw(st.sampled_from([NOW, float(math.floor(NOW))]), label="now")
    payload = data.draw(payloads(now, options), label="payload")
    transport = data.draw(st.sampled_from(sorted(TRANSPORTS)), label="transport")
    call = data.draw(extra_parameters(TRANSPORTS[transport](payload)), label="call")
    tokens = data.draw(st.sampled_from([None, None, ["tok-a", "tok-b"]]), label="tokens")
    assert_agree(call, options, now, None if call.data is not None else tokens)


# ---------------------------------------------------------------------------------------------------------
# Broken requests: the whole-request errors, by mutation of valid ones.

VALID_EVENT = {"event": "e", "properties": {"token": "tok-a", "distinct_id": "u1", "time": 1795667000}}


@st.composite
def damaged_calls(draw: st.DrawFn) -> Call:
    """A valid request with bytes flipped, inserted or cut, in the JSON or in its base64."""
    batch = [VALID_EVENT] * draw(st.integers(1, 3))
    text = json.dumps(batch if draw(st.booleans()) else VALID_EVENT).encode()
    encoded = draw(st.booleans())
    payload = base64.b64encode(text) if encoded else text
    cuts = draw(
        st.lists(
            st.tuples(st.integers(0, len(payload)), st.binary(max_size=3), st.integers(0, 3)), max_size=3
        )
    )
    damaged = bytearray(payload)
    for at, insert, remove in cuts:
        damaged[at : at + remove] = insert
    where = draw(st.sampled_from(["form", "query", "json_body", "data"]))
    if where == "form":
        return Call(body=b"data=" + urllib.parse.quote_plus(bytes(damaged)).encode(), content_type=FORM)
    if where == "query":
        return Call(query=b"data=" + urllib.parse.quote_plus(bytes(damaged)).encode())
    if where == "json_body":
        return Call(body=bytes(damaged), content_type="application/json")
    return Call(data=bytes(damaged))


@settings(max_examples=300, deadline=None)
@given(call=damaged_calls())
def test_native_agrees_with_oracle_on_damaged_requests(call: Call) -> None:
    assert_agree(call, ref.Options(max_age=86400.0), NOW)


# ---------------------------------------------------------------------------------------------------------
# Random bytes: only DecodeError may come out.


@settings(max_examples=400, deadline=None)
@given(
    query=st.binary(max_size=200) | st.text(max_size=100),
    body=st.binary(max_size=400),
    content_type=st.sampled_from([None, FORM, "application/json", "text/plain", "", "x/y; a=b"]),
    content_encoding=st.sampled_from([None, "gzip", "identity", "", "br", "GZIP "]),
)
def test_random_bytes_never_crash_the_native_decoder(
    query: str | bytes, body: bytes, content_type: str | None, content_encoding: str | None
) -> None:
    options = trackgate.Options()
    calls = (
        lambda: trackgate.decode_request(
            query, body, content_type, content_encoding, now=NOW, options=options, peer_ip="::1"
        ),
        lambda: _native.decode_data(body, now=NOW, options=options),
        lambda: trackgate.decode_request(
            query, gzip.compress(body), content_type, "gzip", now=NOW, options=options, peer_ip=None
        ),
    )
    for call in calls:
        outcome = only_decode_errors(call)
        if isinstance(outcome, trackgate.DecodeError):
            assert ref.REQUEST_ERROR_STATUS[outcome.kind] == outcome.status
        else:
            assert outcome.total == outcome.accepted + len(outcome.errors)
            for raw in outcome.events():
                json.loads(raw)


def only_decode_errors(call: Callable[[], Any]) -> Any:
    """The call's result, or the DecodeError it raised; any other exception fails the test."""
    try:
        return call()
    except trackgate.DecodeError as error:
        return error


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(max_size=300), start=st.sampled_from([b"W3si", b"[{", b'{"event":"e","properties":{']))
def test_random_tails_after_a_plausible_start_never_crash(start: bytes, tail: bytes) -> None:
    outcome = only_decode_errors(
        lambda: _native.decode_data(start + tail, now=NOW, options=trackgate.Options())
    )
    assert isinstance(outcome, trackgate.DecodeError) or outcome.total >= 1


# ---------------------------------------------------------------------------------------------------------
# Edge cases: each pins one decision of the contract (the R/E/N numbers of reference_decoder's docstring),
# for the oracle (the expected outcome) and for the native decoder (agreement with the oracle).

T = "tok-a"
NOW_WHOLE = 1795667298.0


def ev(props: dict[str, Any] | None = None, name: Any = "e", **top: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event": name, "properties": {"token": T, **(props or {})}}
    event.update(top)
    return event


def js(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def raw_event(properties: str, name: str = "e") -> str:
    """An event whose properties are JSON text as written (duplicate keys, number literals)."""
    return f'{{"event":"{name}","properties":{{"token":"t",{properties}}}}}'


def one_byte_over(text: str) -> bytes:
    """`text` with spaces added up to a length of 3n + 1, whose base64 ends in "=="."""
    raw = text.encode()
    while len(raw) % 3 != 1:
        raw += b" "
    return raw


def with_trailing_bits(text: bytes) -> str:
    """base64 of `text` (whose length is 3n + 1) with non-zero bits after the last byte."""
    assert len(text) % 3 == 1
    encoded = base64.b64encode(text).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return encoded[:-3] + alphabet[alphabet.index(encoded[-3]) | 1] + "=="


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def ip_1(event: dict[str, Any], peer_ip: str | None = PEER_IP) -> Call:
    return Call(query="ip=1", body=_form(data=js(event)).encode(), peer_ip=peer_ip)


def cesu8(text: str) -> bytes:
    """`text` as mixpanel-js's base64 path encodes it: each UTF-16 unit on its own, so a character beyond
    U+FFFF is two 3-byte surrogates, and a lone surrogate is one."""
    raw = text.encode("utf-16-le", "surrogatepass")
    units = struct.unpack(f"<{len(raw) // 2}H", raw)
    return "".join(map(chr, units)).encode("utf-8", "surrogatepass")


def data(value: str | bytes) -> Call:
    return Call(data=value)


def errors(*triples: tuple[int, str, str], accepted: int = 0) -> tuple[int, list[tuple[int, str, str]]]:
    return (accepted, list(triples))


ONE = js(ev())
OK: tuple[int, list[Any]] = (1, [])
ZIPPED_FORM = gzip.compress(_form(data=ONE).encode())
# The normalised form of ev() at NOW_WHOLE, to put max_event_bytes exactly at and under its size.
ONE_STORED = (
    f'{{"event":"e","time":{NOW_WHOLE:.0f},"received":{NOW_WHOLE:.0f},"token":"tok-a",'
    f'"properties":{{"token":"tok-a","time":{NOW_WHOLE:.0f}}}}}'
)


def case(name: str, call: Call, expected: Any, **options: Any) -> Any:
    """expected: a whole-request error kind, or (accepted, [(index, field, kind), ...])."""
    return pytest.param(call, ref.Options(**options), expected, id=name)


EDGE_CASES = [
    # R1 - R3: size, encodings, gzip
    case("nothing", Call(), "empty"),
    case("body_over_cap", Call(body=b"data=" + b"A" * 46), "body_too_large", max_request_bytes=50),
    case("body_at_cap", Call(body=b"x=" + b"A" * 48), "empty", max_request_bytes=50),
    case(
        "query_plus_body_over_cap",
        Call(query="a=" + "b" * 28, body=b"c=" + b"d" * 20),
        "body_too_large",
        max_request_bytes=50,
    ),
    case("brotli", Call(body=b"data=x", content_encoding="br"), "unsupported_encoding"),
    case(
        "identity_any_case",
        dataclasses.replace(TRANSPORTS["form_base64"](ONE), content_encoding="Identity"),
        OK,
    ),
    case("gzip_any_case", Call(body=ZIPPED_FORM, content_encoding=" GZIP "), OK),
    case("x_gzip", Call(body=ZIPPED_FORM, content_encoding="x-gzip"), OK),
    case(
        "gzip_header_plain_body", Call(body=_form(data=ONE).encode(), content_encoding="gzip"), "invalid_gzip"
    ),
    case("gzip_truncated", Call(body=ZIPPED_FORM[:-6]), "invalid_gzip"),
    case("gzip_trailing_garbage", Call(body=ZIPPED_FORM + b"junk"), "invalid_gzip"),
    case(
        "gzip_two_members",
        Call(body=gzip.compress(b"data=") + gzip.compress(urllib.parse.quote_plus(ONE).encode())),
        OK,
    ),
    case(
        "gzip_bomb",
        Call(body=gzip.compress(b"data=" + b"A" * 200_000)),
        "decompressed_too_large",
        max_request_bytes=100_000,
    ),
    case("gzip_at_cap", Call(body=gzip.compress(b"x=" + b"A" * 99_998)), "empty", max_request_bytes=100_000),
    case(
        "gzip_and_query_at_cap",
        Call(query="a=1", body=gzip.compress(b"x=" + b"A" * 99_995)),
        "empty",
        max_request_bytes=100_000,
    ),
    case(
        "gzip_and_query_over_cap",
        Call(query="a=1", body=gzip.compress(b"x=" + b"A" * 99_996)),
        "decompressed_too_large",
        max_request_bytes=100_000,
    ),
    # Inflated data shares the cap with the query string too (blank JSON: `empty` when within it).
    case(
        "gzip_data_and_query_at_cap",
        Call(query="a=1", body=_form(data=gzip.compress(b" " * 99_997)).encode()),
        "empty",
        max_request_bytes=100_000,
    ),
    case(
        "gzip_data_and_query_over_cap",
        Call(query="a=1", body=_form(data=gzip.compress(b" " * 99_998)).encode()),
        "decompressed_too_large",
        max_request_bytes=100_000,
    ),
    # R4 - R8: where the payload and the parameters come from
    case(
        "json_body_declared_but_base64",
        Call(body=_b64(ONE.encode()).encode(), content_type="application/json"),
        "invalid_json",
    ),
    case(
        "json_body_declared_blank",
        Call(query=_form(data=ONE), body=b"  ", content_type="Application/JSON; a=b"),
        OK,
    ),
    case("text_plain_raw_json", Call(body=ONE.encode(), content_type="text/plain"), OK),
    case("body_data_wins", Call(query=_form(data="garbage"), body=_form(data=ONE).encode()), OK),
    case("query_data_when_body_has_none", Call(query=_form(data=ONE), body=b"verbose=1"), OK),
    case("empty_body_data_wins", Call(query=_form(data=ONE), body=b"data="), "empty"),
    case("last_occurrence_wins", Call(query=_form(data="garbage") + "&" + _form(data=ONE)), OK),
    case("bad_percent_escape_kept", Call(query="data=%7B%zz"), "invalid_json"),
    case(
        "flags",
        Call(query=_form(data=ONE) + "&verbose=true&img=%201%20&test=yes&ip=0&callback=&redirect=r"),
        OK,
    ),
    case("callback_not_utf8", Call(query=_form(data=ONE) + "&callback=cb%FF"), "invalid_parameter"),
    # R9, R10: data values
    case("data_blank", Call(query="data=%20%0A%09"), "empty"),
    case("data_gzip_bytes", Call(body=_form(data=gzip.compress(ONE.encode())).encode()), OK),
    case("data_gzip_of_base64", data(gzip.compress(_b64(ONE.encode()).encode())), OK),
    case("data_base64_of_gzip", data(_b64(gzip.compress(ONE.encode()))), OK),
    case("data_gzip_of_gzip", data(gzip.compress(gzip.compress(ONE.encode()))), "invalid_gzip"),
    case(
        "data_gzip_of_base64_of_gzip",
        data(gzip.compress(_b64(gzip.compress(ONE.encode())).encode())),
        "invalid_gzip",
    ),
    case(
        "data_base64_of_gzip_of_gzip", data(_b64(gzip.compress(gzip.compress(ONE.encode())))), "invalid_gzip"
    ),
    case(
        "gzip_data_in_a_gzip_body",
        Call(body=gzip.compress(_form(data=gzip.compress(ONE.encode())).encode())),
        "invalid_gzip",
    ),
    case(
        "base64_gzip_data_in_a_gzip_body",
        Call(body=gzip.compress(_form(data=_b64(gzip.compress(ONE.encode()))).encode())),
        "invalid_gzip",
    ),
    case("base64_bad_character", data("eyJ*" + _b64(ONE.encode())[4:]), "invalid_base64"),
    case("base64_4n_plus_1", data(_b64(b"{}abc", padded=False) + "AA"), "invalid_base64"),
    case("base64_too_much_padding", data(_b64(b'{"a":1}   ') + "="), "invalid_base64"),
    case("base64_partial_padding", data(_b64(one_byte_over(ONE))[:-1]), OK),
    case("base64_padding_inside", data("eyJh=IjoxfQ"), "invalid_base64"),
    case("base64_trailing_bits", data(with_trailing_bits(one_byte_over(ONE))), OK),
    case(
        "base64_mixed_alphabets",
        data(_b64(b'{"event":"??????~~~","properties":{"token":"t"}}').replace("/", "_", 1)),
        OK,
    ),
    case(
        "base64_unencoded_plus_in_query",
        Call(query="data=" + _b64(b'{"event":"~~~~~~","properties":{"token":"t"}}')),
        OK,
    ),
    # R11, R12: JSON documents
    case(
        "invalid_utf8_in_base64", data(_b64(b'{"event":"\xff","properties":{"token":"t"}}')), "invalid_utf8"
    ),
    case("invalid_utf8_raw_json", data(b'{"event":"\xc3\x28"}'), "invalid_utf8"),
    case("cesu8_pairs", data(_b64(cesu8(raw_event('"title":"caf\u00e9 \U0001f600\U0001f680!"')))), OK),
    case("cesu8_pair_in_a_key", data(_b64(cesu8(raw_event('"\U0001f600":1')))), OK),
    case("cesu8_lone_high_at_the_end", data(_b64(cesu8(raw_event('"x":"a\ud83d"')))), OK),
    case("cesu8_lone_low", data(_b64(cesu8(raw_event('"x":"\ude00a"')))), OK),
    case("cesu8_low_then_high", data(_b64(cesu8(raw_event('"x":"\ude00\ud83d"')))), OK),
    case("cesu8_raw_json", data(cesu8(raw_event('"x":"\U0001f600"'))), OK),
    case("cesu8_then_invalid", data(_b64(cesu8(raw_event('"x":"\U0001f600"')) + b"\xff")), "invalid_utf8"),
    case("nan", data(raw_event('"x":NaN')), "invalid_json"),
    case("infinity", data("[" + raw_event('"x":-Infinity') + "]"), "invalid_json"),
    case("lone_surrogate", data('{"event":"\\ud800","properties":{"token":"t"}}'), OK),
    case(
        "lone_surrogates_in_keys_and_values",
        data(raw_event('"\\udc00":"a\\ud83d","b":["\\ud83d\\u0041"]')),
        OK,
    ),
    case(
        "lone_surrogate_keys_become_one",
        data(raw_event('"\\ud800":1,"\\udbff":2')),
        errors((0, "properties.\ufffd", "duplicate_property")),
    ),
    case("lone_surrogate_then_broken", data(raw_event('"a":"\\ud800","b":"\\u12"')), "invalid_json"),
    case("surrogate_pair", data('{"event":"\\ud83d\\ude00","properties":{"token":"t"}}'), OK),
    case("escaped_backslash_then_u", data('{"event":"\\\\ud800","properties":{"token":"t"}}'), OK),
    case("empty_batch", data("[ ]"), "empty_batch"),
    case("empty_batch_then_garbage", data("[] x"), "invalid_json"),
    case("a_number", data(_b64(b"42")), "not_events"),
    case("a_string", data(_b64(b'"x"')), "not_events"),
    case("null", data(_b64(b"null")), "not_events"),
    case("trailing_data", data(ONE + "}"), "invalid_json"),
    case("blank_json_after_base64", data(_b64(b"   ")), "empty"),
    case("events_at_max", data(js([ev()] * 3)), (3, []), max_events=3),
    case("events_over_max", data(js([ev()] * 4)), "too_many_events", max_events=3),
    case(
        "events_over_max_then_broken", data(js([ev()] * 3)[:-1] + ",{broken"), "too_many_events", max_events=3
    ),
    case("broken_before_max", data("[" + ONE + ",{broken," + ONE + "]"), "invalid_json", max_events=3),
    case(
        "long_key_cut_in_the_field",
        data(raw_event('"' + "é" * 150 + '":1e400')),
        errors((0, "properties." + "é" * 100 + "...", "number_out_of_range")),
    ),
    case(
        "key_of_100_characters_whole",
        data(raw_event('"' + "k" * 100 + '":1,"' + "k" * 100 + '":2')),
        errors((0, "properties." + "k" * 100, "duplicate_property")),
    ),
    case(
        "number_beyond_f64",
        data(raw_event('"x":1e400')),
        errors((0, "properties.x", "number_out_of_range")),
    ),
    case(
        "negative_number_beyond_f64_nested",
        data(raw_event('"a":{"b":[1,-2.5e999]}')),
        errors((0, "properties.a", "number_out_of_range")),
    ),
    case(
        "fraction_beyond_f64",
        data(raw_event('"x":1' + "0" * 400 + ".5")),
        errors((0, "properties.x", "number_out_of_range")),
    ),
    case("largest_f64_is_kept", data(raw_event('"x":1.7976931348623157e308')), OK),
    case("underflow_is_kept", data(raw_event('"x":1e-400')), OK),
    case("integer_of_309_digits_is_kept", data(raw_event('"x":1' + "0" * 308)), OK),
    case("largest_f64_integer_is_kept", data(raw_event('"x":17976931348623157' + "0" * 292)), OK),
    case(
        "integer_of_309_nines",
        data(raw_event('"x":' + "9" * 309)),
        errors((0, "properties.x", "number_out_of_range")),
    ),
    case(
        "negative_integer_of_309_nines",
        data(raw_event('"x":-' + "9" * 309)),
        errors((0, "properties.x", "number_out_of_range")),
    ),
    case(
        "integer_beyond_f64",
        data(raw_event('"x":1' + "0" * 309)),
        errors((0, "properties.x", "number_out_of_range")),
    ),
    case(
        "integer_of_5000_digits",
        data(raw_event('"x":-9' + "0" * 5000)),
        errors((0, "properties.x", "number_out_of_range")),
    ),
    case(
        "out_of_range_before_a_later_limit",
        data(raw_event('"x":1e400,"y":[[[[1]]]]')),
        errors((0, "properties.x", "number_out_of_range")),
    ),
    case(
        "a_later_out_of_range_after_a_limit",
        data(raw_event('"y":[[[[1]]]],"x":1e400')),
        errors((0, "properties.y", "too_deep")),
    ),
    case(
        "time_overflowing_f64",
        data(raw_event('"time":1e400')),
        errors((0, "properties.time", "time_invalid")),
    ),
    case(
        "nesting_500_in_a_property",
        data(js(ev({"deep": nested(500)}))),
        errors((0, "properties.deep", "too_deep")),
    ),
    case("nesting_500_outside_properties", data(js(ev(extra=nested(500)))), OK),
    case(
        "nesting_500_as_an_event", data(js([ev(), nested(500)])), errors((1, "", "not_an_object"), accepted=1)
    ),
    # E1 - E14: events
    case(
        "not_an_object",
        data(js([ev(), 5, "x", None, []])),
        errors(*[(i, "", "not_an_object") for i in (1, 2, 3, 4)], accepted=1),
    ),
    case("event_missing", data(js({"properties": {"token": T}})), errors((0, "event", "event_missing"))),
    case("event_null", data(js(ev(name=None))), errors((0, "event", "event_invalid"))),
    case("event_empty", data(js(ev(name=""))), errors((0, "event", "event_invalid"))),
    case("event_at_limit", data(js(ev(name="é" * 5))), OK, max_event_name_chars=5),
    case(
        "event_over_limit",
        data(js(ev(name="é" * 6))),
        errors((0, "event", "event_too_long")),
        max_event_name_chars=5,
    ),
    case("event_repeated_last_wins", data('{"event":"","event":"e","properties":{"token":"t"}}'), OK),
    case(
        "properties_null",
        data(js({"event": "e", "properties": None})),
        errors((0, "properties", "properties_invalid")),
    ),
    case("properties_missing", data(js({"event": "e"})), errors((0, "properties.token", "token_missing"))),
    case("token_empty", data(js(ev({"token": ""}))), errors((0, "properties.token", "token_invalid"))),
    case("escaped_key_is_the_key", data('{"event":"e","properties":{"\\u0074oken":"t"}}'), OK),
    case("time_null", data(js(ev({"time": None}))), errors((0, "properties.time", "time_invalid"))),
    case("time_bool", data(js(ev({"time": True}))), errors((0, "properties.time", "time_invalid"))),
    case(
        "time_negative",
        data(js(ev({"time": -1}))),
        errors((0, "properties.time", "time_invalid")),
        max_age=1e10,
    ),
    case("time_exactly_max_age", data(js(ev({"time": NOW_WHOLE - 100}))), OK, max_age=100),
    case(
        "time_over_max_age",
        data(js(ev({"time": NOW_WHOLE - 101}))),
        errors((0, "properties.time", "time_too_old")),
        max_age=100,
    ),
    case("time_ms_from_1e11", data(js(ev({"time": 10**11}))), OK, max_age=2e9),
    case("time_future_kept_at_skew", data(js(ev({"time": NOW_WHOLE + 300}))), OK),
    case("time_future_set_to_now", data(js(ev({"time": (NOW_WHOLE + 301) * 1000}))), OK),
    case("distinct_id_number_text", data(raw_event('"distinct_id":4.50')), OK),
    case("distinct_id_negative_zero", data(raw_event('"distinct_id":-0')), OK),
    case(
        "distinct_id_number_too_long",
        data(raw_event('"distinct_id":1.250')),
        errors((0, "properties.distinct_id", "distinct_id_too_long")),
        max_distinct_id_chars=4,
    ),
    case("distinct_id_empty_kept", data(js(ev({"distinct_id": ""}))), OK),
    case("distinct_id_empty_with_ip_1", ip_1(ev({"distinct_id": ""})), OK),
    case(
        "distinct_id_bool",
        data(js(ev({"distinct_id": False}))),
        errors((0, "properties.distinct_id", "distinct_id_invalid")),
    ),
    case("insert_id_empty", data(js(ev({"$insert_id": ""}))), OK),
    case("insert_id_36", data(js(ev({"$insert_id": "a-" * 18}))), OK),
    case(
        "insert_id_37",
        data(js(ev({"$insert_id": "a-" * 18 + "b"}))),
        errors((0, "properties.$insert_id", "insert_id_invalid")),
    ),
    case("ip_number_even_with_ip_1", ip_1(ev({"ip": 5})), errors((0, "properties.ip", "ip_invalid"))),
    case("ip_replaced_and_distinct_id_added", ip_1(ev({"ip": "1.1.1.1"})), OK),
    case("ip_1_without_peer", ip_1(ev(), peer_ip=None), OK),
    case("funnel_ok", data(js(ev({"funnel": "F", "step": "02", "goal": ""}, name="mp_funnel"))), OK),
    case(
        "funnel_missing",
        data(js(ev({"step": 1, "goal": "g"}, name="mp_funnel"))),
        errors((0, "properties.funnel", "funnel_invalid")),
    ),
    case("funnel_step_float_whole", data(raw_event('"funnel":"F","step":2e0,"goal":"g"', "mp_funnel")), OK),
    case(
        "funnel_step_fraction",
        data(js(ev({"funnel": "F", "step": 2.5, "goal": "g"}, name="mp_funnel"))),
        errors((0, "properties.step", "step_invalid")),
    ),
    case("funnel_step_max", data(js(ev({"funnel": "F", "step": 100, "goal": "g"}, name="mp_funnel"))), OK),
    case(
        "funnel_step_over_max",
        data(js(ev({"funnel": "F", "step": "101", "goal": "g"}, name="mp_funnel"))),
        errors((0, "properties.step", "step_invalid")),
    ),
    case(
        "funnel_step_huge",
        data(js(ev({"funnel": "F", "step": 2**31 - 1, "goal": "g"}, name="mp_funnel"))),
        errors((0, "properties.step", "step_invalid")),
    ),
    case(
        "funnel_name_at_max_chars",
        data(js(ev({"funnel": "é" * 9, "step": 1, "goal": "✓" * 9}, name="mp_funnel"))),
        OK,
        max_event_name_chars=len("mp_funnel"),
    ),
    case(
        "funnel_name_over_max_chars",
        data(js(ev({"funnel": "F" * 10, "step": 1, "goal": "g"}, name="mp_funnel"))),
        errors((0, "properties.funnel", "funnel_invalid")),
        max_event_name_chars=len("mp_funnel"),
    ),
    case(
        "funnel_goal_over_max_chars",
        data(js(ev({"funnel": "F", "step": 1, "goal": "\\" * 10}, name="mp_funnel"))),
        errors((0, "properties.goal", "goal_invalid")),
        max_event_name_chars=len("mp_funnel"),
    ),
    case(
        "funnel_goal_missing",
        data(js(ev({"funnel": "F", "step": 1}, name="mp_funnel"))),
        errors((0, "properties.goal", "goal_invalid")),
    ),
    case("properties_at_max", data(js(ev({"a": 1, "b": 2}))), OK, max_properties=3),
    case(
        "properties_over_max",
        data(js(ev({"a": 1, "b": 2, "c": 3}))),
        errors((0, "properties", "too_many_properties")),
        max_properties=3,
    ),
    case("depth_at_max", data(js(ev({"n": {"a": [{"b": 1}]}}))), OK),
    case("depth_over_max", data(js(ev({"n": {"a": [{"b": []}]}}))), errors((0, "properties.n", "too_deep"))),
    case("array_at_max", data(js(ev({"l": [[1, 2], 3]}))), OK, max_array_len=2),
    case(
        "nested_array_over_max",
        data(js(ev({"l": [[1, 2, 3]]}))),
        errors((0, "properties.l", "array_too_long")),
        max_array_len=2,
    ),
    case(
        "nested_keys_over_max",
        data(js(ev({"o": {"x": {"a": 1, "b": 2, "c": 3, "d": 4}}}))),
        errors((0, "properties.o", "too_many_keys")),
        max_properties=3,
    ),
    case(
        "too_deep_inside_a_long_array_comes_first",
        data(js(ev({"l": [1, 2, 3, [[[[]]]]]}))),
        errors((0, "properties.l", "too_deep")),
        max_array_len=2,
    ),
    case(
        "first_property_with_a_violation",
        data(js(ev({"a": [1, 2, 3], "b": [[[[1]]]]}))),
        errors((0, "properties.a", "array_too_long")),
        max_array_len=2,
    ),
    case(
        "duplicate_first_repeated_key",
        data(raw_event('"a":1,"b":2,"b":3,"a":4')),
        errors((0, "properties.a", "duplicate_property")),
    ),
    case(
        "duplicates_count_as_sent",
        data(raw_event('"a":1,"a":1')),
        errors((0, "properties", "too_many_properties")),
        max_properties=2,
    ),
    case("event_at_size_limit", data(js(ev())), OK, max_event_bytes=len(ONE_STORED)),
    case(
        "event_over_size_limit",
        data(js(ev())),
        errors((0, "", "event_too_large")),
        max_event_bytes=len(ONE_STORED) - 1,
    ),
    case(
        "order_token_before_time",
        data(js(ev({"token": 5, "time": "x", "distinct_id": []}))),
        errors((0, "properties.token", "token_invalid")),
    ),
    case(
        "order_time_before_distinct_id",
        data(js(ev({"time": "x", "distinct_id": []}))),
        errors((0, "properties.time", "time_invalid")),
    ),
    case(
        "order_ip_before_funnel",
        data(js(ev({"ip": 1}, name="mp_funnel"))),
        errors((0, "properties.ip", "ip_invalid")),
    ),
    case(
        "order_funnel_before_limits",
        data(js(ev({"a": 1, "b": 2, "c": 3}, name="mp_funnel"))),
        errors((0, "properties.funnel", "funnel_invalid")),
        max_properties=2,
    ),
    case(
        "order_limits_before_duplicates",
        data(raw_event('"a":[1,2,3],"a":1')),
        errors((0, "properties.a", "array_too_long")),
        max_array_len=2,
    ),
    case("mp_keys", data(js(ev({"mp_lib": "web", "x": 1, "mp_sent_by_lib_version": "2"}))), OK),
]


def _outcome(result: Any) -> Any:
    if isinstance(result, ref.ReferenceDecodeError):
        return result.kind
    return (result.accepted, [(e.index, e.field, e.kind) for e in result.errors])


@pytest.mark.parametrize(("call", "options", "expected"), EDGE_CASES)
def test_edge_case(call: Call, options: ref.Options, expected: Any) -> None:
    oracle = run_oracle(call, options, NOW_WHOLE, None)
    assert _outcome(oracle) == expected, "the oracle itself does not follow the contract"
    assert_agree(call, options, NOW_WHOLE)


def stored(call: Call, options: ref.Options | None = None) -> dict[str, Any]:
    """The one event `call` carries, as the native decoder stores it (and as the oracle agrees)."""
    options = options or ref.Options()
    result = assert_agree(call, options, NOW_WHOLE)
    assert isinstance(result, ref.Result)
    assert result.accepted == 1
    event: dict[str, Any] = json.loads(run_native(call, options, NOW_WHOLE, None).events()[0])
    return event


def test_what_edge_cases_store() -> None:
    """The values the contract names, for some of the accepted edge cases."""
    assert stored(data(raw_event('"distinct_id":4.50')))["distinct_id"] == "4.50"
    assert stored(data(raw_event('"distinct_id":-0')))["properties"]["distinct_id"] == "-0"
    assert stored(data(js(ev({"distinct_id": ""}))))["distinct_id"] == ""
    assert stored(ip_1(ev({"distinct_id": ""})))["distinct_id"] == PEER_IP
    replaced = stored(ip_1(ev({"ip": "1.1.1.1"})))
    assert (replaced["ip"], replaced["distinct_id"]) == (PEER_IP, PEER_IP)
    assert list(replaced["properties"]) == ["token", "ip", "time", "distinct_id"]
    assert "ip" not in stored(ip_1(ev(), peer_ip=None))
    funnel = stored(data(js(ev({"funnel": "F", "step": "02", "goal": ""}, name="mp_funnel"))))
    assert funnel["funnel"] == {"name": "F", "step": 2, "goal": ""}
    assert funnel["properties"]["step"] == "02"
    assert stored(data(raw_event('"funnel":"F","step":2e0,"goal":"g"', "mp_funnel")))["funnel"]["step"] == 2
    assert stored(data(js(ev({"time": 10**11}))), ref.Options(max_age=2e9))["time"] == 10**8
    assert stored(data(js(ev({"time": (NOW_WHOLE + 301) * 1000}))))["time"] == NOW_WHOLE
    assert stored(data(js(ev({"mp_lib": "w", "x": 1, "mp_v": "2"}))))["mp_keys"] == ["mp_lib", "mp_v"]
    assert (
        stored(data('{"event":"\\ud83d\\ude00","properties":{"token":"t"}}'))["event"] == "\N{GRINNING FACE}"
    )
    flags = run_native(
        Call(query=_form(data=ONE) + "&verbose=true&img=%201%20&test=yes&callback="), ref.Options(), NOW, None
    )
    assert (flags.verbose, flags.img, flags.test, flags.use_ip) == (True, True, False, False)
    assert (flags.callback, flags.redirect) == ("", None)


# Surrogates, which the generators above leave out (hypothesis's text has none): lone halves and pairs,
# sent as JSON \u escapes (json.dumps' default) and as CESU-8 bytes (mixpanel-browser's base64 path).
surrogate_texts = st.lists(
    st.characters(categories=["Cs"]) | st.sampled_from(["a", "é", "\U0001f600"]),
    max_size=6,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(surrogate_texts, min_size=1, max_size=3), key=surrogate_texts, cesu=st.booleans())
def test_native_agrees_with_oracle_on_surrogates(values: list[str], key: str, cesu: bool) -> None:
    properties: dict[str, Any] = {"token": "t", **{f"v{i}": v for i, v in enumerate(values)}, "k" + key: 1}
    event = {"event": "e" + key, "properties": properties}
    payload = _b64(cesu8(json.dumps(event, ensure_ascii=False))) if cesu else json.dumps(event)
    assert_agree(data(payload), ref.Options(), NOW)
