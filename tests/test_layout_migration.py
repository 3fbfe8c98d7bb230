"""Keys of the layout before the partitions were shared, written by hand under their literal names, moved
to this layout's by `migrate_layout`: on one Redis (RENAMENX) and on a Redis Cluster (DUMP and RESTORE
into another slot), every value, stream id and expiry kept, the shared families' old keys deleted,
every other key untouched; two migrations at once, a lock left by a process that died, and a key this
version wrote already under the new name."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from conftest import RedisServer
from redis.cluster import RedisCluster
from redis_cluster import Cluster
from trackgate import keys, redis_target
from trackgate.layout_migration import migrate_layout, new_name

SHOP = "tk-shop-0001"
BLOG = "tk_blog_9999"
HOUR = 3_600_000
TTL_MARGIN = 60_000
"""Milliseconds an expiry may have run down between its reading before the move and after it."""

Client = redis.Redis | RedisCluster


@dataclass
class Target:
    url: str
    client: Client


@pytest.fixture(params=["one Redis", "a cluster"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """An empty database: a redis-server of the test's own, or the module's cluster flushed."""
    if request.param == "one Redis":
        server: RedisServer = request.getfixturevalue("private_redis")
        with server.client() as client:
            yield Target(server.url, client)
        return
    cluster: Cluster = request.getfixturevalue("redis_cluster")
    with cluster.client() as client:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        yield Target(cluster.url, client)


def old(token: str, partition: int, rest: str) -> str:
    """A key's literal name in the layout before: its own hash tag, `{<token>:<p>}`."""
    return f"tg:{{{token}:{partition}}}:{rest}"


def new(token: str, partition: int, rest: str) -> str:
    """The same key's literal name now: the partition's tag, then the token."""
    return f"tg:{{{partition}}}:{token}:{rest}"


MOVED = {
    old(SHOP, 3, "events"): new(SHOP, 3, "events"),
    old(SHOP, 3, "ev:2024-05-01"): new(SHOP, 3, "ev:2024-05-01"),
    old(SHOP, 3, "ed:2024-05-01"): new(SHOP, 3, "ed:2024-05-01"),
    old(SHOP, 3, "en:2024-05-01"): new(SHOP, 3, "en:2024-05-01"),
    old(SHOP, 3, "eu:2024-05-01:signup"): new(SHOP, 3, "eu:2024-05-01:signup"),
    old(SHOP, 3, "nm"): new(SHOP, 3, "nm"),
    old(SHOP, 0, "pp:we}ird:id:1"): new(SHOP, 0, "pp:we}ird:id:1"),
    old(SHOP, 0, "people"): new(SHOP, 0, "people"),
    old(BLOG, 12, "updates"): new(BLOG, 12, "updates"),
    old(BLOG, 12, "fs:checkout"): new(BLOG, 12, "fs:checkout"),
    old(BLOG, 12, "fx:checkout"): new(BLOG, 12, "fx:checkout"),
    old(BLOG, 12, "fc:checkout:2024-05-01"): new(BLOG, 12, "fc:checkout:2024-05-01"),
}
"""Each old key written by `write_old_layout` (but the dropped ones) and where it moves."""
DROPPED = [old(SHOP, 3, "batch:w-17"), old(SHOP, 3, "dd:600:2845"), old(BLOG, 12, "dt:600:2846")]
"""The old writers' marks and dedup sets: deleted."""
UNTOUCHED = [
    keys.PROJECTS_KEY,
    keys.project_key(SHOP),
    keys.rate_bucket_key(SHOP),
    "other:{x:1}:y",
    keys.stream_key(SHOP, 1),
    keys.person_key(SHOP, 2, "a:7}:b"),  # matches the SCAN pattern: a `*` matches a `}`
    "tg:{short:1}:events",  # not a token
    "tg:{tk-shop-0001:x1}:events",  # not a partition
    "tg:{tk-shop-0001:1}events",  # no colon after the tag
]
"""Keys that are not old ones, some looking like them."""


