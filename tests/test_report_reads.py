"""The reports' connection: rounds against a real redis-server, and the budget of Redis time they keep to,
with a fake clock and fake rounds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.exceptions
from conftest import RedisServer
from redis_cluster import SentinelGroup
from trackgate.report_reads import BURST, COMMAND_COST, ELEMENT_COST, ROUND, Command, ReportReads


def test_replies_come_in_order_over_many_rounds(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.hset("rr:hash", mapping={f"f{i}": i for i in range(300)})

    async def run() -> list[Any]:
        reads = ReportReads(redis_server.url, 5)
        try:
            return await reads([("HGET", "rr:hash", f"f{i}") for i in range(300)] + [("PFCOUNT", "rr:none")])
        finally:
            reads.close()

    replies = asyncio.run(run())
    assert replies == [str(i).encode() for i in range(300)] + [0]


def test_a_refused_command_raises_and_a_lost_connection_is_made_again(private_redis: RedisServer) -> None:
    client = private_redis.client()
    client.set("rr:string", "x")

    async def run() -> list[Any]:
        reads = ReportReads(private_redis.url, 5)
        try:
            with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
                await reads([("HGET", "rr:string", "f")])
            assert await reads([("GET", "rr:string")]) == [b"x"]
            client.client_kill_filter(_type="normal", skipme=True)
            # The connection the kill closed is noticed, and the next call connects again.
            for _ in range(50):
                try:
                    return await reads([("GET", "rr:string")])
                except redis.exceptions.ConnectionError:
                    continue
            raise AssertionError("never connected again")
        finally:
            reads.close()

    assert asyncio.run(run()) == [b"x"]


def test_an_unreachable_redis_is_a_connection_error(private_redis: RedisServer) -> None:
    url = private_redis.url
    private_redis.stop()

    async def run() -> None:
        reads = ReportReads(url, 2)
        with pytest.raises(redis.exceptions.ConnectionError):
            await reads([("GET", "k")])

    asyncio.run(run())


class Timed(ReportReads):
    """Rounds that take `round_time` seconds of a fake clock each, and sleeps that move it on."""

    def __init__(self, share: float, round_time: float) -> None:
        self.now = 0.0
        self.slept = 0.0
        self.round_time = round_time
        self.busy = 0.0
        super().__init__("redis://unused", 1, share, clock=lambda: self.now, sleep=self._fake_sleep)

    async def _fake_sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds

    async def _round(self, packed: list[bytes]) -> list[Any]:
        self.now += self.round_time
        self.busy += self.round_time
        return [None] * len(packed)


def commands(rounds: int) -> list[Command]:
    return [("GET", "k")] * (ROUND * rounds)


def test_a_report_after_a_quiet_spell_takes_its_burst_at_once() -> None:
    reads = Timed(share=0.1, round_time=0.0005)
    asyncio.run(reads(commands(int(BURST / 0.0005) - 1)))
    assert reads.slept == 0


def test_reports_in_a_loop_take_the_share_of_redis_time_at_most() -> None:
    reads = Timed(share=0.1, round_time=0.0005)

    async def loop() -> None:
        for _ in range(2000):
            await reads(commands(5))

    asyncio.run(loop())
    # 5 s of rounds: past the first BURST, nine tenths of the time is spent waiting (a round may end in
    # debt: its own time is the slack).
    assert reads.busy == pytest.approx(5.0)
    assert reads.busy <= 0.1 * reads.now + BURST + reads.round_time
    assert reads.busy >= 0.1 * reads.now - reads.round_time


def test_a_round_is_charged_no_more_than_its_commands_can_cost_redis() -> None:
    """A round made long by this process's own waiting (64 commands, a reply element each: at most
    64 x 11 us) is charged what Redis could have spent on it."""
    reads = Timed(share=0.1, round_time=0.05)

    async def loop() -> None:
        for _ in range(100):
            await reads(commands(1))

    asyncio.run(loop())
    # Charged by their time, the 5 s of rounds would have waited 45 s; charged by their cost (0.07 s),
    # they stay within the burst and what 5 s earn.
    assert 100 * ROUND * (COMMAND_COST + ELEMENT_COST) < BURST
    assert reads.slept == 0


def test_with_the_whole_share_nothing_waits() -> None:
    reads = Timed(share=1.0, round_time=0.0005)
    asyncio.run(reads(commands(100)))
    assert reads.slept == 0


def test_through_sentinel_the_reads_reach_the_primary(sentinel_group: SentinelGroup) -> None:
    with sentinel_group.primary.client() as client:
        client.set("rr:sentinel", "primary")

    async def run() -> list[Any]:
        reads = ReportReads(sentinel_group.url, 5)
        try:
            return await reads([("GET", "rr:sentinel")])
        finally:
            reads.close()

    assert asyncio.run(run()) == [b"primary"]
