"""The workers' side of the rate limits, in-process: leases taken from buckets in memory (as `tg_take`
keeps them in Redis), timed by a clock the tests move. What a worker admits, when it asks the bucket,
what it answers when the bucket is empty, and what happens when Redis cannot be asked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from memory_gateway import MemoryBuckets
from redis.exceptions import ConnectionError as RedisConnectionError
from trackgate._native import PartitionBatch
from trackgate.gateway.rate_limiter import FAIL_OPEN_SECONDS, Grant, RateLimited, RateLimiter, lease_size
from trackgate.rate_limit import RateLimit, RateLimitError

T = TypeVar("T")
SHOP = "tk-shop-limited"
BLOG = "tk-blog-free"


class Limits:
    def __init__(self, **limits: RateLimit) -> None:
        self.limits = {token.replace("_", "-"): limit for token, limit in limits.items()}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def timed_buckets() -> tuple[Clock, MemoryBuckets]:
    """A clock, and buckets timed by it."""
    clock = Clock()
    return clock, MemoryBuckets(clock)


def batch(token: str, count: int = 1, partition: int = 0) -> PartitionBatch:
    return PartitionBatch(token=token, partition=partition, count=count, args=0, packed=b"", xadds=b"")


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


async def settle() -> None:
    """Let the takes started in the background finish (the memory buckets answer at once)."""
    for _ in range(5):
        await asyncio.sleep(0)


def limiter_for(limit: RateLimit, clock: Clock, buckets: MemoryBuckets) -> RateLimiter:
    return RateLimiter(Limits(tk_shop_limited=limit), buckets, clock)


async def admitted_of(limiter: RateLimiter, requests: int, events: int = 1) -> int:
    """How many of `requests` requests of `events` events each the limiter admits, one after another."""
    admitted = 0
    for _ in range(requests):
        if await limiter.admit([batch(SHOP, events)]) is None:
            admitted += 1
        await settle()
    return admitted


def test_a_limit_is_from_1_to_its_maximum_and_its_burst_is_a_seconds_events_by_default() -> None:
    assert RateLimit.of(50) == RateLimit(50, 50)
    assert RateLimit.of(50, 7).text() == "events-per-second=50 burst=7"
    with pytest.raises(RateLimitError, match="--events-per-second is from 1"):
        RateLimit.of(0)
    with pytest.raises(RateLimitError, match="--burst is from 1"):
        RateLimit.of(5, 0)


def test_a_lease_is_a_tenth_of_a_seconds_events_at_least_one_at_most_the_burst() -> None:
    assert lease_size(RateLimit.of(1000)) == 100
    assert lease_size(RateLimit.of(5)) == 1
    assert lease_size(RateLimit.of(1000, 20)) == 20


def test_projects_without_a_limit_are_not_checked() -> None:
    async def scenario() -> None:
        buckets = MemoryBuckets()
        limiter = RateLimiter(Limits(), buckets, Clock())
        assert not limiter.active
        limited = RateLimiter(Limits(tk_shop_limited=RateLimit.of(1)), buckets, Clock())
        assert limited.active
        for _ in range(10):
            assert await limited.admit([batch(BLOG, 100)]) is None
        assert buckets.takes == []

    run(scenario)


def test_a_worker_asks_the_bucket_once_a_lease_not_once_a_request() -> None:
    async def scenario() -> None:
        clock, buckets = timed_buckets()
        limiter = limiter_for(RateLimit.of(1000, 1000), clock, buckets)
        assert await admitted_of(limiter, 200) == 200
        # Leases of 100: the first, then one each time half of one is left.
        assert len(buckets.takes) <= 200 // (lease_size(RateLimit.of(1000)) // 2) + 1

    run(scenario)


def test_at_one_instant_a_worker_admits_the_burst_and_refuses_the_rest_without_asking_again() -> None:
    async def scenario() -> None:
        clock, buckets = timed_buckets()
        limiter = limiter_for(RateLimit.of(100, 30), clock, buckets)
        assert await admitted_of(limiter, 30) == 30
        asked = len(buckets.takes)
        refused = await limiter.admit([batch(SHOP)])
        assert refused == RateLimited(SHOP, RateLimit.of(100, 30), 1)
        asked_once_empty = len(buckets.takes)
        assert asked_once_empty <= asked + 1
        # Until the bucket holds what is missing, refusals cost no take.
        for _ in range(50):
            assert await limiter.admit([batch(SHOP)]) is not None
            await settle()
        assert len(buckets.takes) == asked_once_empty

    run(scenario)


def test_the_bucket_refills_at_the_rate_and_two_workers_share_it() -> None:
    async def scenario() -> None:
        clock, buckets = timed_buckets()
        limit = RateLimit.of(100, 100)
        workers = [limiter_for(limit, clock, buckets) for _ in range(2)]
        admitted = 0
        seconds = 5
        for _ in range(seconds * 100):
            clock.now += 0.01
            for worker in workers:
                for _ in range(3):  # each worker is offered 300 events a second
                    admitted += await worker.admit([batch(SHOP)]) is None
                    await settle()
        # Every admitted event was taken from the bucket: its burst and its refill, no more.
        assert admitted <= limit.burst + limit.events_per_second * seconds
        # And the workers holding leases unused keep at most a lease each out of reach.
        assert admitted >= limit.events_per_second * seconds - 2 * lease_size(limit) - 1

    run(scenario)


def test_a_request_larger_than_the_allowance_is_admitted_and_paid_back_before_the_next() -> None:
    async def scenario() -> None:
        clock, buckets = timed_buckets()
        limit = RateLimit.of(10, 10)
        limiter = limiter_for(limit, clock, buckets)
        start = clock.now
        # Larger than the burst: never admissible if requests had to fit.
        assert await limiter.admit([batch(SHOP, 20), batch(SHOP, 5, partition=1)]) is None
        await settle()
        # The debt (24: 25 events from a lease of 1) is repaid from the bucket (its 9 left, then 10 a
        # second, at most the burst at a time) before another request is admitted; each refusal says when.
        for _ in range(5):
            refused = await limiter.admit([batch(SHOP)])
            if refused is None:
                break
            assert refused.retry_after >= 1
            clock.now += refused.retry_after
            await settle()
        assert refused is None
        assert clock.now - start >= (24 - 9) / limit.events_per_second

    run(scenario)


def test_retry_after_says_when_the_bucket_will_hold_what_the_worker_lacks() -> None:
    async def scenario() -> None:
        clock, buckets = timed_buckets()
        limiter = limiter_for(RateLimit.of(2, 2), clock, buckets)
        assert await admitted_of(limiter, 2) == 2
        refused = await limiter.admit([batch(SHOP)])
        assert refused is not None
        assert refused.retry_after == 1
        clock.now += 0.6
        assert await limiter.admit([batch(SHOP)]) is None
        assert await limiter.admit([batch(SHOP)]) is not None

    run(scenario)


def test_a_request_for_two_projects_is_refused_whole_and_takes_from_neither() -> None:
    async def scenario() -> None:
        clock, buckets = timed_buckets()
        limits = Limits(tk_shop_limited=RateLimit.of(1, 1), tk_blog_free=RateLimit.of(100, 100))
        limiter = RateLimiter(limits, buckets, clock)
        assert await limiter.admit([batch(SHOP)]) is None
        await settle()
        refused = await limiter.admit([batch(BLOG, 3), batch(SHOP)])
        assert refused is not None
        assert refused.token == SHOP
        await settle()
        # The blog holds its whole lease of 10: 2 more leave 8, more than half of it, so no take follows
        # (had the 3 been taken, 5 would be left, and the next lease taken).
        asked = len(buckets.takes)
        assert await limiter.admit([batch(BLOG, 2)]) is None
        await settle()
        assert len(buckets.takes) == asked

    run(scenario)


def test_a_limit_changed_or_removed_applies_from_the_next_reload() -> None:
    async def scenario() -> None:
        clock, buckets = timed_buckets()
        limits = Limits(tk_shop_limited=RateLimit.of(1, 1))
        limiter = RateLimiter(limits, buckets, clock)
        assert await limiter.admit([batch(SHOP)]) is None
        assert await limiter.admit([batch(SHOP)]) is not None
        limits.limits = {SHOP: RateLimit.of(1000, 1000)}
        clock.now += 1
        assert await admitted_of(limiter, 500) == 500
        limits.limits = {}
        asked = len(buckets.takes)
        assert await admitted_of(limiter, 5000) == 5000
        assert len(buckets.takes) == asked

    run(scenario)


def test_when_redis_cannot_be_asked_requests_are_admitted_and_asked_again_a_second_later() -> None:
    async def scenario() -> None:
        clock = Clock()
        buckets = MemoryBuckets(clock, failure=RedisConnectionError("Redis is down"))
        limiter = limiter_for(RateLimit.of(1, 1), clock, buckets)
        assert await admitted_of(limiter, 100) == 100
        assert len(buckets.takes) == 1
        clock.now += FAIL_OPEN_SECONDS
        assert await admitted_of(limiter, 100) == 100
        assert len(buckets.takes) == 2
        buckets.failure = None
        clock.now += FAIL_OPEN_SECONDS
        assert await admitted_of(limiter, 100) == 1

    run(scenario)


def test_requests_that_arrive_while_a_take_is_under_way_share_it() -> None:
    async def scenario() -> None:
        clock, buckets = timed_buckets()
        limiter = limiter_for(RateLimit.of(1000, 1000), clock, buckets)
        # Fewer than half a lease (100): no second take follows.
        answers = await asyncio.gather(*(limiter.admit([batch(SHOP)]) for _ in range(40)))
        assert answers == [None] * 40
        assert len(buckets.takes) == 1

    run(scenario)


def test_closing_cancels_the_takes_under_way() -> None:
    async def scenario() -> None:
        clock = Clock()
        taken = asyncio.Event()

        class Stalled(MemoryBuckets):
            async def take(self, token: str, limit: RateLimit, want: int) -> Grant:
                taken.set()
                await asyncio.Event().wait()
                raise AssertionError("never answered")

        limiter = limiter_for(RateLimit.of(10), clock, Stalled(clock))
        request = asyncio.create_task(limiter.admit([batch(SHOP)]))
        await taken.wait()
        await limiter.close()
        with pytest.raises(asyncio.CancelledError):
            await request

    run(scenario)