def write_old_layout(client: Client) -> None:
    """A database as gateways of the previous layout left it, and a few keys that are not theirs."""
    for n in range(3):
        client.xadd(old(SHOP, 3, "events"), {"data": f'{{"event":"e{n}"}}'})
    client.hset(old(SHOP, 3, "ev:2024-05-01"), mapping={"10:signup": 4, "11:signup": 1})
    client.pexpire(old(SHOP, 3, "ev:2024-05-01"), 40 * 24 * HOUR)
    client.hset(old(SHOP, 3, "ed:2024-05-01"), "signup", 5)
    client.sadd(old(SHOP, 3, "en:2024-05-01"), "signup", "login")
    client.pexpire(old(SHOP, 3, "en:2024-05-01"), 2 * HOUR)
    client.pfadd(old(SHOP, 3, "eu:2024-05-01:signup"), "u1", "u2", "u3")
    client.zadd(old(SHOP, 3, "nm"), {"signup": 20240501, "login": 20240430})
    client.hset(old(SHOP, 0, "pp:we}ird:id:1"), mapping={"$name": '"Ada"', "$last_seen": '"2024-05-01"'})
    client.zadd(old(SHOP, 0, "people"), {"we}ird:id:1": 0})
    client.xadd(old(BLOG, 12, "updates"), {"data": '{"$set":{"plan":"pro"}}'}, id="1714550400000-0")
    client.xadd(old(BLOG, 12, "updates"), {"data": '{"$unset":["plan"]}'}, id="1714550400000-7")
    client.xgroup_create(old(BLOG, 12, "updates"), "warehouse", id="1714550400000-0")
    client.hset(old(BLOG, 12, "fs:checkout"), "u9", "1714550400:2:1714550460")
    client.zadd(old(BLOG, 12, "fx:checkout"), {"u9": 1714550400})
    client.pexpire(old(BLOG, 12, "fx:checkout"), 3 * HOUR)
    client.hset(old(BLOG, 12, "fc:checkout:2024-05-01"), mapping={"u1": 1, "h1": 2, "q1:pro": 1})
    client.set(old(SHOP, 3, "batch:w-17"), b"\x01" * 8, px=24 * HOUR)
    client.sadd(old(SHOP, 3, "dd:600:2845"), b"h" * 20)
    client.sadd(old(BLOG, 12, "dt:600:2846"), b"t" * 20)
    client.pexpire(old(BLOG, 12, "dt:600:2846"), HOUR)
    client.sadd(keys.PROJECTS_KEY, SHOP, BLOG)
    client.hset(keys.project_key(SHOP), "name", "shop")
    client.hset(keys.rate_bucket_key(SHOP), mapping={"level": "3.5", "at": "1714550400.1"})
    client.set("other:{x:1}:y", "theirs")
    client.xadd(keys.stream_key(SHOP, 1), {"data": '{"event":"new"}'})
    client.hset(keys.person_key(SHOP, 2, "a:7}:b"), "$name", '"Bo"')
    for key in UNTOUCHED[-3:]:
        client.set(key, "not an old key")


def value(client: Client, key: str) -> Any:
    """What a key holds, by its type: a stream's entries with their ids, and its consumer groups."""
    kind = client.type(key)
    if kind == b"stream":
        groups = [(g["name"], g["last-delivered-id"]) for g in client.xinfo_groups(key)]
        return kind, client.xrange(key), groups
    if kind == b"hash":
        return kind, client.hgetall(key)
    if kind == b"set":
        return kind, client.smembers(key)
    if kind == b"zset":
        return kind, client.zrange(key, 0, -1, withscores=True)
    if kind == b"string":
        return kind, client.get(key)
    raise AssertionError(f"{key}: unexpected type {kind!r}")


def snapshot(client: Client, names: list[str]) -> dict[str, tuple[Any, int]]:
    return {key: (value(client, key), client.pttl(key)) for key in names}


def all_keys(client: Client) -> set[str]:
    return {key.decode() for key in client.scan_iter(count=1000)}


async def migrate(url: str) -> int:
    client = redis_target.client(redis_target.parse(url), timeout=5, connect_timeout=5)
    try:
        return await migrate_layout(client)
    finally:
        await client.aclose()


