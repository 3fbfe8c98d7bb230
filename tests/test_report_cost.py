"""A report's Redis reads follow what it answers with, not what the project holds: counted with
`INFO commandstats` on a redis-server of the test's own, whose keys are written as `tg_count` lays them
out (`keys.py`; `test_funnels.py` checks that layout against the function itself)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio
from conftest import PARTITIONS, RedisServer
from trackgate import export, keys
from trackgate.counts import EventCounts, Unit, event_counts
from trackgate.report_reads import ReportReads

T = TypeVar("T")
DAY = 86400
D0 = dt.date(2026, 11, 20)
MIDNIGHT = dt.datetime(2026, 11, 20, tzinfo=dt.UTC).timestamp()
TOKEN = "tcost"
NAMES = [f"event {i:04d}" for i in range(300)]
DAYS = 7
CONNECTING = {"client|id", "info", "config|resetstat"}
"""What `calls` sends itself besides the report's reads."""


def count(pipe: redis.client.Pipeline, p: int, day: str, hour: int, name: str, n: int, user: str) -> None:
    """`n` events of `name` by `user` at `hour` of `day` in partition `p`, counted as `tg_count` does."""
    pipe.hincrby(keys.hourly_counts_key(TOKEN, p, day), f"{hour:02d}:{name}", n)
    pipe.hincrby(keys.daily_counts_key(TOKEN, p, day), name, n)
    pipe.sadd(keys.event_names_key(TOKEN, p, day), name)
    pipe.zadd(keys.names_seen_key(TOKEN, p), {name: int(day.replace("-", ""))}, gt=True)
    pipe.pfadd(keys.daily_users_key(TOKEN, p, day, name), user)


def fill_counts(client: redis.Redis) -> None:
    """Every name counted at hour `i % 24` of each of the days, once per partition, by one user each."""
    with client.pipeline(transaction=False) as pipe:
        for d in range(DAYS):
            day = (D0 + dt.timedelta(days=d)).isoformat()
            for p in range(PARTITIONS):
                for i, name in enumerate(NAMES):
                    count(pipe, p, day, i % 24, name, i + 1, f"user-{p}")
        pipe.execute()


