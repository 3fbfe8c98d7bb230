"""A pure-Python reference decoder for Mixpanel /track requests: the oracle of trackgate's native decoder.

It implements the contract of README.md ("The decoder, from Python") in plain, slow, obvious Python, so
that the property tests can run every generated request through both and demand the same answer, and so
that bench/ can measure the native decoder against "the same checks, in Python". The base64 and JSON
functions are pluggable: `STDLIB` (base64 + json, exact, the oracle) and `fast_backend()` (pybase64 +
orjson, the faster Python baseline for bench/; see its docstring for where it is less exact).

Where the README is silent, this file decides, and the native decoder must decide the same. Every such
decision is listed here, numbered, and referred to where the code implements it.

Requests
  R1  Size: len(query) + len(body) > max_request_bytes -> body_too_large. `decode_data` applies the same
      cap to the data value.
  R2  Content-Encoding, trimmed and compared case-insensitively: absent, "" or "identity" -> none;
      "gzip" or "x-gzip" -> gzip; anything else -> unsupported_encoding (checked before anything else is
      read from the body, after R1).
  R3  A non-empty body is inflated when the encoding is gzip or when it starts with the magic bytes 1f 8b.
      It may hold several gzip members (RFC 1952), all inflated; anything after a member that is not
      another member, a truncated member, or corrupt data -> invalid_gzip. Output beyond
      max_request_bytes - len(query) (the query string and the inflated body share the cap) ->
      decompressed_too_large, detected while inflating (so it wins over corruption further on). An
      inflated body that starts with 1f 8b again -> invalid_gzip (one gzip layer per request, as in R9).
  R4  The body is the payload itself (raw JSON) when its media type (before ";", trimmed,
      case-insensitive) is application/json and it is not blank, or when its first non-whitespace byte is
      "{" or "[". Whitespace is JSON's: space, \\t, \\n, \\r. Any other body is form text, whatever its
      Content-Type (text/plain for sendBeacon, none, or anything else).
  R5  Form text (query string or body): pairs split on "&", name and value on the first "="; a pair without
      "=" has an empty value; "+" is a space and %XX a byte; a "%" not followed by two hex digits stays.
      Within one source the last occurrence of a name wins; a body parameter wins over the query's, even
      when its value is empty.
  R6  Flags (verbose, img, test, ip): true when the value, ASCII white space trimmed, is "1" or "true".
  R7  callback and redirect: the value as text ("" when present and empty, None when absent). A value
      that is not UTF-8 -> invalid_parameter (a gateway could only refuse it later, with a vaguer error).
  R8  Where the payload comes from: a JSON body (R4), else the body's `data`, else the query's `data`,
      else -> empty.
  R9  A data value: blank (JSON whitespace only) -> empty. Starting with 1f 8b: inflated (errors as R3,
      same cap: max_request_bytes - len(query)), and the result is read as a data value again. First
      non-whitespace byte "{" or "[": the JSON text itself. Otherwise base64 (R10), and decoded bytes that
      start with 1f 8b are inflated into the JSON text. One gzip layer per request: gzip met again (a gzip
      data value in a gzip body, gzip inside inflated data, with or without base64 between) ->
      invalid_gzip, so that a small request cannot multiply its cost layer by layer.
  R10 base64: \\t, \\n and \\r are dropped anywhere; a space is a "+" that form decoding turned into a space;
      "-" and "_" (URL-safe) become "+" and "/" (the two alphabets may even be mixed); trailing "=" may
      number anywhere from 0 to the canonical padding, and "=" elsewhere is invalid; an unpadded length of
      4n+1 is invalid; non-zero trailing bits are accepted (old encoders left them).
  R11 JSON text: all of it must be UTF-8 (invalid_utf8, checked before parsing), except that a UTF-16
      surrogate encoded on its own in 3 bytes (ED A0-BF 80-BF, CESU-8: how mixpanel-js's base64 path
      writes characters beyond U+FFFF) is read as UTF-16: a high one followed by a low one is their
      character, any other is U+FFFD. Blank -> empty. RFC 8259 grammar; NaN and Infinity are not JSON;
      a \\u escape of a lone surrogate (a string cut between the halves of a pair) is read as U+FFFD, as
      its CESU-8 bytes are. Numbers are kept as written; 1e400 is valid JSON, which fails where it is
      read as a number (time, step) and as a property value (E11). Any nesting depth is valid JSON
      (too_deep is a rule for property values, E11); the oracle itself cannot read more than about 990
      levels (Python's recursion limit), so generated inputs stay far below that.
  R12 The document: an object is one event; an array is a batch: [] -> empty_batch; too_many_events as soon
      as element max_events + 1 begins, whatever follows it (a reader need not parse a 10 MB batch it will
      refuse); any other JSON value -> not_events. Otherwise the document must be valid JSON as a whole
      (so "[] x" is invalid_json, not empty_batch).

Events (errors: one per event, the first rule broken, in EVENT_RULE_ORDER below)
  E1  Duplicate members of an event object: the last one wins ("event", "properties"), as in JSON.parse.
      Members other than "event" and "properties" are ignored.
  E2  null is a value like any other: `"time": null` is time_invalid, not a missing time.
  E3  event: absent -> event_missing; not a string, or "" -> event_invalid; more than
      max_event_name_chars code points -> event_too_long.
  E4  token: absent -> token_missing; not a string, or "" -> token_invalid; with a token set, not in it ->
      unknown_token.
  E5  time: absent -> the receive time. Not a number (bool, null, string, container) -> time_invalid; its
      f64 value (correctly rounded from the literal) non-finite or < 0 -> time_invalid; >= 1e11 ->
      milliseconds, divided by 1000.0; `now - t > max_age` -> time_too_old; `t - now > max_future_skew`
      -> t = now (these two expressions exactly, for identical rounding at the boundaries).
  E6  distinct_id: a string, or a number stored as its literal text (4.50 -> "4.50", -0 -> "-0"); else
      distinct_id_invalid. Longer than max_distinct_id_chars code points -> distinct_id_too_long. "" is a
      distinct_id like any other, except that ip=1 replaces it like a missing one.
  E7  $insert_id: a string of 0 to 36 characters from A-Z a-z 0-9 "-" ("" included: the README says at most
      36); else insert_id_invalid.
  E8  ip: present and not a string -> ip_invalid, even with ip=1 (which will replace it).
  E9  mp_funnel (event name exactly "mp_funnel"): funnel a non-empty string of at most
      max_event_name_chars characters (else funnel_invalid); step a JSON number whose value is a whole
      number (2, 2.0, 2e0) or a string of 1 to 10 ASCII digits ("2", "02"), from 1 to 100 (else
      step_invalid); goal a string of at most max_event_name_chars characters, "" allowed (else
      goal_invalid).
  E10 too_many_properties counts the members of `properties` as sent (duplicates included).
  E11 Container limits inside each property value, properties in document order, the first violation in
      reading order: too_deep at the opening bracket of a container at level > max_depth (a property's
      own container is level 1); array_too_long and too_many_keys at the closing bracket of the container
      (so after whatever its contents broke); number_out_of_range at a number, anywhere in the value or
      as the value, beyond a double's range, ±1.8e308 (1e400, -1e400, 1e309, 309 nines; 1e-400 is 0, and
      is kept as written). Nested objects' keys count as sent.
      max_properties is also the key limit of nested objects.
  E12 duplicate_property names the first key, in document order, that appears again later
      ({"a":1,"b":2,"b":3,"a":4} -> properties.a).
  E13 event_too_large: len(normalised JSON) > max_event_bytes.
  E14 Error fields: "" when the event as a whole is at fault (not_an_object, event_too_large); "event";
      "properties"; "properties.<name>" for the reserved ones ("properties.$insert_id",
      "properties.step", ...); "properties.<top-level key>" for E11 and E12, the key cut after 100
      characters, followed by "..." (an answer repeats the field; a key may be as long as the event).

The normalised event
  N1  Keys in README order; distinct_id when one was sent (even "") or substituted; insert_id when sent; ip
      when sent (a string, even "") or substituted; funnel for mp_funnel; mp_keys (top-level property
      names starting with "mp_", in order) when there is one.
  N2  time and received: a whole number below 2**53 is written as an integer, any other as the shortest
      float that round-trips. Properties are copied as sent: only JSON's insignificant white space goes.
      (The oracle re-serialises values with Python's json, so its bytes, and the sizes of E13, equal the
      native decoder's only for JSON written as json.dumps(ensure_ascii=False) writes it: no escapes
      beyond the necessary ones, numbers in Python's repr. The tests compare events as parsed JSON.)
  N3  ip=1 and a peer address: properties.ip is replaced where it stands, or appended; distinct_id likewise
      when missing or "". Appended keys come in the order time, distinct_id, ip.
  N4  Partition: zlib.crc32(key) % partitions, key = the distinct_id (after N3) when non-empty, else
      $insert_id when sent (even ""), else the normalised JSON.
  N5  Per event, an `XADD tg:{<partition>}:<token>:events * data <JSON>` command, and packed fields
      (layout 3): the UTC day of floor(time) as YYYY-MM-DD, "HH:<event name>" (HH its UTC hour),
      distinct_id ("" when none), the funnel ("" unless mp_funnel); an mp_funnel event adds floor(time),
      step and goal.
  N6  Within one request, the events of a (token, partition) batch are packed in `time` order, equal
      times in request order; `events()` keeps request order.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

# JSON integers of any length are valid (R11) and kept: Python's guard against slow int <-> str
# conversion of over 4300 digits is lifted for the oracle.
sys.set_int_max_str_digits(0)

# The per-event rules, in the order they are checked: an invalid event reports the first one it breaks.
# too_deep, array_too_long, too_many_keys and number_out_of_range share one step (E11): whichever comes
# first in reading order.
EVENT_RULE_ORDER = (
    "not_an_object",
    "event_missing",
    "event_invalid",
    "event_too_long",
    "properties_invalid",
    "token_missing",
    "token_invalid",
    "unknown_token",
    "time_invalid",
    "time_too_old",
    "distinct_id_invalid",
    "distinct_id_too_long",
    "insert_id_invalid",
    "ip_invalid",
    "funnel_invalid",
    "step_invalid",
    "goal_invalid",
    "too_many_properties",
    "too_deep | array_too_long | too_many_keys | number_out_of_range",
    "duplicate_property",
    "event_too_large",
)

REQUEST_ERROR_STATUS = {
    "empty": 400,
    "body_too_large": 413,
    "decompressed_too_large": 413,
    "invalid_gzip": 400,
    "unsupported_encoding": 415,
    "invalid_base64": 400,
    "invalid_utf8": 400,
    "invalid_json": 400,
    "not_events": 400,
    "empty_batch": 400,
    "too_many_events": 413,
    "invalid_parameter": 400,
}

JSON_WHITESPACE = b" \t\n\r"
GZIP_MAGIC = b"\x1f\x8b"
MILLISECONDS_FROM = 1e11
MAX_INSERT_ID_CHARS = 36
MAX_STEP = 100


@dataclass(frozen=True, kw_only=True)
class Options:
    """The same rules, with the same defaults, as `trackgate.Options`."""

    max_age: float = 10800.0
    max_future_skew: float = 300.0
    max_event_name_chars: int = 255
    max_distinct_id_chars: int = 200
    max_properties: int = 255
    max_depth: int = 3
    max_array_len: int = 255
    max_event_bytes: int = 1_000_000
    max_request_bytes: int = 10_000_000
    max_events: int = 2000
    partitions: int = 4


DEFAULT_OPTIONS = Options()


class ReferenceDecodeError(ValueError):
    """The request as a whole is unusable; `kind` and `status` as README lists them."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.status = REQUEST_ERROR_STATUS[kind]
        self.message = message


