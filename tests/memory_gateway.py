"""An App in this process, for in-process tests: a memory sink, a fixed token list, fixed clocks, and
in-memory RSGI requests, without Granian or Redis. The decoder is the real one."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from redis.asyncio import Redis
from trackgate import metrics
from trackgate._native import TokenSet
from trackgate.batcher import Key, Unavailable, UnavailableError, Written
from trackgate.credentials import basic_credentials
from trackgate.gateway.app import App, Services
from trackgate.gateway.ingest import Batches
from trackgate.gateway.rate_limiter import Grant
from trackgate.rate_limit import RateLimit
from trackgate.settings import Settings

TOKEN = "tk-handler"
SECRET = "secret-handler"
NOW = 1_700_000_000.25
ORIGIN = "https://shop.example"


class Headers:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def get(self, key: str, default: str | None = None) -> str | None:
        return next((v for k, v in self._pairs if k == key), default)

    def get_all(self, key: str) -> list[str]:
        return [v for k, v in self._pairs if k == key]


@dataclass
class Scope:
    method: str
    path: str
    query_string: str
    client: str
    headers: Headers


class Proto:
    """Granian's protocol object in memory: the body, whole when it has a Content-Length, else in chunks
    (`read` replaces the whole body's read: a stalled or failed one), and the one response."""

    def __init__(self, chunks: list[bytes], read: asyncio.Future[bytes] | None = None) -> None:
        self._chunks = chunks
        self._read = read
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.reads = 0  # of the body, whole or a chunk

    def __call__(self) -> asyncio.Future[bytes]:
        self.reads += 1
        if self._read is not None:
            return self._read
        return _resolved(b"".join(self._chunks))

    def __aiter__(self) -> Proto:
        return self

    def __anext__(self) -> asyncio.Future[bytes]:
        self.reads += 1
        read = asyncio.get_running_loop().create_future()
        if self._chunks:
            read.set_result(self._chunks.pop(0))
        else:
            read.set_exception(StopAsyncIteration())
        return read

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        assert self.status == 0, "answered twice"
        self.status, self.headers, self.body = status, headers, body

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Any:
        raise AssertionError("/track does not stream")

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name)

    @property
    def text(self) -> str:
        return self.body.decode()


def _resolved(body: bytes) -> asyncio.Future[bytes]:
    read: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    read.set_result(body)
    return read


class MemorySink:
    """Records the submitted batches; its futures resolve with `unstored` keys failed and `duplicates`
    found, or fail with `failure`.
    `refusal` makes submit itself refuse, as a batcher does when it cannot queue. With `hold` set, its
    futures wait in `held` until `write_held()`: requests whose write is in flight."""

    not_ready_reason: str | None = None
    primaries: dict[str, str | None] = {}  # noqa: RUF012  # one Redis: none, and never changed

    def __init__(
        self,
        *,
        refusal: Unavailable | None = None,
        failure: Unavailable | None = None,
        unstored: frozenset[Key] = frozenset(),
        duplicates: int = 0,
        hold: bool = False,
    ) -> None:
        self.refusal = refusal
        self.failure = failure
        self.written = Written(unstored, duplicates)
        self.hold = hold
        self.held: list[asyncio.Future[Written]] = []
        self.submitted: list[tuple[Batches, int]] = []

    def submit(self, batches: Batches, count: int) -> asyncio.Future[Written]:
        if self.refusal is not None:
            raise UnavailableError(self.refusal)
        self.submitted.append((batches, count))
        done: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.held.append(done)
        elif self.failure is not None:
            done.set_exception(UnavailableError(self.failure))
        else:
            done.set_result(self.written)
        return done

    def write_held(self) -> None:
        for done in self.held:
            done.set_result(self.written)
        self.held.clear()

    def stored(self) -> list[dict[str, Any]]:
        """The normalised events of the submitted batches, as their XADDs carry them."""
        return [
            json.loads(data)
            for batches, _ in self.submitted
            for batch in batches
            for data in re.findall(rb"\r\ndata\r\n\$\d+\r\n(.*?)\r\n", batch.xadds)
        ]

    async def close(self) -> None:
        return None


class FixedTokens:
    """The known tokens, and the `limits` of those that have a rate limit; a reload (for an unknown
    token) finds `after_reload` when given."""

    def __init__(
        self,
        *tokens: str,
        after_reload: tuple[str, ...] | None = None,
        registry_missing: bool = False,
        limits: dict[str, RateLimit] | None = None,
    ) -> None:
        self.tokens = TokenSet(tokens)
        self.limits: dict[str, RateLimit] = limits or {}
        self.registry_missing = registry_missing
        self._after_reload = after_reload
        self.reloads = 0

    async def reload_for_unknown(self) -> bool:
        self.reloads += 1
        if self._after_reload is not None:
            self.tokens = TokenSet(self._after_reload)
        return True

    async def stop(self) -> None:
        return None


class MemoryBuckets:
    """The projects' token buckets as `tg_take` keeps them, in memory, timed by `clock` (seconds), full
    but for the `levels` given; or, with `failure`, a Redis that cannot be asked. `takes` records each
    take: (token, events wanted)."""

    def __init__(
        self,
        clock: Callable[[], float] = lambda: 0.0,
        failure: Exception | None = None,
        levels: dict[str, float] | None = None,
    ) -> None:
        self.clock = clock
        self.failure = failure
        self.takes: list[tuple[str, int]] = []
        # token -> (level, at)
        self._buckets = {token: (level, clock()) for token, level in (levels or {}).items()}

    async def take(self, token: str, limit: RateLimit, want: int) -> Grant:
        self.takes.append((token, want))
        if self.failure is not None:
            raise self.failure
        now = self.clock()
        level, at = self._buckets.get(token, (float(limit.burst), now))
        level = min(float(limit.burst), level + max(0.0, now - at) * limit.events_per_second)
        granted = max(0, min(want, math.floor(level)))
        self._buckets[token] = (level - granted, now)
        return Grant(granted, level - granted)


