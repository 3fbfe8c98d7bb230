"""Group commit into Redis: what a `1` promises, the key layout, idempotent retries, trimming."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests
from conftest import (
    Batch,
    Gateway,
    RedisServer,
    ReplyDropper,
    create_project,
    partition_of,
    send_count,
    send_write,
    stored_with,
    stream_entries,
)
from trackgate import Options, TokenSet, decode_request, keys, store
from trackgate.keys import mark_key, stream_key


def event(token: str, distinct_id: str, **props: Any) -> dict[str, Any]:
    return {"event": "commit test", "properties": {"token": token, "distinct_id": distinct_id, **props}}


def post(session: requests.Session, gateway: Gateway, payload: object) -> requests.Response:
    # A timeout of its own: it is also called from worker threads, which pytest-timeout cannot interrupt.
    return session.post(gateway.url("/track"), data={"data": json.dumps(payload)}, timeout=30)


def test_right_after_a_1_the_event_is_in_its_partition_stream(
    gateway: Gateway, rclient: redis.Redis, token: str, http: requests.Session
) -> None:
    for i in range(30):
        user = f"user-{uuid.uuid4().hex}"
        marker = uuid.uuid4().hex
        assert post(http, gateway, event(token, user, marker=marker, i=i)).text == "1"
        # No waiting, no polling: the answer came after the write.
        entries = stream_entries(rclient, stream_key(token, partition_of(user)))
        assert any(json.loads(fields[b"data"])["properties"].get("marker") == marker for _, fields in entries)


def test_one_users_events_share_a_stream_in_order(
    gateway: Gateway, rclient: redis.Redis, token: str, http: requests.Session
) -> None:
    user = f"ordered-{uuid.uuid4().hex}"
    for i in range(10):
        batch = [event(token, user, seq=i * 5 + j) for j in range(5)]
        assert post(http, gateway, batch).text == "1"
    entries = stream_entries(rclient, stream_key(token, partition_of(user)))
    seqs = [
        d["properties"]["seq"]
        for d in (json.loads(f[b"data"]) for _, f in entries)
        if d["distinct_id"] == user
    ]
    assert seqs == list(range(50))


def test_concurrent_requests_are_each_stored_once(gateway: Gateway, rclient: redis.Redis, token: str) -> None:
    run = uuid.uuid4().hex

    def client(n: int) -> list[str]:
        with requests.Session() as session:
            return [
                post(
                    session,
                    gateway,
                    [event(token, f"c{n}-{i}-{j}", run=run, k=f"{n}.{i}.{j}") for j in range(3)],
                ).text
                for i in range(15)
            ]

    with ThreadPoolExecutor(16) as pool:
        answers = [a for result in pool.map(client, range(16)) for a in result]
    assert answers == ["1"] * 240
    stored = [e["properties"]["k"] for e in stored_with(rclient, token, "run", run)]
    assert len(stored) == 720
    assert len(set(stored)) == 720


def test_a_bad_event_does_not_hold_back_its_neighbours(
    gateway: Gateway, rclient: redis.Redis, token: str, http: requests.Session
) -> None:
    run = uuid.uuid4().hex
    batch = [event(token, f"n{i}", run=run, i=i) for i in range(10)]
    batch[4]["properties"]["distinct_id"] = {"not": "an id"}
    r = http.post(gateway.url("/track?verbose=1"), data={"data": json.dumps(batch)})
    assert r.status_code == 400
    assert r.json()["num_records_imported"] == 9
    assert sorted(e["properties"]["i"] for e in stored_with(rclient, token, "run", run)) == [
        0,
        1,
        2,
        3,
        5,
        6,
        7,
        8,
        9,
    ]


def _batch(token: str, run: str) -> Batch:
    """The decoder's batch of one request of three events of one user."""
    request = decode_request(
        b"",
        json.dumps([event(token, "dedupe-user", run=run, i=i) for i in range(3)]).encode(),
        "application/json",
        now=time.time(),
        options=Options(),
        tokens=TokenSet([token]),
    )
    [batch] = request.batches
    return batch


