"""A worker's side of the projects' rate limits (rate_limit.py): whether a request's events are within
their projects' limits, answered without a Redis round trip per request.

Every gateway worker and process takes from one token bucket per project in Redis (`tg_take`,
lua/rate_limits.lua, filled by Redis' clock). A worker takes a lease at a time, a tenth of a second's
events (`LEASE_SECONDS`), and admits requests from its allowance, taking the next lease in the
background once half of one is left. A request waits for Redis only when the worker's allowance is
spent and the bucket is not known to be empty: once a lease, not once a request. While the bucket is
known to be empty the worker refuses at once, and asks it again only when it will hold what is
missing.

A request is admitted while the worker's allowance for each of its projects is positive, and takes all
its events from it: a request larger than the allowance, or than the burst, leaves the worker in debt,
paid from its next leases before it admits another. So no request is refused for its size alone, and
the limit still holds on average.

Precision, for a limit of N events a second with burst B, W workers in each of P gateway processes: in
any T seconds the gateway admits at most B + N x T + W x P x (L + R - 1) events, where L is a lease
(ceil(N / 10), at most B) and R the largest request (in events, at most --max-events): each admitted
event was taken from the bucket, except what a worker held from an earlier lease and its debt of one
request. It refuses a request only when the bucket was short when this worker last asked; meanwhile the
other workers may hold leases they do not use, at most W x P x L events, which is how far below N a
project whose traffic reaches only some workers can be held.

When Redis cannot be asked (down, or refusing the call), the worker admits the project's requests for
`FAIL_OPEN_SECONDS` and then asks again: a limit that cannot be read must not refuse events that the
gateway could store (when Redis is down, the sink refuses them anyway).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final, NamedTuple, Protocol

from redis.exceptions import RedisError, ResponseError

from trackgate import store
from trackgate._native import PartitionBatch
from trackgate.gateway import log
from trackgate.keys import rate_bucket_key
from trackgate.rate_limit import RateLimit
from trackgate.redis_target import RedisClient
from trackgate.throttled_log import ThrottledLog

LEASE_SECONDS: Final = 0.1
"""A lease holds this many seconds of a project's events: few enough that the leases the workers hold
unused are a small part of a second's events, many enough that a worker at the limit asks Redis about
ten times a second."""
FAIL_OPEN_SECONDS: Final = 1.0
"""How long a worker admits a project's requests unchecked after Redis could not be asked."""
FUNCTION: Final = "tg_take"


class Grant(NamedTuple):
    """What a take from a bucket gave: `events`, and what the bucket `holds` after (a fraction of an event
    when it gave less than asked)."""

    events: int
    holds: float


class Buckets(Protocol):
    """The projects' shared buckets."""

    async def take(self, token: str, limit: RateLimit, want: int) -> Grant:
        """Take up to `want` events from the project's bucket; raises RedisError or OSError when it
        cannot be asked."""


class Limits(Protocol):
    """The limited projects' limits, as the worker's project list last read them."""

    @property
    def limits(self) -> Mapping[str, RateLimit]: ...


class RedisBuckets:
    """The buckets in Redis, taken from by `tg_take`."""

    __slots__ = ("_client",)

    def __init__(self, client: RedisClient) -> None:
        self._client = client

    async def take(self, token: str, limit: RateLimit, want: int) -> Grant:
        args = (rate_bucket_key(token), limit.events_per_second, limit.burst, want)
        try:
            reply = await self._client.fcall(FUNCTION, 1, *args)
        except ResponseError as err:
            if not store.is_missing_function(err):
                raise
            # Redis lost the library (a restart without persistence, FUNCTION FLUSH): load it, ask again.
            await store.load_functions(self._client, replace=False)
            reply = await self._client.fcall(FUNCTION, 1, *args)
        granted, holds = reply
        return Grant(int(granted), float(holds))


def lease_size(limit: RateLimit) -> int:
    """The events a worker takes at a time: `LEASE_SECONDS` of the limit, at least one, at most the burst."""
    return max(1, min(limit.burst, math.ceil(limit.events_per_second * LEASE_SECONDS)))


class RateLimited(NamedTuple):
    """A request refused: the project whose limit it is past, and when to retry (whole seconds, as
    `Retry-After` says it)."""

    token: str
    limit: RateLimit
    retry_after: int


class _Allowance:
    """A worker's allowance for one project."""

    __slots__ = ("ask_at", "events", "limit", "open_until", "positive_at", "taking", "token")

    def __init__(self, token: str, limit: RateLimit) -> None:
        self.token = token
        self.limit = limit
        self.events = 0
        """What the worker may still admit; below zero, its debt."""
        self.ask_at = -math.inf
        """Before this time (the limiter's clock) the bucket is known not to hold what the worker lacks."""
        self.positive_at = -math.inf
        """When the worker's allowance is expected to be positive again, as `Retry-After` says."""
        self.open_until = -math.inf
        """Before this time the bucket could not be asked: requests are admitted unchecked."""
        self.taking: asyncio.Task[None] | None = None


