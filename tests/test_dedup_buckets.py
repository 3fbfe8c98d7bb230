"""Which sets of dedup hashes the function reads and writes, against a real Redis: an event that comes
while its time's bucket is not over is kept in its time's set and looked up there alone; one that comes
later is kept in the server time's set, and looked up there, in the previous one, and in its time's set
when that is the previous bucket's. The decoder's events here have the current time (the other dedup
tests' have a time long past, so they come late)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis
from conftest import send_write, stored_events
from test_dedup_function import dedup_hashes
from test_write_function import WINDOW, plain
from trackgate import Options, decode_request, keys, store
from trackgate._native import PartitionBatch

# The largest window the setting takes: a bucket lasts a week, so a test does not straddle two.
LONG = 604_800
OPTIONS = Options(max_age=30 * 86400, partitions=1)


@pytest.fixture
def client(redis_server: Any) -> Any:
    with redis_server.private_client() as c:
        c.function_load(store.FUNCTION_SOURCE, replace=True)
        yield c


@pytest.fixture
def bucket(client: redis.Redis) -> Any:
    """The server's bucket of LONG seconds; the test fails if it ran across two."""
    now = int(client.time()[0]) // LONG
    yield now
    assert int(client.time()[0]) // LONG == now, "the test ran across two buckets: run it again"


def decoded(events: list[dict[str, Any]]) -> PartitionBatch:
    request = decode_request(
        b"", json.dumps(events).encode(), "application/json", now=time.time(), options=OPTIONS
    )
    assert request.errors == []
    [batch] = request.batches
    return batch


def hash_of(event: dict[str, Any]) -> bytes:
    [dedup_hash] = dedup_hashes(decoded([event]))
    return dedup_hash


def send(client: redis.Redis, seq: int, events: list[dict[str, Any]]) -> Any:
    batch = decoded(events)
    return send_write(client, batch.token.encode(), seq, [batch], window=WINDOW, dedup_window=LONG)[-1]


def dedup_keys(client: redis.Redis) -> set[str]:
    """The partition's sets of dedup hashes (the test's database is its own)."""
    prefix = keys.shared_prefix(0)
    return {k.decode() for k in client.scan_iter(match=prefix + "d[dt]:*")}


def test_an_event_on_time_is_kept_in_its_time_bucket_and_its_retry_found_there(
    client: redis.Redis, bucket: int
) -> None:
    token = "b" + uuid.uuid4().hex[:15]
    event = plain(token, "Page View", "u1", time.time())
    assert send(client, 1, [event]) == [1, 0]
    by_time = keys.dedup_by_time_key(0, LONG, bucket)
    assert dedup_keys(client) == {by_time}
    assert client.smembers(by_time) == {hash_of(event)}
    assert client.expiretime(by_time) == (bucket + 2) * LONG
    assert send(client, 2, [event]) == [0, 0, 0, 0, [0]]
    assert len(stored_events(client, token)) == 1


@pytest.mark.parametrize(
    ("kept_in", "found"),
    [
        # Its time's set, when that is the previous bucket's: it came on time, its retry comes late.
        (lambda b: keys.dedup_by_time_key(0, LONG, b - 1), True),
        # The server time's sets, this bucket's and the previous one's: it came late.
        (lambda b: keys.dedup_key(0, LONG, b), True),
        (lambda b: keys.dedup_key(0, LONG, b - 1), True),
        # Any other: over for longer than the window.
        (lambda b: keys.dedup_by_time_key(0, LONG, b), False),
        (lambda b: keys.dedup_key(0, LONG, b - 2), False),
    ],
)
def test_an_event_of_the_previous_bucket_is_looked_up_where_it_was_kept_within_the_window(
    client: redis.Redis, bucket: int, kept_in: Any, found: bool
) -> None:
    token = "b" + uuid.uuid4().hex[:15]
    event = plain(token, "Page View", "u1", bucket * LONG - 60)
    client.sadd(kept_in(bucket), hash_of(event))
    assert send(client, 1, [event]) == ([0, 0, 0, 0, [0]] if found else [1, 0])
    if not found:
        # A late event is kept in the server time's set.
        assert client.smembers(keys.dedup_key(0, LONG, bucket)) == {hash_of(event)}
        assert client.expiretime(keys.dedup_key(0, LONG, bucket)) == (bucket + 2) * LONG


def test_a_batch_of_events_on_time_and_late_finds_each_duplicate_by_its_place(
    client: redis.Redis, bucket: int
) -> None:
    token = "b" + uuid.uuid4().hex[:15]
    now = time.time()
    late, on_time, also_late = (
        plain(token, "Late", "u1", bucket * LONG - 60),
        plain(token, "On time", "u1", now),
        plain(token, "Late too", "u1", bucket * LONG - 30),
    )
    assert send(client, 1, [on_time, late]) == [2, 0]
    assert dedup_keys(client) == {
        keys.dedup_by_time_key(0, LONG, bucket),
        keys.dedup_key(0, LONG, bucket),
    }
    # In time order: late (0), also_late (1), on_time (2); the first and the last were stored.
    assert send(client, 2, [on_time, also_late, late]) == [1, 0, 0, 0, [0, 2]]
    assert sorted(e["event"] for e in stored_events(client, token)) == ["Late", "Late too", "On time"]


def test_the_sets_are_named_as_documented() -> None:
    assert keys.dedup_by_time_key(3, 600, 7) == "tg:{3}:dt:600:7"
    assert keys.dedup_key(3, 600, 7) == "tg:{3}:dd:600:7"