@dataclass(frozen=True)
class EventError:
    index: int
    field: str
    kind: str
    message: str


@dataclass(frozen=True)
class ValidEvent:
    index: int
    normalised: dict[str, Any]
    json: bytes
    token: str
    partition: int
    # Which key chose the partition (N4): "distinct_id", "insert_id" or "json". Comparisons against the
    # native decoder skip the partition of "json"-keyed events, whose bytes need not match to the byte.
    partition_key: str
    # The packed fields (N5), as text.
    packed_fields: tuple[str, ...]


@dataclass
class Result:
    """What one request carried: the parameters, the valid events and the per-event errors."""

    verbose: bool = False
    img: bool = False
    test: bool = False
    use_ip: bool = False
    callback: str | None = None
    redirect: str | None = None
    total: int = 0
    events: list[ValidEvent] = field(default_factory=list)
    errors: list[EventError] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.events)


# ---------------------------------------------------------------------------------------------------------
# Backends: base64 and JSON, pluggable so that bench/ can measure the same checks on faster libraries.


class InvalidUtf8Error(ValueError):
    pass


class InvalidJsonError(ValueError):
    pass


@dataclass(frozen=True)
class Backend:
    name: str
    # Standard alphabet, padded to a multiple of 4 (the oracle has repaired the variants); ValueError when a
    # character is outside the alphabet.
    b64decode: Callable[[bytes], bytes]
    # JSON text to Python values; raises InvalidUtf8Error or InvalidJsonError.
    loads: Callable[[bytes], Any]
    # The normalised event to compact UTF-8 JSON.
    dumps: Callable[[Any], bytes]


