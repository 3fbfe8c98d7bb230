"""The RSGI application Granian runs in each worker: its collaborators, its routes, its lifecycle."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from redis.exceptions import RedisError

from trackgate import metrics, redis_target, store, writers
from trackgate.credentials import Credentials, RegistryCredentials
from trackgate.gateway import log
from trackgate.gateway.answers import PLAIN_TEXT
from trackgate.gateway.body import BodyBudget, BodyDeadlines
from trackgate.gateway.client import ClientAddress
from trackgate.gateway.cors import Cors
from trackgate.gateway.imports import import_endpoint
from trackgate.gateway.ingest import Endpoint, Ingestion, Sink, TokenSource
from trackgate.gateway.profiles import engage_endpoint, groups_endpoint
from trackgate.gateway.rate_limiter import Buckets, RateLimiter, RedisBuckets
from trackgate.gateway.redirects import RedirectPolicy
from trackgate.gateway.refusals import RefusalLog
from trackgate.gateway.reports_elsewhere import reports_elsewhere
from trackgate.gateway.track import track_endpoint
from trackgate.gateway.unknown_routes import UnknownRoutes
from trackgate.layout_migration import migrate_layout
from trackgate.projects import REGISTRY_MISSING, TokenCache
from trackgate.registry_migration import migrate_registry
from trackgate.rsgi import HTTPProtocol, Scope
from trackgate.settings import Settings, for_worker

# Net allocations of tracked objects (a young generation's size) before a collection; Python's is 700.
GC_THRESHOLD: Final = 10_000


@dataclass(slots=True)
class Services:
    """What the app works with: passed in, so that a test can give a memory sink and a fixed clock.
    `clock` gives the receive time of events; `monotonic` times body deadlines, the refusal log and the
    rate limits; `buckets` are the rate limits' (by default in Redis, through `admin`); `credentials`
    authenticate /import (by default against the registry, through `admin`)."""

    sink: Sink
    tokens: TokenSource
    admin: redis_target.RedisClient
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    buckets: Buckets | None = None
    credentials: Credentials | None = None

    @classmethod
    async def from_settings(cls, settings: Settings) -> Services:
        """The worker's own: its batcher, its project list, its Redis client for the rest."""
        if settings.redis_url is None:
            raise RuntimeError("no Redis URL: run the app with `trackgate serve`, or set TRACKGATE_REDIS_URL")
        admin = redis_target.client(redis_target.parse(settings.redis_url), timeout=1.0, connect_timeout=1.0)
        try:
            await store.load_functions(admin, replace=False)
            await migrate_registry(admin)
            await migrate_layout(admin)
        except (RedisError, OSError) as err:
            log.warning("function library not checked (Redis unreachable): %s", err)
        tokens = TokenCache(admin, settings.token_refresh)
        await tokens.start()
        batcher = writers.writer(settings, tokens)
        await batcher.start()
        return cls(sink=batcher, tokens=tokens, admin=admin)

    async def close(self) -> None:
        """Write what the sink holds, then let go of Redis."""
        await self.sink.close()
        await self.tokens.stop()
        await self.admin.aclose()


