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


# `decode(data, *, now=None, options=None, **rules)`: the native decoder makes the Events as it decodes
# them (its docstring tells the rest).
decode = EventDecoder(Event, Funnel).decode
