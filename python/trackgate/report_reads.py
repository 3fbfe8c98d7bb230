"""The reports' bulk reads: many small commands (a counter's fields, a HyperLogLog) sent a round at a
time on a connection of the reports' own, their replies read by the native reader.

redis-py reads one reply per await, each under its own timeout: for a report of thousands of small
reads, that reading is most of the report's time. Here a round is one write and one wait, whatever its
size. Rounds are small and one at a time for the whole process: Redis answers a round before it reads its
other clients again, so between two rounds the ingestion workers' writes are served.

Reports in a loop would still keep Redis busy, and every write waits behind a round: the rounds' time
is budgeted. The process earns `share` seconds of round time per second, up to `BURST` seconds, and a
round waits while it is in debt, so that over time the reports take `share` of Redis at most, while one
report after a quiet spell runs at full speed. A round is charged the time it took, but no more than
what its commands and the elements of their replies can cost Redis (`COMMAND_COST`, `ELEMENT_COST`):
the rest is this process's own waiting (at a low CPU priority, on a busy machine, it is scheduled late),
which costs Redis nothing and would otherwise starve the reports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from trackgate import redis_target
from trackgate.cluster_reads import ClusterRoute
from trackgate.redis_pipe import Connection, RedisPipe, ReplyError, pack

ROUND: Final = 64
"""Commands sent to Redis at once."""
BURST: Final = 0.2
"""Seconds of round time the reports may take at once after a quiet spell."""
COMMAND_COST: Final = 10e-6
ELEMENT_COST: Final = 1e-6
"""The most a command, and an element of a reply (a field, a stream entry), is taken to cost Redis, in
seconds: several times what they cost it, so that a round is charged its time except where the process
itself made it long."""

Arg = str | bytes | int | float
Command = tuple[Arg, ...]
Reads = Callable[[Sequence[Command]], Awaitable[list[Any]]]
"""What a report reads Redis with: `ReportReads`, or in a test anything that answers as it does."""


class ReportReads:
    """`await reads(commands)`: the replies to `commands`, in order. Raises redis-py's ConnectionError
    when Redis cannot be reached or does not answer within `timeout` seconds, and ResponseError when it
    refuses a command; the next call connects again. `redis` is a `--redis-url` or its parsed target: on
    a Cluster, each command goes to the primary serving its key (cluster_reads.py), and a round's time
    is that of its slowest primary."""

    def __init__(
        self,
        redis: str | redis_target.Target,
        timeout: float,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        target = redis_target.parse(redis) if isinstance(redis, str) else redis
        self._route: Route = (
            ClusterRoute(target, timeout)
            if isinstance(target, redis_target.Cluster)
            else NodeRoute(target, timeout)
        )
        self._timeout = timeout
        self._turn = asyncio.Lock()
        self._share = share
        self._clock = clock
        self._sleep = sleep
        self._credit = BURST  # seconds of round time the next rounds may take
        self._earned_at = clock()

    async def __call__(self, commands: Sequence[Command]) -> list[Any]:
        replies: list[Any] = []
        for i in range(0, len(commands), ROUND):
            packed = [pack(*(_text(arg) for arg in command)) for command in commands[i : i + ROUND]]
            async with self._turn:
                await self._wait_for_credit()
                started = self._clock()
                cost = len(packed) * COMMAND_COST
                try:
                    answered = await self._round(packed)
                    elements = sum(len(reply) if isinstance(reply, list) else 1 for reply in answered)
                    cost += elements * ELEMENT_COST
                    replies.extend(answered)
                finally:
                    self._credit -= min(self._clock() - started, cost)
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise ResponseError(str(reply))
        return replies

    async def _wait_for_credit(self) -> None:
        """Earn credit for the time since last asked; in debt, sleep until it is paid (holding the turn:
        every report waits)."""
        now = self._clock()
        self._credit = min(BURST, self._credit + (now - self._earned_at) * self._share)
        self._earned_at = now
        if self._credit < 0:
            await self._sleep(-self._credit / self._share)
            self._credit, self._earned_at = 0.0, self._clock()

    async def _round(self, packed: list[bytes]) -> list[Any]:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._route.call(packed)
        except (OSError, TimeoutError) as err:
            # Replies of a round cut short would answer the next round's commands: start afresh.
            self.close()
            raise RedisConnectionError(f"the reports' Redis connection failed: {err!r}") from err

    def close(self) -> None:
        self._route.close()


class Route(Protocol):
    """Where a round's packed commands go: one Redis, or a Cluster's primaries."""

    async def call(self, packed: list[bytes]) -> list[Any]: ...
    def close(self) -> None: ...


class NodeRoute:
    """Every command on one connection to one Redis (the primary that Sentinel names, asked again at
    every new connection)."""

    def __init__(self, target: redis_target.Single | redis_target.Sentinel, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._pipe: Connection | None = None

    async def call(self, packed: list[bytes]) -> list[Any]:
        if self._pipe is None:
            self._pipe = await RedisPipe.open(await self._url(), _ignore, self._lost)
        return await self._pipe.call(packed)

    async def _url(self) -> str:
        if isinstance(self._target, redis_target.Single):
            return self._target.url
        primary = await redis_target.primary_address(self._target, socket_timeout=self._timeout)
        return self._target.node_url(primary)

    def _lost(self, pipe: Connection, _: Exception) -> None:
        if pipe is self._pipe:
            self._pipe = None

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


def _text(arg: Arg) -> str | bytes:
    return arg if isinstance(arg, str | bytes) else str(arg)


def _ignore(_: Any) -> None:
    """Replies outside a call: none come, as nothing is sent outside one."""
