"""How long the reports take: a 30-day funnel report and 30 days of event counts, over a project whose
events the gateway's real transactions stored (the numbers do not depend on how many events there are).

    .venv/bin/python bench/report_latency.py --users 2000
    .venv/bin/python bench/report_latency.py --users 20000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
from processes import run_main, servers_stopped_on_exit
from redis_servers import start_redis
from trackgate import Options, decode_request, store
from trackgate.bounds import DEFAULT_CAPS
from trackgate.counts import event_counts
from trackgate.flush import Section
from trackgate.funnels import funnel_report
from trackgate.report_reads import ReportReads

TOKEN = "reporttoken0001"
PARTITIONS = 4


def population(users: int, now: float) -> list[dict[str, Any]]:
    """Users entering a 4-step funnel over 30 days, each step with a page view beside it."""
    rng = random.Random(1)
    events: list[dict[str, Any]] = []
    for u in range(users):
        t = now - rng.uniform(1, 30 * 86400)
        for step in range(1, rng.randint(1, 4) + 1):
            props = {"token": TOKEN, "distinct_id": f"u{u}", "time": t}
            events.append(
                {
                    "event": "mp_funnel",
                    "properties": {**props, "funnel": "checkout", "step": step, "goal": f"g{step}"},
                }
            )
            events.append({"event": "view", "properties": props})
            t += rng.uniform(10, 3600)
    events.sort(key=lambda e: e["properties"]["time"])
    return events


def store_events(client: redis.Redis, events: list[dict[str, Any]], now: float) -> None:
    headers = store.WriteCommands(0, 0, 31 * 86400)
    options = Options(max_age=31 * 86400, partitions=PARTITIONS)
    conn = client.connection_pool.get_connection()
    seq = 0
    for i in range(0, len(events), 500):
        request = decode_request(
            b"", json.dumps(events[i : i + 500]).encode(), "application/json", now=now, options=options
        )
        commands: list[bytes] = []
        replies = 0
        for b in request.batches:
            seq += 1
            headers.transaction(
                commands, b.partition, b"w", seq, seq % store.RING_SLOTS, [Section(b, 0)],
                lambda _: 30 * 86400, lambda _: DEFAULT_CAPS,
            )  # fmt: skip
            replies += store.transaction_replies(b.count) + 1
        conn.send_packed_command([b"".join(commands)])  # type: ignore[no-untyped-call]
        for _ in range(replies):
            conn.read_response()
    client.connection_pool.release(conn)


async def timings(url: str) -> None:
    end = dt.datetime.now(dt.UTC).date()
    start = end - dt.timedelta(days=29)
    reads = ReportReads(url, 10)
    async with redis.asyncio.Redis.from_url(url) as client:
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            (
                "funnel report, 30 days",
                lambda: funnel_report(client, TOKEN, PARTITIONS, "checkout", start, end),
            ),
            ("event counts per day, 30 days", lambda: event_counts(reads, TOKEN, PARTITIONS, start, end)),
        ]
        for name, call in calls:
            times = []
            for _ in range(30):
                started = time.perf_counter()
                await call()
                times.append((time.perf_counter() - started) * 1000)
            print(f"{name}: median {statistics.median(times):.1f} ms, slowest {max(times):.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args()
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory() as work:
        server, url = start_redis(Path(work), "redis", persistence="none", unix=True)
        try:
            client = redis.Redis.from_url(url)
            client.function_load(store.FUNCTION_SOURCE, replace=True)
            now = time.time()
            events = population(args.users, now)
            store_events(client, events, now)
            print(f"{len(events)} events of {args.users} users stored")
            asyncio.run(timings(url))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    run_main(main)