def assert_moved(client: Client, before: dict[str, tuple[Any, int]]) -> None:
    """Every old key under its new name with its value and expiry, the dropped ones gone, the others as
    they were, nothing else; the marker set, the lock released."""
    assert all_keys(client) == {*MOVED.values(), *UNTOUCHED, keys.LAYOUT_KEY}
    for key, (held, ttl) in before.items():
        now = MOVED.get(key, key)
        assert value(client, now) == held, key
        moved_ttl = client.pttl(now)
        if ttl < 0:
            assert moved_ttl == ttl, key
        else:
            assert ttl - TTL_MARGIN < moved_ttl <= ttl, key
    assert client.get(keys.LAYOUT_KEY) == keys.LAYOUT_VERSION.encode()


def test_new_names() -> None:
    assert new_name(old(SHOP, 3, "events").encode()) == keys.stream_key(SHOP, 3).encode()
    assert new_name(old(SHOP, 0, "pp:a}b:c").encode()) == keys.person_key(SHOP, 0, "a}b:c").encode()
    for dropped in DROPPED:
        assert new_name(dropped.encode()) == b""
    for other in UNTOUCHED:
        assert new_name(other.encode()) is None, other
    assert new_name(b"tg:{tk-shop-0001:3}:pp:\xff\xfe") == b"tg:{3}:tk-shop-0001:pp:\xff\xfe"
    assert new_name(b"tg:{tk-shop-\xff01:3}:events") is None


def test_every_key_moves_to_the_shared_partitions(target: Target) -> None:
    client = target.client
    write_old_layout(client)
    before = snapshot(client, [*MOVED, *UNTOUCHED])
    assert asyncio.run(migrate(target.url)) == len(MOVED)
    assert_moved(client, before)
    assert asyncio.run(migrate(target.url)) == 0
    assert_moved(client, before)


def test_an_empty_database_is_marked(target: Target) -> None:
    assert asyncio.run(migrate(target.url)) == 0
    assert all_keys(target.client) == {keys.LAYOUT_KEY}


def test_two_migrations_at_once_move_each_key_once(target: Target) -> None:
    client = target.client
    write_old_layout(client)
    before = snapshot(client, [*MOVED, *UNTOUCHED])

    async def both() -> list[int]:
        return list(await asyncio.gather(migrate(target.url), migrate(target.url)))

    assert sorted(asyncio.run(both())) == [0, len(MOVED)]
    assert_moved(client, before)


def test_a_lock_left_by_a_process_that_died_expires(target: Target) -> None:
    """The waiting process takes the lock once it expires, and moves everything."""
    client = target.client
    write_old_layout(client)
    before = snapshot(client, [*MOVED, *UNTOUCHED])
    client.set(keys.LAYOUT_LOCK_KEY, "a process that died", px=500)
    assert asyncio.run(migrate(target.url)) == len(MOVED)
    assert_moved(client, before)


def test_a_process_waiting_for_the_lock_stops_at_the_marker(target: Target) -> None:
    client = target.client
    write_old_layout(client)
    client.set(keys.LAYOUT_LOCK_KEY, "another process", px=HOUR)

    async def wait_then_mark() -> int:
        waiting = asyncio.create_task(migrate(target.url))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        client.set(keys.LAYOUT_KEY, keys.LAYOUT_VERSION)
        return await waiting

    assert asyncio.run(wait_then_mark()) == 0
    assert client.exists(*MOVED) == len(MOVED)
    assert client.get(keys.LAYOUT_LOCK_KEY) == b"another process"


def test_a_key_already_under_its_new_name_is_kept_and_so_is_the_old_one(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    client = target.client
    write_old_layout(client)
    old_stream, new_stream = old(SHOP, 3, "events"), new(SHOP, 3, "events")
    client.xadd(new_stream, {"data": '{"event":"written by this version"}'})
    before = snapshot(client, [old_stream, new_stream])
    with caplog.at_level(logging.WARNING, logger="trackgate.layout"):
        assert asyncio.run(migrate(target.url)) == len(MOVED) - 1
    assert snapshot(client, [old_stream, new_stream]) == before
    assert any(old_stream in r.getMessage() and new_stream in r.getMessage() for r in caplog.records)
    assert client.exists(*[k for k in MOVED.values() if k != new_stream]) == len(MOVED) - 1
    assert client.exists(*DROPPED) == 0
