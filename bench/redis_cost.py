"""Redis CPU per event of the gateway's writes (a transaction per batch: the events' XADDs and the
`tg_count` function), read from /proc of a private redis-server.

CPU time, unlike throughput, hardly moves with other work on the machine, so this is the number to
watch when changing the function or the packed argument layout. Realistic events (20% mp_funnel, 5000
users) are decoded by the native decoder and sent as the gateway's batcher sends them, 64 transactions
per round trip.

    .venv/bin/python bench/redis_cost.py                  # 4 partitions, requests of 1, 5 and 50 events
    .venv/bin/python bench/redis_cost.py --partitions 16 --events 100000
    .venv/bin/python bench/redis_cost.py --no-funnels     # no mp_funnel events: the counting alone
    .venv/bin/python bench/redis_cost.py --merge 8        # 8 requests per call, as the batcher joins them
    .venv/bin/python bench/redis_cost.py --dedup-window 0 # without deduplication (each event is new)
    .venv/bin/python bench/redis_cost.py --sizes 1 --merge 26 --projects 300   # GETs of 300 projects
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from processes import run_main, servers_stopped_on_exit
from procstat import cpu_seconds
from redis_servers import start_redis
from trackgate import Options, decode_request, store
from trackgate.bounds import DEFAULT_CAPS
from trackgate.flush import Parts, add_batch

TOKEN = "benchtoken0001"


def event(i: int, now: float, *, funnels: bool = True, projects: int = 1) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "token": TOKEN if projects == 1 else f"{TOKEN}{i % projects:04d}",
        "distinct_id": f"user-{i % 5000}",
        "time": now - 5,
        "$insert_id": uuid.uuid4().hex,
        "$os": "Linux",
        "$browser": "Chrome",
        "$current_url": "https://example.com/pricing",
        "mp_lib": "web",
        "plan": "pro",
    }
    if funnels and i % 5 == 0:
        properties.update(funnel="signup", step=1 + i % 3, goal=f"goal {1 + i % 3}")
        return {"event": "mp_funnel", "properties": properties}
    return {"event": ["Page View", "Signup", "Click"][i % 3], "properties": properties}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--events", type=int, default=40000, help="events per request size")
    parser.add_argument("--sizes", default="1,5,50", help="events per request, comma-separated")
    parser.add_argument("--no-funnels", action="store_true", help="no mp_funnel events")
    parser.add_argument(
        "--merge", type=int, default=1, help="requests per call: their packed sections concatenated"
    )
    parser.add_argument(
        "--dedup-window", type=int, default=store.DEFAULT_DEDUP_WINDOW, help="the gateway's --dedup-window"
    )
    parser.add_argument(
        "--projects", type=int, default=1, help="events spread over this many projects (default 1)"
    )
    args = parser.parse_args()
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory() as work:
        server, url = start_redis(Path(work), "redis", persistence="none", unix=True)
        try:
            client = redis.Redis.from_url(url)
            client.function_load(store.FUNCTION_SOURCE, replace=True)
            headers = store.WriteCommands(1_000_000, 0, 5 * 86400, dedup_window=args.dedup_window)
            now, seq = time.time(), 0
            for size in (int(s) for s in args.sizes.split(",")):
                commands, events = [], 0
                options = Options(partitions=args.partitions, dedup_window=args.dedup_window)
                # Like the batcher: the sections of `--merge` requests for one partition in one
                # transaction, their argument counts summed.
                merged: Parts = {}
                replies = 0
                for r in range(max(1, args.events // size)):
                    body = json.dumps(
                        [
                            event(r * size + k, now, funnels=not args.no_funnels, projects=args.projects)
                            for k in range(size)
                        ]
                    ).encode()
                    request = decode_request(b"", body, "application/json", now=now, options=options)
                    for b in request.batches:
                        add_batch(merged, b, r)
                        events += b.count
                    if (r + 1) % args.merge == 0 or r + 1 == max(1, args.events // size):
                        for partition, by_project in merged.items():
                            seq += 1
                            command: list[bytes] = []
                            sections = list(by_project.values())
                            headers.transaction(
                                command, partition, b"bench", seq, seq % store.RING_SLOTS, sections,
                                lambda _: 30 * 86400, lambda _: DEFAULT_CAPS,
                            )  # fmt: skip
                            commands.append(b"".join(command))
                            replies += store.transaction_replies(sum(s.count for s in sections)) + 1
                        merged.clear()
                client.config_resetstat()
                conn = client.connection_pool.get_connection()
                before, started = cpu_seconds([server.process.pid]), time.perf_counter()
                for i in range(0, len(commands), 64):
                    conn.send_packed_command([b"".join(commands[i : i + 64])])  # type: ignore[no-untyped-call]
                # Replies read once all is sent: Redis answers in order, and its socket holds them.
                for _ in range(replies):
                    conn.read_response()
                wall = time.perf_counter() - started
                used = cpu_seconds([server.process.pid]) - before
                client.connection_pool.release(conn)
                # Time inside EXEC alone (wall clock, so the noisier of the two): no reading or parsing.
                inside = client.info("commandstats")["cmdstat_exec"]["usec"]
                print(
                    f"{args.projects} projects, {args.partitions} partitions, requests of {size:3d} events: "
                    f"{events / len(commands):5.1f} events per call, "
                    f"Redis {used / events * 1e6:5.1f} µs CPU per event "
                    f"({inside / events:5.1f} µs in EXEC), {events / wall:9,.0f} events/s"
                )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    run_main(main)