class _FloatWithText(float):
    """A float that remembers its literal: a numeric distinct_id is stored as the text that was sent (E6)."""

    __slots__ = ("text",)
    text: str


class _NegativeZero(int):
    """The integer literal -0: 0 for arithmetic, "-0" as a distinct_id (E6)."""

    text = "-0"


class _ObjectWithDuplicates(dict[str, Any]):
    """A JSON object that repeated a key: it keeps its members as sent, for E10 to E12."""

    pairs: list[tuple[str, Any]]


def _members(obj: dict[str, Any]) -> Any:
    """The members of an object as sent: duplicates included."""
    return obj.pairs if isinstance(obj, _ObjectWithDuplicates) else obj.items()


def _float_from_literal(text: str) -> float:
    value = _FloatWithText(text)
    value.text = text
    return value


def _int_from_literal(text: str) -> int | float:
    if text == "-0":
        return _NegativeZero(0)
    return int(text)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        obj = _ObjectWithDuplicates(obj)
        obj.pairs = pairs
    return obj


_STDLIB_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_from_pairs,
    parse_float=_float_from_literal,
    parse_int=_int_from_literal,
    parse_constant=_reject_constant,
)
# A \u escape of a surrogate (D800-DFFF); only when one occurs must the parsed strings be searched for a
# lone one (Python's json keeps lone surrogates, which have no UTF-8 form).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    """R11: a lone surrogate (from a \\u escape) as U+FFFD, in keys and values."""
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if isinstance(value, dict):
        items = value.pairs if isinstance(value, _ObjectWithDuplicates) else value.items()
        fixed = [(_without_lone_surrogates(k), _without_lone_surrogates(v)) for k, v in items]
        return _object_from_pairs(fixed)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    return value


