"""How /import answers: always JSON, in the shapes of Mixpanel's import API where its clients read them.
Every 401 is `{"code": 401, "error": "Invalid credentials", "status": 0}`. With `strict=1` every other
answer is `{"code", "status", "error", "num_records_imported", "failed_records"}` (`failed_records`
naming each failed event's `index`, `$insert_id`, `field` and `message`); without it, /track's verbose
answer, whatever `verbose` says: mixpanel-python's `import_data` and `merge` read `status == 1` of it, and
a client that parses JSON gets JSON even from a refusal made before the body (and its `verbose=1`) was
read. `callback` and `img` are /track's and ignored here."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

import msgspec

from trackgate import metrics
from trackgate._native import Request
from trackgate.credentials import CHALLENGE
from trackgate.gateway.answers import JSON, AnswerParams, Answers, VerboseFailure, verbose_stored
from trackgate.gateway.refusals import Reason, Refusal
from trackgate.rsgi import HTTPProtocol, Scope

INVALID_CREDENTIALS: Final = b'{"code":401,"error":"Invalid credentials","status":0}'


class ImportRecord(msgspec.Struct, rename={"insert_id": "$insert_id"}):
    """One failed event of a strict request."""

    index: int
    insert_id: str | None
    field: str
    message: str


class ImportAnswer(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: int
    status: str
    error: str | None = None
    num_records_imported: int
    failed_records: list[ImportRecord] | None = None
    duplicates: int = 0
    """As in /track's verbose answer: imported events stored before (within the dedup window)."""


_encode = msgspec.json.Encoder().encode


class ImportAnswers(Answers):
    """/import's answers (see the module): JSON, Mixpanel's import shapes with `strict=1`, else /track's
    verbose ones."""

    __slots__ = ()

    def stored(
        self,
        proto: HTTPProtocol,
        request: Request,
        callback: str | None,
        duplicates: int,
        extra: list[tuple[str, str]],
    ) -> None:
        if request.strict:
            imported = request.accepted
            answer = ImportAnswer(code=200, status="OK", num_records_imported=imported, duplicates=duplicates)
            self._json(proto, 200, answer, extra)
        else:
            self._send(proto, 200, verbose_stored(duplicates), extra)

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
        if reason is Refusal.INVALID_CREDENTIALS:
            self._send(proto, reason.status, INVALID_CREDENTIALS, [CHALLENGE, *headers])
            return
        if params is None or not params.strict:
            self._json(proto, reason.status, failure, headers)
            return
        answer = ImportAnswer(
            code=reason.status,
            status=HTTPStatus(reason.status).phrase,
            error=failure.error,
            num_records_imported=failure.num_records_imported,
            duplicates=failure.duplicates,
        )
        if failure.failed_records and isinstance(params, Request):
            # The decoder's errors, which name each failed event's $insert_id.
            errors = params.errors
            answer.failed_records = [ImportRecord(e.index, e.insert_id, e.field, e.message) for e in errors]
        self._json(proto, reason.status, answer, headers)

    def _json(
        self, proto: HTTPProtocol, status: int, answer: msgspec.Struct, headers: list[tuple[str, str]]
    ) -> None:
        self._send(proto, status, _encode(answer), headers)

    def _send(self, proto: HTTPProtocol, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        proto.response_bytes(status, [*JSON, *headers], body)
        metrics.count_request(self._route, status)
