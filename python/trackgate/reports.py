"""The module the reports process serves (`trackgate.reports:app`): the query API and the dashboard on
`--reports-port`, in a Granian of their own that `trackgate serve` starts beside the ingestion workers.

Reports read many Redis keys and build large answers: run in a worker that answers /track, they held its
event loop and its CPU (a thread would still hold the interpreter's lock). In their own process they
share neither, they have their own Redis connection, and `--max-report-requests` bounds how many run at
once.
"""

from __future__ import annotations

import asyncio
from typing import Final

from redis.asyncio import Redis

from trackgate import metrics
from trackgate.api import Api
from trackgate.gateway.answers import PLAIN_TEXT
from trackgate.report_reads import ReportReads
from trackgate.rsgi import HTTPProtocol, Scope
from trackgate.settings import Settings, for_worker

REDIS_TIMEOUT: Final = 10.0
"""Seconds a report's pipeline may take to answer: a bounded report, not a write, so longer than
--redis-timeout."""


class ReportsApp:
    """One per reports worker; Granian calls `__rsgi_init__` before its event loop runs, and `__rsgi_del__`
    after the last request was answered."""

    _client: Redis
    _reads: ReportReads
    _export_reads: ReportReads
    _api: Api
    _publisher: asyncio.Task[None]

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.start(for_worker()))

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.stop())

    async def start(self, settings: Settings) -> None:
        if settings.redis_url is None:
            raise RuntimeError("no Redis URL: run the app with `trackgate serve`, or set TRACKGATE_REDIS_URL")
        self._client = Redis.from_url(
            settings.redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=1.0
        )
        share = settings.report_redis_share
        self._reads = ReportReads(settings.redis_url, REDIS_TIMEOUT, share)
        self._export_reads = ReportReads(settings.redis_url, REDIS_TIMEOUT, share)
        self._api = Api(self._client, self._reads, settings, self._export_reads)
        self._publisher = asyncio.create_task(metrics.publish_forever(), name="trackgate-metrics")

    async def stop(self) -> None:
        self._publisher.cancel()
        await asyncio.gather(self._publisher, return_exceptions=True)
        await self._client.aclose()
        self._reads.close()
        self._export_reads.close()
        metrics.publish()
        metrics.worker_exited()

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        path = scope.path
        if path.startswith("/api/"):
            await self._api(scope, proto)
        elif path == "/dashboard" or path == "/dashboard/":
            self._api.dashboard(proto)
        elif path == "/healthz":
            proto.response_bytes(200, PLAIN_TEXT, b"ok\n")
        else:
            proto.response_bytes(404, PLAIN_TEXT, b"not found\n")


app = ReportsApp()
