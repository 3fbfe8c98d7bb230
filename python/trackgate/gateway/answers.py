"""How an ingestion endpoint answers, in the shape the request asked for: `1`/`0`, verbose JSON, JSONP
or a pixel; a redirect; and a refusal, logged and counted."""

from __future__ import annotations

import base64
import re
from typing import Final, Protocol

import msgspec

from trackgate import metrics
from trackgate._native import EventError, Request
from trackgate.gateway.refusals import CLIENT_CLOSED, Reason, Refusal, RefusalLog
from trackgate.rsgi import HTTPProtocol, Scope

TRANSPARENT_GIF: Final = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
VERBOSE_OK: Final = b'{"status":1,"error":null}'
_CALLBACK_RE: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*\Z")
_MAX_CALLBACK: Final = 128
INVALID_CALLBACK: Final = (
    f"callback: must be a dotted JavaScript identifier of at most {_MAX_CALLBACK} characters"
)

PLAIN_TEXT: Final = [("content-type", "text/plain; charset=utf-8")]
JSON: Final = [("content-type", "application/json")]
_JS: Final = [("content-type", "text/javascript; charset=utf-8"), ("x-content-type-options", "nosniff")]
_GIF: Final = [("content-type", "image/gif"), ("cache-control", "no-store")]


class AnswerParams(Protocol):
    """What shapes an answer: a decoded `Request` has these, and so does the `DecodeError` of a request
    refused as a whole."""

    @property
    def verbose(self) -> bool: ...
    @property
    def img(self) -> bool: ...
    @property
    def callback(self) -> str | None: ...
    @property
    def strict(self) -> bool:
        """/import's `strict=1`: answered in Mixpanel's import shapes (import_answers.py)."""


class FailedRecord(msgspec.Struct):
    index: int
    field: str
    kind: str
    message: str


class VerboseFailure(msgspec.Struct, omit_defaults=True):
    status: int
    error: str
    num_records_imported: int
    failed_records: list[FailedRecord]
    duplicates: int = 0
    """Valid events that were duplicates of events stored before (within the dedup window): counted in
    `num_records_imported`, as they are stored, but not stored again. Left out when none."""


_encode = msgspec.json.Encoder().encode


def failed_events(errors: list[EventError]) -> list[FailedRecord]:
    """A decoded request's `errors`, its invalid events in index order."""
    return [FailedRecord(e.index, e.field, e.kind, e.message) for e in errors]


def verbose_stored(duplicates: int) -> bytes:
    """The verbose answer of a request whose events are all stored: Mixpanel's, and when some of them were
    duplicates of events stored before (within the dedup window, so not stored again), how many."""
    if not duplicates:
        return VERBOSE_OK
    return b'{"status":1,"error":null,"duplicates":%d}' % duplicates


def valid_callback(name: str) -> bool:
    return len(name) <= _MAX_CALLBACK and _CALLBACK_RE.match(name) is not None


def echoable_callback(params: AnswerParams) -> str | None:
    """The request's callback when it is one to echo, else None."""
    callback = params.callback
    return callback if callback is not None and valid_callback(callback) else None


class Answers:
    """One endpoint's answers, each counted in `trackgate_requests_total` under the endpoint's route."""

    __slots__ = ("_refusals", "_route")

    def __init__(self, route: str, refusals: RefusalLog) -> None:
        self._route = route
        self._refusals = refusals

    def answer(
        self,
        proto: HTTPProtocol,
        status: int,
        params: AnswerParams | None,
        callback: str | None,
        verbose_body: bytes,
        extra: list[tuple[str, str]],
    ) -> None:
        """The body the request asked for: `1`/`0`, `verbose_body`, JSONP (`callback`, already checked) or
        a pixel."""
        ok = status == 200
        if params is None or not params.verbose:
            body, headers = (b"1" if ok else b"0"), PLAIN_TEXT
        else:
            body, headers = verbose_body, JSON
        if callback is not None:
            body, headers = b"%s(%s)" % (callback.encode(), body), _JS
        elif params is not None and params.img:
            body, headers = TRANSPARENT_GIF, _GIF
        proto.response_bytes(status, [*headers, *extra] if extra else headers, body)
        metrics.count_request(self._route, status)

    def stored(
        self,
        proto: HTTPProtocol,
        request: Request,
        callback: str | None,
        duplicates: int,
        extra: list[tuple[str, str]],
    ) -> None:
        """A request whose events are all stored (with `test`, valid; `duplicates` of them before): 200 in
        the shape it asked for."""
        self.answer(proto, 200, request, callback, verbose_stored(duplicates), extra)

    def empty(self, proto: HTTPProtocol, status: int, headers: list[tuple[str, str]]) -> None:
        """An answer without a body: a redirect, a preflight's."""
        proto.response_bytes(status, headers, b"")
        metrics.count_request(self._route, status)

    def client_left(self) -> None:
        """The client left before the request could be answered: nothing to send, nothing to log."""
        metrics.count_request(self._route, CLIENT_CLOSED)

    def refuse(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        reason: Reason,
        message: str,
        headers: list[tuple[str, str]],
        params: AnswerParams | None = None,
    ) -> None:
        """Refuse the request as a whole; without `params` (it was not read) the answer is a plain `0`."""
        self._refused(scope, proto, reason, VerboseFailure(0, message, 0, []), headers, params)

    def refuse_events(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        request: Request,
        failed: list[FailedRecord],
        headers: list[tuple[str, str]],
        duplicates: int = 0,
    ) -> None:
        """Refuse a decoded request some of whose events failed (its valid events are stored, `duplicates`
        of them before)."""
        reason = Refusal.for_failed_events(record.kind for record in failed)
        first = failed[0]
        detail = first.message
        # The error names the field; the decoder's messages mostly do already.
        if first.field and first.field not in detail:
            detail = f"{first.field}: {detail}"
        message = (
            f"{len(failed)} of {request.total} events failed; the first, at index {first.index}: {detail}"
        )
        failure = VerboseFailure(0, message, request.accepted, failed, duplicates)
        self._refused(scope, proto, reason, failure, headers, request)

    def _refused(
        self,
        scope: Scope,
        proto: HTTPProtocol,
        reason: Reason,
        failure: VerboseFailure,
        headers: list[tuple[str, str]],
        params: AnswerParams | None,
    ) -> None:
        self._refusals.refused(scope, reason, failure.error)
        if params is None:
            self.answer(proto, reason.status, None, None, b"0", headers)
            return
        body = _encode(failure) if params.verbose else b"0"
        self.answer(proto, reason.status, params, echoable_callback(params), body, headers)
