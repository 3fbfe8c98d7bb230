"""`/import`: Mixpanel's import API, for events of any time since 1971 (mixpanel-python's `import_data`
and `merge`). The ingestion flow (ingest.py), as /track's, behind a gate that authenticates the request
before its body is read (credentials.py: the project's API secret, or a service account with
`project_id`); the native decoder then reads the events for that project (rust/src/import.rs), and the
answers are Mixpanel's import shapes where its clients read them (import_answers.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote_plus

from redis.exceptions import RedisError

from trackgate._native import RULES, DecodeError, Options, Request, decode_import_request
from trackgate.credentials import Credentials
from trackgate.gateway.answers import AnswerParams
from trackgate.gateway.import_answers import ImportAnswers
from trackgate.gateway.ingest import Decoder, Endpoint, Ingestion, Refused
from trackgate.gateway.refusals import Refusal
from trackgate.rsgi import Scope

MAX_FUTURE_SKEW: Final = 3600.0
"""Seconds an imported event's time may lie ahead before it is set to the receive time (Mixpanel's hour)."""


def import_options(options: Options) -> Options:
    """/import's rules: the gateway's, but for time. No age limit (the decoder's floor for /import is
    1971), and an hour ahead."""
    rules = {rule.name: getattr(options, rule.name) for rule in RULES}
    return Options(**(rules | {"max_age": math.inf, "max_future_skew": MAX_FUTURE_SKEW}))


class ImportDecoder:
    """/import requests read by the native decoder for the project `token` (none: a request not yet
    admitted, read only for the parameters of its answer), received at `clock()`, their events counted
    when of the last `retention_days` days (--counter-retention-days)."""

    __slots__ = ("_clock", "_options", "_retention_days", "_token")

    def __init__(
        self, options: Options, clock: Callable[[], float], retention_days: int, token: str = ""
    ) -> None:
        self._options = options
        self._clock = clock
        self._retention_days = retention_days
        self._token = token

    def for_project(self, token: str) -> ImportDecoder:
        return ImportDecoder(self._options, self._clock, self._retention_days, token)

    def decode(
        self, query: str, body: bytes, content_type: str | None, content_encoding: str | None, peer: str
    ) -> Request:
        return decode_import_request(
            query,
            body,
            content_type,
            content_encoding,
            token=self._token,
            now=self._clock(),
            options=self._options,
            counter_retention_days=self._retention_days,
            peer_ip=peer,
        )

    def params(self, query: str) -> AnswerParams:
        """As NativeDecoder's: the empty body refused, or a `data` in the query decoded."""
        try:
            return decode_import_request(
                query,
                b"",
                token=self._token,
                now=self._clock(),
                options=self._options,
                counter_retention_days=self._retention_days,
            )
        except DecodeError as err:
            return err


class ImportGate:
    """Admits a request whose credentials are a project's, with the decoder for that project."""

    __slots__ = ("_credentials", "_decoder")

    def __init__(self, credentials: Credentials, decoder: ImportDecoder) -> None:
        self._credentials = credentials
        self._decoder = decoder

    async def admit(self, scope: Scope) -> Decoder | Refused:
        authorization = scope.headers.get("authorization")
        try:
            token = await self._credentials.project_for(authorization, _project_id(scope.query_string))
        except (RedisError, OSError):
            message = "the credentials cannot be checked: Redis is unreachable; retry later"
            return Refused(Refusal.REDIS_UNAVAILABLE, message)
        if token is None:
            message = (
                "no project has these credentials: the project's API secret as the HTTP Basic user name, "
                "or a service account with ?project_id="
            )
            return Refused(Refusal.INVALID_CREDENTIALS, message)
        return self._decoder.for_project(token)


def _project_id(query: str) -> str | None:
    """The query string's `project_id` (its last)."""
    found = None
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name) == "project_id":
            found = unquote_plus(value)
    return found


def import_endpoint(
    shared: Ingestion,
    options: Options,
    clock: Callable[[], float],
    credentials: Credentials,
    retention_days: int,
) -> Endpoint:
    decoder = ImportDecoder(import_options(options), clock, retention_days)
    gate = ImportGate(credentials, decoder)
    return Endpoint("import", decoder, shared, gate, ImportAnswers("import", shared.refusals))
