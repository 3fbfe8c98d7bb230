"""What the ingestion port answers on a path it does not serve: a client calling an endpoint trackgate
lacks (mixpanel-browser's `/record`, `/flags` and `/settings` when a site turns those features on, an
old SDK's `/decide`) must be visible, to the browser and in the log.

A browser shows a 404 without CORS headers as a CORS failure, hiding the status and the message: the 404
carries the same CORS headers as /track's answers, and a preflight is answered as /track's is (a
preflight answered 404 would stop the browser before the request that would get the 404). Each route is
logged once a minute, at most `MAX_ROUTES` of them remembered at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import msgspec

from trackgate import metrics
from trackgate.gateway import log
from trackgate.gateway.cors import Cors
from trackgate.gateway.ingest import METHODS
from trackgate.rsgi import HTTPProtocol, Scope
from trackgate.throttled_log import ThrottledLog

ROUTE: Final = "other"
"""The `route` label of these answers in `trackgate_requests_total`."""
LOG_SECONDS: Final = 60.0
MAX_ROUTES: Final = 1000
"""Routes remembered for their log lines: each holds at most `_MAX_PATH` characters."""
_MAX_PATH: Final = 200
_JSON: Final = ("content-type", "application/json")


class NotFound(msgspec.Struct):
    """The answer's body, in the shape of the ingestion endpoints' verbose answers: mixpanel-python then
    raises naming the route, rather than "Cannot interpret Mixpanel server response"."""

    status: int
    error: str


class UnknownRoutes:
    """The answer to a request for a path no endpoint serves, with `cors`'s headers, logged once a route
    and `LOG_SECONDS` of `clock`."""

    __slots__ = ("_cors", "_log")

    def __init__(self, cors: Cors, clock: Callable[[], float] = time.monotonic) -> None:
        self._cors = cors
        self._log = ThrottledLog(log, "requests to it", LOG_SECONDS, clock, max_keys=MAX_ROUTES)

    def __call__(self, scope: Scope, proto: HTTPProtocol) -> None:
        headers = scope.headers
        origin = headers.get("origin")
        cors = (self._cors.headers(origin) or []) if origin is not None else []
        if scope.method == "OPTIONS" and cors and headers.get("access-control-request-method"):
            # The ingestion endpoints' preflight: the browser then sends the request, and shows its 404.
            proto.response_bytes(204, self._cors.preflight(headers, cors, METHODS), b"")
            metrics.count_request(ROUTE, 204)
            return
        path = scope.path[:_MAX_PATH]
        self._log.warning(
            path,
            "no endpoint %r: %s from %s (Origin %r, User-Agent %r) answered 404",
            path,
            scope.method[:20],
            scope.client,
            (origin or "")[:100],
            (headers.get("user-agent") or "")[:100],
        )
        body = msgspec.json.encode(NotFound(0, f"trackgate has no endpoint {path}"))
        proto.response_bytes(404, [_JSON, *cors], body)
        metrics.count_request(ROUTE, 404)
