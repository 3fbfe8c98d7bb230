"""The parts of Granian's RSGI interface the app uses, as typing protocols (see granian's
docs/spec/RSGI.md): the scope of a request and the protocol object that reads it and answers it, and the
error a read raises when the client has gone."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol

from granian.rsgi import ProtocolClosed  # type: ignore[attr-defined]  # re-exported, not in __all__

__all__ = ["BodyChunks", "HTTPProtocol", "Headers", "PendingRead", "ProtocolClosed", "Scope", "Transport"]


class Headers(Protocol):
    def get(self, key: str, default: str | None = None) -> str | None: ...
    def get_all(self, key: str) -> list[str]: ...


class Scope(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query_string(self) -> str: ...
    @property
    def client(self) -> str: ...
    @property
    def headers(self) -> Headers: ...


class Transport(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...


class PendingRead(Protocol):
    """A read of the request's body: awaitable once; cancel() wakes the awaiting code with
    CancelledError (without cancelling its task)."""

    def __await__(self) -> Generator[Any, None, bytes]: ...
    def cancel(self) -> bool: ...


class BodyChunks(Protocol):
    def __anext__(self) -> PendingRead: ...


class HTTPProtocol(Protocol):
    def __call__(self) -> PendingRead: ...
    def __aiter__(self) -> BodyChunks: ...
    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...
    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> Transport: ...
