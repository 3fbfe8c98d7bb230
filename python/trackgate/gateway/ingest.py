"""What every ingestion endpoint does with a request, whatever its events are: CORS, the method, the
body and its deadline, the caller's address, decoding (by the endpoint's decoder), the projects' rate
limits, handing the events to the sink, and the answer. An endpoint is this flow with its route and its
decoder (see track.py and profiles.py), and where it needs them an admission before the body is read
(its `Gate`) and answers of its own (imports.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from trackgate import metrics
from trackgate._native import DecodeError, Options, PartitionBatch, Request, TokenSet
from trackgate.batcher import Key, UnavailableError, Written
from trackgate.gateway.answers import (
    INVALID_CALLBACK,
    AnswerParams,
    Answers,
    failed_events,
    valid_callback,
)
from trackgate.gateway.body import (
    BodyBudget,
    BodyBudgetError,
    BodyClaim,
    BodyDeadlines,
    BodyTimeoutError,
    BodyTooLargeError,
    read_body,
)
from trackgate.gateway.client import ClientAddress
from trackgate.gateway.cors import Cors
from trackgate.gateway.rate_limiter import RateLimited, RateLimiter
from trackgate.gateway.redirects import RedirectPolicy
from trackgate.gateway.refusals import BODY_TOO_LARGE, UNKNOWN_TOKEN_KIND, Reason, Refusal, RefusalLog
from trackgate.projects import REGISTRY_MISSING
from trackgate.rate_limit import RateLimit
from trackgate.rsgi import HTTPProtocol, ProtocolClosed, Scope

Batches = list[PartitionBatch]
METHODS: Final = "GET, POST, OPTIONS"


class Sink(Protocol):
    """Where accepted events go: the worker's batcher."""

    def submit(self, batches: Batches, count: int) -> Awaitable[Written]:
        """The future gives the keys whose write failed (none when all are stored) and how many events
        were duplicates of events stored before; raises UnavailableError when the events cannot be
        taken."""

    @property
    def not_ready_reason(self) -> str | None:
        """Why events cannot be stored now (said by /readyz), or None when they can."""

    @property
    def primaries(self) -> Mapping[str, str | None]:
        """On a Redis Cluster, each primary (`host:port`) and why it takes no writes (None: it does);
        empty on one Redis."""

    async def close(self) -> None: ...


class TokenSource(Protocol):
    """The tokens of the known projects (the worker's TokenCache), and their rate limits."""

    @property
    def tokens(self) -> TokenSet: ...
    @property
    def limits(self) -> Mapping[str, RateLimit]: ...
    @property
    def registry_missing(self) -> bool:
        """The project registry is gone from Redis: no request can be told apart as a known project's."""

    async def reload_for_unknown(self) -> bool: ...
    async def stop(self) -> None: ...


class Decoder(Protocol):
    """An endpoint's reading of its requests."""

    def decode(
        self, query: str, body: bytes, content_type: str | None, content_encoding: str | None, peer: str
    ) -> Request:
        """The request's events; raises DecodeError when the request as a whole is unusable."""

    def params(self, query: str) -> AnswerParams:
        """How to answer a request whose body is refused unread: as its query string says."""


class NativeDecoder:
    """A request read by one of the native decoder's functions (`decode_request`, or
    `decode_profile_request` with its `fixed` keyword arguments), by the decoder's rules, received at
    `clock()` (seconds since the epoch) and checked against the known projects' tokens."""

    __slots__ = ("_clock", "_fixed", "_options", "_read", "_tokens")

    def __init__(
        self,
        read: Callable[..., Request],
        options: Options,
        tokens: TokenSource,
        clock: Callable[[], float],
        **fixed: bool,
    ) -> None:
        self._read = read
        self._options = options
        self._tokens = tokens
        self._clock = clock
        self._fixed = fixed

    def decode(
        self, query: str, body: bytes, content_type: str | None, content_encoding: str | None, peer: str
    ) -> Request:
        return self._read(
            query,
            body,
            content_type,
            content_encoding,
            now=self._clock(),
            options=self._options,
            peer_ip=peer,
            tokens=self._tokens.tokens,
            **self._fixed,
        )

    def params(self, query: str) -> AnswerParams:
        """Read by the decoder, which refuses the empty body, or decodes a `data` in the query, bounded by
        the limit."""
        try:
            return self._read(query, b"", now=self._clock(), options=self._options, **self._fixed)
        except DecodeError as err:
            return err


@dataclass(frozen=True, slots=True)
class Refused:
    """A request its endpoint's gate refuses, before its body is read (a 503 is sent with Retry-After)."""

    reason: Reason
    message: str


class Gate(Protocol):
    """An endpoint's admission of a request, from its headers and query string alone."""

    async def admit(self, scope: Scope) -> Decoder | Refused:
        """The decoder for the request (bound to what the admission learnt, the caller's project say), or
        why it is refused."""


