"""Bytes of Redis each event, user and name costs, by key family: the figures behind the README's table of
what is in Redis and its bounds.

Each scenario writes its events through the real path (the native decoder, the batcher's transaction,
`tg_count`) into a private redis-server emptied before it, then reads `MEMORY USAGE` of every key
(SAMPLES 0: every element counted) and divides each family's bytes by the scenario's unit; and the
growth of `INFO memory`'s used_memory, which adds Redis's own per-key overhead (its key table, the
expiry table) to it. The stream is shown apart: it is bounded by age and length, not by the caps.

    .venv/bin/python bench/key_bytes.py              # 20,000 of each
    .venv/bin/python bench/key_bytes.py --n 2000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from processes import run_main, servers_stopped_on_exit
from redis_cost import TOKEN, event
from redis_servers import start_redis
from trackgate import Options, bounds, decode_request, keys, store
from trackgate.flush import Section

UNCAPPED = bounds.Caps(event_names_per_day=bounds.MAX_CAP, funnel_names=bounds.MAX_CAP)
OPTIONS = Options(partitions=1)


def write(client: redis.Redis, events: list[dict[str, Any]], now: float) -> None:
    """`events` in requests of 2,000, a transaction each, as the batcher sends them."""
    commands = store.WriteCommands(0, 0, OPTIONS.max_age)
    conn = client.connection_pool.get_connection()
    try:
        for seq, i in enumerate(range(0, len(events), 2000), 1):
            body = json.dumps(events[i : i + 2000]).encode()
            [batch] = decode_request(b"", body, "application/json", now=now, options=OPTIONS).batches
            out: list[bytes] = []
            commands.transaction(
                out, 0, b"bench", seq, seq % store.RING_SLOTS, [Section(batch, 0)],
                lambda _: 30 * 86400, lambda _: UNCAPPED,
            )  # fmt: skip
            conn.send_packed_command([b"".join(out)])  # type: ignore[no-untyped-call]
            for _ in range(store.transaction_replies(batch.count) + 1):
                reply = conn.read_response()
            assert reply[-1] == [batch.count, 0], reply
    finally:
        client.connection_pool.release(conn)


def by_family(client: redis.Redis) -> Counter[str]:
    """Bytes of the partition's keys by family, the project's and the partition's own (the marks aside:
    one small key per writer)."""
    project, shared = keys.partition_prefix(TOKEN, 0), keys.shared_prefix(0)
    found: Counter[str] = Counter()
    for raw in client.scan_iter(match=f"{shared}*", count=1000):
        name = raw.decode()
        rest = name.removeprefix(project) if name.startswith(project) else name.removeprefix(shared)
        family = next(f for f in keys.Family if rest.startswith(f.value))
        if family is not keys.Family.MARKS:
            found[f"{family.value.rstrip(':')}"] += client.memory_usage(raw, samples=0) or 0
    return found


def with_insert_id(event: dict[str, Any]) -> dict[str, Any]:
    event["properties"]["$insert_id"] = uuid.uuid4().hex
    return event


def scenarios(n: int, now: float) -> dict[str, tuple[str, Callable[[int], dict[str, Any]]]]:
    """Name -> (the unit the bytes are divided by, the i-th event)."""

    def plain(name: str, user: str) -> dict[str, Any]:
        return {"event": name, "properties": {"token": TOKEN, "distinct_id": user, "time": now - 5}}

    def funnel(name: str, user: str) -> dict[str, Any]:
        event = plain("mp_funnel", user)
        event["properties"].update(funnel=name, step=1, goal="landing")
        return event

    return {
        "events (realistic, 5,000 users, 20% mp_funnel)": ("event", lambda i: event(i, now)),
        "event names, one event and user each": ("name", lambda i: plain(f"event name {i}", f"user {i}")),
        "users of one event name": ("user", lambda i: plain("Page View", f"user {i}")),
        "funnel names, one step 1 each": ("funnel", lambda i: funnel(f"funnel {i}", f"user {i}")),
        "users of one funnel, step 1 each": ("user", lambda i: funnel("signup", f"user {i}")),
        # The dedup hashes (`dt`, `dd` for late events) of events with an `$insert_id`, kept for one to two
        # --dedup-windows.
        "events with $insert_id, one user each": (
            "event",
            lambda i: with_insert_id(plain("Page View", f"u{i}")),
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="events (names, users) per scenario")
    args = parser.parse_args()
    with servers_stopped_on_exit(), tempfile.TemporaryDirectory() as work:
        server, url = start_redis(Path(work), "redis", persistence="none", unix=True)
        try:
            client = redis.Redis.from_url(url)
            now = time.time()
            for title, (unit, make) in scenarios(args.n, now).items():
                client.flushall()
                client.function_load(store.FUNCTION_SOURCE, replace=True)
                events = [make(i) for i in range(args.n)]
                before = client.info("memory")["used_memory"]
                write(client, events, now)
                grown = client.info("memory")["used_memory"] - before
                found = by_family(client)
                stream = found.pop(keys.Family.STREAM.value)
                parts = ", ".join(
                    f"{family} {size / args.n:,.0f}"
                    for family, size in sorted(found.items())
                    if size >= args.n / 2
                )
                print(
                    f"{title}: per {unit}, counters {sum(found.values()) / args.n:,.0f} bytes ({parts}), "
                    f"stream {stream / args.n:,.0f}; used_memory {grown / args.n:,.0f}"
                )
                if unit == "event":
                    entries: Any = client.xrange(keys.stream_key(TOKEN, 0), count=args.n)
                    data = [fields[b"data"] for _, fields in entries]
                    print(f"  of which the events' JSON: {sum(map(len, data)) / len(data):,.0f} bytes")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    run_main(main)
