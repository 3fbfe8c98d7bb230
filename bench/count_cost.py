"""What the counting function's own code costs Redis, beside the commands it sends: one-event
transactions of 300 projects (each its own transaction, as the many-projects workload makes them), sent
as the batcher sends them, once with `tg_count` and once with `count_floor.lua`, a function that sends
the same commands for such a batch and does nothing else. Alternated, Redis CPU from /proc.

    .venv/bin/python bench/count_cost.py                  # 30,000 transactions per run, 2 rounds

The difference is what a leaner `tg_count` could save per (project, partition) transaction; the floor is
what the commands themselves, the transaction and its mark cost (bench/README.md, "Many projects").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import redis
from processes import run_main, servers_stopped_on_exit
from procstat import cpu_seconds
from redis_servers import start_redis
from trackgate import Options, decode_request, store
from trackgate.bounds import DEFAULT_CAPS
from trackgate.flush import Section

FLOOR = (Path(__file__).parent / "count_floor.lua").read_text(encoding="utf-8")
PROJECTS = 300


def transactions(n: int, now: float) -> list[bytes]:
    """`n` one-event transactions over PROJECTS projects, without deduplication (the floor has none)."""
    options = Options(partitions=4, dedup_window=0)
    headers = store.WriteCommands(1_000_000, 0, 5 * 86400, dedup_window=0)
    out = []
    for i in range(n):
        event = {
            "event": ("Page View", "Signup", "Click")[i % 3],
            "properties": {"token": f"countcost{i % PROJECTS:04d}", "distinct_id": f"user-{i % 5000}",
                           "time": now - 5, "$insert_id": f"{i:032x}"},
        }  # fmt: skip
        request = decode_request(
            b"", json.dumps([event]).encode(), "application/json", now=now, options=options
        )
        for b in request.batches:
            command: list[bytes] = []
            headers.transaction(
                command, b.partition, b"bench", i + 1, (i + 1) % store.RING_SLOTS, [Section(b, 0)],
                lambda _: 86400, lambda _: DEFAULT_CAPS,
            )  # fmt: skip
            out.append(b"".join(command))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transactions", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    commands = transactions(args.transactions, time.time())
    floor = [c.replace(b"$8\r\ntg_count\r\n", b"$11\r\ncount_floor\r\n") for c in commands]
    replies = store.transaction_replies(1) + 1
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory() as work:
        server, url = start_redis(Path(work), "redis", persistence="none", unix=True)
        try:
            client = redis.Redis.from_url(url)
            client.function_load(store.FUNCTION_SOURCE, replace=True)
            client.function_load(FLOOR, replace=True)
            results: dict[str, list[float]] = {"tg_count": [], "count_floor": []}
            for _ in range(args.rounds):
                for name, sent in (("tg_count", commands), ("count_floor", floor)):
                    conn = client.connection_pool.get_connection()
                    before = cpu_seconds([server.process.pid])
                    for i in range(0, len(sent), 64):
                        conn.send_packed_command([b"".join(sent[i : i + 64])])  # type: ignore[no-untyped-call]
                        for _ in range(replies * len(sent[i : i + 64])):
                            conn.read_response()
                    used = cpu_seconds([server.process.pid]) - before
                    client.connection_pool.release(conn)
                    results[name].append(used / len(sent) * 1e6)
            for name, runs in results.items():
                print(
                    f"{name:12s} Redis CPU µs per one-event transaction: "
                    + ", ".join(f"{r:.1f}" for r in runs)
                )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    run_main(main)