@dataclass(frozen=True, slots=True)
class Ingestion:
    """What the ingestion endpoints of a worker share."""

    sink: Sink
    tokens: TokenSource
    cors: Cors
    clients: ClientAddress
    redirects: RedirectPolicy
    deadlines: BodyDeadlines
    budget: BodyBudget
    refusals: RefusalLog
    body_limit: int
    retry_after: list[tuple[str, str]]
    limiter: RateLimiter


class Endpoint:
    """One ingestion endpoint, its route named in the metrics. `gate` admits each request before its
    body is read, `answers` shapes them (by default /track's)."""

    __slots__ = (
        "_answers",
        "_budget",
        "_clients",
        "_cors",
        "_deadlines",
        "_decoder",
        "_gate",
        "_limit",
        "_limiter",
        "_redirects",
        "_retry_after",
        "_sink",
        "_tokens",
    )

    def __init__(
        self,
        route: str,
        decoder: Decoder,
        shared: Ingestion,
        gate: Gate | None = None,
        answers: Answers | None = None,
    ) -> None:
        self._decoder = decoder
        self._gate = gate
        self._answers = answers if answers is not None else Answers(route, shared.refusals)
        self._sink = shared.sink
        self._tokens = shared.tokens
        self._cors = shared.cors
        self._clients = shared.clients
        self._redirects = shared.redirects
        self._deadlines = shared.deadlines
        self._budget = shared.budget
        self._limit = shared.body_limit
        self._retry_after = shared.retry_after
        self._limiter = shared.limiter

    async def __call__(self, scope: Scope, proto: HTTPProtocol) -> None:
        method = scope.method
        headers = scope.headers
        origin = headers.get("origin")
        cors: list[tuple[str, str]] = []
        if origin is not None:
            allowed = self._cors.headers(origin)
            if allowed is None:
                message = f"origin {origin[:100]!r} is not allowed"
                self._answers.refuse(scope, proto, Refusal.ORIGIN_NOT_ALLOWED, message, cors)
                return
            cors = allowed
        if method == "OPTIONS":
            self._answers.empty(proto, 204, self._cors.preflight(headers, cors, METHODS))
            return
        if method != "POST" and method != "GET":
            message = f"{method[:20]} is not allowed; use GET or POST"
            allow = [*cors, ("allow", METHODS)]
            self._answers.refuse(scope, proto, Refusal.METHOD_NOT_ALLOWED, message, allow)
            return
        if self._tokens.registry_missing:
            retry = [*cors, *self._retry_after]
            self._refuse_unread(scope, proto, Refusal.REGISTRY_MISSING, REGISTRY_MISSING, retry)
            return
        decoder = self._decoder
        if self._gate is not None:
            admitted = await self._gate.admit(scope)
            if isinstance(admitted, Refused):
                refused = admitted.reason
                extra = [*cors, *self._retry_after] if refused.status == 503 else cors
                self._refuse_unread(scope, proto, refused, admitted.message, extra)
                return
            decoder = admitted
        if method == "POST":
            # The body's bytes count against the worker's budget until the request is answered.
            claim = self._budget.claim()
            try:
                await self._post(scope, proto, cors, decoder, claim)
            finally:
                claim.release()
        else:
            await self._decode_and_store(scope, proto, b"", cors, decoder)

    async def _post(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        cors: list[tuple[str, str]],
        decoder: Decoder,
        claim: BodyClaim,
    ) -> None:
        length = scope.headers.get("content-length")
        try:
            body = await read_body(proto, length, self._limit, self._deadlines, claim)
        except BodyTimeoutError:
            message = f"the request body did not arrive within {self._deadlines.timeout:g} s"
            self._refuse_unread(scope, proto, Refusal.BODY_TIMEOUT, message, cors)
            return
        except BodyTooLargeError:
            message = f"the request is larger than {self._limit} bytes"
            self._refuse_unread(scope, proto, BODY_TOO_LARGE, message, cors)
            return
        except BodyBudgetError:
            message = f"the worker's {self._budget.limit} bytes for request bodies are taken; retry later"
            self._refuse_unread(
                scope, proto, Refusal.BODY_BYTES_IN_FLIGHT, message, [*cors, *self._retry_after]
            )
            return
        except ProtocolClosed:
            self._answers.client_left()
            return
        await self._decode_and_store(scope, proto, body, cors, decoder, claim)

    def _refuse_unread(
        self, scope: Scope, proto: HTTPProtocol, reason: Reason, message: str, headers: list[tuple[str, str]]
    ) -> None:
        """Refuse a request whose body was not (all) read: answered as its query string asks."""
        params = self._decoder.params(scope.query_string)
        self._answers.refuse(scope, proto, reason, message, headers, params)

    async def _decode_and_store(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        body: bytes,
        cors: list[tuple[str, str]],
        decoder: Decoder,
        claim: BodyClaim | None = None,
    ) -> None:
        headers = scope.headers
        query = scope.query_string
        content_type = headers.get("content-type")
        content_encoding = headers.get("content-encoding")
        peer = self._clients.of(scope.client, headers)
        try:
            request = decoder.decode(query, body, content_type, content_encoding, peer)
            if request.errors and _names_unknown_token(request) and await self._tokens.reload_for_unknown():
                # A project created since the last reload: decode again with the fresh list.
                request = decoder.decode(query, body, content_type, content_encoding, peer)
        except DecodeError as err:
            self._answers.refuse(scope, proto, err, str(err), cors, err)
            return
        if claim is not None and not self._hold_decoded(request, len(body), claim):
            message = (
                f"the events inflate past the worker's {self._budget.limit} bytes for request bodies; "
                "retry later"
            )
            retry = [*cors, *self._retry_after]
            self._answers.refuse(scope, proto, Refusal.BODY_BYTES_IN_FLIGHT, message, retry, request)
            return
        await self._store_and_answer(scope, proto, request, cors)

    @staticmethod
    def _hold_decoded(request: Request, body_size: int, claim: BodyClaim) -> bool:
        """Count what the decoded events hold beyond their body's size: a compressed body is small on
        the wire and large once inflated, and the events are held until the request is answered."""
        held = sum(len(batch.packed) + len(batch.xadds) for batch in request.batches)
        return held <= body_size or claim.take(held - body_size)

    async def _store_and_answer(
        self, scope: Scope, proto: HTTPProtocol, request: Request, cors: list[tuple[str, str]]
    ) -> None:
        callback = request.callback
        if callback is not None and not valid_callback(callback):
            self._answers.refuse(scope, proto, Refusal.INVALID_CALLBACK, INVALID_CALLBACK, cors, request)
            return
        redirect = request.redirect
        if redirect is not None and not self._redirects.allows(redirect):
            message = "redirect: only http(s) URLs to an allowed host are followed"
            self._answers.refuse(scope, proto, Refusal.INVALID_REDIRECT, message, cors, request)
            return
        duplicates = 0
        if request.accepted:
            if self._limiter.active:
                limited = await self._limiter.admit(request.batches)
                if limited is not None:
                    self._rate_limited(scope, proto, limited, request, cors)
                    return
            metrics.count_accepted(request.accepted)
            if not request.test:
                try:
                    written = await self._sink.submit(request.batches, request.accepted)
                except UnavailableError as err:
                    self._unavailable(scope, proto, Refusal.for_unavailable(err.reason), request, cors)
                    return
                unstored = written.failed
                if unstored and any(key in unstored for key in _keys(request.batches)):
                    self._unavailable(scope, proto, Refusal.WRITE_FAILED, request, cors)
                    return
                duplicates = written.duplicates
        errors = request.errors
        if errors:
            failed = failed_events(errors)
            for record in failed:
                metrics.EVENTS_REJECTED.labels(record.kind).inc()
            if redirect is None:
                self._answers.refuse_events(scope, proto, request, failed, cors, duplicates)
                return
        if redirect is not None:
            # A person clicked a link (an email's, a page's): they go on even when its events were
            # refused, which the metrics count; only an outage (503, above) keeps them here.
            self._answers.empty(proto, 302, [*cors, ("location", redirect), ("cache-control", "no-store")])
        else:
            self._answers.stored(proto, request, callback, duplicates, cors)

    def _unavailable(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        reason: Refusal,
        request: Request,
        cors: list[tuple[str, str]],
    ) -> None:
        message = f"Redis cannot take the events now ({reason.kind.replace('_', ' ')}); retry later"
        self._answers.refuse(scope, proto, reason, message, [*cors, *self._retry_after], request)

    def _rate_limited(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        limited: RateLimited,
        request: Request,
        cors: list[tuple[str, str]],
    ) -> None:
        """Refused whole, events that a retry would store: 429, never 400, which clients drop."""
        metrics.count_rate_limited(limited.token, request.accepted)
        message = (
            f"project {limited.token} is past its rate limit ({limited.limit.text()}); "
            f"retry in {limited.retry_after} s"
        )
        retry = [*cors, ("retry-after", str(limited.retry_after))]
        self._answers.refuse(scope, proto, Refusal.RATE_LIMITED, message, retry, request)


def _names_unknown_token(request: Request) -> bool:
    return any(error.kind == UNKNOWN_TOKEN_KIND for error in request.errors)


def _keys(batches: Batches) -> Iterable[Key]:
    """The partition of each partition batch."""
    return (batch.partition for batch in batches)
