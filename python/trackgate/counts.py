"""Event counts per hour and unique users per day, from the counters `tg_count` keeps per partition.

Counts are by event time (UTC). Unique users come from one HyperLogLog per partition, day and event
name; a user's events all land in one partition, so the partitions' estimates add up (about 0.8% error).

A report reads the counters of the names it answers with, and no others: one name's 24 hour fields of
each day's hash (HMGET), its own HyperLogLogs. Listing the names of a range reads the hashes' field
names only (HKEYS), then counts one page of them, so an answer's size and most of its cost are bounded
by the page's `limit`, not by how many names the project holds.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

import msgspec
from redis.asyncio import Redis

from trackgate.funnels import days_between
from trackgate.keys import daily_users_key, hourly_counts_key

Unit = Literal["day", "hour"]

NAMES_LIMIT: Final = 100
"""Event names one answer counts unless the caller asks for another page size."""
MAX_NAMES_LIMIT: Final = 1000
"""The largest page a caller may ask for: each name costs its own reads of every day and partition."""
_HOURS: Final = range(24)


class Point(msgspec.Struct, frozen=True):
    time: str
    count: int
    users: int | None


class Series(msgspec.Struct, frozen=True):
    total: int
    series: list[Point]


class EventCounts(msgspec.Struct, frozen=True, rename={"start": "from", "end": "to"}):
    """`total_names` names were seen in the range; `events` holds the page of them from the asked offset
    (in name order), `truncated` says names were left out, `next_offset` is where the next page starts
    (None: this page is the last)."""

    start: str
    end: str
    unit: str
    events: dict[str, Series]
    total_names: int
    truncated: bool
    next_offset: int | None


def keys_read(days: int, partitions: int, unit: Unit, names: int, listed: bool) -> int:
    """The Redis keys `event_counts` reads for `names` names (`listed`: without `event`, the names are
    listed first): each hash twice when listing, then once, and a HyperLogLog per name in daily units."""
    per_day_partition = (2 if listed else 1) + (names if unit == "day" else 0)
    return days * partitions * per_day_partition


async def event_counts(
    client: Redis,
    token: str,
    partitions: int,
    start: dt.date,
    end: dt.date,
    unit: Unit = "day",
    event: str | None = None,
    *,
    offset: int = 0,
    limit: int = NAMES_LIMIT,
) -> EventCounts:
    """Counts of `event` alone, or of a page of the event names seen from `start` to `end` (UTC days
    inclusive, names in order from `offset`, at most `limit`), with every day or hour of the range
    present."""
    days = days_between(start, end)
    day_keys = [hourly_counts_key(token, p, day.isoformat()) for day in days for p in range(partitions)]
    if event is not None:
        names, total = [event], 1
    else:
        every = await _names_seen(client, day_keys)
        names, total = every[offset : offset + limit], len(every)
    hourly = await _hourly_counts(client, day_keys, partitions, names)
    users = await _daily_users(client, token, partitions, days, names) if unit == "day" else {}
    events = {}
    for n, name in enumerate(names):
        points = []
        for i, day in enumerate(days):
            hours = hourly[n][i]
            if unit == "day":
                points.append(Point(day.isoformat(), sum(hours), users.get((name, i), 0)))
            else:
                points.extend(Point(f"{day.isoformat()}T{h:02d}:00:00Z", hours[h], None) for h in _HOURS)
        events[name] = Series(sum(p.count for p in points), points)
    after = offset + len(names)
    more = event is None and after < total
    return EventCounts(
        start.isoformat(),
        end.isoformat(),
        unit,
        events,
        total_names=total,
        truncated=len(names) < total,
        next_offset=after if more else None,
    )


async def _names_seen(client: Redis, day_keys: list[str]) -> list[str]:
    """The event names counted in any of the hashes, in order: field names only, no values."""
    async with client.pipeline(transaction=False) as pipe:
        for key in day_keys:
            pipe.hkeys(key)
        replies: list[list[bytes]] = await pipe.execute()
    return sorted(
        {field.partition(b":")[2].decode("utf-8", "replace") for fields in replies for field in fields}
    )


async def _hourly_counts(
    client: Redis, day_keys: list[str], partitions: int, names: list[str]
) -> list[list[list[int]]]:
    """name index -> day index -> hour -> count, summed over the partitions: the 24 fields of each
    name, read from each day's hash of each partition."""
    hourly = [[[0] * len(_HOURS) for _ in range(len(day_keys) // partitions)] for _ in names]
    if not names:
        return hourly
    fields = [f"{h:02d}:{name}" for name in names for h in _HOURS]
    async with client.pipeline(transaction=False) as pipe:
        for key in day_keys:
            pipe.hmget(key, fields)
        replies: list[list[bytes | None]] = await pipe.execute()
    for k, values in enumerate(replies):
        day_index = k // partitions
        for f, value in enumerate(values):
            if value is not None:
                hourly[f // len(_HOURS)][day_index][f % len(_HOURS)] += int(value)
    return hourly


async def _daily_users(
    client: Redis, token: str, partitions: int, days: list[dt.date], names: list[str]
) -> dict[tuple[str, int], int]:
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            for day in days:
                for p in range(partitions):
                    pipe.pfcount(daily_users_key(token, p, day.isoformat(), name))
        replies: list[int] = await pipe.execute()
    users: dict[tuple[str, int], int] = {}
    at = 0
    for name in names:
        for i in range(len(days)):
            users[(name, i)] = sum(replies[at : at + partitions])
            at += partitions
    return users
