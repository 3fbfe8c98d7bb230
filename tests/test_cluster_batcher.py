"""The cluster batcher's routing, in-process: each partition batch to the batcher of its slot's primary,
redirected batches routed again after the slot map is read again, refusals before anything is sent.
The primaries' batchers are stand-ins that record what they are given; the writing itself is
`Batcher`'s, tested on its own and end to end on a real cluster (test_cluster_writes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import pytest
from trackgate.batcher import Batcher, Connect, Unavailable, UnavailableError, Written
from trackgate.cluster_batcher import ClusterBatcher
from trackgate.cluster_slots import SLOTS, SlotMap, partition_slot
from trackgate.flush import ALL_STORED
from trackgate.redis_target import Address, Cluster

A: Address = ("10.0.0.1", 7000)
B: Address = ("10.0.0.2", 7000)
TARGET = Cluster(((A[0], A[1]),), "redis", "", "")


@dataclass
class Batch:
    token: str
    partition: int
    count: int = 1


class StandIn:
    """A primary's batcher: answers each submit with the next of `answers` (ALL_STORED once none are
    left), or refuses with `refusal`."""

    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self.node: str | None = None
        self.read_moved_marks: object = None
        self.not_ready_reason: str | None = None
        self.refused: Unavailable | None = None
        self.answers: list[Written] = []
        self.submitted: list[list[Batch]] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def refusal(self, count: int) -> Unavailable | None:
        return self.refused

    def submit(self, batches: list[Batch], count: int) -> asyncio.Future[Written]:
        self.submitted.append(batches)
        done: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        done.set_result(self.answers.pop(0) if self.answers else ALL_STORED)
        return done


def whole_map(owner: Callable[[int], Address]) -> SlotMap:
    ranges = [(slot, slot, owner(slot)) for slot in range(SLOTS)]
    return SlotMap(ranges, [A, B])


def split(slot: int) -> Address:
    return A if slot < SLOTS // 2 else B


class Maps:
    """Slot maps given in turn, the last one again and again."""

    def __init__(self, *maps: SlotMap | Exception) -> None:
        self.maps = list(maps)
        self.reads = 0

    async def __call__(self, target: Cluster, addresses: tuple[Address, ...], node_timeout: float) -> SlotMap:
        self.reads += 1
        found = self.maps.pop(0) if len(self.maps) > 1 else self.maps[0]
        if isinstance(found, Exception):
            raise found
        return found


def tokens_on(address: Address, owner: Callable[[int], Address], n: int = 3) -> list[Batch]:
    """Batches of partitions whose slots `owner` gives to `address`."""
    found = []
    for i in range(10_000):
        if owner(partition_slot(i)) == address:
            found.append(Batch(f"t{i}", i))
        if len(found) == n:
            return found
    raise AssertionError("no such tokens")


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def cluster(maps: Maps) -> tuple[ClusterBatcher, dict[Address, StandIn]]:
    made: list[StandIn] = []

    def make(connect: Connect) -> Batcher:
        made.append(StandIn(connect))
        return cast(Batcher, made[-1])

    batcher = ClusterBatcher(TARGET, make, retry_window=1.0, read_map=maps)
    by_address: dict[Address, StandIn] = {}

    def standins() -> dict[Address, StandIn]:
        for standin in made:
            by_address[_address(cast(str, standin.node))] = standin
        return by_address

    batcher.standins = standins  # type: ignore[attr-defined]
    return batcher, by_address


def _address(node: str) -> Address:
    host, port = node.rsplit(":", 1)
    return host, int(port)


def test_each_batch_goes_to_the_batcher_of_its_slots_primary() -> None:
    async def test() -> None:
        batcher, _ = cluster(Maps(whole_map(split)))
        await batcher.start()
        on_a, on_b = tokens_on(A, split), tokens_on(B, split)
        batches = [on_a[0], on_b[0], on_a[1], on_b[1]]
        written = await batcher.submit(cast(Any, batches), 4)
        standins = batcher.standins()  # type: ignore[attr-defined]
        assert written == ALL_STORED
        assert standins[A].submitted == [[on_a[0], on_a[1]]]
        assert standins[B].submitted == [[on_b[0], on_b[1]]]

    run(test)


def test_a_redirected_batch_goes_again_to_the_new_owner_after_the_map_is_read_again() -> None:
    async def test() -> None:
        maps = Maps(whole_map(split), whole_map(lambda slot: B))
        batcher, _ = cluster(maps)
        await batcher.start()
        moving = tokens_on(A, split, 1)[0]
        standins = batcher.standins()  # type: ignore[attr-defined]
        standins[A].answers = [Written(redirected=frozenset({moving.partition}), duplicates=1)]
        written = await batcher.submit(cast(Any, [moving]), 1)
        assert written == Written(duplicates=1)  # stored by the new owner, the duplicate still reported
        assert standins[B].submitted == [[moving]]
        assert maps.reads == 2

    run(test)


def test_a_batch_redirected_past_the_retry_window_fails() -> None:
    async def test() -> None:
        batcher, _ = cluster(Maps(whole_map(split)))
        await batcher.start()
        stuck = tokens_on(A, split, 1)[0]
        standins = batcher.standins()  # type: ignore[attr-defined]
        key = stuck.partition
        standins[A].answers = [Written(redirected=frozenset({key}))] * 1000
        written = await batcher.submit(cast(Any, [stuck]), 1)
        assert written.failed == {key}
        assert len(standins[A].submitted) > 1

    run(test)


def test_a_primary_that_refuses_refuses_the_request_before_anything_is_sent() -> None:
    async def test() -> None:
        batcher, _ = cluster(Maps(whole_map(split)))
        await batcher.start()
        standins = batcher.standins()  # type: ignore[attr-defined]
        standins[B].refused = Unavailable.REDIS_UNAVAILABLE
        with pytest.raises(UnavailableError) as refused:
            batcher.submit(cast(Any, [tokens_on(A, split, 1)[0], tokens_on(B, split, 1)[0]]), 2)
        assert refused.value.reason is Unavailable.REDIS_UNAVAILABLE
        assert standins[A].submitted == []
        # Requests for the other primary's partitions are written.
        assert await batcher.submit(cast(Any, tokens_on(A, split, 1)), 1) == ALL_STORED
        assert "primary 10.0.0.2:7000" not in (batcher.not_ready_reason or "")

    run(test)


def test_no_slot_map_refuses_until_one_is_read() -> None:
    async def test() -> None:
        maps = Maps(ConnectionError("no node answered"), whole_map(split))
        batcher, _ = cluster(maps)
        await batcher.start()
        assert batcher.not_ready_reason == "no node of the Redis Cluster answered"
        with pytest.raises(UnavailableError):
            batcher.submit(cast(Any, tokens_on(A, split, 1)), 1)
        await batcher.refresh()
        assert await batcher.submit(cast(Any, tokens_on(A, split, 1)), 1) == ALL_STORED

    run(test)
