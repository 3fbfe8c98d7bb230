"""Event counts per hour and unique users per day, from the counters `tg_count` keeps per partition.

Counts are by event time (UTC). Unique users come from one HyperLogLog per partition, day and event
name; a user's events all land in one partition, so the partitions' estimates add up (about 0.8% error).

A report reads the counters of the names it answers with, and no others: one name's 24 hour fields of
each day's hash (HMGET), and its HyperLogLogs of the days and partitions that counted it (the others are
empty). Listing the names of a range reads the hashes' field names only (HKEYS), then the fields of one
page of names, so an answer's size and most of its cost are bounded by the page's `limit`, not by how
many names the project holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final, Literal

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
ROUND: Final = 64
"""Commands a report sends to Redis at once (see `_in_rounds`)."""


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
    """The most Redis keys `event_counts` reads for `names` names (`listed`: without `event`, the names
    are listed first): each hash twice when listing, else once, and a HyperLogLog per name in daily
    units."""
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
        wanted = [[f"{h:02d}:{event}".encode() for h in _HOURS]] * len(day_keys)
    else:
        present = await _counted_fields(client, day_keys)
        every = sorted({_name(field) for fields in present for field in fields})
        names, total = every[offset : offset + limit], len(every)
        page = set(names)
        wanted = [[field for field in fields if _name(field) in page] for fields in present]
    index = {name: n for n, name in enumerate(names)}
    hourly = [[[0] * len(_HOURS) for _ in days] for _ in names]
    counted: list[tuple[int, int, int]] = []  # (name, day, partition) with events: their HyperLogLogs
    for k, (fields, values) in enumerate(zip(wanted, await _values(client, day_keys, wanted), strict=True)):
        day_index, partition = divmod(k, partitions)
        seen = set()
        for field, value in zip(fields, values, strict=True):
            if value is not None:
                n = index[_name(field)]
                hourly[n][day_index][int(field[:2])] += int(value)
                seen.add(n)
        counted.extend((n, day_index, partition) for n in seen)
    users = await _daily_users(client, token, days, names, counted) if unit == "day" else {}
    events = {}
    for n, name in enumerate(names):
        points = []
        for i, day in enumerate(days):
            hours = hourly[n][i]
            if unit == "day":
                points.append(Point(day.isoformat(), sum(hours), users.get((n, i), 0)))
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


async def _in_rounds(client: Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The replies to `commands`, sent ROUND at a time: Redis answers a batch of commands before it
    reads its other clients again, so a report's reads go in small rounds, between which the ingestion
    workers' writes are served."""
    replies: list[Any] = []
    for i in range(0, len(commands), ROUND):
        async with client.pipeline(transaction=False) as pipe:
            for command in commands[i : i + ROUND]:
                pipe.execute_command(*command)
            replies.extend(await pipe.execute())
    return replies


def _name(field: bytes) -> str:
    """The event name of an hourly counter's field, `HH:<name>`."""
    return field[3:].decode("utf-8", "replace")


async def _counted_fields(client: Redis, day_keys: list[str]) -> list[list[bytes]]:
    """The fields of each hash: names only, no values."""
    replies: list[list[bytes]] = await _in_rounds(client, [("HKEYS", key) for key in day_keys])
    return replies


async def _values(client: Redis, day_keys: list[str], wanted: list[list[bytes]]) -> list[list[bytes | None]]:
    """The values of the `wanted` fields of each hash (a hash with none wanted is not read)."""
    commands = [("HMGET", key, *fields) for key, fields in zip(day_keys, wanted, strict=True) if fields]
    replies: list[list[bytes | None]] = await _in_rounds(client, commands)
    read = iter(replies)
    return [next(read) if fields else [] for fields in wanted]


async def _daily_users(
    client: Redis, token: str, days: list[dt.date], names: list[str], counted: list[tuple[int, int, int]]
) -> dict[tuple[int, int], int]:
    """(name, day) -> unique users: the partitions' HyperLogLogs added up, of those that counted events
    (the others are empty)."""
    commands = [("PFCOUNT", daily_users_key(token, p, days[i].isoformat(), names[n])) for n, i, p in counted]
    replies: list[int] = await _in_rounds(client, commands)
    users: dict[tuple[int, int], int] = {}
    for (n, i, _), count in zip(counted, replies, strict=True):
        users[(n, i)] = users.get((n, i), 0) + count
    return users
