"""Redis CPU per event of the `tg_write` function, read from /proc of a private redis-server.

CPU time, unlike throughput, hardly moves with other work on the machine, so this is the number to
watch when changing the function or the packed argument layout. Realistic events (20% mp_funnel, 5000
users) are decoded by the native decoder and sent as the gateway's batcher sends them, 64 commands per
round trip.

    .venv/bin/python bench/redis_cost.py                  # 4 partitions, requests of 1, 5 and 50 events
    .venv/bin/python bench/redis_cost.py --partitions 16 --events 100000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import harness
import redis
from trackgate import Options, decode_request, store

TOKEN = "benchtoken0001"


def event(i: int, now: float) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "token": TOKEN,
        "distinct_id": f"user-{i % 5000}",
        "time": now - 5,
        "$insert_id": uuid.uuid4().hex,
        "$os": "Linux",
        "$browser": "Chrome",
        "$current_url": "https://example.com/pricing",
        "mp_lib": "web",
        "plan": "pro",
    }
    if i % 5 == 0:
        properties.update(funnel="signup", step=1 + i % 3, goal=f"goal {1 + i % 3}")
        return {"event": "mp_funnel", "properties": properties}
    return {"event": ["Page View", "Signup", "Click"][i % 3], "properties": properties}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--events", type=int, default=40000, help="events per request size")
    parser.add_argument("--sizes", default="1,5,50", help="events per request, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        server, url = harness.start_redis(Path(work), "redis", persistence="none", unix=True)
        try:
            client = redis.Redis.from_url(url)
            client.function_load(store.FUNCTION_SOURCE, replace=True)
            headers = store.WriteCommands(1_000_000, 0)
            now, seq = time.time(), 0
            for size in (int(s) for s in args.sizes.split(",")):
                commands, events = [], 0
                options = Options(partitions=args.partitions)
                for r in range(max(1, args.events // size)):
                    body = json.dumps([event(r * size + k, now) for k in range(size)]).encode()
                    request = decode_request(b"", body, "application/json", now=now, options=options)
                    for token, partition, count, n_args, packed in request.batches:
                        seq += 1
                        batch_id = f"bench:{seq}".encode()
                        commands.append(
                            headers.header(token, partition, 30 * 86400, batch_id, n_args) + packed
                        )
                        events += count
                conn = client.connection_pool.get_connection()
                before, started = harness.cpu_seconds([server.process.pid]), time.perf_counter()
                for i in range(0, len(commands), 64):
                    chunk = commands[i : i + 64]
                    conn.send_packed_command([b"".join(chunk)])
                    for _ in chunk:
                        conn.read_response()
                wall = time.perf_counter() - started
                used = harness.cpu_seconds([server.process.pid]) - before
                client.connection_pool.release(conn)
                print(
                    f"{args.partitions} partitions, requests of {size:3d} events: "
                    f"{events / len(commands):5.1f} events per call, "
                    f"Redis {used / events * 1e6:5.1f} µs CPU per event, {events / wall:9,.0f} events/s"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
