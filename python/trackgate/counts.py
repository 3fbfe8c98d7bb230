"""Event counts per hour and unique users per day, from the counters `tg_count` keeps per partition.

Counts are by event time (UTC). Unique users come from one HyperLogLog per partition, day and event
name; a user's events all land in one partition, so the partitions' estimates add up (about 0.8% error).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec
from redis.asyncio import Redis

from trackgate.funnels import days_between
from trackgate.keys import daily_users_key, hourly_counts_key

Unit = Literal["day", "hour"]


class Point(msgspec.Struct, frozen=True):
    time: str
    count: int
    users: int | None


class Series(msgspec.Struct, frozen=True):
    total: int
    series: list[Point]


class EventCounts(msgspec.Struct, frozen=True, rename={"start": "from", "end": "to"}):
    start: str
    end: str
    unit: str
    events: dict[str, Series]


async def event_counts(
    client: Redis,
    token: str,
    partitions: int,
    start: dt.date,
    end: dt.date,
    unit: Unit = "day",
    event: str | None = None,
) -> EventCounts:
    """Counts of every event name (or of `event` alone) from `start` to `end`, UTC days inclusive, with
    every day or hour of the range present."""
    days = days_between(start, end)
    async with client.pipeline(transaction=False) as pipe:
        for day in days:
            for p in range(partitions):
                pipe.hgetall(hourly_counts_key(token, p, day.isoformat()))
        replies: list[dict[bytes, bytes]] = await pipe.execute()
    # (name, day index, hour) -> count
    hourly: dict[tuple[str, int, int], int] = {}
    for i, fields in enumerate(replies):
        day_index = i // partitions
        for field, value in fields.items():
            hour, _, raw_name = field.partition(b":")
            name = raw_name.decode("utf-8", "replace")
            if event is not None and name != event:
                continue
            key = (name, day_index, int(hour))
            hourly[key] = hourly.get(key, 0) + int(value)
    names = sorted({name for name, _, _ in hourly} | ({event} if event is not None else set()))
    users = await _daily_users(client, token, partitions, days, names) if unit == "day" else {}
    events = {}
    for name in names:
        points = []
        for i, day in enumerate(days):
            if unit == "day":
                count = sum(hourly.get((name, i, h), 0) for h in range(24))
                points.append(Point(day.isoformat(), count, users.get((name, i), 0)))
            else:
                points.extend(
                    Point(f"{day.isoformat()}T{h:02d}:00:00Z", hourly.get((name, i, h), 0), None)
                    for h in range(24)
                )
        events[name] = Series(sum(p.count for p in points), points)
    return EventCounts(start.isoformat(), end.isoformat(), unit, events)


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
