"""The query API and the dashboard page: `/api/funnels`, `/api/funnels/{name}`, `/api/events`,
`/api/export`, Mixpanel's Engage Query API at `/api/2.0/engage` and `/api/query/engage` (engage.py), its
raw event export at `/api/2.0/export` (mixpanel_export.py), and `/dashboard`.

Every `/api` call is authenticated as Mixpanel's are, with the project's API secret as the HTTP Basic user
name or with a service account and `project_id` (credentials.py), and reads that project only.
"""

from __future__ import annotations

import datetime as dt
import logging
from importlib import resources
from typing import Final
from urllib.parse import parse_qs

import msgspec
from redis.exceptions import RedisError

from trackgate import bounds, counts, engage, export, funnels, metrics, mixpanel_export
from trackgate.credentials import CHALLENGE, RegistryCredentials, basic_credentials
from trackgate.parameters import ParameterError, day, last, whole
from trackgate.redis_target import RedisClient
from trackgate.report_reads import Reads
from trackgate.rsgi import HTTPProtocol, ProtocolClosed, Scope
from trackgate.settings import Settings

log = logging.getLogger("trackgate.api")

_JSON: Final = [("content-type", "application/json"), ("cache-control", "no-store")]
_EXPORT_FLUSH_BYTES: Final = 64 * 1024
_DEFAULT_DAYS: Final = 30
_MAX_QUERY_FIELDS: Final = 20
"""No endpoint reads as many parameters: a query with more is refused before it is parsed."""
_MAX_FORM_BYTES: Final = 1 << 20
"""The largest form body an Engage query may send (its `distinct_ids` can be long)."""
_ENGAGE_PATHS: Final = ("/api/2.0/engage", "/api/query/engage")
_EXPORT_PATHS: Final = ("/api/export", mixpanel_export.PATH)
_encode = msgspec.json.Encoder().encode


