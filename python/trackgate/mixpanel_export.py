"""Mixpanel's raw event export, `/api/2.0/export` (api.py routes it): its parameters, and each stored
event written as Mixpanel's export writes one, so that tools written for Mixpanel's export read
trackgate's. The events are read by export.py, as trackgate's own `/api/export` reads them.

A line is `{"event": <name>, "properties": {...}}`: the properties as the client sent them (normalised as
stored: `distinct_id` a string, `$insert_id` as sent), less `token` (Mixpanel's export leaves it out:
the project is the caller's), with `time` in whole seconds (or milliseconds with `time_in_ms=true`) and
`mp_processing_time_ms`, when the gateway received the event.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

import msgspec

from trackgate import funnels
from trackgate.parameters import ParameterError, Query, day, json_names, last, refuse, whole

PATH: Final = "/api/2.0/export"
MAX_LIMIT: Final = 100_000
"""The most events `limit` may ask for (Mixpanel's bound)."""
MAX_EVENT_NAMES: Final = 1000
"""Event names one `event` list may hold."""
UNSUPPORTED: Final = ("where",)
"""Mixpanel's filter expression, which trackgate does not evaluate (parameters.refuse)."""
_LEFT_OUT: Final = frozenset({"token", "time", "mp_processing_time_ms"})
"""Stored properties a line does not copy: the token, and those the line writes itself."""


class _Stored(msgspec.Struct):
    """What a line is made of, of a stored event's normalised JSON; the properties' values are copied as
    their JSON text, never parsed."""

    event: str
    time: float
    received: float | None = None
    properties: dict[str, msgspec.Raw] = {}


_decode_stored = msgspec.json.Decoder(_Stored).decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class MixpanelExport:
    """An export as Mixpanel's parameters ask for it."""

    start: dt.date
    end: dt.date
    names: list[str] | None
    limit: int | None
    time_in_ms: bool

    @classmethod
    def parse(cls, params: Query) -> MixpanelExport:
        refuse(params, UNSUPPORTED, "export the events and filter them instead")
        start, end = _required_day(params, "from_date"), _required_day(params, "to_date")
        try:
            funnels.days_between(start, end)
        except ValueError as err:
            raise ParameterError(f"from_date/to_date: {err}") from None
        events = last(params, "event")
        names = None if events is None else json_names(events, "event", MAX_EVENT_NAMES)
        if names == []:
            raise ParameterError("event: expected at least one event name (leave `event` out for all)")
        limit = None if last(params, "limit") is None else whole(params, "limit", 0, MAX_LIMIT, least=1)
        return cls(start, end, names, limit, _flag(params, "time_in_ms"))

    def line(self, data: bytes) -> bytes:
        """A stored event's normalised JSON written as the answer's line."""
        stored = _decode_stored(data)
        time = round(stored.time * 1000) if self.time_in_ms else int(stored.time)
        properties: dict[str, object] = {"time": time}
        properties.update((name, value) for name, value in stored.properties.items() if name not in _LEFT_OUT)
        if stored.received is not None:
            properties["mp_processing_time_ms"] = round(stored.received * 1000)
        return _encode({"event": stored.event, "properties": properties}) + b"\n"


def _required_day(params: Query, name: str) -> dt.date:
    found = day(params, name)
    if found is None:
        raise ParameterError(f"{name}: required, a date as YYYY-MM-DD")
    return found


def _flag(params: Query, name: str) -> bool:
    text = last(params, name)
    if text is None or text.lower() in ("false", "0"):
        return False
    if text.lower() in ("true", "1"):
        return True
    raise ParameterError(f"{name}: expected true or false, got {text[:40]!r}")
