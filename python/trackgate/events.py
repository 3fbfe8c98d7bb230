"""The typed events that `trackgate.decode` returns, and `decode` itself."""

from __future__ import annotations

from typing import Any

import msgspec

from trackgate._native import EventDecoder


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


# `trackgate.decode(data, *, now=None, options=None, **rules) -> list[Event]`, documented where it is
# written, in the native module: the function of a decoder that makes these Events as it decodes, so
# that a call runs no Python code.
decode = EventDecoder(Event, Funnel).decode