def _stdlib_loads(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUtf8Error("not UTF-8") from None
    try:
        value = _STDLIB_DECODER.decode(text)
    except (ValueError, RecursionError) as error:
        raise InvalidJsonError(str(error)) from None
    if _SURROGATE_ESCAPE.search(text):
        value = _without_lone_surrogates(value)
    return value


def _stdlib_dumps(value: Any) -> bytes:
    # No value of a valid event is infinite: E11 refuses numbers beyond a double in properties.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


STDLIB = Backend(
    name="stdlib",
    b64decode=lambda data: base64.b64decode(data, validate=True),
    loads=_stdlib_loads,
    dumps=_stdlib_dumps,
)


def fast_backend() -> Backend:
    """pybase64 + orjson: the same checks, on faster libraries. Used by bench/, not by the tests, because
    orjson gives up details of the contract: it keeps the last of duplicate keys silently (so
    duplicate_property and E10's count as sent are not seen), it refuses 1e400 and integers beyond a
    double (invalid_json instead of E11's number_out_of_range), it refuses \\u escapes of lone surrogates
    and CESU-8 (invalid_json or invalid_utf8 instead of R11's U+FFFD), and a numeric distinct_id becomes
    Python's repr of the float, not its literal (E6).
    """
    import orjson
    import pybase64

    def loads(data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as error:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidUtf8Error("not UTF-8") from None
            raise InvalidJsonError(str(error)) from None

    return Backend(
        name="pybase64+orjson",
        b64decode=lambda data: pybase64.b64decode(data, validate=True),
        loads=loads,
        dumps=orjson.dumps,
    )


# ---------------------------------------------------------------------------------------------------------
# The request: parameters, body, gzip, base64.


def _fail(kind: str, message: str) -> ReferenceDecodeError:
    return ReferenceDecodeError(kind, message)


_PERCENT_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def form_decode(raw: bytes) -> bytes:
    """R5: "+" is a space, %XX a byte, and any other "%" stays as it is."""
    if b"%" not in raw and b"+" not in raw:
        return raw
    return _PERCENT_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw.replace(b"+", b" "))


def parse_form(raw: bytes) -> dict[bytes, bytes]:
    """R5: the parameters of form text; the last occurrence of a name wins."""
    params: dict[bytes, bytes] = {}
    for pair in raw.split(b"&"):
        name, _, value = pair.partition(b"=")
        params[form_decode(name)] = form_decode(value)
    return params


def inflate(data: bytes, cap: int) -> bytes:
    """R3: every gzip member of `data`, failing as soon as the output passes `cap` bytes."""
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, cap + 1 - len(out))
        except zlib.error as error:
            raise _fail("invalid_gzip", f"the gzip data is corrupt: {error}") from None
        if len(out) > cap:
            raise _fail("decompressed_too_large", f"the gzip data inflates to more than {cap} bytes")
        if not inflater.eof:
            raise _fail("invalid_gzip", "the gzip data ends before its last member does")
        rest = inflater.unused_data
        if not rest:
            return bytes(out)


_BASE64_REPAIR = bytes.maketrans(b" -_", b"++/")


