"""The typed events that `trackgate.decode` returns, and `decode` itself."""

from __future__ import annotations

from typing import Any

import msgspec

from trackgate._native import EventDecoder, Options


class Funnel(msgspec.Struct, frozen=True):
    """The funnel fields of an `mp_funnel` event."""

    name: str
    step: int
    goal: str


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One normalised event, as the gateway stores it."""

    event: str
    time: float
    received: float
    token: str
    properties: dict[str, Any]
    distinct_id: str | None = None
    insert_id: str | None = None
    ip: str | None = None
    funnel: Funnel | None = None
    mp_keys: tuple[str, ...] = ()


# Makes the Events in the native decoder, as it decodes them.
_decode = EventDecoder(Event, Funnel).decode


def decode(
    data: str | bytes,
    *,
    now: float | None = None,
    options: Options | None = None,
    **rules: Any,
) -> list[Event]:
    """Decode the value of a `data` parameter into events.

    `data` is base64 (standard or URL-safe, padded or not), raw JSON, or gzip bytes, holding one event or
    an array of events. `rules` are `Options` fields (`max_age=5 * 86400`, `max_depth=5`, ...), or pass a
    ready `options`. Raises `DecodeError` when the payload is unusable or when any event is invalid; the
    error then carries the valid events in `.events` and one entry per invalid event in `.errors()`.
    """
    if rules:
        if options is not None:
            raise TypeError("pass either options or individual rules, not both")
        options = Options(**rules)
    return _decode(data, now=now, options=options)
