"""What reads the streams: `trackgate.consume` in process against a real redis-server, and `trackgate
consume` as a process, killed mid-stream and started again, against events a real gateway stored."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis
import redis.asyncio
import requests
from conftest import PARTITIONS, TRACKGATE, Gateway, RedisServer, create_project, stored_events
from trackgate import keys, redis_target
from trackgate.consume import Consumer, Entry


def fill(client: redis.Redis, token: str, events: int, updates: int = 0) -> set[str]:
    """`events` entries spread over the event streams and `updates` over the update streams, each with
    a unique `n`; returns their stream ids, as `<kind>:<partition>:<id>`."""
    ids = set()
    with client.pipeline(transaction=False) as pipe:
        for n in range(events + updates):
            kind, p = ("event", n % PARTITIONS) if n < events else ("update", n % PARTITIONS)
            key = keys.stream_key(token, p) if kind == "event" else keys.profile_updates_key(token, p)
            pipe.xadd(key, {"data": json.dumps({"n": n})})
        replies = pipe.execute()
    for n, entry_id in enumerate(replies):
        kind = "event" if n < events else "update"
        ids.add(f"{kind}:{n % PARTITIONS}:{entry_id.decode()}")
    return ids


def seen(entry: Entry) -> str:
    return f"{entry.kind}:{entry.partition}:{entry.id}"


def pending(client: redis.Redis, token: str, group: str, kinds: tuple[str, ...] = ("event", "update")) -> int:
    """Entries the group's consumers read and did not acknowledge, over the streams of `kinds`."""
    total = 0
    for p in range(PARTITIONS):
        streams = {"event": keys.stream_key(token, p), "update": keys.profile_updates_key(token, p)}
        for kind in kinds:
            total += client.xpending(streams[kind], group)["pending"]
    return total


def client_of(server: RedisServer) -> redis_target.RedisClient:
    """An asyncio client of the session's Redis, one redis-server or a cluster."""
    return redis_target.client(redis_target.parse(server.url), timeout=10, connect_timeout=5)


async def drain(consumer: Consumer, handle: Any) -> None:
    while await consumer.step(handle):
        pass


def test_every_entry_once_and_acknowledged(redis_server: RedisServer) -> None:
    client = redis_server.client()
    token = f"consume{uuid.uuid4().hex[:8]}"
    ids = fill(client, token, 1200, 300)
    got: list[str] = []

    async def run() -> None:
        async with client_of(redis_server) as aclient:
            consumer = Consumer(aclient, token, PARTITIONS, "g", "c1", count=100)
            await drain(consumer, lambda entry: got.append(seen(entry)))

    asyncio.run(run())
    assert Counter(got) == Counter(ids)
    assert pending(client, token, "g") == 0


def test_consumers_of_a_group_share_the_entries(redis_server: RedisServer) -> None:
    client = redis_server.client()
    token = f"consume{uuid.uuid4().hex[:8]}"
    ids = fill(client, token, 2000)
    got: dict[str, list[str]] = {"a": [], "b": []}

    async def run() -> None:
        async with client_of(redis_server) as aclient:
            consumers = {
                name: Consumer(aclient, token, PARTITIONS, "g", name, kinds=["event"], count=50)
                for name in got
            }

            async def one(name: str) -> None:
                await drain(consumers[name], lambda entry: got[name].append(seen(entry)))

            await asyncio.gather(*(one(name) for name in got))

    asyncio.run(run())
    assert got["a"]
    assert got["b"]
    assert Counter(got["a"] + got["b"]) == Counter(ids)


