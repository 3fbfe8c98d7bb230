"""What bounds the keys that anyone holding a project's public token can make Redis keep.

Event names and funnel names come from clients: without a cap, a flood of new names makes new counter
keys without end, for every project on the same Redis. Each project therefore has caps (`Caps`, set with
`trackgate project set-caps`); `tg_count` enforces them in the transaction that counts a batch, and an
event past a cap is still stored in its stream but counted under `OVERFLOW` instead of its own name
(and, for a funnel past the funnel cap, not followed as a funnel step).

The caps are per partition. Every key a Redis Cluster transaction touches must be in its partition's
hash slot, so a per-project name set (another slot) cannot be read in the same transaction; and a cap
divided by the partitions would refuse a project's usual names, which recur in every partition. So each
partition admits up to the cap's names: a project holds at most `cap x partitions` names a day, and
exactly `cap` when its names recur across partitions, as names do when users are many.
"""

from __future__ import annotations

from typing import Final

import msgspec

OVERFLOW: Final = "$overflow"
"""The event name under which events past a cap are counted."""

DEFAULT_EVENT_NAMES_PER_DAY: Final = 1000
DEFAULT_FUNNEL_NAMES: Final = 100
MAX_CAP: Final = 1_000_000

MAX_PROFILE_PROPERTIES: Final = 2000
"""Properties a profile holds besides `$last_seen` (Mixpanel's documented limit): an update that would add
one past it leaves that one out (`tg_count` counts them, `trackgate_profile_properties_refused_total`)."""
MAX_PROFILE_LIST: Final = 255
"""Elements a list property of a profile holds (an event's arrays hold as many): `$append` and `$union`
past it drop the list's oldest elements."""

DEFAULT_COUNTER_RETENTION_DAYS: Final = 400
"""Days a day's counters and unique users are kept: over a year, so that a year's reports work."""
DEFAULT_STREAM_MAX_AGE: Final = 7 * 86400.0
"""Seconds an event is kept in its stream by default: long enough for any consumer to catch up."""


class CapError(ValueError):
    """A cap out of its range."""


class Caps(msgspec.Struct, frozen=True):
    """A project's caps, per partition (see above)."""

    event_names_per_day: int = DEFAULT_EVENT_NAMES_PER_DAY
    """Distinct event names counted under their own name per UTC day."""
    funnel_names: int = DEFAULT_FUNNEL_NAMES
    """Distinct funnels followed at a time: those a batch followed within the funnel window plus the late
    allowance (`keys.funnel_activity_key`). Past that no event can continue an attempt, so a quiet
    funnel gives its place up to the next new one, and is admitted again as a new one would be."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if not 1 <= value <= MAX_CAP:
                raise CapError(f"--{name.replace('_', '-')} is from 1 to {MAX_CAP:,}, not {value}")


DEFAULT_CAPS: Final = Caps()
