"""`--redis-url`'s forms: one Redis, a Cluster's seeds, Sentinels and their service; and a client of each
that reaches real servers."""

from __future__ import annotations

import asyncio

import pytest
from redis_cluster import Cluster, SentinelGroup
from trackgate import redis_target
from trackgate.redis_target import Cluster as ClusterTarget
from trackgate.redis_target import Sentinel, Single


def test_a_plain_url_is_one_redis() -> None:
    assert redis_target.parse("redis://:pw@localhost:6379/2") == Single("redis://:pw@localhost:6379/2")
    assert redis_target.parse("unix:///tmp/redis.sock?db=1") == Single("unix:///tmp/redis.sock?db=1")


def test_a_cluster_url_lists_its_seeds_and_gives_every_node_its_credentials() -> None:
    target = redis_target.parse(
        "rediss+cluster://app:secret@10.0.0.1:7000,[::1]:7001,node3?ssl_cert_reqs=none"
    )
    assert isinstance(target, ClusterTarget)
    assert target.addresses == (("10.0.0.1", 7000), ("::1", 7001), ("node3", 6379))
    assert target.node_url(("10.0.0.9", 7005)) == "rediss://app:secret@10.0.0.9:7005?ssl_cert_reqs=none"
    assert target.node_url(("::1", 7001)) == "rediss://app:secret@[::1]:7001?ssl_cert_reqs=none"


def test_a_sentinel_url_names_its_service_and_database() -> None:
    target = redis_target.parse("redis+sentinel://:pw@s1,s2:26380/orders/3?sentinel_password=x")
    assert isinstance(target, Sentinel)
    assert target.addresses == (("s1", 26379), ("s2", 26380))
    assert (target.service, target.db, target.sentinel_password) == ("orders", 3, "x")
    assert target.node_url(("10.0.0.2", 6379)) == "redis://:pw@10.0.0.2:6379/3"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "an empty host"),
        ("redis+cluster://a:1,,b:2", "an empty host"),
        ("redis+cluster://a:99999", "'99999' of 'a:99999' is not a port number"),
        ("redis+cluster://a:1/3", "a cluster URL has no path"),
        ("redis+sentinel://a:1", "names the service"),
        ("redis+sentinel://a:1/svc/x", "database 'x' is not a number"),
        ("http://a:1", "Redis URL must specify one of the following schemes"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        redis_target.parse(url)


def test_the_cluster_client_reaches_every_primary(redis_cluster: Cluster) -> None:
    async def roundtrip() -> list[object]:
        client = redis_target.client(redis_target.parse(redis_cluster.url), timeout=5, connect_timeout=5)
        try:
            # Keys in many slots: they land on every primary.
            for i in range(30):
                await client.set(f"target-test:{i}", i)
            return [await client.get(f"target-test:{i}") for i in range(30)]
        finally:
            await client.aclose()

    assert asyncio.run(roundtrip()) == [str(i).encode() for i in range(30)]
    owners = {redis_cluster.owner(f"target-test:{i}").port for i in range(30)}
    assert len(owners) == 3


def test_the_sentinel_client_writes_to_the_primary(sentinel_group: SentinelGroup) -> None:
    async def write() -> None:
        client = redis_target.client(redis_target.parse(sentinel_group.url), timeout=5, connect_timeout=5)
        try:
            await client.set("target-test", "here")
        finally:
            await client.aclose()

    asyncio.run(write())
    with sentinel_group.primary.client() as client:
        assert client.get("target-test") == b"here"
