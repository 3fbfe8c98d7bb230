"""The RSGI application Granian runs in each worker: routes, CORS, answers, statuses.

`/track` hands the request's raw query string and body to the native decoder, the decoder's partition
batches to the worker's batcher, and answers when the batcher says the events are in Redis. Nothing here
looks at individual events except to report the ones that failed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol
from urllib.parse import urlsplit

import msgspec
from granian.rsgi import ProtocolClosed  # type: ignore[attr-defined]  # re-exported, not in __all__
from redis.asyncio import Redis
from redis.exceptions import RedisError

from trackgate import metrics, store
from trackgate._native import DecodeError, EventError, Options, Request, decode_request
from trackgate.api import Api
from trackgate.batcher import Batcher, UnavailableError
from trackgate.projects import TokenCache
from trackgate.rsgi import Headers, HTTPProtocol, PendingRead, Scope
from trackgate.settings import Settings, for_worker, redirect_host

log = logging.getLogger("trackgate.http")


class _Params(Protocol):
    """What shapes an answer: a decoded `Request` has these, and so does the `DecodeError` of a request
    refused as a whole."""

    @property
    def verbose(self) -> bool: ...
    @property
    def img(self) -> bool: ...
    @property
    def callback(self) -> str | None: ...


# Every way a /track request can fail, and its status: the one place that decides. Whole-request decode
# errors are listed by the decoder's kind (the decoder's own `status` agrees; a kind added to the decoder
# later falls back to it); the rest are the gateway's reasons.
CLIENT_CLOSED: Final = 499
"""Counted for a request whose client left before it could be answered (nginx's number for it)."""
STATUS: Final[dict[str, int]] = {
    # the decoder, whole request
    "empty": 400,
    "invalid_gzip": 400,
    "invalid_base64": 400,
    "invalid_utf8": 400,
    "invalid_json": 400,
    "not_events": 400,
    "empty_batch": 400,
    "invalid_parameter": 400,
    "body_too_large": 413,
    "decompressed_too_large": 413,
    "too_many_events": 413,
    "unsupported_encoding": 415,
    # the decoder, per event
    "invalid_events": 400,
    "unknown_token": 401,
    # the gateway
    "invalid_callback": 400,
    "invalid_redirect": 400,
    "origin_not_allowed": 403,
    "method_not_allowed": 405,
    "body_timeout": 408,
    "redis_unavailable": 503,
    "overloaded": 503,
    "stopping": 503,
    "write_failed": 503,
}

TRANSPARENT_GIF: Final = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
VERBOSE_OK: Final = b'{"status":1,"error":null}'
_CALLBACK_RE: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*\Z")
_MAX_CALLBACK: Final = 128
_HEADER_LIST_RE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*\Z")

_PLAIN: Final = [("content-type", "text/plain; charset=utf-8")]
_JSON: Final = [("content-type", "application/json")]
_JS: Final = [("content-type", "text/javascript; charset=utf-8"), ("x-content-type-options", "nosniff")]
_GIF: Final = [("content-type", "image/gif"), ("cache-control", "no-store")]
_ALLOW: Final = "GET, POST, OPTIONS"


class FailedRecord(msgspec.Struct):
    index: int
    field: str
    kind: str
    message: str


class VerboseFailure(msgspec.Struct):
    status: int
    error: str
    num_records_imported: int
    failed_records: list[FailedRecord]


_encode = msgspec.json.Encoder().encode


class BodyRead:
    """One request's body on its way in: when it began, the read Granian has pending (cancelling it wakes
    the handler with CancelledError), and whether its deadline passed."""

    __slots__ = ("expired", "pending", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.pending: PendingRead | None = None
        self.expired = False


class BodyDeadlines:
    """The bodies still arriving, and a sweep that cancels the reads of those past `timeout`.

    One sweep every SWEEP_SECONDS instead of a timer per request: `asyncio.timeout` costs ~5 µs a
    request on uvloop (a timer made and cancelled), a tenth of a one-event POST. A body may so take up to
    SWEEP_SECONDS longer than the timeout. The pending read is cancelled, not the request's task: with
    Granian's Rust task implementation every request shares one task object, whose cancel() does
    nothing. The clock is passed in, so that tests need not wait."""

    SWEEP_SECONDS: Final = 0.5

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._reading: set[BodyRead] = set()

    def begin(self) -> BodyRead:
        read = BodyRead(self._clock())
        self._reading.add(read)
        return read

    def end(self, read: BodyRead) -> None:
        self._reading.discard(read)

    def sweep(self) -> None:
        cutoff = self._clock() - self.timeout
        for read in [r for r in self._reading if r.started <= cutoff]:
            self._reading.discard(read)
            read.expired = True
            if read.pending is not None:
                read.pending.cancel()


class RefusalLog:
    """One log line per refused request, except that a reason is logged at most once a second: an outage
    or a misbehaving client refused thousands of times a second would otherwise bury the log. The next
    line of a reason says how many were left out; `trackgate_requests_rejected_total` counts them all."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warning(self, reason: str, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next.get(reason, 0.0):
            self._left_out[reason] = self._left_out.get(reason, 0) + 1
            return
        self._next[reason] = now + self._interval
        left_out = self._left_out.pop(reason, 0)
        if left_out:
            message += " (and %d more refused for this reason since its last line)"
            args = (*args, left_out)
        log.warning(message, *args)


def valid_callback(name: str) -> bool:
    return len(name) <= _MAX_CALLBACK and _CALLBACK_RE.match(name) is not None


def _callback_of(params: _Params) -> str | None:
    """The request's callback when it is one to echo, else None."""
    callback = params.callback
    return callback if callback is not None and valid_callback(callback) else None


# Net allocations of tracked objects (a young generation's size) before a collection; Python's is 700.
GC_THRESHOLD: Final = 10_000


class App:
    """One per worker process. Granian calls `__rsgi_init__` before serving and `__rsgi_del__` after the
    last in-flight request was answered."""

    settings: Settings
    _options: Options
    _batcher: Batcher
    _tokens: TokenCache
    _admin: Redis
    _api: Api
    _refusals: RefusalLog
    _publisher: asyncio.Task[None]
    _sweeper: asyncio.Task[None]
    _deadlines: BodyDeadlines

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.start(for_worker()))
        # What exists now (modules, settings, clients: ~40,000 objects) lives as long as the worker. A
        # full collection walked all of it every ~0.7 s under load, 21 ms a time: 6% of the worker's
        # time, and the gateway's p99. Frozen, it is never walked again. The requests' own objects die
        # with their request, so collections are needed only when that count keeps growing: the higher
        # first threshold leaves them to real cycles instead of the in-flight requests' peaks.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 10, 10)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.stop())

    async def start(self, settings: Settings) -> None:
        if settings.redis_url is None:
            raise RuntimeError("no Redis URL: run the app with `trackgate serve`, or set TRACKGATE_REDIS_URL")
        self.settings = settings
        self._options = settings.decoder_options()
        self._any_origin = "*" in settings.allowed_origins
        self._origins = frozenset(settings.allowed_origins)
        self._redirect_hosts = frozenset(filter(None, map(redirect_host, settings.redirect_hosts)))
        self._proxies = tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
        # Peers repeat (they are the proxies), so each address is parsed and matched once.
        self._trusted = functools.lru_cache(maxsize=4096)(self._is_trusted)
        self._retry_after = [("retry-after", str(settings.retry_after))]
        self._refusals = RefusalLog()
        self._deadlines = BodyDeadlines(settings.body_timeout)
        self._admin = Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            await store.load_functions(self._admin, replace=False)
        except (RedisError, OSError) as err:
            log.warning("function library not checked (Redis unreachable): %s", err)
        self._tokens = TokenCache(self._admin, settings.token_refresh)
        await self._tokens.start()
        self._batcher = Batcher(
            settings.redis_url,
            max_events=settings.batch_max_events,
            linger=settings.batch_linger_ms / 1000,
            depth=settings.pipeline_depth,
            max_pending=settings.max_pending_events,
            timeout=settings.redis_timeout,
            retry_window=settings.retry_window,
            stream_maxlen=settings.stream_maxlen,
            stream_max_age=settings.stream_max_age,
            event_max_age=settings.max_age,
            funnel_window=self._tokens.funnel_window,
        )
        await self._batcher.start()
        self._api = Api(self._admin, settings)
        self._publisher = asyncio.create_task(self._publish_metrics(), name="trackgate-metrics")
        self._sweeper = asyncio.create_task(self._sweep_deadlines(), name="trackgate-body-deadlines")

    @staticmethod
    async def _publish_metrics() -> None:
        while True:
            await asyncio.sleep(metrics.PUBLISH_SECONDS)
            metrics.publish()

    async def _sweep_deadlines(self) -> None:
        while True:
            await asyncio.sleep(BodyDeadlines.SWEEP_SECONDS)
            self._deadlines.sweep()

    async def stop(self) -> None:
        self._publisher.cancel()
        self._sweeper.cancel()
        await asyncio.gather(self._publisher, self._sweeper, return_exceptions=True)
        await self._batcher.close()
        await self._tokens.stop()
        await self._admin.aclose()
        metrics.publish()
        metrics.worker_exited()

    async def __rsgi__(self, scope: Scope, proto: HTTPProtocol) -> None:
        path = scope.path
        if path == "/track" or path == "/track/":
            await self._track(scope, proto)
        elif path == "/healthz":
            self._plain(proto, "healthz", 200, b"ok\n")
        elif path == "/readyz":
            await self._ready(proto)
        elif path.startswith("/api/"):
            await self._api(scope, proto)
        elif path == "/dashboard" or path == "/dashboard/":
            self._api.dashboard(proto)
        elif path == "/metrics":
            proto.response_bytes(200, [("content-type", metrics.CONTENT_TYPE)], metrics.render())
            metrics.count_request("metrics", 200)
        else:
            self._plain(proto, "other", 404, b"not found\n")

    @staticmethod
    def _plain(proto: HTTPProtocol, route: str, status: int, body: bytes) -> None:
        proto.response_bytes(status, _PLAIN, body)
        metrics.count_request(route, status)

    async def _ready(self, proto: HTTPProtocol) -> None:
        try:
            ok = bool(await asyncio.wait_for(self._admin.ping(), 1.0)) and self._batcher.ready
        except (RedisError, OSError, TimeoutError):
            ok = False
        self._plain(proto, "readyz", 200 if ok else 503, b"ready\n" if ok else b"Redis is not reachable\n")

    # /track

    async def _track(self, scope: Scope, proto: HTTPProtocol) -> None:
        method = scope.method
        headers = scope.headers
        origin = headers.get("origin")
        cors: list[tuple[str, str]] = []
        if origin is not None:
            if not self._any_origin and origin not in self._origins:
                self._refuse(
                    scope, proto, "origin_not_allowed", f"origin {origin[:100]!r} is not allowed", cors
                )
                return
            cors = [
                ("access-control-allow-origin", origin),
                ("access-control-allow-credentials", "true"),
                ("vary", "Origin"),
            ]
        if method == "POST":
            read = self._deadlines.begin()
            try:
                body = await self._read_body(proto, headers.get("content-length"), read)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not read.expired or (task is not None and task.cancelling()):
                    raise  # not (only) the deadline: the request itself is being cancelled
                params = self._query_params(scope.query_string)
                message = f"the request body did not arrive within {self._deadlines.timeout:g} s"
                self._refuse(
                    scope, proto, "body_timeout", message, cors, params, callback=_callback_of(params)
                )
                return
            except ProtocolClosed:
                # The client left before its body arrived: there is no one to answer, nor to log about.
                # (A chunked body cut short arrives as a shorter body instead, and is refused as such.)
                metrics.count_request("track", CLIENT_CLOSED)
                return
            finally:
                self._deadlines.end(read)
            if body is None:
                params = self._query_params(scope.query_string)
                self._refuse(
                    scope,
                    proto,
                    "body_too_large",
                    f"the request is larger than {self._options.max_request_bytes} bytes",
                    cors,
                    params,
                    callback=_callback_of(params),
                )
                return
        elif method == "GET":
            body = b""
        elif method == "OPTIONS":
            self._preflight(proto, headers, cors)
            return
        else:
            self._refuse(
                scope,
                proto,
                "method_not_allowed",
                f"{method[:20]} is not allowed; use GET or POST",
                [*cors, ("allow", _ALLOW)],
            )
            return
        content_type = headers.get("content-type")
        content_encoding = headers.get("content-encoding")
        peer = self._peer(scope, headers)

        def decode() -> Request:
            return decode_request(
                scope.query_string,
                body,
                content_type,
                content_encoding,
                now=time.time(),
                options=self._options,
                peer_ip=peer,
                tokens=self._tokens.tokens,
            )

        try:
            request = decode()
            if request.errors and _names_unknown_token(request) and await self._tokens.reload_for_unknown():
                # A project created since the last reload: decode again with the fresh list.
                request = decode()
        except DecodeError as err:
            status = STATUS.get(err.kind, err.status)
            self._refuse(
                scope, proto, err.kind, str(err), cors, err, callback=_callback_of(err), status=status
            )
            return
        await self._store_and_answer(scope, proto, request, cors)

    async def _store_and_answer(
        self, scope: Scope, proto: HTTPProtocol, request: Request, cors: list[tuple[str, str]]
    ) -> None:
        callback = request.callback
        if callback is not None and not valid_callback(callback):
            self._refuse(
                scope,
                proto,
                "invalid_callback",
                "callback: must be a dotted JavaScript identifier of at most 128 characters",
                cors,
                request,
                callback=None,
            )
            return
        if request.redirect is not None and not self._redirect_allowed(request.redirect):
            self._refuse(
                scope,
                proto,
                "invalid_redirect",
                "redirect: only http(s) URLs to an allowed host are followed",
                cors,
                request,
                callback=callback,
            )
            return
        if request.accepted:
            metrics.count_accepted(request.accepted)
            if not request.test:
                try:
                    failed = await self._batcher.submit(request.batches, request.accepted)
                except UnavailableError as err:
                    self._unavailable(scope, proto, err.reason, request, cors, callback)
                    return
                if failed and any((b.token, b.partition) in failed for b in request.batches):
                    self._unavailable(scope, proto, "write_failed", request, cors, callback)
                    return
        errors = request.errors
        for error in errors:
            metrics.EVENTS_REJECTED.labels(error.kind).inc()
        if request.redirect is not None:
            # A person clicked a link (an email's, a page's): they go on even when its events were
            # refused, which the metrics count; only an outage (503, above) keeps them here.
            proto.response_bytes(
                302, [*cors, ("location", request.redirect), ("cache-control", "no-store")], b""
            )
            metrics.count_request("track", 302)
            return
        if not errors:
            self._answer(proto, 200, request, callback, VERBOSE_OK, cors)
            return
        reason = "unknown_token" if all(e.kind == "unknown_token" for e in errors) else "invalid_events"
        index, field, detail = errors[0].index, errors[0].field, errors[0].message
        # The error names the field; the decoder's messages mostly do already.
        if field and field not in detail:
            detail = f"{field}: {detail}"
        message = f"{len(errors)} of {request.total} events failed; the first, at index {index}: {detail}"
        self._refuse(
            scope,
            proto,
            reason,
            message,
            cors,
            request,
            callback=callback,
            imported=request.accepted,
            errors=errors,
        )

    def _unavailable(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        reason: str,
        params: _Params,
        cors: list[tuple[str, str]],
        callback: str | None,
    ) -> None:
        message = f"Redis cannot take the events now ({reason.replace('_', ' ')}); retry later"
        self._refuse(scope, proto, reason, message, [*cors, *self._retry_after], params, callback=callback)

    def _refuse(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        reason: str,
        message: str,
        headers: list[tuple[str, str]],
        params: _Params | None = None,
        *,
        callback: str | None = None,
        status: int | None = None,
        imported: int = 0,
        errors: Sequence[EventError] = (),
    ) -> None:
        """Answer a failure, and log it in one line (never the payload; see RefusalLog)."""
        if status is None:
            status = STATUS[reason]
        metrics.REQUESTS_REJECTED.labels(reason).inc()
        self._refusals.warning(
            reason,
            "%s %s from %s: %d %s: %.300s",
            scope.method,
            scope.path,
            scope.client,
            status,
            reason,
            message,
        )
        if params is None:
            self._answer(proto, status, None, None, b"0", headers)
            return
        detail = b"0"
        if params.verbose:
            detail = _encode(
                VerboseFailure(
                    status=0,
                    error=message,
                    num_records_imported=imported,
                    failed_records=[FailedRecord(e.index, e.field, e.kind, e.message) for e in errors],
                )
            )
        self._answer(proto, status, params, callback, detail, headers)

    @staticmethod
    def _answer(
        proto: HTTPProtocol,
        status: int,
        params: _Params | None,
        callback: str | None,
        verbose_body: bytes,
        extra: list[tuple[str, str]],
    ) -> None:
        """The body the request asked for: `1`/`0`, verbose JSON, JSONP or a pixel."""
        ok = status == 200
        if params is None or not params.verbose:
            body, headers = (b"1" if ok else b"0"), _PLAIN
        else:
            body, headers = verbose_body, _JSON
        if callback is not None:
            body, headers = b"%s(%s)" % (callback.encode(), body), _JS
        elif params is not None and params.img:
            body, headers = TRANSPARENT_GIF, _GIF
        proto.response_bytes(status, [*headers, *extra] if extra else headers, body)
        metrics.count_request("track", status)

    def _preflight(self, proto: HTTPProtocol, headers: Headers, cors: list[tuple[str, str]]) -> None:
        answer = [("allow", _ALLOW), *cors]
        if cors:
            asked = headers.get("access-control-request-headers")
            allowed = (
                asked if asked and _HEADER_LIST_RE.match(asked.strip()) else "Content-Type, Content-Encoding"
            )
            answer += [
                ("access-control-allow-methods", _ALLOW),
                ("access-control-allow-headers", allowed),
                ("access-control-max-age", "86400"),
            ]
        proto.response_bytes(204, answer, b"")
        metrics.count_request("track", 204)

    def _query_params(self, query: str) -> _Params:
        """How to answer a request whose body is refused unread: as its query string says, read by the
        decoder (which refuses the empty body, or decodes a `data` in the query, bounded by the limit)."""
        try:
            return decode_request(query, b"", now=time.time(), options=self._options)
        except DecodeError as err:
            return err

    async def _read_body(self, proto: HTTPProtocol, length: str | None, read: BodyRead) -> bytes | None:
        """The body, or None when it is over the request limit (refused before it is all in memory).
        Every read is left in `read.pending` while it waits, for the deadline sweep to cancel."""
        limit = self._options.max_request_bytes
        if length is not None:
            if length.isdigit() and int(length) > limit:
                return None
            read.pending = proto()
            return await read.pending
        # Chunked: no length announced, so count while reading.
        chunks = []
        size = 0
        stream = proto.__aiter__()
        while True:
            try:
                read.pending = stream.__anext__()
                chunk = await read.pending
            except StopAsyncIteration:
                break
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _peer(self, scope: Scope, headers: Headers) -> str:
        client = scope.client
        host = (
            client[1 : client.index("]")] if client.startswith("[") else client.rpartition(":")[0] or client
        )
        if not self._proxies or not self._trusted(host):
            return host
        # Behind trusted proxies the client is the right-most hop that is not one of them: every hop to
        # its left was written by the client itself and can say anything.
        hops = ",".join(headers.get_all("x-forwarded-for")).split(",")
        for hop in reversed(hops):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break
            if not self._trusted(hop):
                return hop
            host = hop
        return host

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._proxies)

    def _redirect_allowed(self, url: str) -> bool:
        # Printable ASCII only: no CR/LF (header injection), no spaces, no backslashes (which browsers
        # read as slashes, so that `https://allowed\@evil` would go to evil).
        if len(url) > 2048 or not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
            return False
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError for a malformed port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or "@" in parts.netloc or not parts.hostname:
            return False
        return redirect_host(parts.hostname) in self._redirect_hosts


def _names_unknown_token(request: Request) -> bool:
    return any(error.kind == "unknown_token" for error in request.errors)


app = App()
