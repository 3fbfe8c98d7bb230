"""`/track`: Mixpanel's event endpoint, the ingestion flow (ingest.py) with the native decoder's reading
of a track request."""

from __future__ import annotations

from collections.abc import Callable

from trackgate._native import DecodeError, Options, Request, decode_request
from trackgate.gateway.answers import AnswerParams
from trackgate.gateway.ingest import Endpoint, Ingestion, TokenSource


class TrackDecoder:
    """A /track request's events, by the decoder's rules, received at `clock()` (seconds since the epoch)
    and checked against the known projects' tokens."""

    __slots__ = ("_clock", "_options", "_tokens")

    def __init__(self, options: Options, tokens: TokenSource, clock: Callable[[], float]) -> None:
        self._options = options
        self._tokens = tokens
        self._clock = clock

    def decode(
        self, query: str, body: bytes, content_type: str | None, content_encoding: str | None, peer: str
    ) -> Request:
        return decode_request(
            query,
            body,
            content_type,
            content_encoding,
            now=self._clock(),
            options=self._options,
            peer_ip=peer,
            tokens=self._tokens.tokens,
        )

    def params(self, query: str) -> AnswerParams:
        """Read by the decoder, which refuses the empty body, or decodes a `data` in the query, bounded by
        the limit."""
        try:
            return decode_request(query, b"", now=self._clock(), options=self._options)
        except DecodeError as err:
            return err


def track_endpoint(shared: Ingestion, options: Options, clock: Callable[[], float]) -> Endpoint:
    return Endpoint("track", TrackDecoder(options, shared.tokens, clock), shared)
