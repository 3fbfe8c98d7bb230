"""The query API's limits, in process against a real redis-server: how many reports a worker serves at
once, and how many Redis keys one report may read."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from typing import Any

import redis.asyncio
from conftest import RedisServer, create_project_keys
from memory_gateway import Headers, Proto, Scope
from trackgate import keys
from trackgate.api import Api
from trackgate.report_reads import ReportReads
from trackgate.settings import Settings


class HeldProto(Proto):
    """A client that takes a streamed answer's first bytes only when `release` is set."""

    def __init__(self) -> None:
        super().__init__([])
        self.sending = asyncio.Event()
        self.release = asyncio.Event()
        self.streamed = b""

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Any:
        self.status, self.headers = status, headers
        return self

    async def send_bytes(self, data: bytes) -> None:
        self.sending.set()
        await self.release.wait()
        self.streamed += data


def get(secret: str, path: str, query: str = "") -> Scope:
    auth = "Basic " + base64.b64encode(f"{secret}:".encode()).decode()
    return Scope("GET", path, query, "127.0.0.1", Headers([("authorization", auth)]))


class HeldRedis(redis.asyncio.Redis):
    """A client whose next HGET (a report's first read: the secret's project) waits for `release`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_next = False
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def hget(self, name: Any, key: Any) -> Any:
        if self.hold_next:
            self.hold_next = False
            self.reading.set()
            await self.release.wait()
        return await super().hget(name, key)


def test_reports_past_the_limit_are_429_until_one_ends(redis_server: RedisServer) -> None:
    _, secret = create_project_keys(redis_server.url, "limited-reports")
    settings = Settings(redis_url=redis_server.url, max_report_requests=1, retry_after=7)

    async def scenario() -> tuple[Proto, Proto, HeldProto]:
        client = HeldRedis(connection_pool=redis.asyncio.ConnectionPool.from_url(redis_server.url))
        try:
            api = Api(client, ReportReads(redis_server.url, 10), settings)
            first = Proto([])
            client.hold_next = True
            running = asyncio.create_task(api(get(secret, "/api/funnels"), first))
            await client.reading.wait()  # the first report holds the worker's one report slot
            refused = Proto([])
            await api(get(secret, "/api/events"), refused)
            export = HeldProto()  # exports have slots of their own
            await api(get(secret, "/api/export"), export)
            client.release.set()
            await running
            return first, refused, export
        finally:
            await client.aclose()

    first, refused, export = asyncio.run(scenario())
    assert (refused.status, refused.header("retry-after")) == (429, "7")
    assert "--max-report-requests" in json.loads(refused.body)["error"]
    assert (first.status, first.text) == (200, '{"funnels":[]}')
    assert export.status == 200


def test_exports_past_their_limit_are_429_until_one_ends(redis_server: RedisServer) -> None:
    token, secret = create_project_keys(redis_server.url, "limited")
    now = dt.datetime.now(dt.UTC).timestamp()
    redis_server.client().xadd(keys.stream_key(token, 0), {"data": json.dumps({"time": now})})
    settings = Settings(redis_url=redis_server.url, max_exports=1, retry_after=7)

    async def scenario() -> tuple[HeldProto, Proto, HeldProto]:
        async with redis.asyncio.Redis.from_url(redis_server.url) as client:
            api = Api(client, ReportReads(redis_server.url, 10), settings)
            held = HeldProto()
            export = asyncio.create_task(api(get(secret, "/api/export"), held))
            await held.sending.wait()  # the export holds the worker's one export slot
            refused = Proto([])
            await api(get(secret, "/api/export"), refused)
            held.release.set()
            await export
            after = HeldProto()
            after.release.set()
            await api(get(secret, "/api/export"), after)
            return held, refused, after

    held, refused, after = asyncio.run(scenario())
    assert (refused.status, refused.header("retry-after")) == (429, "7")
    assert "--max-exports" in json.loads(refused.body)["error"]
    assert held.status == after.status == 200
    assert json.loads(held.streamed)["time"] == json.loads(after.streamed)["time"] == now


def test_mixpanels_export_holds_an_export_slot(redis_server: RedisServer) -> None:
    """/api/2.0/export is an export as /api/export is: past --max-exports, either is 429."""
    token, secret = create_project_keys(redis_server.url, "limited mixpanel export")
    now = dt.datetime.now(dt.UTC)
    event = {"event": "signup", "time": now.timestamp(), "received": now.timestamp(), "properties": {}}
    redis_server.client().xadd(keys.stream_key(token, 0), {"data": json.dumps(event)})
    settings = Settings(redis_url=redis_server.url, max_exports=1, retry_after=7)
    today = now.date().isoformat()

    async def scenario() -> tuple[HeldProto, Proto]:
        async with redis.asyncio.Redis.from_url(redis_server.url) as client:
            api = Api(client, ReportReads(redis_server.url, 10), settings)
            held = HeldProto()
            query = f"from_date={today}&to_date={today}"
            export = asyncio.create_task(api(get(secret, "/api/2.0/export", query), held))
            await held.sending.wait()
            refused = Proto([])
            await api(get(secret, "/api/export"), refused)
            held.release.set()
            await export
            return held, refused

    held, refused = asyncio.run(scenario())
    assert (refused.status, refused.header("retry-after")) == (429, "7")
    assert "--max-exports" in json.loads(refused.body)["error"]
    assert held.status == 200
    assert json.loads(held.streamed) == {
        "event": "signup",
        "properties": {"time": int(now.timestamp()), "mp_processing_time_ms": round(now.timestamp() * 1000)},
    }


def test_a_report_that_would_read_too_many_keys_is_refused(redis_server: RedisServer) -> None:
    _, secret = create_project_keys(redis_server.url, "bounded")
    # 4 partitions: a week of one event's counts reads 7 x 4 hashes and 7 x 4 HyperLogLogs.
    settings = Settings(redis_url=redis_server.url, partitions=4, max_report_reads=7 * 4 * 2)
    week = "from=2026-11-01&to=2026-11-07"

    async def answers() -> dict[str, Proto]:
        async with redis.asyncio.Redis.from_url(redis_server.url) as client:
            api = Api(client, ReportReads(redis_server.url, 10), settings)
            calls = {
                "one event, a week": ("/api/events", f"{week}&event=buy"),
                "one event, 8 days": ("/api/events", "from=2026-11-01&to=2026-11-08&event=buy"),
                "names, a week": ("/api/events", f"{week}&limit=1"),
                "funnel, a week": ("/api/funnels/signup", week),
                "funnel, 14 days": ("/api/funnels/signup", "from=2026-11-01&to=2026-11-14"),
            }
            protos = {}
            for what, (path, query) in calls.items():
                protos[what] = Proto([])
                await api(get(secret, path, query), protos[what])
            return protos

    protos = asyncio.run(answers())
    assert protos["one event, a week"].status == 200
    assert protos["funnel, a week"].status == 404  # within the bound: no such funnel
    for what, parameters in [
        ("one event, 8 days", "from/to"),
        ("names, a week", "from/to or limit"),
        ("funnel, 14 days", "from/to"),
    ]:
        error = json.loads(protos[what].body)["error"]
        assert (protos[what].status, error.split(":")[0]) == (400, parameters), what
        assert "--max-report-reads (56)" in error