class FixedCredentials:
    """TOKEN's credentials: its API secret SECRET as the user name, whatever `project_id` says (the
    rule itself is credentials.py's, tested against a real registry); with `unreachable`, the registry
    cannot be read."""

    def __init__(self, *, unreachable: bool = False) -> None:
        self.unreachable = unreachable

    async def project_for(self, authorization: str | None, project_id: str | None) -> str | None:
        if self.unreachable:
            raise ConnectionError("Redis is unreachable")
        basic = basic_credentials(authorization)
        return TOKEN if basic is not None and basic[0] == SECRET else None


@dataclass
class Gateway:
    app: App
    sink: MemorySink
    clock: list[float] = field(default_factory=lambda: [100.0])

    async def call(
        self,
        method: str = "GET",
        query: str | dict[str, str] = "",
        body: bytes | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        client: str = "127.0.0.1:50000",
        proto: Proto | None = None,
        chunked: bool = False,
        path: str = "/track",
    ) -> Proto:
        query = query if isinstance(query, str) else urlencode(query)
        pairs = list(headers)
        if body is not None and not chunked:
            pairs.append(("content-length", str(len(body))))
        if proto is None:
            proto = Proto([body[i : i + 7] for i in range(0, len(body), 7)] if body else [])
        await self.app.__rsgi__(Scope(method, path, query, client, Headers(pairs)), proto)
        return proto


@asynccontextmanager
async def running(
    sink: MemorySink | None = None,
    tokens: FixedTokens | None = None,
    buckets: MemoryBuckets | None = None,
    credentials: FixedCredentials | None = None,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    gateway = Gateway(App(), sink or MemorySink())
    services = Services(
        sink=gateway.sink,
        tokens=tokens or FixedTokens(TOKEN),
        admin=Redis.from_url("redis://127.0.0.1:1"),  # never used by /track
        clock=lambda: NOW,
        monotonic=lambda: gateway.clock[0],
        buckets=buckets,
        credentials=credentials or FixedCredentials(),
    )
    await gateway.app.start(Settings(redis_url="redis://127.0.0.1:1", **settings), services)
    try:
        yield gateway
    finally:
        await gateway.app.stop()


def answer(
    query: str | dict[str, str] = "",
    body: bytes | None = None,
    *,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    client: str = "127.0.0.1:50000",
    chunked: bool = False,
    sink: MemorySink | None = None,
    tokens: FixedTokens | None = None,
    buckets: MemoryBuckets | None = None,
    credentials: FixedCredentials | None = None,
    path: str = "/track",
    **settings: Any,
) -> Proto:
    """One request's answer from a fresh gateway."""

    async def scenario() -> Proto:
        async with running(sink, tokens, buckets, credentials, **settings) as gateway:
            return await gateway.call(method, query, body, headers, client, chunked=chunked, path=path)

    return asyncio.run(scenario())


def answer_stalled(query: str = "", **settings: Any) -> Proto:
    """The answer to a POST whose body never arrives: none until its deadline, then one."""

    async def scenario() -> Proto:
        async with running(**settings) as gateway:
            stalled = Proto([], read=asyncio.get_running_loop().create_future())
            request = asyncio.create_task(gateway.call("POST", query, b"data=...", proto=stalled))
            await asyncio.sleep(0)
            deadlines = gateway.app.ingestion.deadlines
            deadlines.sweep()
            assert not request.done(), "answered before its deadline"
            gateway.clock[0] += deadlines.timeout
            deadlines.sweep()
            return await request

    return asyncio.run(scenario())


def answer_while_held(held: bytes, body: bytes, chunked: bool = False, **settings: Any) -> Proto:
    """The answer to a POST of `body` while a POST of `held` waits for its write, its body in flight."""

    async def scenario() -> Proto:
        async with running(MemorySink(hold=True), **settings) as gateway:
            first = asyncio.create_task(gateway.call("POST", body=held))
            await until_submitted(gateway.sink, 1)
            second = await gateway.call("POST", body=body, chunked=chunked)
            gateway.sink.write_held()
            assert (await first).status == 200
            return second

    return asyncio.run(scenario())


async def until_submitted(sink: MemorySink, requests: int) -> None:
    for _ in range(1000):
        if len(sink.submitted) >= requests:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{requests} requests were not submitted")


def event(token: str = TOKEN, **props: Any) -> dict[str, Any]:
    return {"event": "signup", "properties": {"token": token, "distinct_id": "u-1", **props}}


def data(*events: dict[str, Any], **params: str) -> dict[str, str]:
    return {"data": json.dumps(list(events) if len(events) != 1 else events[0]), **params}


def form(*events: dict[str, Any]) -> bytes:
    return urlencode(data(*events)).encode()


INVALID = {"event": "", "properties": {"token": TOKEN, "distinct_id": "u-2"}}


def counted(metric: str, **labels: str | int) -> float:
    """A counter's value, as a scrape reads it: `counted("requests", route="track", status=499)`."""
    selector = ",".join(f'{name}="{value}"' for name, value in labels.items())
    found = re.search(rf"^trackgate_{metric}_total{{{selector}}} (\S+)$", metrics.render().decode(), re.M)
    return float(found.group(1)) if found else 0.0
