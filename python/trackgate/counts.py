"""Event counts per hour and unique users per day, from the counters `tg_count` keeps per partition.

Counts are by event time (UTC). Unique users come from one HyperLogLog per partition, day and event
name; a user's events all land in one partition, so the partitions' estimates add up (about 0.8% error).

A report reads the counters of the names it answers with, and no others: one field per name of each
day's daily counts (HMGET), the 24 hour fields only of the days and partitions that counted the name, and
its HyperLogLogs of those days and partitions (the others are empty). Listing the names of a range reads
each partition's names seen since the range's first day (one sorted set), so an answer's cost follows the
names active in the range and the page's `limit`, not how many names the project ever held.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

import msgspec

from trackgate.funnels import days_between
from trackgate.keys import (
    daily_counts_key,
    daily_users_key,
    event_names_key,
    hourly_counts_key,
    names_seen_key,
)
from trackgate.report_reads import Reads

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
    """The most Redis keys `event_counts` reads for `names` names (`listed`: without `event`, the names
    are listed first, from each partition's names seen and, for names seen again after the range, the
    range's days' names): each day's daily counts, then its hourly counts or a HyperLogLog per name."""
    per_day_partition = 1 + (1 if listed else 0) + (1 if unit == "hour" else names)
    return (partitions if listed else 0) + days * partitions * per_day_partition


async def event_counts(
    reads: Reads,
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
    days = [day.isoformat() for day in days_between(start, end)]
    if event is not None:
        names, total = [event], 1
        # Each partition is asked for the name: any of them may have counted it.
        read: list[list[str]] = [names] * partitions
    else:
        seen = await _names_seen(reads, token, partitions, days)
        every = sorted(set().union(*seen))
        names, total = every[offset : offset + limit], len(every)
        page = set(names)
        read = [[name for name in part if name in page] for part in seen]
    index = {name: n for n, name in enumerate(names)}
    # (partition, day index, names read there): the daily counts of each, then the (name, day,
    # partition) that counted events, the only ones whose hours and users are read.
    cells = [(p, i, read[p]) for p in range(partitions) for i in range(len(days)) if read[p]]
    totals = await reads([("HMGET", daily_counts_key(token, p, days[i]), *part) for p, i, part in cells])
    counted = [
        (p, i, index[name], int(value))
        for (p, i, part), values in zip(cells, totals, strict=True)
        for name, value in zip(part, values, strict=True)
        if value is not None
    ]
    daily = [[0] * len(days) for _ in names]
    for _, i, n, count in counted:
        daily[n][i] += count
    events = {}
    if unit == "day":
        users = await _daily_users(reads, token, days, names, counted)
        for n, name in enumerate(names):
            points = [Point(day, daily[n][i], users.get((n, i), 0)) for i, day in enumerate(days)]
            events[name] = Series(sum(daily[n]), points)
    else:
        hourly = await _hourly(reads, token, days, names, counted)
        for n, name in enumerate(names):
            points = [
                Point(f"{day}T{h:02d}:00:00Z", hourly.get((n, i, h), 0), None)
                for i, day in enumerate(days)
                for h in _HOURS
            ]
            events[name] = Series(sum(daily[n]), points)
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


async def _names_seen(reads: Reads, token: str, partitions: int, days: list[str]) -> list[set[str]]:
    """Per partition, the names it counted on any of `days`: those it saw last within the range, and
    those seen again since that its days' names hold."""
    first, last = _day_number(days[0]), _day_number(days[-1])
    # Each reply is flat: name, score, name, score, ...
    since: list[list[bytes]] = await reads(
        [
            ("ZRANGE", names_seen_key(token, p), first, "+inf", "BYSCORE", "WITHSCORES")
            for p in range(partitions)
        ]
    )
    seen: list[set[str]] = []
    later: list[tuple[int, str, list[str]]] = []  # (partition, day, names seen again after the range)
    for p, flat in enumerate(since):
        within: set[str] = set()
        after: list[str] = []
        for name, score in zip(flat[::2], flat[1::2], strict=True):
            if int(score) <= last:
                within.add(name.decode("utf-8", "replace"))
            else:
                after.append(name.decode("utf-8", "replace"))
        seen.append(within)
        later.extend((p, day, after) for day in days if after)
    found = await reads([("SMISMEMBER", event_names_key(token, p, day), *after) for p, day, after in later])
    for (p, _, after), flags in zip(later, found, strict=True):
        seen[p].update(name for name, flag in zip(after, flags, strict=True) if flag)
    return seen


def _day_number(day: str) -> int:
    """YYYY-MM-DD as the number YYYYMMDD, the scores of the names seen."""
    return int(day.replace("-", ""))


async def _hourly(
    reads: Reads, token: str, days: list[str], names: list[str], counted: list[tuple[int, int, int, int]]
) -> dict[tuple[int, int, int], int]:
    """(name, day, hour) -> events: the 24 hour fields of each (name, day, partition) that counted."""
    cells: dict[tuple[int, int], list[int]] = {}
    for p, i, n, _ in counted:
        cells.setdefault((p, i), []).append(n)
    commands = [
        ("HMGET", hourly_counts_key(token, p, days[i]), *(f"{h:02d}:{names[n]}" for n in ns for h in _HOURS))
        for (p, i), ns in cells.items()
    ]
    hourly: dict[tuple[int, int, int], int] = {}
    for ((_, i), ns), values in zip(cells.items(), await reads(commands), strict=True):
        for k, value in enumerate(values):
            if value is not None:
                n, h = ns[k // len(_HOURS)], k % len(_HOURS)
                hourly[(n, i, h)] = hourly.get((n, i, h), 0) + int(value)
    return hourly


async def _daily_users(
    reads: Reads, token: str, days: list[str], names: list[str], counted: list[tuple[int, int, int, int]]
) -> dict[tuple[int, int], int]:
    """(name, day) -> unique users: the partitions' HyperLogLogs added up, of those that counted events
    (the others are empty)."""
    commands = [("PFCOUNT", daily_users_key(token, p, days[i], names[n])) for p, i, n, _ in counted]
    replies: list[int] = await reads(commands)
    users: dict[tuple[int, int], int] = {}
    for (_, i, n, _), count in zip(counted, replies, strict=True):
        users[(n, i)] = users.get((n, i), 0) + count
    return users