def calls(
    client: redis.Redis, run: Callable[[ReportReads], Awaitable[T]], url: str
) -> tuple[T, dict[str, int]]:
    """What `run` returns, and how many of each command it sent."""

    async def go() -> T:
        reads = ReportReads(url, 10)
        try:
            return await run(reads)
        finally:
            reads.close()

    client.config_resetstat()
    result = asyncio.run(go())
    stats = client.info("commandstats")
    return result, {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


def test_one_events_count_reads_that_names_fields_only(private_redis: RedisServer) -> None:
    client = private_redis.client()
    fill_counts(client)
    end = D0 + dt.timedelta(days=DAYS - 1)
    name = NAMES[30]

    def one(c: ReportReads) -> Awaitable[EventCounts]:
        return event_counts(c, TOKEN, PARTITIONS, D0, end, "day", name)

    result, sent = calls(client, one, private_redis.url)
    assert list(result.events) == [name]
    assert [(p.count, p.users) for p in result.events[name].series] == [(31 * PARTITIONS, PARTITIONS)] * DAYS
    assert (result.total_names, result.truncated, result.next_offset) == (1, False, None)
    # One HMGET of one name's daily count per day and partition, one PFCOUNT per HyperLogLog of that
    # name: nothing else.
    assert sent.get("hmget") == sent.get("pfcount") == DAYS * PARTITIONS
    assert set(sent) - CONNECTING == {"hmget", "pfcount"}

    # A name never counted: its fields are asked for, and no HyperLogLog is read.
    def absent(c: ReportReads) -> Awaitable[EventCounts]:
        return event_counts(c, TOKEN, PARTITIONS, D0, end, "day", "never sent")

    result, sent = calls(client, absent, private_redis.url)
    assert result.events["never sent"].total == 0
    assert sent.get("hmget") == DAYS * PARTITIONS
    assert "pfcount" not in sent


def test_listing_names_is_paged(private_redis: RedisServer) -> None:
    client = private_redis.client()
    fill_counts(client)
    end = D0 + dt.timedelta(days=DAYS - 1)

    def page(offset: int, limit: int) -> Callable[[ReportReads], Awaitable[EventCounts]]:
        return lambda c: event_counts(c, TOKEN, PARTITIONS, D0, end, "day", offset=offset, limit=limit)

    first, sent = calls(client, page(0, 10), private_redis.url)
    assert list(first.events) == NAMES[:10]
    assert (first.total_names, first.truncated, first.next_offset) == (300, True, 10)
    assert first.events[NAMES[3]].total == 4 * PARTITIONS * DAYS
    # The names come from each partition's names seen (one read each); the counts and HyperLogLogs read
    # are the page's.
    assert sent["zrange"] == PARTITIONS
    assert sent["hmget"] == DAYS * PARTITIONS
    assert sent["pfcount"] == 10 * DAYS * PARTITIONS
    assert set(sent) - CONNECTING == {"zrange", "hmget", "pfcount"}

    second, _ = calls(client, page(10, 10), private_redis.url)
    assert list(second.events) == NAMES[10:20]
    last, _ = calls(client, page(290, 100), private_redis.url)
    assert list(last.events) == NAMES[290:]
    assert (last.truncated, last.next_offset) == (True, None)
    every, _ = calls(client, page(0, 1000), private_redis.url)
    assert list(every.events) == NAMES
    assert (every.truncated, every.next_offset) == (False, None)
    assert every.events[NAMES[10]] == second.events[NAMES[10]]


def test_a_past_range_lists_the_names_it_counted_and_no_others(private_redis: RedisServer) -> None:
    """Names seen again after a range are listed by what the range's days counted; a name counted only
    before or only after the range is not listed."""
    client = private_redis.client()
    day = [(D0 + dt.timedelta(days=d)).isoformat() for d in range(DAYS)]
    with client.pipeline(transaction=False) as pipe:
        count(pipe, 0, day[0], 1, "before only", 1, "u")
        count(pipe, 1, day[2], 5, "in and after", 2, "u")
        count(pipe, 0, day[6], 6, "in and after", 4, "v")
        count(pipe, 1, day[6], 7, "after only", 8, "u")
        count(pipe, 0, day[3], 9, "last in range", 16, "w")
        pipe.execute()

    def report(start: int, end: int, unit: Unit) -> Callable[[ReportReads], Awaitable[EventCounts]]:
        return lambda c: event_counts(
            c, TOKEN, PARTITIONS, D0 + dt.timedelta(start), D0 + dt.timedelta(end), unit
        )

    past, sent = calls(client, report(1, 4, "day"), private_redis.url)
    assert list(past.events) == ["in and after", "last in range"]
    assert [p.count for p in past.events["in and after"].series] == [0, 2, 0, 0]
    assert [p.count for p in past.events["last in range"].series] == [0, 0, 16, 0]
    # The names seen again after the range are looked for in its days' names, of their partitions only.
    assert sent["smismember"] == 4 * 2
    hours, _ = calls(client, report(2, 6, "hour"), private_redis.url)
    assert list(hours.events) == ["after only", "in and after", "last in range"]
    by_hour = {p.time: p.count for p in hours.events["in and after"].series if p.count}
    assert by_hour == {f"{day[2]}T05:00:00Z": 2, f"{day[6]}T06:00:00Z": 4}
    assert hours.events["in and after"].total == 6
    every, _ = calls(client, report(0, 6, "day"), private_redis.url)
    assert list(every.events) == ["after only", "before only", "in and after", "last in range"]


def test_export_reads_the_entries_that_arrived_around_the_range(private_redis: RedisServer) -> None:
    """Entries stored long before or after the range are not read; late ones within `max_age` are."""
    client = private_redis.client()
    lo, hi = MIDNIGHT, MIDNIGHT + DAY
    # (arrival, event time): an old week, the day itself, an event of the day arriving late, and the week
    # after; stream ids are arrival times in ms.
    arrivals = [(lo - 7 * DAY + i * 600, lo - 7 * DAY + i * 600) for i in range(1000)]
    in_day = [(lo + i * 60, lo + i * 60) for i in range(50)]
    late = [(hi + 20 * 3600, hi - 10)]
    after = [(hi + 3 * DAY + i * 600, hi + 3 * DAY + i * 600) for i in range(1000)]
    key = keys.stream_key(TOKEN, 0)
    with client.pipeline(transaction=False) as pipe:
        for arrival, at in arrivals + in_day + late + after:
            pipe.xadd(key, {"data": json.dumps({"time": at})}, id=f"{int(arrival * 1000)}-0")
        pipe.execute()
    read: list[int] = []

    async def run() -> list[bytes]:
        reads = ReportReads(private_redis.url, 10)
        try:
            lines = export.export_events(
                reads, TOKEN, 1, D0, D0, max_future_skew=300, max_age=3 * 3600, progress=read.append
            )
            return [line async for line in lines]
        finally:
            reads.close()

    lines = asyncio.run(run())
    assert sorted(json.loads(line)["time"] for line in lines) == sorted(at for _, at in in_day + late)
    # What was read: the day before (the start's margin), the day, and a day and WRITE_DELAY after.
    window = [a for a, _ in arrivals + in_day + late + after if lo - DAY <= a < hi + DAY + export.WRITE_DELAY]
    assert sum(read) == len(window) < 300