def decode_base64(text: bytes, backend: Backend) -> bytes:
    """R10: base64 in any of the variants clients send."""
    repaired = text.translate(_BASE64_REPAIR, b"\t\n\r")
    unpadded = repaired.rstrip(b"=")
    padding = len(repaired) - len(unpadded)
    if b"=" in unpadded:
        raise _fail("invalid_base64", "data is neither JSON nor base64: '=' before the end")
    remainder = len(unpadded) % 4
    if remainder == 1 or not unpadded:
        raise _fail("invalid_base64", f"data is neither JSON nor base64: {len(unpadded)} characters")
    canonical = (4 - remainder) % 4
    if padding > canonical:
        raise _fail("invalid_base64", "data is neither JSON nor base64: too much padding")
    try:
        return backend.b64decode(unpadded + b"=" * canonical)
    except (ValueError, binascii.Error):
        raise _fail("invalid_base64", "data is neither JSON nor base64: a character outside base64") from None


def _first_non_space(data: bytes) -> bytes:
    return data.lstrip(JSON_WHITESPACE)[:1]


def payload_to_json(data: bytes, cap: int, backend: Backend, *, may_inflate: bool = True) -> bytes:
    """R9: the JSON text a data value holds. `may_inflate` is false once the request has been inflated."""
    first = _first_non_space(data)
    if not first:
        raise _fail("empty", "data is empty")
    if data.startswith(GZIP_MAGIC):
        if not may_inflate:
            raise _fail("invalid_gzip", "gzip inside gzip is not accepted")
        return payload_to_json(inflate(data, cap), cap, backend, may_inflate=False)
    if first in (b"{", b"["):
        return data
    decoded = decode_base64(data, backend)
    if decoded.startswith(GZIP_MAGIC):
        if not may_inflate:
            raise _fail("invalid_gzip", "gzip inside gzip is not accepted")
        inflated = inflate(decoded, cap)
        if inflated.startswith(GZIP_MAGIC):
            raise _fail("invalid_gzip", "gzip inside gzip is not accepted")
        return inflated
    return decoded


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _flag(value: bytes | None) -> bool:
    """R6"""
    return value is not None and value.strip(b" \t\n\r\x0c") in (b"1", b"true")


def _text(value: bytes | None, name: str) -> str | None:
    """R7"""
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("invalid_parameter", f"parameter `{name}` is not valid UTF-8") from None


# ---------------------------------------------------------------------------------------------------------
# The JSON document: one event or a batch.


def _too_many_events_before_error(text: bytes, max_events: int) -> bool:
    """R12 for a document that is not valid JSON as a whole: true when it is an array whose first
    max_events elements are valid and followed by a comma, so that a streaming reader refuses the batch
    before it meets the error."""
    try:
        doc = text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    pos = len(doc) - len(doc.lstrip(" \t\n\r"))
    if doc[pos : pos + 1] != "[":
        return False
    pos += 1
    for _ in range(max_events):
        while doc[pos : pos + 1] in (" ", "\t", "\n", "\r") and pos < len(doc):
            pos += 1
        try:
            _, pos = _STDLIB_DECODER.raw_decode(doc, pos)
        except (ValueError, RecursionError):
            return False
        while doc[pos : pos + 1] in (" ", "\t", "\n", "\r") and pos < len(doc):
            pos += 1
        if doc[pos : pos + 1] != ",":
            return False
        pos += 1
    return True


def _from_cesu8(text: bytes) -> bytes:
    """R11: surrogates encoded on their own, 3 bytes each (CESU-8), read as UTF-16."""
    try:
        text.decode("utf-8")
        return text
    except UnicodeDecodeError:
        pass
    try:
        units = text.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise _fail("invalid_utf8", "data is not valid UTF-8") from None
    return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode("utf-8")


def parse_events(text: bytes, options: Options, backend: Backend) -> list[Any]:
    """R11 and R12: the events of a JSON text."""
    if not _first_non_space(text):
        raise _fail("empty", "data holds no JSON value")
    text = _from_cesu8(text)
    try:
        document = backend.loads(text)
    except InvalidUtf8Error:
        raise _fail("invalid_utf8", "data is not valid UTF-8") from None
    except InvalidJsonError as error:
        if _too_many_events_before_error(text, options.max_events):
            raise _fail("too_many_events", f"more than {options.max_events} events") from None
        raise _fail("invalid_json", f"data is not valid JSON: {error}") from None
    if isinstance(document, dict):
        events = [document]
    elif isinstance(document, list):
        if not document:
            raise _fail("empty_batch", "data is an empty array")
        if len(document) > options.max_events:
            raise _fail("too_many_events", f"more than {options.max_events} events")
        events = document
    else:
        raise _fail("not_events", f"data holds a JSON {type(document).__name__}, not events")
    return events