class ApiError(Exception):
    """An answer other than 200: its status and a message that names what is wrong."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class Api:
    def __init__(
        self, client: RedisClient, reads: Reads, settings: Settings, export_reads: Reads | None = None
    ) -> None:
        """`reads` serves the reports; `export_reads` (by default `reads`) the exports: with a budget of
        their own, a long export does not hold reports back."""
        self._client = client
        self._credentials = RegistryCredentials(client)
        self._reads = reads
        self._export_reads = export_reads if export_reads is not None else reads
        self._partitions = settings.partitions
        self._skew = settings.max_future_skew
        self._retry_after = str(settings.retry_after)
        # Exports are long and have slots of their own: short reports in a loop would take every slot an
        # export frees before its client asks again.
        self._limits = {"export": settings.max_exports, "report": settings.max_report_requests}
        self._flags = {"export": "--max-exports", "report": "--max-report-requests"}
        self._max_reads = settings.max_report_reads
        self._running = {"export": 0, "report": 0}
        self._max_age = settings.max_age
        self._dashboard: bytes | None = None

    def dashboard(self, proto: HTTPProtocol) -> None:
        if self._dashboard is None:
            page = resources.files("trackgate").joinpath("dashboard.html").read_bytes()
            self._dashboard = page.replace(b"@OVERFLOW@", bounds.OVERFLOW.encode())
        headers = [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-store"),
            # The page loads nothing from elsewhere, and nothing may frame it.
            (
                "content-security-policy",
                "default-src 'self'; style-src 'unsafe-inline'; "
                "script-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            ("x-content-type-options", "nosniff"),
        ]
        proto.response_bytes(200, headers, self._dashboard)
        metrics.count_request("dashboard", 200)

    async def __call__(self, scope: Scope, proto: HTTPProtocol) -> None:
        # Past the limit a report waits on the client's side, not in this process nor in Redis. A slot is
        # held until the answer is sent (an export's last line).
        kind = "export" if _is_export(scope.path) else "report"
        if self._running[kind] >= self._limits[kind]:
            busy = f"this worker serves {self._limits[kind]} {kind}s at once ({self._flags[kind]})"
            self._answer(proto, ApiError(429, busy, (("retry-after", self._retry_after),)))
            return
        self._running[kind] += 1
        try:
            await self._serve(scope, proto)
        finally:
            self._running[kind] -= 1

    def _answer(self, proto: HTTPProtocol, err: ApiError) -> None:
        headers = [*_JSON, *err.headers, *([CHALLENGE] if err.status == 401 else [])]
        proto.response_bytes(err.status, headers, _encode({"error": err.message}))
        metrics.count_request("api", err.status)

    async def _serve(self, scope: Scope, proto: HTTPProtocol) -> None:
        try:
            # Mixpanel's Engage queries come as POST forms too; they change nothing either.
            engage_query = scope.path.rstrip("/") in _ENGAGE_PATHS
            if scope.method not in ("GET", "HEAD") and not (engage_query and scope.method == "POST"):
                raise ApiError(405, f"{scope.method[:20]} is not allowed; the API is read-only (GET)")
            query = _parameters(scope.query_string)
            token = await self._authenticate(scope.headers.get("authorization"), last(query, "project_id"))
            # Granian hands over the path percent-decoded: a funnel's name is used as it stands (a name
            # may end with "/", so only the fixed endpoints are matched with a trailing slash or not).
            path = scope.path
            if _is_export(path):
                await self._export(proto, token, path, query)
                return
            if engage_query:
                if scope.method == "POST":
                    query |= _parameters(await self._form(scope, proto))
                body = await self._engage(token, query)
            else:
                body = await self._route(path, token, query)
        except ApiError as err:
            self._answer(proto, err)
            return
        except ParameterError as err:
            self._answer(proto, ApiError(400, str(err)))
            return
        except (RedisError, OSError) as err:
            log.error("API call %s failed: Redis: %s", scope.path, err)
            proto.response_bytes(
                503, [*_JSON, ("retry-after", "2")], _encode({"error": "Redis is unavailable"})
            )
            metrics.count_request("api", 503)
            return
        proto.response_bytes(200, _JSON, body)
        metrics.count_request("api", 200)

    async def _authenticate(self, header: str | None, project_id: str | None) -> str:
        if basic_credentials(header) is None:
            raise ApiError(
                401,
                "authenticate with the project's API secret as the HTTP Basic user name, or with a service "
                "account and ?project_id=",
            )
        token = await self._credentials.project_for(header, project_id)
        if token is None:
            raise ApiError(401, "no project has this API secret, or this service account for project_id")
        return token

    async def _route(self, path: str, token: str, query: dict[str, list[str]]) -> bytes:
        if path.rstrip("/") == "/api/funnels":
            return _encode({"funnels": await funnels.list_funnels(self._client, token, self._partitions)})
        if path.startswith("/api/funnels/"):
            name = path.removeprefix("/api/funnels/")
            start, end = _date_range(query)
            self._bound(
                funnels.report_keys_read(len(funnels.days_between(start, end)), self._partitions), "from/to"
            )
            report = await funnels.funnel_report(self._client, token, self._partitions, name, start, end)
            if report is None:
                raise ApiError(404, f"no funnel named {name!r} in this project")
            return _encode(report)
        if path.rstrip("/") == "/api/events":
            start, end = _date_range(query)
            unit = last(query, "unit") or "day"
            if unit not in ("day", "hour"):
                raise ApiError(400, "unit: expected day or hour")
            event = last(query, "event")
            offset = whole(query, "offset", 0, 2**31)
            limit = whole(query, "limit", counts.NAMES_LIMIT, counts.MAX_NAMES_LIMIT, least=1)
            span: counts.Unit = "hour" if unit == "hour" else "day"
            keys_read = counts.keys_read(
                len(funnels.days_between(start, end)),
                self._partitions,
                span,
                1 if event is not None else limit,
                listed=event is None,
            )
            self._bound(keys_read, "from/to" if event is not None or span == "hour" else "from/to or limit")
            result = await counts.event_counts(
                self._reads, token, self._partitions, start, end, span, event, offset=offset, limit=limit
            )
            return _encode(result)
        raise ApiError(404, f"no API endpoint at {path[:100]}")

    @staticmethod
    async def _form(scope: Scope, proto: HTTPProtocol) -> str:
        """A POST's form body, read after the caller is known (an API secret's holder), up to
        _MAX_FORM_BYTES."""
        length = scope.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > _MAX_FORM_BYTES):
            raise ApiError(413, f"the form is larger than {_MAX_FORM_BYTES} bytes")
        body = await proto()
        if len(body) > _MAX_FORM_BYTES:
            raise ApiError(413, f"the form is larger than {_MAX_FORM_BYTES} bytes")
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise ApiError(400, "the form is not UTF-8") from None

    async def _engage(self, token: str, query: dict[str, list[str]]) -> bytes:
        parsed = engage.EngageQuery.parse(query)
        return await engage.engage(self._reads, token, self._partitions, parsed)

    def _bound(self, reads: int, parameters: str) -> None:
        if reads > self._max_reads:
            raise ApiError(
                400,
                f"{parameters}: the report would read {reads} Redis keys, more than --max-report-reads "
                f"({self._max_reads}); ask for fewer days or names",
            )

    async def _export(self, proto: HTTPProtocol, token: str, path: str, query: dict[str, list[str]]) -> None:
        """trackgate's own export (the stored JSON), or Mixpanel's (its parameters and its lines): the
        same events read the same way."""
        if path.rstrip("/") == mixpanel_export.PATH:
            asked = mixpanel_export.MixpanelExport.parse(query)
            start, end, names, limit = asked.start, asked.end, asked.names, asked.limit
            write, content_type = asked.line, "text/plain; charset=utf-8"
        else:
            start, end = _date_range(query)
            names, limit, write, content_type = None, None, None, "application/x-ndjson"
        lines = export.export_events(
            self._export_reads,
            token,
            self._partitions,
            start,
            end,
            max_future_skew=self._skew,
            max_age=self._max_age,
            names=names,
            limit=limit,
        )
        transport = proto.response_stream(
            200, [("content-type", content_type), ("cache-control", "no-store")]
        )
        metrics.count_request("api", 200)
        chunk: list[bytes] = []
        size = 0
        try:
            async for stored in lines:
                line = stored if write is None else write(stored)
                chunk.append(line)
                size += len(line)
                if size >= _EXPORT_FLUSH_BYTES:
                    await transport.send_bytes(b"".join(chunk))
                    chunk, size = [], 0
            if chunk:
                await transport.send_bytes(b"".join(chunk))
        except ProtocolClosed:
            # The client left before the end (its 200 is counted): nobody to tell.
            return
        except (RedisError, OSError) as err:
            # The status is sent already: end the stream early; the client sees a short export.
            log.error("export for %s stopped: %s", token, err)


def _parameters(text: str) -> dict[str, list[str]]:
    try:
        return parse_qs(text, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        raise ApiError(400, f"the query has more than {_MAX_QUERY_FIELDS} parameters") from None


def _is_export(path: str) -> bool:
    return path.rstrip("/") in _EXPORT_PATHS


def _date(query: dict[str, list[str]], name: str, default: dt.date) -> dt.date:
    found = day(query, name)
    return default if found is None else found


def _date_range(query: dict[str, list[str]]) -> tuple[dt.date, dt.date]:
    today = dt.datetime.now(dt.UTC).date()
    end = _date(query, "to", today)
    start = _date(query, "from", end - dt.timedelta(days=_DEFAULT_DAYS - 1))
    try:
        funnels.days_between(start, end)
    except ValueError as err:
        raise ApiError(400, f"from/to: {err}") from None
    return start, end