class App:
    """One per worker process. Granian takes its `__rsgi__` when it imports the app, before the worker's
    event loop runs, so the object exists first and `__rsgi_init__` wires it; Granian calls `__rsgi_del__`
    after the last in-flight request was answered."""

    settings: Settings
    ingestion: Ingestion
    _services: Services
    _track: Endpoint
    _engage: Endpoint
    _groups: Endpoint
    _unknown: UnknownRoutes
    _import: Endpoint
    _tasks: tuple[asyncio.Task[None], ...]

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.start(for_worker()))
        # What exists now (modules, settings, clients) lives as long as the worker: frozen, it is never
        # walked by a collection again, where a full collection under load would walk all of it, time and
        # again. The requests' own objects die with their request, so collections are needed only when
        # that count keeps growing: the higher first threshold leaves them to real cycles instead of the
        # in-flight requests' peaks.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 10, 10)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.stop())

    async def start(self, settings: Settings, services: Services | None = None) -> None:
        """Wire the app to `services`, by default the worker's own as `settings` say."""
        if services is None:
            services = await Services.from_settings(settings)
        self.settings = settings
        self._services = services
        options = settings.decoder_options()
        self.ingestion = Ingestion(
            sink=services.sink,
            tokens=services.tokens,
            cors=Cors(settings.allowed_origins),
            clients=ClientAddress(settings.trusted_proxies),
            redirects=RedirectPolicy(settings.redirect_hosts),
            deadlines=BodyDeadlines(settings.body_timeout, services.monotonic),
            budget=BodyBudget(settings.max_body_bytes_in_flight),
            refusals=RefusalLog(clock=services.monotonic),
            body_limit=options.max_request_bytes,
            retry_after=[("retry-after", str(settings.retry_after))],
            limiter=RateLimiter(
                services.tokens, services.buckets or RedisBuckets(services.admin), services.monotonic
            ),
        )
        self._track = track_endpoint(self.ingestion, options, services.clock)
        self._engage = engage_endpoint(self.ingestion, options, services.clock)
        self._groups = groups_endpoint(self.ingestion, options, services.clock)
        self._unknown = UnknownRoutes(self.ingestion.cors, services.monotonic)
        credentials = services.credentials
        if credentials is None:
            credentials = RegistryCredentials(services.admin)
        self._import = import_endpoint(
            self.ingestion, options, services.clock, credentials, settings.counter_retention_days
        )
        self._tasks = (
            asyncio.create_task(metrics.publish_forever(), name="trackgate-metrics"),
            asyncio.create_task(self.ingestion.deadlines.sweep_forever(), name="trackgate-body-deadlines"),
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingestion.limiter.close()
        await self._services.close()
        metrics.publish()
        metrics.worker_exited()

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        path = scope.path
        if path == "/track" or path == "/track/":
            await self._track(scope, proto)
        elif path == "/engage" or path == "/engage/":
            await self._engage(scope, proto)
        elif path == "/groups" or path == "/groups/":
            await self._groups(scope, proto)
        elif path == "/import" or path == "/import/":
            await self._import(scope, proto)
        elif path == "/healthz":
            _plain(proto, "healthz", 200, b"ok\n")
        elif path == "/readyz":
            await self._ready(proto)
        elif path.startswith("/api/") or path == "/dashboard" or path == "/dashboard/":
            reports_elsewhere(scope, proto, self.settings.reports_listen_port)
        elif path == "/metrics":
            proto.response_bytes(200, [("content-type", metrics.CONTENT_TYPE)], metrics.render())
            metrics.count_request("metrics", 200)
        else:
            self._unknown(scope, proto)

    async def _ready(self, proto: HTTPProtocol) -> None:
        """Ready means that writes succeed: 503, saying why, while they cannot. On a Redis Cluster each
        primary's state follows, one line each."""
        why = await self._not_ready_reason()
        primaries = "".join(
            f"primary {node}: {'ok' if reason is None else reason}\n"
            for node, reason in sorted(self._services.sink.primaries.items())
        )
        if why is None:
            _plain(proto, "readyz", 200, b"ready\n" + primaries.encode())
        else:
            _plain(proto, "readyz", 503, (why + "\n" + primaries).encode())

    async def _not_ready_reason(self) -> str | None:
        try:
            await asyncio.wait_for(self._services.admin.ping(), 1.0)
        except (RedisError, OSError, TimeoutError):
            return "Redis is not reachable"
        if self._services.tokens.registry_missing:
            return REGISTRY_MISSING
        return self._services.sink.not_ready_reason


def _plain(proto: HTTPProtocol, route: str, status: int, body: bytes) -> None:
    proto.response_bytes(status, PLAIN_TEXT, body)
    metrics.count_request(route, status)