def test_entries_a_dead_consumer_left_are_claimed_after_their_idle_time(redis_server: RedisServer) -> None:
    client = redis_server.client()
    token = f"consume{uuid.uuid4().hex[:8]}"
    ids = fill(client, token, 400)

    class DiedError(Exception):
        pass

    def die(entry: Entry) -> None:
        raise DiedError

    got: list[str] = []

    async def run() -> None:
        async with client_of(redis_server) as aclient:
            dead = Consumer(aclient, token, PARTITIONS, "g", "dead", kinds=["event"], count=1000)
            with pytest.raises(DiedError):
                await dead.step(die)  # read a stream's entries, acknowledged none
            alive = Consumer(aclient, token, PARTITIONS, "g", "alive", kinds=["event"], claim_idle=0.2)
            await drain(alive, lambda entry: got.append(seen(entry)))
            assert pending(client, token, "g", ("event",)) == 100  # the dead one's: not idle long enough yet
            await asyncio.sleep(0.3)
            await drain(alive, lambda entry: got.append(seen(entry)))

    asyncio.run(run())
    assert Counter(got) == Counter(ids)
    assert pending(client, token, "g", ("event",)) == 0


def test_entries_trimmed_before_they_were_handed_on_are_counted(redis_server: RedisServer) -> None:
    client = redis_server.client()
    token = f"consume{uuid.uuid4().hex[:8]}"
    fill(client, token, 40)

    async def run() -> Consumer:
        async with client_of(redis_server) as aclient:
            dead = Consumer(aclient, token, PARTITIONS, "g", "dead", kinds=["event"])
            with pytest.raises(ZeroDivisionError):
                await dead.step(lambda entry: 1 / 0)
            client.xtrim(keys.stream_key(token, 0), maxlen=0)
            alive = Consumer(aclient, token, PARTITIONS, "g", "alive", kinds=["event"], claim_idle=0)
            await drain(alive, lambda entry: None)
            return alive

    alive = asyncio.run(run())
    assert alive.trimmed == 10
    assert pending(client, token, "g", ("event",)) == 0


def test_the_command_killed_mid_stream_loses_nothing_and_goes_on(
    gateway: Gateway, redis_server: RedisServer, tmp_path: Any
) -> None:
    name = f"consumed {uuid.uuid4().hex[:8]}"
    token = create_project(redis_server.url, name)
    with requests.Session() as http:
        for batch in range(10):
            events = [
                {"event": "e", "properties": {"token": token, "distinct_id": f"u{i}", "n": batch * 500 + i}}
                for i in range(500)
            ]
            r = http.post(gateway.url("/track"), data={"data": json.dumps(events)}, timeout=30)
            assert (
                r.json() == 1 if r.headers["content-type"].startswith("application/json") else r.text == "1"
            )
    stored = Counter(e["properties"]["n"] for e in stored_events(redis_server.client(), token))
    assert len(stored) == 5000
    command = [
        TRACKGATE, "consume", "--group", "downstream", "--project", name, "--consumer", "one",
        "--kinds", "event", "--redis-url", redis_server.url,
    ]  # fmt: skip
    out = tmp_path / "first.jsonl"
    with open(out, "wb") as sink:
        first = subprocess.Popen(command, stdout=sink, start_new_session=True)
        deadline = time.monotonic() + 60
        while out.stat().st_size < 200_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    handed_first = [json.loads(line) for line in out.read_bytes().splitlines() if line.endswith(b"}")]
    assert 0 < len(handed_first) < 5000

    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    lines: list[dict[str, Any]] = []
    assert second.stdout is not None
    # Stream ids are unique within a stream only.
    while len({(line["partition"], line["id"]) for line in handed_first + lines}) < 5000:
        raw = second.stdout.readline()
        assert raw, "the second consumer ended early"
        lines.append(json.loads(raw))
    second.send_signal(signal.SIGTERM)
    rest, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    lines += [json.loads(line) for line in rest.splitlines()]
    # Every stored event handed on, the ones handed but not acknowledged before the kill again; nothing
    # pending once the second one stopped.
    numbers = Counter(line["data"]["properties"]["n"] for line in handed_first + lines)
    assert set(numbers) == set(stored)
    assert all(line["kind"] == "event" for line in lines)
    assert pending(redis_server.client(), token, "downstream", ("event",)) == 0
