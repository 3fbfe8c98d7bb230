"""Why the gateway refuses a request, with the status each reason is answered with, and the log of
refusals.

The decoder's own reasons (a payload it cannot use) carry their status in the `DecodeError` it raises:
that table lives in the decoder. This module holds the other one: the reasons the gateway itself
decides, and how the per-event outcome of a decoded request becomes a reason.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from trackgate import metrics
from trackgate._native import REQUEST_ERROR_STATUS
from trackgate.batcher import Unavailable
from trackgate.decode_errors import EventErrorKind, RequestErrorKind
from trackgate.gateway import log
from trackgate.rsgi import Scope
from trackgate.throttled_log import ThrottledLog

CLIENT_CLOSED: Final = 499
"""Counted for a request whose client left before it could be answered (nginx's number for it)."""


UNKNOWN_TOKEN_KIND: Final[EventErrorKind] = "unknown_token"  # noqa: S105 (an error kind, not a secret)
"""The decoder's kind for an event whose token is not a known project's."""


class Reason(Protocol):
    """A refusal's name (its log line, its `trackgate_requests_rejected_total` label) and status."""

    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> int: ...


class Refusal(enum.Enum):
    """Every reason the gateway itself refuses a request for, and its status."""

    kind: str
    status: int

    def __init__(self, kind: str, status: int) -> None:
        self.kind = kind
        self.status = status

    # /import's credentials are no project's (or not the project `project_id` names).
    INVALID_CREDENTIALS = "invalid_credentials", 401
    ORIGIN_NOT_ALLOWED = "origin_not_allowed", 403
    METHOD_NOT_ALLOWED = "method_not_allowed", 405
    BODY_TIMEOUT = "body_timeout", 408
    INVALID_CALLBACK = "invalid_callback", 400
    INVALID_REDIRECT = "invalid_redirect", 400
    # A decoded request some of whose events failed (see `for_failed_events`).
    INVALID_EVENTS = "invalid_events", REQUEST_ERROR_STATUS["invalid_events"]
    # Every failed event names a token the gateway does not know: the client has the wrong token.
    UNKNOWN_TOKEN = UNKNOWN_TOKEN_KIND, 401
    # The sink cannot take the events: the batcher's reasons. Clients retry these.
    REDIS_UNAVAILABLE = Unavailable.REDIS_UNAVAILABLE, 503
    OVERLOADED = Unavailable.OVERLOADED, 503
    STOPPING = Unavailable.STOPPING, 503
    WRITE_FAILED = Unavailable.WRITE_FAILED, 503
    # The worker holds as many bytes of request bodies as its budget allows (--max-body-bytes-in-flight):
    # refused before the body is read, retried by clients.
    BODY_BYTES_IN_FLIGHT = "body_bytes_in_flight", 503
    # The project registry is gone from Redis (see projects.TokenCache): until it is restored, events
    # are kept by the clients, which retry a 503 (a 401 they would drop).
    REGISTRY_MISSING = "registry_missing", 503
    # The project is past its rate limit (gateway/rate_limiter.py): clients retry after `Retry-After`
    # (mixpanel-browser), or raise and keep the events (mixpanel-python); never a 400, which they drop.
    RATE_LIMITED = "rate_limited", 429

    @classmethod
    def for_unavailable(cls, reason: Unavailable) -> Refusal:
        """The refusal of a request the batcher could not take, for its reason."""
        return _BY_KIND[reason]

    @classmethod
    def for_failed_events(cls, kinds: Iterable[str]) -> Refusal:
        """401 only when every failed event names an unknown token (the per-event kind of the same name):
        the client has the wrong token, not bad events."""
        unknown_only = all(kind == UNKNOWN_TOKEN_KIND for kind in kinds)
        return cls.UNKNOWN_TOKEN if unknown_only else cls.INVALID_EVENTS


_BY_KIND: Final = {refusal.kind: refusal for refusal in Refusal}


@dataclass(frozen=True, slots=True)
class DecoderReason:
    """A reason of the decoder's, refused by the gateway before the decoder sees the request."""

    kind: RequestErrorKind
    status: int


BODY_TOO_LARGE: Final[Reason] = DecoderReason("body_too_large", REQUEST_ERROR_STATUS["body_too_large"])
"""A body over the request limit, refused before it is all read, as the decoder would refuse it."""


class RefusalLog(ThrottledLog):
    """One log line per refused request, except that a reason is logged at most once a second (see
    ThrottledLog); `trackgate_requests_rejected_total` counts them all."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(log, "refused for this reason", interval, clock)

    def refused(self, scope: Scope, reason: Reason, message: str) -> None:
        """Count a refused request, and log it in one line (never the payload)."""
        metrics.REQUESTS_REJECTED.labels(reason.kind).inc()
        self.warning(
            reason.kind,
            "%s %s from %s: %d %s: %.300s",
            scope.method,
            scope.path,
            scope.client,
            reason.status,
            reason.kind,
            message,
        )