# ---------------------------------------------------------------------------------------------------------
# One event.

_ABSENT: Any = object()
_INSERT_ID = re.compile(r"[A-Za-z0-9-]{0,36}")
_STEP_DIGITS = re.compile(r"[0-9]{1,10}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_f64(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _number_text(value: int | float) -> str:
    """E6: the literal of a number as it was sent (backends without literals: its Python form)."""
    text = getattr(value, "text", None)
    if text is not None:
        return str(text)
    return repr(value) if isinstance(value, float) else str(value)


def _output_number(value: float) -> int | float:
    """N2: whole numbers below 2**53 as integers."""
    if value == math.floor(value) and abs(value) < 2**53:
        return int(value)
    return value


def _step_value(value: Any) -> int | None:
    """E9: the funnel step, or None when it is not an integer from 1 to MAX_STEP."""
    if isinstance(value, str):
        if not _STEP_DIGITS.fullmatch(value):
            return None
        number = float(int(value))
    elif _is_number(value):
        number = _as_f64(value)
    else:
        return None
    if not math.isfinite(number) or number != math.floor(number) or not 1 <= number <= MAX_STEP:
        return None
    return int(number)


def _key_field(key: str) -> str:
    """E14: the error field of a top-level property."""
    return f"properties.{key[:100]}..." if len(key) > 100 else f"properties.{key}"


def _beyond_double(value: Any) -> bool:
    """E11: a number beyond a double (Python reads 1e400 as inf, and refuses to make a float of a larger
    int)."""
    return _is_number(value) and math.isinf(_as_f64(value))


def _shape_violation(value: Any, level: int, options: Options) -> str | None:
    """E11: the first limit `value` breaks in reading order; `level` is its container's level."""
    is_dict = isinstance(value, dict)
    if not is_dict and not isinstance(value, list):
        return "number_out_of_range" if _beyond_double(value) else None
    if level > options.max_depth:
        return "too_deep"
    children = [v for _, v in _members(value)] if is_dict else value
    for child in children:
        found = _shape_violation(child, level + 1, options)
        if found:
            return found
    if is_dict and len(children) > options.max_properties:
        return "too_many_keys"
    if not is_dict and len(children) > options.max_array_len:
        return "array_too_long"
    return None


@dataclass(frozen=True)
class _Context:
    now: float
    options: Options
    tokens: Collection[str] | None
    peer_ip: str | None  # set only when ip=1
    backend: Backend


def validate_event(index: int, value: Any, ctx: _Context) -> ValidEvent | EventError:
    """The rules of one event, in EVENT_RULE_ORDER; the normalised event when all hold."""
    options = ctx.options

    def error(field: str, kind: str, message: str) -> EventError:
        return EventError(index, field, kind, message)

    if not isinstance(value, dict):
        return error("", "not_an_object", f"event {index} must be an object, got {_json_type(value)}")

    # E3
    name = value.get("event", _ABSENT)
    if name is _ABSENT:
        return error("event", "event_missing", "the event name (`event`) is missing")
    if not isinstance(name, str) or not name:
        return error("event", "event_invalid", f"the event name must be a non-empty string, got {name!r}")
    if len(name) > options.max_event_name_chars:
        return error(
            "event",
            "event_too_long",
            f"the event name has {len(name)} characters; at most {options.max_event_name_chars} are allowed",
        )

    properties = value.get("properties", _ABSENT)
    if properties is _ABSENT:
        properties = {}
    elif not isinstance(properties, dict):
        kind_of = _json_type(properties)
        return error("properties", "properties_invalid", f"properties must be an object, not {kind_of}")

    # E4
    token = properties.get("token", _ABSENT)
    if token is _ABSENT:
        return error("properties.token", "token_missing", "properties.token is missing")
    if not isinstance(token, str) or not token:
        return error("properties.token", "token_invalid", "properties.token must be a non-empty string")
    if ctx.tokens is not None and token not in ctx.tokens:
        return error("properties.token", "unknown_token", "properties.token is not a known project token")

    # E5
    now = ctx.now
    sent_time = properties.get("time", _ABSENT)
    if sent_time is _ABSENT:
        event_time = now
    else:
        if not _is_number(sent_time):
            kind_of = _json_type(sent_time)
            return error(
                "properties.time", "time_invalid", f"properties.time must be a number, not {kind_of}"
            )
        event_time = _as_f64(sent_time)
        if not math.isfinite(event_time) or event_time < 0:
            return error("properties.time", "time_invalid", "properties.time must be a finite number >= 0")
        if event_time >= MILLISECONDS_FROM:
            event_time /= 1000.0
        if now - event_time > options.max_age:
            return error(
                "properties.time",
                "time_too_old",
                f"properties.time is {now - event_time:.0f} s old; the limit is {options.max_age:.0f} s",
            )
        if event_time - now > options.max_future_skew:
            event_time = now

    # E6
    sent_distinct_id = properties.get("distinct_id", _ABSENT)
    distinct_id: str | None = None
    if sent_distinct_id is not _ABSENT:
        if isinstance(sent_distinct_id, str):
            distinct_id = sent_distinct_id
        elif _is_number(sent_distinct_id):
            distinct_id = _number_text(sent_distinct_id)
        else:
            return error(
                "properties.distinct_id",
                "distinct_id_invalid",
                f"properties.distinct_id must be a string or a number, not {_json_type(sent_distinct_id)}",
            )
        if len(distinct_id) > options.max_distinct_id_chars:
            return error(
                "properties.distinct_id",
                "distinct_id_too_long",
                f"properties.distinct_id has {len(distinct_id)} characters; "
                f"at most {options.max_distinct_id_chars} are allowed",
            )

    # E7
    insert_id = properties.get("$insert_id", _ABSENT)
    if insert_id is _ABSENT:
        insert_id = None
    elif not isinstance(insert_id, str) or not _INSERT_ID.fullmatch(insert_id):
        return error(
            "properties.$insert_id",
            "insert_id_invalid",
            f"properties.$insert_id must be at most {MAX_INSERT_ID_CHARS} characters of A-Za-z0-9-",
        )

    # E8
    sent_ip = properties.get("ip", _ABSENT)
    if sent_ip is not _ABSENT and not isinstance(sent_ip, str):
        kind_of = _json_type(sent_ip)
        return error("properties.ip", "ip_invalid", f"properties.ip must be a string, not {kind_of}")

    # E9
    funnel: dict[str, Any] | None = None
    if name == "mp_funnel":
        funnel_name = properties.get("funnel")
        max_chars = options.max_event_name_chars
        if not isinstance(funnel_name, str) or not funnel_name or len(funnel_name) > max_chars:
            return error("properties.funnel", "funnel_invalid", "funnel must be a non-empty string")
        step = _step_value(properties.get("step", _ABSENT))
        if step is None:
            return error("properties.step", "step_invalid", "properties.step must be an integer >= 1")
        goal = properties.get("goal", _ABSENT)
        if not isinstance(goal, str) or len(goal) > max_chars:
            return error("properties.goal", "goal_invalid", "properties.goal must be a string")
        funnel = {"name": funnel_name, "step": step, "goal": goal}

    # E10 - E12
    members = list(_members(properties))
    if len(members) > options.max_properties:
        return error(
            "properties",
            "too_many_properties",
            f"{len(members)} properties; at most {options.max_properties} are allowed",
        )
    for key, member in members:
        kind = _shape_violation(member, 1, options)
        if kind:
            return error(_key_field(key), kind, f"{_key_field(key)} breaks the {kind} limit")
    if isinstance(properties, _ObjectWithDuplicates):
        counts = Counter(key for key, _ in members)
        key = next(key for key, _ in members if counts[key] > 1)
        return error(_key_field(key), "duplicate_property", f"{_key_field(key)} appears more than once")

    # The normalised event (N1 - N3)
    written_time = _output_number(event_time)
    normalised_properties = dict(properties)
    normalised_properties["time"] = written_time
    if distinct_id is not None:
        normalised_properties["distinct_id"] = distinct_id
    ip = sent_ip if sent_ip is not _ABSENT else None
    if ctx.peer_ip is not None:
        if not distinct_id:
            distinct_id = ctx.peer_ip
            normalised_properties["distinct_id"] = distinct_id
        ip = ctx.peer_ip
        normalised_properties["ip"] = ip

    normalised: dict[str, Any] = {
        "event": name,
        "time": written_time,
        "received": _output_number(now),
        "token": token,
    }
    if distinct_id is not None:
        normalised["distinct_id"] = distinct_id
    if insert_id is not None:
        normalised["insert_id"] = insert_id
    if ip is not None:
        normalised["ip"] = ip
    if funnel is not None:
        normalised["funnel"] = funnel
    mp_keys = [key for key, _ in members if key.startswith("mp_")]
    if mp_keys:
        normalised["mp_keys"] = mp_keys
    normalised["properties"] = normalised_properties

    encoded = ctx.backend.dumps(normalised)
    if len(encoded) > options.max_event_bytes:
        return error(
            "",
            "event_too_large",
            f"the event is {len(encoded)} bytes; the limit is {options.max_event_bytes}",
        )

    # N4, N5
    if distinct_id:
        key_name, key = "distinct_id", distinct_id.encode("utf-8")
    elif insert_id is not None:
        key_name, key = "insert_id", insert_id.encode("ascii")
    else:
        key_name, key = "json", encoded
    seconds = math.floor(event_time)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    packed_fields = (
        moment.date().isoformat(),
        f"{moment.hour:02d}:{name}",
        distinct_id or "",
        *((funnel["name"], str(seconds), str(funnel["step"]), funnel["goal"]) if funnel else ("",)),
    )
    return ValidEvent(
        index=index,
        normalised=normalised,
        json=encoded,
        token=token,
        partition=zlib.crc32(key) % options.partitions,
        partition_key=key_name,
        packed_fields=packed_fields,
    )


def _validate_all(
    values: list[Any],
    result: Result,
    *,
    now: float,
    options: Options,
    tokens: Collection[str] | None,
    peer_ip: str | None,
    backend: Backend,
) -> Result:
    ctx = _Context(now=float(now), options=options, tokens=tokens, peer_ip=peer_ip, backend=backend)
    result.total = len(values)
    for index, value in enumerate(values):
        outcome = validate_event(index, value, ctx)
        if isinstance(outcome, EventError):
            result.errors.append(outcome)
        else:
            result.events.append(outcome)
    return result


# ---------------------------------------------------------------------------------------------------------
# Entry points, shaped like trackgate.decode_request and trackgate._native.decode_data.


def decode_request(
    query: str | bytes,
    body: bytes,
    content_type: str | None = None,
    content_encoding: str | None = None,
    *,
    now: float,
    options: Options = DEFAULT_OPTIONS,
    peer_ip: str | None = None,
    tokens: Collection[str] | None = None,
    backend: Backend = STDLIB,
) -> Result:
    """One /track request. Raises ReferenceDecodeError when the request as a whole is unusable."""
    query_bytes = query.encode("utf-8") if isinstance(query, str) else bytes(query)
    body = bytes(body)
    cap = options.max_request_bytes
    size = len(query_bytes) + len(body)
    if size > cap:  # R1
        raise _fail("body_too_large", f"the request is {size} bytes; at most {cap} are accepted")
    encoding = (content_encoding or "").strip().lower()  # R2
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise _fail("unsupported_encoding", f"Content-Encoding {content_encoding!r} is not supported")
    inflated = bool(body) and (encoding in ("gzip", "x-gzip") or body.startswith(GZIP_MAGIC))
    if inflated:  # R3
        body = inflate(body, cap - len(query_bytes))
        if body.startswith(GZIP_MAGIC):
            raise _fail("invalid_gzip", "gzip inside gzip is not accepted")

    params = parse_form(query_bytes)
    json_body: bytes | None = None
    if body:  # R4
        first = _first_non_space(body)
        if first in (b"{", b"[") or (first and _media_type(content_type) == "application/json"):
            json_body = body
        else:
            params.update(parse_form(body))

    result = Result(
        verbose=_flag(params.get(b"verbose")),
        img=_flag(params.get(b"img")),
        test=_flag(params.get(b"test")),
        use_ip=_flag(params.get(b"ip")),
        callback=_text(params.get(b"callback"), "callback"),
        redirect=_text(params.get(b"redirect"), "redirect"),
    )
    if json_body is not None:  # R8
        text = json_body
    else:
        data = params.get(b"data")
        if data is None:
            raise _fail("empty", "no `data` parameter and no JSON body")
        text = payload_to_json(data, cap - len(query_bytes), backend, may_inflate=not inflated)
    values = parse_events(text, options, backend)
    return _validate_all(
        values,
        result,
        now=now,
        options=options,
        tokens=tokens,
        peer_ip=peer_ip if result.use_ip else None,
        backend=backend,
    )


def decode_data(
    data: str | bytes,
    *,
    now: float,
    options: Options = DEFAULT_OPTIONS,
    tokens: Collection[str] | None = None,
    backend: Backend = STDLIB,
) -> Result:
    """The value of one `data` parameter: base64 (any variant), raw JSON or gzip bytes."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > options.max_request_bytes:  # R1
        raise _fail("body_too_large", f"data is {len(raw)} bytes; the limit is {options.max_request_bytes}")
    text = payload_to_json(raw, options.max_request_bytes, backend)
    values = parse_events(text, options, backend)
    return _validate_all(
        values, Result(), now=now, options=options, tokens=tokens, peer_ip=None, backend=backend
    )