def test_a_batch_marks_its_partition_and_is_counted_once(
    rclient: redis.Redis, token: str, gateway: Gateway
) -> None:
    # (the gateway fixture has loaded the function library)
    run = uuid.uuid4().hex
    writer = uuid.uuid4().hex[:16].encode()
    batch = _batch(token, run)
    assert send_write(rclient, writer, 7, [batch])[-1] == [3, 0]
    assert len(stored_with(rclient, token, "run", run)) == 3
    # What a retry reads to know the batch is in and counted: its entry in the partition's ring.
    partition = batch.partition
    ring_key = mark_key(partition, writer)

    def ring() -> bytes:
        return cast(bytes, rclient.get(ring_key))

    assert store.ring_entries(ring()) == {7: True}
    # Its counting alone again (a resend): nothing more counted.
    assert send_count(rclient, writer, 7, [batch]) == [0, 0]
    assert send_write(rclient, writer, 8, [batch])[-1] == [3, 0]
    assert len(stored_with(rclient, token, "run", run)) == 6
    assert store.ring_entries(ring()) == {7: True, 8: True}
    # A transaction whose counting failed (no library) is in the ring, not counted; the counting alone
    # then counts it, once.
    rclient.function_delete(store.LIBRARY)
    try:
        reply = send_write(rclient, writer, 9, [batch])
    finally:
        rclient.function_load(store.FUNCTION_SOURCE, replace=True)
    assert isinstance(reply[-1], redis.ResponseError)
    assert store.ring_entries(ring())[9] is False
    assert send_count(rclient, writer, 9, [batch]) == [3, 0]
    assert send_count(rclient, writer, 9, [batch]) == [0, 0]
    assert store.ring_entries(ring())[9] is True
    # The ring keeps the last RING_SLOTS seqs: slot k holds the k-th transaction (mod RING_SLOTS).
    for seq in range(10, 10 + store.RING_SLOTS):
        send_write(rclient, writer, seq, [batch], slot=(seq - 7) % store.RING_SLOTS)
    assert set(store.ring_entries(ring())) == set(range(10, 10 + store.RING_SLOTS))
    assert len(ring()) == 8 * store.RING_SLOTS
    # One small mark per writer and partition, expiring: not a key per batch.
    marks = list(rclient.scan_iter(match=keys.PREFIX + "{*}:" + keys.Family.MARKS + writer.decode()))
    assert len(marks) == 1
    assert 0 < rclient.ttl(marks[0]) <= 86400


def test_trimming_by_length_and_by_age(private_redis: RedisServer) -> None:
    client = private_redis.client()
    client.config_set("stream-node-max-entries", 5)  # so that approximate trimming acts on small streams
    client.function_load(store.FUNCTION_SOURCE)
    token = "trimtoken1"
    for seq in range(1, 21):
        send_write(client, token.encode(), seq, [_batch(token, "trim")], maxlen=10)
    [key] = [k.decode() for k in client.scan_iter(match=keys.partitions_pattern(token) + keys.Family.STREAM)]
    assert 10 <= client.xlen(key) <= 15
    time.sleep(1.1)
    send_write(client, token.encode(), 21, [_batch(token, "trim")], max_age=1)
    assert client.xlen(key) <= 5


def test_a_stream_is_trimmed_once_a_share_of_its_length_was_added(private_redis: RedisServer) -> None:
    """Not trimmed by every call (two XTRIMs per stream were a good part of a one-event section's
    work), but once a 64th of its length was added since its last trim: it holds at most that many more
    entries than the limit, beyond the whole nodes `~` keeps (one entry each here, so that `~` is
    exact)."""
    client = private_redis.client()
    client.config_set("stream-node-max-entries", 1)
    client.function_load(store.FUNCTION_SOURCE, replace=True)
    token = "sharetoken" + uuid.uuid4().hex[:6]
    maxlen, share, per_call = 640, 640 // 64, 3
    lengths = []
    for seq in range(1, 301):
        send_write(client, token.encode(), seq, [_batch(token, "share")], maxlen=maxlen)
        [key] = client.scan_iter(match=keys.partitions_pattern(token) + keys.Family.STREAM)
        lengths.append(client.xlen(key))
    assert lengths[-1] >= maxlen
    assert maxlen < max(lengths) <= maxlen + share + per_call


@pytest.fixture
def lossy(private_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[Gateway, ReplyDropper, str]]:
    """A gateway whose Redis connection runs through a proxy that can lose replies."""
    proxy = ReplyDropper(private_redis.port)
    token = create_project(private_redis.url, "lossy")
    gw = Gateway(tmp_path / "gw", "--retry-window", "3", redis_url=proxy.url)
    gw.start()
    yield gw, proxy, token
    gw.stop()
    proxy.close()


def test_a_lost_reply_is_retried_and_applied_once(
    lossy: tuple[Gateway, ReplyDropper, str], private_redis: RedisServer, http: requests.Session
) -> None:
    gw, proxy, token = lossy
    client = private_redis.client()
    assert post(http, gw, event(token, "warm-up")).text == "1"
    proxy.armed.set()
    run = uuid.uuid4().hex
    r = post(http, gw, [event(token, f"lost-{i}", run=run, i=i) for i in range(20)])
    assert proxy.dropped.is_set(), "the proxy did not drop a reply: the test tested nothing"
    assert (r.status_code, r.text) == (200, "1")
    assert sorted(e["properties"]["i"] for e in stored_with(client, token, "run", run)) == list(range(20))
    assert "Redis connection lost" in gw.log()


def test_a_lost_function_library_is_loaded_again(
    lossy: tuple[Gateway, ReplyDropper, str], private_redis: RedisServer, http: requests.Session
) -> None:
    gw, _, token = lossy
    client = private_redis.client()
    client.function_flush()
    run = uuid.uuid4().hex
    assert post(http, gw, event(token, "after-flush", run=run)).text == "1"
    assert len(stored_with(client, token, "run", run)) == 1