class RateLimiter:
    """One worker's admission of requests by their projects' limits (`limits`, reloaded with the project
    list), from leases of `buckets`, timed by `clock` (seconds, monotonic)."""

    __slots__ = ("_allowances", "_buckets", "_clock", "_failures", "_known", "_limits")

    def __init__(self, limits: Limits, buckets: Buckets, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._buckets = buckets
        self._clock = clock
        self._allowances: dict[str, _Allowance] = {}
        self._known: Mapping[str, RateLimit] = {}
        self._failures = ThrottledLog(log, "failed takes", 10.0, clock)

    @property
    def active(self) -> bool:
        """Some project has a limit: only then is a request checked at all."""
        return bool(self._limits.limits)

    async def admit(self, batches: Iterable[PartitionBatch]) -> RateLimited | None:
        """None when the request's events are within their projects' limits, and taken from them; else
        why not, and nothing is taken."""
        limits = self._current_limits()
        wanted: dict[str, int] = {}
        for batch in batches:
            if batch.token in limits:
                wanted[batch.token] = wanted.get(batch.token, 0) + batch.count
        if not wanted:
            return None
        allowances = [(self._allowance(token, limits[token]), events) for token, events in wanted.items()]
        for allowance, _ in allowances:
            if allowance.events <= 0 and self._clock() >= max(allowance.ask_at, allowance.open_until):
                await self._take(allowance)
        # Decided with no wait in between: what the checks saw is what is taken from.
        now = self._clock()
        for (allowance, _), token in zip(allowances, wanted, strict=True):
            if allowance.events <= 0 and now >= allowance.open_until:
                retry = max(allowance.ask_at, allowance.positive_at) - now
                return RateLimited(token, allowance.limit, max(1, math.ceil(retry)))
        for allowance, events in allowances:
            if now < allowance.open_until:
                continue
            allowance.events -= events
            if allowance.events <= lease_size(allowance.limit) // 2 and now >= allowance.ask_at:
                self._take_soon(allowance)
        return None

    async def close(self) -> None:
        takes = [a.taking for a in self._allowances.values() if a.taking is not None]
        for take in takes:
            take.cancel()
        await asyncio.gather(*takes, return_exceptions=True)

    def _current_limits(self) -> Mapping[str, RateLimit]:
        """The limits as last reloaded. A changed limit applies from the next take (the bucket is the
        same); the allowance of a project whose limit went is dropped."""
        limits = self._limits.limits
        if limits is not self._known:
            self._known = limits
            for token, allowance in list(self._allowances.items()):
                limit = limits.get(token)
                if limit is None:
                    del self._allowances[token]
                else:
                    allowance.limit = limit
        return limits

    def _allowance(self, token: str, limit: RateLimit) -> _Allowance:
        allowance = self._allowances.get(token)
        if allowance is None:
            allowance = self._allowances[token] = _Allowance(token, limit)
        return allowance

    def _take_soon(self, allowance: _Allowance) -> None:
        """Take the next lease in the background, unless a take is under way."""
        if allowance.taking is None:
            allowance.taking = asyncio.create_task(self._ask(allowance), name="trackgate-rate-lease")

    async def _take(self, allowance: _Allowance) -> None:
        """Take the next lease, or wait for the take under way."""
        self._take_soon(allowance)
        assert allowance.taking is not None
        await asyncio.shield(allowance.taking)

    async def _ask(self, allowance: _Allowance) -> None:
        limit, token = allowance.limit, allowance.token
        want = lease_size(limit) - allowance.events
        try:
            grant = await self._buckets.take(token, limit, want)
        except (RedisError, OSError) as err:
            allowance.open_until = self._clock() + FAIL_OPEN_SECONDS
            self._failures.warning(
                token, "rate limit of project %s not checked for %g s: %s", token, FAIL_OPEN_SECONDS, err
            )
            return
        finally:
            allowance.taking = None
        allowance.events += grant.events
        short = want - grant.events
        if short > 0:
            # The bucket holds less than asked: ask again when it holds what was missing, or is full.
            now, rate = self._clock(), limit.events_per_second
            allowance.ask_at = now + max(0.0, min(short, limit.burst) - grant.holds) / rate
            # A debt larger than the burst takes several leases: clients are told when it will be paid.
            allowance.positive_at = now + max(0.0, 1 - allowance.events - grant.holds) / rate
