"""The batcher's connection through Redis Sentinel: the primary asked of the Sentinels (the first that
answers), refused when the node named is not a primary, and a connection to a primary demoted under it
given up so that the next asks again. (A failover under load: test_gateway_durability.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import free_port
from redis_cluster import SentinelGroup
from scripted_redis import ScriptedClock, ScriptedRedis, play, request, started, until, user_in
from trackgate import redis_target
from trackgate.redis_pipe import Connection, pack
from trackgate.redis_target import Address, Sentinel
from trackgate.sentinel_primary import SentinelPrimary


def sentinel_target(url: str) -> Sentinel:
    target = redis_target.parse(url)
    assert isinstance(target, Sentinel)
    return target


def ignore(*args: Any) -> None:
    pass


async def write_through(primary: SentinelPrimary) -> list[Any]:
    pipe: Connection = await primary.connect(ignore, ignore)
    try:
        return await pipe.call([pack("SET", "sentinel-test", "here")])
    finally:
        pipe.close()


def test_the_primary_is_the_one_the_first_sentinel_that_answers_names(sentinel_group: SentinelGroup) -> None:
    """A Sentinel that does not answer is passed over; the pipe reaches the primary."""
    hosts = ",".join(s.address for s in sentinel_group.sentinels)
    primary = SentinelPrimary(sentinel_target(f"redis+sentinel://127.0.0.1:{free_port()},{hosts}/trackgate"))
    assert asyncio.run(primary.address()) == sentinel_group.primary_address()
    assert asyncio.run(write_through(primary)) == [b"OK"]
    with sentinel_group.primary.client() as client:
        assert client.get("sentinel-test") == b"here"


def test_a_node_that_is_not_a_primary_is_not_written_to(sentinel_group: SentinelGroup) -> None:
    """Sentinel may name a node that is a replica by now (or not yet a primary)."""

    class NamingTheReplica(SentinelPrimary):
        async def address(self) -> Address:
            return ("127.0.0.1", sentinel_group.replica.port)

    with pytest.raises(ConnectionError, match="says its role is slave"):
        asyncio.run(write_through(NamingTheReplica(sentinel_target(sentinel_group.url))))


def test_no_sentinel_answering_says_which_were_asked() -> None:
    ports = [free_port(), free_port()]
    primary = SentinelPrimary(
        sentinel_target(f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/svc")
    )
    with pytest.raises(ConnectionError, match="no Sentinel named the primary of 'svc'") as refused:
        asyncio.run(primary.address())
    assert all(f"127.0.0.1:{port}" in str(refused.value) for port in ports)


def test_a_primary_demoted_under_the_connection_is_given_up() -> None:
    """Its writes are refused READONLY: those requests fail, and the next write goes on a new connection
    (which, through Sentinel, asks for the primary again)."""

    async def scenario() -> None:
        redis, clock = ScriptedRedis(), ScriptedClock()
        redis.refuse = lambda command: "READONLY You can't write against a read only replica."
        batcher = await started(redis, clock)
        r = request(user_in(0))
        answer = batcher.submit(r.batches, r.accepted)
        await until(answer.done, "the answer")
        assert answer.result().failed == {0}
        await until(lambda: len(redis.connections) == 2, "a new connection")
        assert redis.connections[0].closed
        redis.refuse = lambda command: None
        again = request(user_in(1))
        answer = batcher.submit(again.batches, again.accepted)
        await until(answer.done, "the next answer")
        assert answer.result().failed == frozenset()
        assert redis.connections[1].writes
        await batcher.close()

    play(scenario)
